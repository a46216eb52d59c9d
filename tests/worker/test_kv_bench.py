"""`baton bench kv --json` between two real processes prints one JSON object with verified results."""

from __future__ import annotations

import json
import subprocess
import sys


def test_kv_bench_json_small_sizes() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton_worker.cli",
            "bench",
            "kv",
            "--json",
            "--sizes",
            "1,4",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # exactly one JSON document on stdout
    rows = out["results"]
    assert {(r["backend"], r["bytes"]) for r in rows} == {
        (b, n << 20) for b in ("nixl", "grpc", "memcpy") for n in (1, 4)
    }
    for r in rows:
        assert r["gbps"] > 0 and r["verified"] is True, r
    assert out["metadata"]["agent_first_contact_ms"] > 0


def test_kv_bench_refuses_bad_sizes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "baton_worker.cli", "bench", "kv", "--sizes", "big"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--sizes" in proc.stderr
