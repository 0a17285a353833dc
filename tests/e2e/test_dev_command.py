"""`scanner-auth dev` (what `make run` starts): everything ready within 60 s, and Ctrl-C leaves
no process behind. Also: `serve` refuses to start without its secrets, naming the variable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

READY = re.compile(r"scanner-auth dev: ready")


def _ports_free(ports: list[int]) -> bool:
    used = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    return not used.intersection(ports)


@pytest.mark.parametrize(
    ("kafka", "banner"),
    [(None, "Tansu, in memory"), ("apache", "Apache Kafka 4.")],
    ids=["default-tansu", "apache-kafka"],
)
def test_dev_brings_everything_up_and_ctrl_c_leaves_nothing_behind(
    private_tmp: Any, kafka: str | None, banner: str
) -> None:
    ports = [8001, 8002, 8003, 8004]
    if not _ports_free(ports):
        pytest.skip("the contract's default ports are taken on this machine")
    data_dir = private_tmp("dev") / "dev"
    choice = ["--kafka", kafka] if kafka else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner_auth", "dev", "--data-dir", str(data_dir), *choice],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    started = time.monotonic()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if READY.search(line):
                break
            if time.monotonic() - started > 90:
                break
        took = time.monotonic() - started
        text = "".join(output)
        assert READY.search(text), text[-3000:]
        assert took < 60, f"ready after {took:.1f}s"
        for port in ports:
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        for name in ("ADMIN_JWT", "USER_JWT", "SUPPORT_JWT"):
            assert f"export {name}=ey" in text
        assert banner in text  # it says which broker it runs
        # every process the dev command started, found before stopping it
        tree = psutil.Process(proc.pid).children(recursive=True)
        started_pids = {p.pid for p in tree}
        postgres = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(data_dir) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "the embedded PostgreSQL was found"
        started_pids |= {p.pid for p in postgres}
        assert len(started_pids) >= 6  # four services, the broker, PostgreSQL (and its workers)

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    rest = proc.stdout.read() if proc.stdout else ""
    assert "everything stopped" in rest
    deadline = time.monotonic() + 10
    alive = [pid for pid in started_pids if psutil.pid_exists(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [
            pid
            for pid in started_pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
    assert not alive, f"left behind: {alive}"
    assert _ports_free(ports)


@pytest.mark.parametrize(
    ("service", "variable"),
    [("token-issuer", "TOKEN_PEPPER"), ("redeemer", "TOKEN_PEPPER"), ("notifier", "SEALING_KEY")],
)
def test_serve_refuses_to_start_without_its_secret(service: str, variable: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"TOKEN_PEPPER", "SEALING_KEY", "CODE_ENCRYPTION_KEY"}
    }
    env.update({"AUTH_PUBLIC_KEY_PEM": "x", "AUTH_ISSUER": "i", "AUTH_AUDIENCE": "a"})
    result = subprocess.run(
        [sys.executable, "-m", "scanner_auth", "serve", service],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert variable in result.stderr


def test_serve_refuses_a_published_default_secret() -> None:
    env = dict(os.environ, TOKEN_PEPPER="please-change-me-to-a-long-random-secret-value")
    result = subprocess.run(
        [sys.executable, "-m", "scanner_auth", "serve", "redeemer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "TOKEN_PEPPER" in result.stderr and "published default" in result.stderr
    assert "please-change-me" not in result.stderr
