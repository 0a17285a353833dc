"""What Apache Kafka costs the tests and the benchmarks on this machine: how long `ApacheKafka`
takes to start (formatting each node's storage, the JVMs, every broker registered, the contract's
topics created and their leaders elected) and the resident memory of its JVMs once started,
for one node and for a controller and three brokers, with the C1 compiler only (`fast_jit`,
the tests') and with the full JIT (the benchmarks'). Prints one JSON line; see bench/README.md.

    python bench/kafka_footprint.py --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from scanner_auth_shared.kafka_broker import ApacheKafka

MARK = "BENCH_JSON "


def once(brokers: int, fast_jit: bool) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="kafka-footprint-"))
    try:
        started = time.monotonic()
        kafka = ApacheKafka(root, brokers=brokers, fast_jit=fast_jit).start()
        took = time.monotonic() - started
        time.sleep(2)  # the JVMs' start-up garbage settles before memory is read
        memory = kafka.memory_mb()
        kafka.stop()
        return {"start_s": round(took, 2), "memory_mb": round(memory, 1)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    out: dict[str, Any] = {"load_average_at_start": os.getloadavg(), "shapes": {}}
    for brokers in (1, 3):
        for fast_jit in (True, False):
            runs = [once(brokers, fast_jit) for _ in range(args.runs)]
            shape = "1 node" if brokers == 1 else "a controller and 3 brokers"
            name = f"{shape}, {'C1 only' if fast_jit else 'full JIT'}"
            out["shapes"][name] = {
                "start_s": statistics.median(r["start_s"] for r in runs),
                "memory_mb": statistics.median(r["memory_mb"] for r in runs),
                "runs": runs,
            }
    out["load_average_at_end"] = os.getloadavg()
    print(MARK + json.dumps(out))


if __name__ == "__main__":
    main()
