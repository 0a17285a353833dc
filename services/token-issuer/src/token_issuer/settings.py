"""What the token-issuer reads from the environment (upper-case variable names)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from scanner_auth_shared.auth import JwtVerifier, check_jwks_url
from scanner_auth_shared.settings import AesKey, DatabaseSettings, Pepper


def host_origins(spec: str) -> list[str]:
    """`UI_HOST_ORIGINS`: comma-separated origins such as `https://my.myscanner.com`."""
    origins = []
    for item in spec.split(","):
        origin = item.strip().rstrip("/")
        if origin:
            scheme, _, host = origin.partition("://")
            if scheme not in ("https", "http") or not host or any(c in host for c in " ;'/*"):
                raise ValueError(f"has {origin[:100]!r}, not an origin (https://host[:port])")
            origins.append(origin)
    return origins


class Settings(DatabaseSettings):
    http_port: int = 8001

    # User JWT verification: AUTH_JWKS_URL or AUTH_PUBLIC_KEY_PEM (one is required).
    auth_jwks_url: str | None = Field(None, description="JWKS endpoint of the identity provider")
    auth_public_key_pem: str | None = Field(
        None, validate_default=True, description="PEM public key (EC P-256 or RSA >= 2048)"
    )
    auth_issuer: str = Field(min_length=1, description="expected `iss` claim")
    auth_audience: str = Field(min_length=1, description="expected `aud` claim")

    # Secrets: refused when missing, short or a published default.
    token_pepper: Pepper = Field(description="HMAC key of code_digest, at least 32 bytes")
    sealing_key: AesKey = Field(description="AES-256 key (base64) sealing codes for the notifier")
    code_encryption_key: AesKey = Field(description="AES-256 key (base64) for codes at rest")

    token_ttl_seconds: int = Field(259200, ge=1, description="validity of a code")
    expiry_sweep_interval_seconds: float = Field(1.0, gt=0)
    expiry_sweep_batch_size: int = Field(500, ge=1)
    # How often one user's roles, org and email are written to `principals_seen` at most.
    principal_record_interval_seconds: float = Field(60.0, ge=0)
    admin_flag_ttl_hours: float = Field(
        24.0,
        gt=0,
        description="an admin role seen in a JWT makes its holder a recipient for this long",
    )
    support_org_id: str = Field(
        "org-loadscan",
        min_length=1,
        description="the Loadscan organisation: `support` counts only in its tokens",
    )

    # Abuse limits.
    email_limit_per_code_per_hour: int = Field(5, ge=1, description="emails of one code per hour")
    email_limit_per_recipient_per_hour: int = Field(
        10, ge=1, description="code emails to one address per hour"
    )
    max_request_body_bytes: int = Field(
        16384, ge=1024, description="largest request body, refused (413) before it is parsed"
    )

    # The reference web page at /ui/ (token_issuer/ui/README.md).
    ui_enabled: bool = Field(True, description="serve the reference web page at /ui/")
    ui_host_origins: str = Field(
        "", description="origins that may frame /ui/ and post it a token, comma-separated"
    )
    ui_dev_identities_file: str | None = Field(
        None, description="`scanner-auth dev` only: the demo users' JWTs for the /ui/ picker"
    )

    # Tests only: the token-issuer's clock runs this many seconds ahead (negative: behind) of
    # the machine's, to prove that nothing downstream depends on it agreeing with the other
    # services' clocks (issue 18; tests/e2e/test_clock_skew.py). Refused with
    # KAFKA_IDEMPOTENCE=required, which the production overlay sets.
    test_clock_offset_seconds: float = Field(0.0, ge=-3600, le=3600)

    @field_validator("test_clock_offset_seconds")
    @classmethod
    def _no_skew_in_production(cls, value: float, info: ValidationInfo) -> float:
        if value and info.data.get("kafka_idempotence") == "required":
            raise ValueError("is for tests only; refused with KAFKA_IDEMPOTENCE=required")
        return value

    @field_validator("ui_host_origins")
    @classmethod
    def _host_origins(cls, value: str) -> str:
        host_origins(value)  # a ValueError names the first malformed origin
        return value

    @field_validator("auth_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        url = value.strip() or None if value is not None else None
        return check_jwks_url(url) if url is not None else None  # https (http on loopback)

    @field_validator("auth_public_key_pem")
    @classmethod
    def _key_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = value.strip() or None if value is not None else None
        if value is None:
            if not info.data.get("auth_jwks_url"):
                raise ValueError("or AUTH_JWKS_URL is required to verify user JWTs")
            return None
        try:
            JwtVerifier(issuer="-", audience="-", public_key_pem=value)
        except ValueError:
            raise ValueError(
                "is not a usable public key (a PEM EC P-256 or RSA >= 2048 bits key)"
            ) from None
        return value
