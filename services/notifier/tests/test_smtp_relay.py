"""The SMTP adapter against real aiosmtpd servers: SMTP_TLS (none, starttls, tls) and
credentials honoured, and every kind of failure classified as transient or permanent."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from notifier.adapters.email import CodeEmail, EmailRenderer
from notifier.adapters.smtp import SmtpRelay
from notifier.domain import Delivered, PermanentFailure, TransientFailure
from scanner_auth_shared.infra import free_port

pytestmark = pytest.mark.integration

CODE = "YD20-66YF-H255"


class Keeper:
    """Keeps what it receives; refuses recipients listed in `refuse` with their reply."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.refuse = refuse or {}

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"notifier"
        and auth_data.password == b"s3cret-relay-password"
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA bundle) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "relay.pem", folder / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


@contextlib.contextmanager
def _serve(handler: Keeper, **kwargs: Any) -> Iterator[Controller]:
    server = Controller(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _message(to: str = "ada@example.test") -> EmailMessage:
    mail = CodeEmail(
        notification_id="n-1",
        recipient_email=to,
        scanner_name="Bay 3",
        serial_number="LVS-1",
        code=CODE,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )
    return EmailRenderer("MyScanner <no-reply@myscanner.test>").compose(
        mail, dt.datetime.now(dt.UTC)
    )


def _relay(port: int, **kwargs: Any) -> SmtpRelay:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "timeout": 5.0,
        "helo_hostname": "notifier.test",
    }
    values.update(kwargs)
    return SmtpRelay(**values)


async def test_starttls_with_credentials(certificate: tuple[Path, Path]) -> None:
    handler = Keeper()
    with _serve(
        handler,
        tls_context=_server_context(certificate),
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
        auth_required=True,
    ) as server:
        relay = _relay(
            server.port,
            tls="starttls",
            username="notifier",
            password="s3cret-relay-password",
            ca_file=str(certificate[0]),
        )
        assert await relay.send(_message()) == Delivered()
        # Wrong password: the relay's setup is broken, not this email. Retried later.
        wrong = _relay(
            server.port,
            tls="starttls",
            username="notifier",
            password="nope-nope",
            ca_file=str(certificate[0]),
        )
        result = await wrong.send(_message())
        assert isinstance(result, TransientFailure) and "535" in result.error
        # No STARTTLS asked for, and the relay insists on it: transient too.
        plain = _relay(server.port, tls="none")
        assert isinstance(await plain.send(_message()), TransientFailure)
    assert [m[0] for m in handler.messages] == [["ada@example.test"]]


async def test_implicit_tls(certificate: tuple[Path, Path]) -> None:
    handler = Keeper()
    with _serve(handler, ssl_context=_server_context(certificate)) as server:
        relay = _relay(server.port, tls="tls", ca_file=str(certificate[0]))
        assert await relay.send(_message()) == Delivered()
        # An untrusted certificate is not accepted (and the email is retried later).
        untrusted = _relay(server.port, tls="tls")
        assert isinstance(await untrusted.send(_message()), TransientFailure)
    assert len(handler.messages) == 1 and CODE.encode() in handler.messages[0][1]


async def test_starttls_required_but_not_offered_is_transient() -> None:
    with _serve(Keeper()) as server:
        result = await _relay(server.port, tls="starttls").send(_message())
        assert isinstance(result, TransientFailure)


async def test_recipient_refusals_are_permanent_for_5xx_and_transient_for_4xx() -> None:
    handler = Keeper(
        refuse={
            "gone@example.test": "550 5.1.1 No such user",
            "full@example.test": "452 4.2.2 Mailbox full",
        }
    )
    with _serve(handler) as server:
        relay = _relay(server.port)
        gone = await relay.send(_message("gone@example.test"))
        assert isinstance(gone, PermanentFailure) and "550 5.1.1" in gone.error
        full = await relay.send(_message("full@example.test"))
        assert isinstance(full, TransientFailure) and "452" in full.error
    assert handler.messages == []


async def test_nothing_listening_is_transient_and_errors_never_carry_the_code() -> None:
    result = await _relay(free_port()).send(_message())
    assert isinstance(result, TransientFailure)
    assert "cannot reach the mail relay" in result.error
    assert CODE not in result.error
