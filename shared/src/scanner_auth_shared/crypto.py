"""The code a person types, credentials, digests and sealing. Pure functions, no I/O.

Secrets never leave these functions in readable form except where the caller asked for them;
exceptions raised here never carry a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# ------------------------------------------------------------------------------------ codes

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32
_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
_READS_AS = {"O": "0", "I": "1", "L": "1"}
CODE_BODY_LENGTH = 11
CODE_LENGTH = 12


class MalformedCode(ValueError):
    """Not 12 symbols of the alphabet once spaces and dashes are ignored."""


class CodeTypo(ValueError):
    """12 well-formed symbols whose check symbol does not match: a typo."""


def luhn32_check_symbol(body: str) -> str:
    """Luhn mod N (N = 32) check symbol over Crockford symbols."""
    factor, total, n = 2, 0, len(ALPHABET)
    for ch in reversed(body):
        addend = factor * _VALUE[ch]
        factor = 1 if factor == 2 else 2
        total += addend // n + addend % n
    return ALPHABET[(n - total % n) % n]


def generate_code() -> str:
    """A fresh code, `XXXX-XXXX-XXXX`: 11 random symbols (55 bits) and a check symbol."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(CODE_BODY_LENGTH))
    return format_code(body + luhn32_check_symbol(body))


def format_code(flat: str) -> str:
    return f"{flat[:4]}-{flat[4:8]}-{flat[8:]}"


def normalise_code(typed: str) -> str:
    """The 12 symbols a person meant: case, spaces and dashes ignored; O→0, I and L→1.

    Raises MalformedCode or CodeTypo; neither message repeats what was typed.
    """
    flat = "".join(ch for ch in typed.upper() if ch not in " -\t")
    flat = "".join(_READS_AS.get(ch, ch) for ch in flat)
    if len(flat) != CODE_LENGTH or any(ch not in _VALUE for ch in flat):
        raise MalformedCode("a code is 12 characters of 0-9 and A-Z (without I, L, O, U)")
    if luhn32_check_symbol(flat[:CODE_BODY_LENGTH]) != flat[CODE_BODY_LENGTH]:
        raise CodeTypo("the code contains a typo: its last character does not match the others")
    return flat


def code_digest(pepper: bytes, normalised: str) -> str:
    """Hex HMAC-SHA256 of the normalised (flat, 12-symbol) code under TOKEN_PEPPER."""
    return hmac.new(pepper, normalised.encode("ascii"), hashlib.sha256).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# ------------------------------------------------------------------------------------ credentials

CREDENTIAL_PREFIX = "sac1_"  # scanner-auth credential, version 1: lets secret scanners spot leaks
CREDENTIAL_RANDOM_BYTES = 32  # 256 bits


def generate_credential() -> str:
    return CREDENTIAL_PREFIX + secrets.token_urlsafe(CREDENTIAL_RANDOM_BYTES)


def credential_digest(credential: str) -> str:
    """Hex SHA-256 of the credential: what is stored and published, never the credential."""
    return hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_credential(value: str) -> bool:
    return value.startswith(CREDENTIAL_PREFIX) and 40 <= len(value) <= 100


# ------------------------------------------------------------------------------------ sealing


class SealBroken(ValueError):
    """The sealed value was not made with this key and context, or was altered."""


@dataclass(frozen=True, slots=True)
class SecretBox:
    """AES-256-GCM with a 96-bit random nonce, bound to a context string (associated data).

    Sealed form: base64url(nonce || ciphertext || tag), unpadded.
    """

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise ValueError("an AES-256 key is 32 bytes")

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self.key).encrypt(nonce, plaintext.encode(), context.encode())
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def open(self, sealed: str, context: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            return AESGCM(self.key).decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise SealBroken("sealed value cannot be opened with this key") from None

    def seal_bytes(self, plaintext: str, context: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, plaintext.encode(), context.encode())

    def open_bytes(self, sealed: bytes, context: str) -> str:
        try:
            return AESGCM(self.key).decrypt(sealed[:12], sealed[12:], context.encode()).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise SealBroken("sealed value cannot be opened with this key") from None


def sealed_code_context(token_id: str) -> str:
    """Associated data of `sealed_code`: a sealed code opens only for its own token."""
    return f"scanner-auth/sealed-code/v1/{token_id}"


def stored_code_context(token_id: str) -> str:
    """Associated data of a code at rest in the token-issuer's database."""
    return f"scanner-auth/stored-code/v1/{token_id}"
