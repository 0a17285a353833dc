"""SQL of the token-issuer. Every function works inside the caller's session and transaction.

Reads of single rows use the SQLModel tables (typed); writes, locks and list queries are
explicit SQL so that their locking and concurrency are visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Result, RowMapping, TextClause, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from ..domain import Person
from .tables import GrantRow, PrincipalSeenRow, ScannerRow, TokenRow, UserRow


async def run(
    session: AsyncSession, statement: TextClause, params: Mapping[str, Any] | None = None
) -> Result[Any]:
    """`session.exec` for a textual statement (sqlmodel's overloads only type ORM statements)."""
    result = await session.exec(cast(Any, statement), params=params)
    return cast(Result[Any], result)


# ------------------------------------------------------------------------------------ scanners


async def lock_scanner(session: AsyncSession, scanner_id: str) -> ScannerRow | None:
    """The scanner's row, locked until the transaction ends (FOR UPDATE): every transaction
    that writes events for a scanner takes this lock first, so outbox order is commit order."""
    statement = (
        select(ScannerRow)
        .where(col(ScannerRow.scanner_id) == scanner_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.exec(statement)).first()


_SCANNER_WITH_GRANT = """
    SELECT s.scanner_id, s.org_id, s.serial_number, s.name, s.model, s.registered,
           s.removed_at, s.authorised, s.authorised_at, s.credential_id,
           s.authorised_serial_number, s.deauthorised_at, s.updated_at,
           EXISTS (SELECT 1 FROM access_grants g
                   WHERE g.scanner_id = s.scanner_id AND g.user_id = :user_id) AS has_grant
    FROM scanners s WHERE s.scanner_id = :scanner_id
"""
_SCANNER_WITH_GRANT_READ = text(_SCANNER_WITH_GRANT)
_SCANNER_WITH_GRANT_LOCKED = text(_SCANNER_WITH_GRANT + " FOR UPDATE OF s")


async def scanner_with_grant(
    session: AsyncSession, scanner_id: str, user_id: str, *, lock: bool
) -> tuple[ScannerRow | None, bool]:
    """The scanner's row and whether `user_id` holds a grant on it, in one round trip. With
    `lock`, the row is locked like `lock_scanner` does (FOR UPDATE, until the transaction
    ends). A detached row: read its fields, never write through it."""
    statement = _SCANNER_WITH_GRANT_LOCKED if lock else _SCANNER_WITH_GRANT_READ
    row = (
        (await run(session, statement, {"scanner_id": scanner_id, "user_id": user_id}))
        .mappings()
        .first()
    )
    if row is None:
        return None, False
    fields = dict(row)
    granted = bool(fields.pop("has_grant"))
    return ScannerRow(**fields), granted


async def has_grant(session: AsyncSession, scanner_id: str, user_id: str) -> bool:
    statement = select(GrantRow).where(
        col(GrantRow.scanner_id) == scanner_id, col(GrantRow.user_id) == user_id
    )
    return (await session.exec(statement)).first() is not None


_LIST_VISIBLE = text(
    """
    SELECT s.scanner_id, s.org_id, s.name, s.serial_number, s.model,
           s.authorised, s.authorised_at,
           (g.user_id IS NOT NULL) AS has_grant,
           t.status AS token_status, t.expires_at AS token_expires_at
    FROM scanners s
    LEFT JOIN access_grants g ON g.scanner_id = s.scanner_id AND g.user_id = :user_id
    LEFT JOIN LATERAL (
        SELECT status, expires_at FROM tokens
        WHERE tokens.scanner_id = s.scanner_id ORDER BY seq DESC LIMIT 1
    ) t ON true
    WHERE s.registered AND s.removed_at IS NULL AND s.org_id IS NOT NULL
      AND (CAST(:support AS boolean)
           OR (s.org_id = :org_id AND (CAST(:admin AS boolean) OR g.user_id IS NOT NULL)))
    ORDER BY s.org_id, s.name, s.scanner_id
    """
)


async def candidate_scanners(
    session: AsyncSession, *, user_id: str, org_id: str, support: bool, admin: bool
) -> Sequence[RowMapping]:
    """Visible scanners the caller may be able to view, with their latest token. A pre-filter
    only: the caller's access to each row is decided by `domain.access_to`."""
    result = await run(
        session,
        _LIST_VISIBLE,
        {"user_id": user_id, "org_id": org_id, "support": support, "admin": admin},
    )
    return result.mappings().all()


_UPSERT_SCANNER = text(
    """
    INSERT INTO scanners (scanner_id, org_id, serial_number, name, model, registered, updated_at)
    VALUES (:scanner_id, :org_id, :serial_number, :name, :model, true, now())
    ON CONFLICT (scanner_id) DO UPDATE SET
        org_id = EXCLUDED.org_id, serial_number = EXCLUDED.serial_number,
        name = EXCLUDED.name, model = EXCLUDED.model, registered = true, updated_at = now()
    """
)


async def upsert_scanner(
    session: AsyncSession,
    *,
    scanner_id: str,
    org_id: str,
    serial_number: str,
    name: str,
    model: str,
) -> None:
    await run(
        session,
        _UPSERT_SCANNER,
        {
            "scanner_id": scanner_id,
            "org_id": org_id,
            "serial_number": serial_number,
            "name": name,
            "model": model,
        },
    )


_PLACEHOLDER = text(
    "INSERT INTO scanners (scanner_id, org_id) VALUES (:scanner_id, :org_id) "
    "ON CONFLICT (scanner_id) DO NOTHING"
)


async def ensure_scanner_row(session: AsyncSession, scanner_id: str, org_id: str) -> None:
    """A row to lock and to hold authorisation facts, for a scanner not (yet) registered."""
    await run(session, _PLACEHOLDER, {"scanner_id": scanner_id, "org_id": org_id})


_MARK_REMOVED = text(
    "UPDATE scanners SET removed_at = :at, updated_at = now() WHERE scanner_id = :scanner_id"
)


async def mark_removed(session: AsyncSession, scanner_id: str, at: datetime) -> None:
    await run(session, _MARK_REMOVED, {"scanner_id": scanner_id, "at": at})


_AUTHORISE = text(
    """
    UPDATE scanners SET authorised = true, authorised_at = :at, credential_id = :credential_id,
        authorised_serial_number = :serial_number, updated_at = now()
    WHERE scanner_id = :scanner_id
    """
)


async def set_authorised(
    session: AsyncSession,
    scanner_id: str,
    *,
    at: datetime,
    credential_id: str,
    serial_number: str,
) -> None:
    await run(
        session,
        _AUTHORISE,
        {
            "scanner_id": scanner_id,
            "at": at,
            "credential_id": credential_id,
            "serial_number": serial_number,
        },
    )


_SET_CREDENTIAL = text(
    "UPDATE scanners SET credential_id = :credential_id, updated_at = now() "
    "WHERE scanner_id = :scanner_id"
)


async def set_credential(session: AsyncSession, scanner_id: str, credential_id: str) -> None:
    await run(session, _SET_CREDENTIAL, {"scanner_id": scanner_id, "credential_id": credential_id})


_DEAUTHORISE = text(
    """
    UPDATE scanners SET authorised = false, authorised_at = NULL, credential_id = NULL,
        authorised_serial_number = NULL,
        deauthorised_at = GREATEST(COALESCE(deauthorised_at, :at), :at), updated_at = now()
    WHERE scanner_id = :scanner_id
    """
)


async def set_deauthorised(session: AsyncSession, scanner_id: str, at: datetime) -> None:
    await run(session, _DEAUTHORISE, {"scanner_id": scanner_id, "at": at})


# ------------------------------------------------------------------------------------ people


async def upsert_user(
    session: AsyncSession, *, user_id: str, org_id: str, email: str, display_name: str
) -> None:
    await run(
        session,
        text(
            """
        INSERT INTO users (user_id, org_id, email, display_name, updated_at)
        VALUES (:user_id, :org_id, :email, :display_name, now())
        ON CONFLICT (user_id) DO UPDATE SET org_id = EXCLUDED.org_id, email = EXCLUDED.email,
            display_name = EXCLUDED.display_name, updated_at = now()
        """
        ),
        {"user_id": user_id, "org_id": org_id, "email": email, "display_name": display_name},
    )


async def add_grant(session: AsyncSession, scanner_id: str, user_id: str) -> None:
    await run(
        session,
        text(
            "INSERT INTO access_grants (scanner_id, user_id) VALUES (:scanner_id, :user_id) "
            "ON CONFLICT DO NOTHING"
        ),
        {"scanner_id": scanner_id, "user_id": user_id},
    )


async def remove_grant(session: AsyncSession, scanner_id: str, user_id: str) -> None:
    await run(
        session,
        text("DELETE FROM access_grants WHERE scanner_id = :scanner_id AND user_id = :user_id"),
        {"scanner_id": scanner_id, "user_id": user_id},
    )


_RECORD_PRINCIPAL = text(
    """
    INSERT INTO principals_seen (user_id, org_id, roles, email, last_seen_at)
    VALUES (:user_id, :org_id, :roles, :email, :at)
    ON CONFLICT (user_id) DO UPDATE SET org_id = EXCLUDED.org_id, roles = EXCLUDED.roles,
        email = EXCLUDED.email, last_seen_at = EXCLUDED.last_seen_at
    WHERE principals_seen.last_seen_at <= EXCLUDED.last_seen_at
    """
)


async def record_principal(
    session: AsyncSession,
    *,
    user_id: str,
    org_id: str,
    roles: list[str],
    email: str | None,
    at: datetime,
) -> None:
    await run(
        session,
        _RECORD_PRINCIPAL,
        {
            "user_id": user_id,
            "org_id": org_id,
            "roles": roles,
            "email": email,
            "at": at,
        },
    )


def _person(
    user_id: str, user: UserRow | None, seen: PrincipalSeenRow | None, granted: bool
) -> Person:
    org_id = user.org_id if user is not None else (seen.org_id if seen is not None else None)
    seen_as_admin = seen is not None and "admin" in seen.roles and seen.org_id == org_id
    email = (user.email if user is not None else None) or (seen.email if seen else None)
    display_name = (user.display_name if user is not None else "") or (email or "")
    return Person(
        user_id=user_id,
        org_id=org_id,
        display_name=display_name,
        email=email,
        has_grant=granted,
        seen_as_admin=seen_as_admin,
    )


async def person(session: AsyncSession, user_id: str, scanner_id: str) -> Person | None:
    """What this service knows of a user, relative to one scanner; None if nothing."""
    user = (await session.exec(select(UserRow).where(col(UserRow.user_id) == user_id))).first()
    seen = (
        await session.exec(select(PrincipalSeenRow).where(col(PrincipalSeenRow.user_id) == user_id))
    ).first()
    if user is None and seen is None:
        return None
    return _person(user_id, user, seen, await has_grant(session, scanner_id, user_id))


async def people_around(session: AsyncSession, scanner_id: str, org_id: str) -> list[Person]:
    """Users who might view the scanner: those with a grant on it, and those seen in its
    organisation. `domain.person_can_view` decides which of them really can."""
    granted = set(
        (
            await session.exec(
                select(GrantRow.user_id).where(col(GrantRow.scanner_id) == scanner_id)
            )
        ).all()
    )
    seen_rows = (
        await session.exec(select(PrincipalSeenRow).where(col(PrincipalSeenRow.org_id) == org_id))
    ).all()
    seen = {row.user_id: row for row in seen_rows}
    ids = granted | set(seen)
    users = (
        {
            row.user_id: row
            for row in (
                await session.exec(select(UserRow).where(col(UserRow.user_id).in_(sorted(ids))))
            ).all()
        }
        if ids
        else {}
    )
    return [
        _person(user_id, users.get(user_id), seen.get(user_id), user_id in granted)
        for user_id in sorted(ids)
    ]


# ------------------------------------------------------------------------------------ tokens


async def active_token(session: AsyncSession, scanner_id: str) -> TokenRow | None:
    statement = select(TokenRow).where(
        col(TokenRow.scanner_id) == scanner_id, col(TokenRow.status) == "active"
    )
    return (await session.exec(statement)).first()


async def latest_token(session: AsyncSession, scanner_id: str) -> TokenRow | None:
    statement = (
        select(TokenRow)
        .where(col(TokenRow.scanner_id) == scanner_id)
        .order_by(col(TokenRow.seq).desc())
        .limit(1)
    )
    return (await session.exec(statement)).first()


async def token_by_id(session: AsyncSession, token_id: str) -> TokenRow | None:
    return (await session.exec(select(TokenRow).where(col(TokenRow.token_id) == token_id))).first()


_INSERT_TOKEN_AUDITED = text(
    """
    WITH audited AS (
        INSERT INTO audit_log (at, actor_user_id, actor_org_id, action, scanner_id, token_id)
        VALUES (:issued_at, :issued_by, :actor_org_id, 'generated', :scanner_id, :token_id)
    )
    INSERT INTO tokens (token_id, scanner_id, org_id, code_ciphertext, code_digest, status,
                        issued_at, issued_by, expires_at)
    VALUES (:token_id, :scanner_id, :org_id, :code_ciphertext, :code_digest, 'active',
            :issued_at, :issued_by, :expires_at)
    """
)


async def insert_generated_token(
    session: AsyncSession,
    *,
    token_id: str,
    scanner_id: str,
    org_id: str,
    code_ciphertext: bytes,
    code_digest: str,
    issued_at: datetime,
    issued_by: str,
    actor_org_id: str | None,
    expires_at: datetime,
) -> None:
    """A new active token and its `generated` audit row (what `audit` writes), in one round
    trip."""
    await run(
        session,
        _INSERT_TOKEN_AUDITED,
        {
            "token_id": token_id,
            "scanner_id": scanner_id,
            "org_id": org_id,
            "code_ciphertext": code_ciphertext,
            "code_digest": code_digest,
            "issued_at": issued_at,
            "issued_by": issued_by,
            "actor_org_id": actor_org_id,
            "expires_at": expires_at,
        },
    )


_REVOKE = text(
    """
    UPDATE tokens SET status = 'revoked', code_ciphertext = NULL, revoked_at = :at,
        revoked_by = :by, revoke_reason = :reason
    WHERE token_id = :token_id AND status = 'active'
    RETURNING token_id
    """
)


async def revoke_token(
    session: AsyncSession, token_id: str, *, at: datetime, by: str, reason: str
) -> bool:
    result = await run(
        session, _REVOKE, {"token_id": token_id, "at": at, "by": by, "reason": reason}
    )
    return result.first() is not None


@dataclass(frozen=True, slots=True)
class ExpiredToken:
    token_id: str
    scanner_id: str
    org_id: str
    expires_at: datetime


_EXPIRE = text(
    """
    UPDATE tokens SET status = 'expired', code_ciphertext = NULL, expired_at = expires_at
    WHERE token_id = :token_id AND status = 'active' AND expires_at <= :now
    RETURNING token_id, scanner_id, org_id, expires_at
    """
)


async def expire_token(session: AsyncSession, token_id: str, now: datetime) -> ExpiredToken | None:
    """Mark the token expired if it still is active and due; the row only if this call did it."""
    row = (await run(session, _EXPIRE, {"token_id": token_id, "now": now})).mappings().first()
    if row is None:
        return None
    return ExpiredToken(row["token_id"], row["scanner_id"], row["org_id"], row["expires_at"])


_REDEEM = text(
    """
    UPDATE tokens SET status = 'redeemed', code_ciphertext = NULL, redeemed_at = :at
    WHERE token_id = :token_id AND status IN ('active', 'expired')
    RETURNING token_id
    """
)


async def redeem_token(session: AsyncSession, token_id: str, at: datetime) -> bool:
    return (await run(session, _REDEEM, {"token_id": token_id, "at": at})).first() is not None


_DUE = text(
    """
    SELECT token_id, scanner_id FROM tokens
    WHERE status = 'active' AND expires_at <= :now
    ORDER BY expires_at LIMIT :limit
    """
)


async def due_tokens(session: AsyncSession, now: datetime, limit: int) -> list[tuple[str, str]]:
    rows = (await run(session, _DUE, {"now": now, "limit": limit})).mappings().all()
    return [(row["token_id"], row["scanner_id"]) for row in rows]


# ------------------------------------------------------------------------------------ audit

_AUDIT = text(
    """
    INSERT INTO audit_log (at, actor_user_id, actor_org_id, action, scanner_id, token_id,
                           recipient_user_id, notification_id)
    VALUES (:at, :actor_user_id, :actor_org_id, :action, :scanner_id, :token_id,
            :recipient_user_id, :notification_id)
    """
)


async def audit(
    session: AsyncSession,
    *,
    at: datetime,
    actor_user_id: str,
    actor_org_id: str | None,
    action: str,
    scanner_id: str,
    token_id: str | None = None,
    recipient_user_id: str | None = None,
    notification_id: str | None = None,
) -> None:
    await run(
        session,
        _AUDIT,
        {
            "at": at,
            "actor_user_id": actor_user_id,
            "actor_org_id": actor_org_id,
            "action": action,
            "scanner_id": scanner_id,
            "token_id": token_id,
            "recipient_user_id": recipient_user_id,
            "notification_id": notification_id,
        },
    )
