"""wrk (Debian's package) as the load generator of the HTTP figures: a separate C process.

`upload.lua` posts a 1 KiB JSON body to /v1/scans, cycling through the bearer credentials of
a file (one per line), and prints its summary as one JSON line. With BENCH_DELAY_MS each
connection waits a random time of that mean (uniform, 0 to twice it) before each request: an
(approximately) fixed rate of requests spread in time, for the latency figures (wrk measures
from the request's write to its response, so the delay is not counted in the latency).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BODY_BYTES = 1024
_MARK = "BENCH_JSON "

UPLOAD_LUA = r"""
local requests = {}
local n = 0
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

function init(args)
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  local template = f:read("*a")
  f:close()
  local k = 0
  for line in io.lines(os.getenv("BENCH_CREDENTIALS")) do
    if #line > 0 then
      k = k + 1
      local body = template:gsub("@@SCAN@ID@@@", string.format("bench-%06d", k % 1000000))
      requests[k] = wrk.format("POST", "/v1/scans", {
        ["Authorization"] = "Bearer " .. line,
        ["Content-Type"] = "application/json",
      }, body)
    end
  end
  n = math.random(#requests)
end

function request()
  n = n % #requests + 1
  return requests[n]
end

if delay_ms > 0 then
  -- Uniform between 0 and twice the mean: connections that started together drift apart,
  -- so requests arrive spread over time rather than in one burst per period.
  function delay()
    return math.random(0, 2 * delay_ms)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "non_2xx": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def body_template() -> bytes:
    """A JSON object of exactly BODY_BYTES bytes whose scan_id wrk fills in per credential."""
    head = '{"scan_id": "@@SCAN@ID@@@", "model": "LVS", "volume_m3": 12.5, "points": "'
    tail = '"}'
    pad = BODY_BYTES - len(head) - len(tail)
    return (head + "x" * pad + tail).encode()


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    errors: int  # connect, read, write, timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rate(self) -> float:
        """2xx answers per second."""
        return (self.requests - self.non_2xx) / self.seconds if self.seconds else 0.0


def ensure_wrk() -> str:
    """wrk's path; installed from Debian's packages when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("wrk is required: apt-get install wrk (Debian) or put it on PATH")


class Wrk:
    def __init__(self, workdir: Path) -> None:
        self.binary = ensure_wrk()
        self.dir = Path(tempfile.mkdtemp(prefix="wrk-", dir=workdir))
        self.script = self.dir / "upload.lua"
        self.script.write_text(UPLOAD_LUA)
        self.body = self.dir / "body.json"
        self.body.write_bytes(body_template())

    def credentials_file(self, name: str, credentials: list[str]) -> Path:
        path = self.dir / f"{name}.txt"
        path.write_text("\n".join(credentials) + "\n")
        return path

    def run(
        self,
        url: str,
        credentials: Path,
        *,
        connections: int,
        seconds: float,
        delay_ms: int = 0,
        threads: int = 1,
    ) -> WrkResult:
        env = {
            **os.environ,
            "BENCH_BODY": str(self.body),
            "BENCH_CREDENTIALS": str(credentials),
            "BENCH_DELAY_MS": str(delay_ms),
        }
        cmd = [
            self.binary,
            f"-t{threads}",
            f"-c{max(connections, threads)}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(self.script),
            url.rstrip("/") + "/v1/scans",
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith(_MARK)), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
        data = json.loads(line[len(_MARK) :])
        return WrkResult(
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            non_2xx=data["non_2xx"],
            errors=data["connect_errors"]
            + data["read_errors"]
            + data["write_errors"]
            + data["timeouts"],
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
        )
