"""The token-issuer's own Prometheus metrics (the shared ones cover HTTP, consumers, outbox)."""

from __future__ import annotations

from prometheus_client import Counter

TOKENS_ISSUED = Counter(
    "scanner_auth_token_issuer_tokens_issued_total", "Authorisation tokens generated"
)
TOKENS_ENDED = Counter(
    "scanner_auth_token_issuer_tokens_ended_total",
    "Active tokens that stopped being active, by how (superseded, revoked, expired, redeemed)",
    ["outcome"],
)
CODE_EMAILS_REQUESTED = Counter(
    "scanner_auth_token_issuer_code_emails_requested_total",
    "TokenEmailRequested events written",
)
CODE_EMAILS_LIMITED = Counter(
    "scanner_auth_token_issuer_code_emails_limited_total",
    "Email requests refused with 429 (EMAIL_LIMIT_PER_CODE_PER_HOUR, …_PER_RECIPIENT_PER_HOUR)",
)
SUPPORT_ROLE_IGNORED = Counter(
    "scanner_auth_token_issuer_support_role_ignored_total",
    "Authenticated requests whose `support` role was dropped: not from SUPPORT_ORG_ID",
)
CODES_VIEWED = Counter(
    "scanner_auth_token_issuer_codes_viewed_total",
    "Active codes shown to a user (GET authorisation-token)",
)
DEAUTHORISATIONS = Counter(
    "scanner_auth_token_issuer_deauthorisations_total",
    "ScannerDeauthorised events written, by reason",
    ["reason"],
)
AUTH_REFUSED = Counter(
    "scanner_auth_token_issuer_auth_refused_total",
    "Requests refused with 401, by reason (missing, invalid)",
    ["reason"],
)
ACCESS_REFUSED = Counter(
    "scanner_auth_token_issuer_access_refused_total",
    "Requests refused by the access policy, by answer (404 not visible, 403 view only)",
    ["status"],
)
