"""The SMTP relay, through aiosmtplib: one connection per email, SMTP_TLS honoured.

Every outcome becomes a `SendResult`:
- 250 to the message: Delivered.
- a 5xx reply to the recipient (RCPT) or to the message (DATA): PermanentFailure.
- a 4xx reply anywhere, a connection refused, lost or timed out: TransientFailure.
- the connection lost or timed out after the relay said 354 and the message went on its way:
  OutcomeUnknown. The relay may have accepted it; resending could deliver it twice.
- the whole attempt bounded by `deadline`: cut short before 354, TransientFailure; after,
  OutcomeUnknown.
- a refusal while setting up the session (greeting, EHLO, STARTTLS, AUTH, MAIL FROM), even a
  5xx: TransientFailure. It says the relay or our configuration of it is wrong (a bad password,
  say), not that this email can never be delivered: the email waits, with backoff and until its
  code expires, for an operator to fix it.
Error texts carry SMTP replies and exception types only: never the message, so never the code.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

import aiosmtplib
from aiosmtplib import (
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
)
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message

from ..domain import (
    LOST_AFTER_DATA,
    TOO_SLOW,
    Delivered,
    OutcomeUnknown,
    PermanentFailure,
    SendResult,
    TransientFailure,
    is_permanent_reply,
)

log = logging.getLogger("scanner_auth.notifier.smtp")

TlsMode = Literal["none", "starttls", "tls"]


def _reply(exc: SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


class SmtpRelay:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: TlsMode,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        ca_file: str | None = None,
        helo_hostname: str | None = None,
        deadline: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.tls: TlsMode = tls
        self.username = username
        self._password = password
        self.timeout = timeout
        self.ca_file = ca_file
        self.helo_hostname = helo_hostname
        self.deadline = deadline  # the whole attempt, session included

    def __repr__(self) -> str:
        return f"SmtpRelay({self.host}:{self.port}, tls={self.tls})"

    def _client(self) -> aiosmtplib.SMTP:
        context = None
        if self.tls != "none" and self.ca_file:
            context = ssl.create_default_context(cafile=self.ca_file)
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self._password,
            timeout=self.timeout,
            use_tls=self.tls == "tls",
            # True: STARTTLS is required (refused servers fail); False: never attempted.
            start_tls=self.tls == "starttls",
            tls_context=context,
            local_hostname=self.helo_hostname,
        )

    async def send(self, message: EmailMessage) -> SendResult:
        """One attempt, bounded by `deadline` as a whole: cut short before the relay had the
        message, it is transient; after DATA's 354, the outcome is unknown."""
        client = self._client()
        progress = _Progress()
        try:
            async with asyncio.timeout(self.deadline):
                refused = await self._open(client)
                if refused is not None:
                    return refused
                return await self._deliver(client, message, progress)
        except TimeoutError:
            if progress.handed_over:
                return OutcomeUnknown(LOST_AFTER_DATA)
            return TransientFailure(TOO_SLOW)
        finally:
            await _close(client)

    async def _open(self, client: aiosmtplib.SMTP) -> SendResult | None:
        """The session: connect, greeting, EHLO, STARTTLS, AUTH. None when it is open; any
        refusal is transient (the relay or our configuration of it, not this email)."""
        where = f"{self.host}:{self.port}"
        try:
            await client.connect()
        except SMTPResponseException as exc:
            return TransientFailure(f"the mail relay refused the session: {_reply(exc)}")
        except aiosmtplib.SMTPTimeoutError:
            return TransientFailure(f"timed out connecting to the mail relay {where}")
        except aiosmtplib.SMTPNotSupported as exc:
            return TransientFailure(
                f"the mail relay {where} does not support what SMTP_TLS asks for: {exc}"
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            return TransientFailure(
                f"cannot reach the mail relay {where}: {type(exc).__name__}: {exc}"
            )
        return None

    async def _deliver(
        self, client: aiosmtplib.SMTP, message: EmailMessage, progress: _Progress
    ) -> SendResult:
        """The transaction (MAIL FROM, RCPT TO, DATA), its refusals classified."""
        where = f"{self.host}:{self.port}"
        try:
            return await self._transaction(client, message, progress)
        except SMTPRecipientsRefused as exc:
            return _recipients_refused(exc)
        except aiosmtplib.SMTPSenderRefused as exc:
            return TransientFailure(f"the mail relay refused the sender: {_reply(exc)}")
        except aiosmtplib.SMTPDataError as exc:
            if is_permanent_reply(exc.code):
                return PermanentFailure(f"the mail relay refused the message: {_reply(exc)}")
            return TransientFailure(f"the mail relay deferred the message: {_reply(exc)}")
        except SMTPResponseException as exc:
            if 400 <= exc.code <= 499:
                return TransientFailure(f"the mail relay deferred the message: {_reply(exc)}")
            return TransientFailure(f"unexpected reply from the mail relay: {_reply(exc)}")
        except aiosmtplib.SMTPTimeoutError:
            return TransientFailure(f"timed out talking to the mail relay {where}")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return TransientFailure(
                f"lost the connection to the mail relay {where}: {type(exc).__name__}"
            )

    async def _transaction(
        self, client: aiosmtplib.SMTP, message: EmailMessage, progress: _Progress
    ) -> SendResult:
        """MAIL, RCPT, DATA by hand (what `send_message` does), so that a connection lost
        before the relay had the message (safe to retry) is told apart from one lost after
        (the outcome is unknown)."""
        sender = extract_sender(message)
        recipients = extract_recipients(message)
        if sender is None or not recipients:
            return PermanentFailure("the email has no sender or no recipient")
        options = ["BODY=8BITMIME"] if client.supports_extension("8BITMIME") else []
        flat = flatten_message(message, cte_type="8bit" if options else "7bit")
        await client.mail(sender, options=options)
        refused = []
        for recipient in recipients:
            try:
                await client.rcpt(recipient)
            except SMTPRecipientRefused as exc:
                refused.append(exc)
        if refused:
            raise SMTPRecipientsRefused(refused)
        start = await client.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        return await self._data(client, flat, progress)

    async def _data(self, client: aiosmtplib.SMTP, flat: bytes, progress: _Progress) -> SendResult:
        """After 354: the message on its way. From here a cut connection means the relay may
        have it."""
        protocol = client.protocol
        if protocol is None:
            return TransientFailure("lost the connection to the mail relay before the message")
        progress.handed_over = True
        try:
            protocol.write(_dot_stuffed(flat))
            reply = await protocol.read_response(timeout=self.timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError):
            client.close()
            return OutcomeUnknown(LOST_AFTER_DATA)
        if reply.code == 250:
            return Delivered()
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


@dataclass
class _Progress:
    """How far one attempt got: `handed_over` once the relay said 354 and the message left."""

    handed_over: bool = False


def _recipients_refused(exc: SMTPRecipientsRefused) -> SendResult:
    codes = [r.code for r in exc.recipients]
    text = "; ".join(_reply(r) for r in exc.recipients)
    if codes and all(is_permanent_reply(c) for c in codes):
        return PermanentFailure(f"the mail relay refused the recipient: {text}")
    return TransientFailure(f"the mail relay deferred the recipient: {text}")


def _dot_stuffed(message: bytes) -> bytes:
    """CRLF line endings, leading dots doubled, and the terminating dot line (RFC 5321)."""
    lines = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body + b"\r\n.\r\n"


async def _close(client: aiosmtplib.SMTP) -> None:
    """QUIT politely; whatever happens now does not change the outcome."""
    if client.is_connected:
        try:
            await client.quit(timeout=2)
        except Exception:  # the 250 (or the failure) is what counts
            client.close()
