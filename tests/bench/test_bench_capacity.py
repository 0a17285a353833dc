"""The capacity search of bench/run.py (`issue_capacity`, `redeem_capacity`, `capacity_floor`)
and its whole-system CPU reading, without infrastructure: `make bench` runs them for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def run() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import run as bench_run

        yield bench_run
    finally:
        sys.path.remove(str(BENCH))


def search(run: Any, capacity: float, profile: str = "quick") -> tuple[dict[str, Any], list[int]]:
    bench = run.Bench.__new__(run.Bench)
    bench.p = run.PROFILES[profile]
    tried: list[int] = []

    def step(rate: float) -> dict[str, Any]:
        tried.append(int(rate))
        served = rate <= capacity
        return {
            "p99_ms": 10.0 if served else 500.0,
            "statuses": {201: 10},
            "cpu_ms_per_request": {"postgresql": 1.0},
            "served": served,
        }

    return bench._search("test", step), tried


def test_the_search_doubles_then_bisects_to_the_highest_rate_served(run: Any) -> None:
    found, tried = search(run, capacity=700)
    assert tried[:5] == [50, 100, 200, 400, 800]
    assert tried[5:] == [600, 700]  # quick: two bisections
    assert found["capacity_per_s"] == 700
    assert found["first_refused_per_s"] == 800
    assert found["at_capacity"]["rate"] == 700


def test_the_search_goes_down_when_not_even_the_first_rate_is_served(run: Any) -> None:
    found, tried = search(run, capacity=20)
    assert tried == [50, 25, 12, 19, 22]  # halving, then the bisections between 12 and 25
    assert found["capacity_per_s"] == 19


def test_the_search_reports_nothing_served_as_zero(run: Any) -> None:
    found, _ = search(run, capacity=0)
    assert found["capacity_per_s"] == 0 and found["at_capacity"] is None


def test_a_process_tree_counts_its_children_cpu(run: Any) -> None:
    # A child that burns CPU, then a grandchild that does and exits: both in the root's tree.
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 0.3: pass')"
    code = (
        f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {burn!r}]); "
        f"{burn}; print('done', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        spent = run.tree_cpu_seconds({"root": proc.pid, "self": os.getpid()})
        assert spent["root"] >= 0.55  # 0.3 s each, clock ticks of 10 ms
        assert spent["self"] > 0
    finally:
        proc.kill()
        proc.wait()
