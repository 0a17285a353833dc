"""The notifier's ports: what the use cases (handlers.py) need of the world, as Protocols.

- `NotifierUnitOfWork`: one transaction with the two repositories (notifications, token
  states), the outbox and the inbox (`adapters/postgres.py`, `adapters/memory.py`).
- `Mailer`: the SMTP relay (`adapters/smtp.py`); `Composer`: the email of a code
  (`adapters/email.py`).
- `ReadBarrier`: whether the token-state consumer has applied every token event of a scanner
  published until now (`adapters/kafka.py`, and a fake in `adapters/memory.py`).
- `Wakeups`: what the sender waits on between passes (`scanner_auth_shared.listen.Listener`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Protocol

from scanner_auth_shared.uow import UnitOfWork

from ..domain import (
    Claimed,
    CodeEmail,
    EmailRequest,
    Finished,
    Notification,
    SendResult,
    Status,
    TokenState,
)


class NotificationRepository(Protocol):
    """The `notifications` table. Times (due, leases) are the database's clock."""

    async def add(self, request: EmailRequest) -> bool:
        """A new pending notification, due now; False when one with its id exists already."""
        ...

    async def get(self, notification_id: str) -> Notification | None: ...

    async def claim_due(self, limit: int, lease_seconds: float) -> list[Claimed]:
        """The lease of up to `limit` due pending notifications (oldest due first), none that
        another transaction holds: status `sending`, a new claim id, the lease's end."""
        ...

    async def seconds_to_next_due(self) -> float | None:
        """Seconds until the next pending notification is due (negative: overdue); None when
        none is pending."""
        ...

    async def finish(
        self,
        claimed: Claimed,
        status: Status,
        *,
        attempts: int,
        error: str | None = None,
        sent_at: datetime | None = None,
        smtp_message_id: str | None = None,
    ) -> bool:
        """End a claimed notification (sent, failed or cancelled) and clear its sealed code.
        False when its claim is no longer held (nothing changed)."""
        ...

    async def retry_later(
        self, claimed: Claimed, *, attempts: int, delay_seconds: float, error: str
    ) -> bool:
        """Back to pending after a failed attempt, due in `delay_seconds`. False when the
        claim is no longer held."""
        ...

    async def release(self, claimed: Claimed, *, delay_seconds: float) -> bool:
        """Back to pending without an attempt (its turn did not come yet), due in
        `delay_seconds`. False when the claim is no longer held."""
        ...

    async def reap_expired_leases(
        self, *, mine: Sequence[str], error: str, limit: int = 100
    ) -> list[Finished]:
        """Notifications left `sending` past their lease, except the claims in `mine` (this
        process's own, still under way): failed with `error`, their attempt counted."""
        ...

    async def cancel_pending_of_token(self, token_id: str, error: str) -> list[Finished]:
        """The token's pending notifications (not those being delivered): cancelled."""
        ...


class TokenStateRepository(Protocol):
    """The `token_states` table: what the notifier knows of each token's life."""

    async def issued(self, token_id: str, scanner_id: str) -> None:
        """An issued token, active; a token already known (even ended) is left as it is."""
        ...

    async def ended(self, token_id: str, scanner_id: str, state: TokenState) -> None:
        """An active or unknown token is now revoked, expired or redeemed. The first end wins;
        nothing goes back to active."""
        ...

    async def state_of(self, token_id: str) -> TokenState | None: ...


class NotifierUnitOfWork(UnitOfWork, Protocol):
    @property
    def notifications(self) -> NotificationRepository: ...

    @property
    def tokens(self) -> TokenStateRepository: ...


class Mailer(Protocol):
    """The SMTP relay: one attempt at one message, every outcome a result (never raises)."""

    async def send(self, message: EmailMessage) -> SendResult: ...


class Composer(Protocol):
    """The email of a code, ready for the relay. Raises InvalidRecipient."""

    def compose(self, mail: CodeEmail, now: datetime) -> EmailMessage: ...


class ReadBarrier(Protocol):
    """The token-state consumer's progress, as the sender needs it."""

    async def wait_caught_up(self, scanner_id: str, timeout: float) -> bool:
        """True once every token event of `scanner_id` published before this call has been
        applied to the token states (and committed); False when that did not happen within
        `timeout` seconds, or could not be known (the broker unreachable). Never raises but
        CancelledError."""
        ...


class Wakeups(Protocol):
    """What the sender's loop runs on: `scanner_auth_shared.listen.Listener`."""

    connected: bool

    async def run(self, session: Callable[[Any], Awaitable[None]]) -> None: ...

    async def idle(self, seconds: float) -> bool: ...

    def wake(self) -> None: ...
