"""The email of a code: rendered from the packaged Jinja2 templates (plain text and HTML)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from .. import domain
from ..domain import CodeEmail, InvalidRecipient

__all__ = ["CodeEmail", "EmailRenderer", "InvalidRecipient"]


class EmailRenderer:
    """The `Composer` port: the packaged templates, plain text and HTML."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self._env = Environment(
            loader=PackageLoader("notifier", "templates"),
            autoescape=select_autoescape(
                enabled_extensions=("html", "html.j2"), default_for_string=True, default=False
            ),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(self, mail: CodeEmail, now: datetime) -> tuple[str, str]:
        """(plain text, HTML)."""
        expires = mail.expires_at.astimezone(UTC)
        context = {
            "code": domain.display_code(mail.code),
            "groups": domain.code_groups(mail.code),
            "scanner_name": domain.one_line(mail.scanner_name) or mail.serial_number,
            "serial_number": domain.one_line(mail.serial_number),
            "expires_at": expires.strftime("%A %d %B %Y at %H:%M UTC"),
            "remaining": domain.describe_remaining(expires - now),
        }
        text = self._env.get_template("code.txt.j2").render(context)
        html = self._env.get_template("code.html.j2").render(context)
        return text, html

    def compose(self, mail: CodeEmail, now: datetime) -> EmailMessage:
        text, html = self.render(mail, now)
        name, address = parseaddr(mail.recipient_email)
        if not address or "@" not in address:
            raise InvalidRecipient("the recipient address is not a valid email address")
        try:
            username, domain_part = address.rsplit("@", 1)
            to = Address(display_name=domain.one_line(name), username=username, domain=domain_part)
        except (ValueError, IndexError):
            raise InvalidRecipient("the recipient address is not a valid email address") from None
        scanner = domain.one_line(mail.scanner_name) or domain.one_line(mail.serial_number)
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = (
            f"Authorisation code for {scanner} ({domain.one_line(mail.serial_number)})"
        )
        message["Date"] = format_datetime(now.astimezone(UTC))
        message["Message-ID"] = domain.message_id(mail.notification_id)
        message["Auto-Submitted"] = "auto-generated"
        message["X-Auto-Response-Suppress"] = "All"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message
