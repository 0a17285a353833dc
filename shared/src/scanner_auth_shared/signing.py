"""Events that carry proof of their producer: Ed25519 signatures, the second line of defence
behind the broker's ACLs (for a misconfigured ACL, a shared principal, a leaked credential).

- Every service signs what it publishes with its own key (`EVENT_SIGNING_KEY`): the outbox relay
  and scan-ingest sign each record. The signature covers the exact bytes on the wire: the topic,
  the record key and the value (the CloudEvents envelope), so that neither can be changed or
  moved to another topic or key. It travels in the Kafka header `scanner-auth-signature` as
  `<key id>.<base64url signature>`; the key id is `<service>:<fingerprint>`.
- Every consumer verifies (`TrustPolicy`, from `EVENT_TRUSTED_KEYS`): an event of a type whose
  producer (`EventData.producer`: the contract's table of who publishes what) has a trusted key
  must be signed by one of that producer's keys, and name that producer as its source. An
  unsigned, wrongly signed or wrong-source event is refused (`Unverified`): the consumer
  dead-letters it with the reason and it has no effect.
- A producer without a trusted key is not checked (MyScanner's directory signs nothing today: its
  events rely on the broker's ACLs alone). `EVENT_SIGNATURES_REQUIRED=true` (the production
  overlay) makes every service refuse to start unless it signs what it publishes and trusts a key
  for every producer of ours it consumes from.

Key rotation: list the new public key next to the old in `EVENT_TRUSTED_KEYS` everywhere, then
move the producer to the new private key, then remove the old public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .settings import ConfigurationError, ServiceSettings

SIGNATURE_HEADER = "scanner-auth-signature"
_DOMAIN = b"scanner-auth-event-signature/v1\x00"


class Unverified(Exception):
    """An event that does not prove it comes from the producer of its type. The message names
    the reason only, never key material."""


def signed_bytes(topic: str, key: bytes | None, value: bytes) -> bytes:
    """What a signature covers: the topic, the key and the value, unambiguously framed."""
    key = key or b""
    return b"".join(
        (
            _DOMAIN,
            len(topic).to_bytes(4, "big"),
            topic.encode(),
            len(key).to_bytes(4, "big"),
            key,
            value,
        )
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """A public key as EVENT_TRUSTED_KEYS writes it (base64url of the 32 raw bytes)."""
    return _b64(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """EVENT_SIGNING_KEY: the 32-byte Ed25519 seed, base64 (standard or url-safe)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = _unb64(text.strip())
        except (binascii.Error, ValueError):
            raise ValueError("must be a 32-byte Ed25519 key, base64") from None
    if len(raw) != 32:
        raise ValueError("must be a 32-byte Ed25519 key, base64")
    return Ed25519PrivateKey.from_private_bytes(raw)


def new_private_key_text() -> str:
    """A fresh EVENT_SIGNING_KEY (what `scanner-auth keys` and the dev stack generate)."""
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class EventSigner:
    """Signs the records one service publishes."""

    service: str
    key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_text(cls, service: str, text: str) -> EventSigner:
        return cls(service, parse_private_key(text))

    @property
    def key_id(self) -> str:
        return f"{self.service}:{fingerprint(self.key.public_key())}"

    @property
    def public_key(self) -> str:
        return public_key_text(self.key.public_key())

    def sign(self, topic: str, key: bytes | None, value: bytes) -> bytes:
        """The value of the signature header for this record."""
        signature = self.key.sign(signed_bytes(topic, key, value))
        return f"{self.key_id}.{_b64(signature)}".encode()

    def header(self, topic: str, key: bytes | None, value: bytes) -> tuple[str, bytes]:
        return (SIGNATURE_HEADER, self.sign(topic, key, value))


def parse_trusted_keys(text: str) -> dict[str, list[Ed25519PublicKey]]:
    """EVENT_TRUSTED_KEYS: `service=publickey` entries, comma-separated (a service may appear
    more than once: key rotation)."""
    keys: dict[str, list[Ed25519PublicKey]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        service, sep, public = entry.partition("=")
        if not sep or not service.strip() or not public.strip():
            raise ValueError("entries must be service=publickey")
        try:
            raw = _unb64(public.strip())
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, binascii.Error):
            raise ValueError(f"the key of {service.strip()} is not an Ed25519 public key") from None
        keys.setdefault(service.strip(), []).append(key)
    return keys


@dataclass(frozen=True)
class TrustPolicy:
    """Which producers' signatures a consumer checks, with which keys."""

    keys: Mapping[str, Sequence[Ed25519PublicKey]]  # producer -> its trusted public keys

    @classmethod
    def from_text(cls, text: str) -> TrustPolicy:
        return cls(parse_trusted_keys(text))

    def checks(self, producer: str) -> bool:
        return bool(self.keys.get(producer))

    def verify(
        self,
        *,
        producer: str,
        source: str,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Iterable[tuple[str, bytes]],
    ) -> None:
        """Raise Unverified unless the record is signed by a trusted key of `producer` and its
        envelope names that producer as its source. Nothing to check for a producer without a
        trusted key."""
        trusted = self.keys.get(producer)
        if not trusted:
            return
        signature = next((v for k, v in headers if k == SIGNATURE_HEADER), None)
        if signature is None:
            raise Unverified(f"unsigned; a {producer} event must be signed")
        key_id, _, encoded = signature.decode("ascii", "replace").rpartition(".")
        signer, _, print_ = key_id.partition(":")
        if signer != producer:
            raise Unverified(f"signed by {signer or 'an unknown key'}, not by {producer}")
        candidates = [k for k in trusted if fingerprint(k) == print_]
        if not candidates:
            raise Unverified(f"signed with a key of {producer} that is not trusted")
        try:
            raw = _unb64(encoded)
            candidates[0].verify(raw, signed_bytes(topic, key, value))
        except (InvalidSignature, ValueError, binascii.Error):
            raise Unverified("the signature does not match the record") from None
        expected = producer if producer == "directory" else f"scanner-auth/{producer}"
        if producer != "directory" and source != expected:
            raise Unverified(f"the source is {source!r}, not {expected!r}")


NO_TRUST = TrustPolicy({})


def signer_for(settings: ServiceSettings, service: str) -> EventSigner | None:
    """The service's signer (EVENT_SIGNING_KEY), or None; ConfigurationError when signatures
    are required and there is no key."""
    if settings.event_signing_key is None:
        if settings.event_signatures_required:
            raise ConfigurationError(
                "EVENT_SIGNING_KEY is required when EVENT_SIGNATURES_REQUIRED is true"
            )
        return None
    return EventSigner.from_text(service, settings.event_signing_key.get_secret_value())


def policy_for(settings: ServiceSettings, producers: Iterable[str] = ()) -> TrustPolicy:
    """The consumer's trust policy (EVENT_TRUSTED_KEYS). With EVENT_SIGNATURES_REQUIRED, every
    one of `producers` that is one of ours must have a trusted key (ConfigurationError)."""
    policy = TrustPolicy.from_text(settings.event_trusted_keys)
    if settings.event_signatures_required:
        missing = sorted(p for p in set(producers) if p != "directory" and not policy.checks(p))
        if missing:
            raise ConfigurationError(
                "EVENT_TRUSTED_KEYS has no key for "
                + ", ".join(missing)
                + " (EVENT_SIGNATURES_REQUIRED is true)"
            )
    return policy
