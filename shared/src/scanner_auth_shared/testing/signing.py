"""Signing keys for the stacks this process starts (`scanner-auth dev`, the end-to-end, fault and
browser tests): one Ed25519 key per producer, made once per process, so that every stack of a
test session trusts the same keys and the tests' own publishers (`testing.kafka`) sign what they
publish as its producer would."""

from __future__ import annotations

import functools

from ..events import EVENT_TYPES
from ..signing import EventSigner, new_private_key_text

PRODUCERS = sorted({model.producer for model in EVENT_TYPES.values()})


@functools.cache
def private_keys() -> dict[str, str]:
    """EVENT_SIGNING_KEY of each producer (the directory's too: the tests sign as it would)."""
    return {producer: new_private_key_text() for producer in PRODUCERS}


def signer(producer: str) -> EventSigner:
    return EventSigner.from_text(producer, private_keys()[producer])


def trusted_keys() -> str:
    """EVENT_TRUSTED_KEYS trusting every producer's key."""
    return ",".join(f"{p}={signer(p).public_key}" for p in PRODUCERS)


def service_environment(service: str) -> dict[str, str]:
    """The signature settings of one service of a stack."""
    return {
        "EVENT_SIGNING_KEY": private_keys()[service],
        "EVENT_TRUSTED_KEYS": trusted_keys(),
        "EVENT_SIGNATURES_REQUIRED": "true",
    }
