"""`baton bench kv --json` between two real processes prints one JSON object with verified results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# No host memory copies faster than this (a copy reads and writes every byte; the fastest
# servers' DRAM is a few hundred GB/s in all): a figure above it means the bench timed wrong.
HOST_COPY_CEILING_GBPS = 1000


def bench_kv(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`baton bench kv ARGS` in a process of its own (``env`` added to ours)."""
    cmd = [sys.executable, "-m", "baton_worker.cli", "bench", "kv", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_kv_bench_json_small_sizes() -> None:
    proc = bench_kv("--json", "--sizes", "1,4", "--repeats", "1", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # exactly one JSON document on stdout
    rows = out["results"]
    assert {(r["backend"], r["bytes"]) for r in rows} == {
        (b, n << 20) for b in ("nixl", "grpc", "memcpy") for n in (1, 4)
    }
    for r in rows:
        # A copy between two host buffers cannot beat the memory: a figure above this is a timing bug.
        assert 0 < r["gbps"] < HOST_COPY_CEILING_GBPS and r["verified"] is True, r
    meta = out["metadata"]
    assert meta["agent_first_contact_ms"] > 0
    # The reference runs on as many threads as the NIXL reader has lanes; below 2 x 8 MiB a READ
    # is not split, so both ran on one at these sizes.
    assert meta["memcpy_threads"] == meta["nixl_read_lanes"] >= 1
    memcpy = {r["bytes"]: r for r in rows if r["backend"] == "memcpy"}
    for r in rows:
        if r["backend"] == "memcpy":
            assert r["lanes"] == 1 and 0 < r["gbps_1thread"] < HOST_COPY_CEILING_GBPS, r
            continue
        ref = memcpy[r["bytes"]]
        assert r["ratio_to_memcpy"] == pytest.approx(r["gbps"] / ref["gbps"], abs=2e-3), (r, ref)
        assert r["ratio_to_memcpy_1thread"] == pytest.approx(r["gbps"] / ref["gbps_1thread"], abs=2e-3)
    assert {r["lanes"] for r in rows if r["backend"] == "nixl"} == {1}


def test_kv_bench_reference_runs_on_the_nixl_lanes() -> None:
    """At 32 MiB a READ is split over two lanes: the reference copies the same runs on two threads
    and reports the single-thread copy beside it."""
    proc = bench_kv(
        "--json", "--sizes", "32", "--backends", "nixl,memcpy", "--repeats", "1",
        env={"BATON_KV_READ_LANES": "2"}, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    rows = {r["backend"]: r for r in out["results"]}
    assert out["metadata"]["nixl_read_lanes"] == out["metadata"]["memcpy_threads"] == 2
    assert rows["nixl"]["lanes"] == rows["memcpy"]["lanes"] == 2
    assert 0 < rows["memcpy"]["gbps_1thread"] < HOST_COPY_CEILING_GBPS


def test_kv_bench_fails_when_nixl_was_asked_for_and_does_not_load(tmp_path: Path) -> None:
    """Every NIXL module hidden: the bench says so (exit 1, the reason in the JSON) instead of
    measuring the other backends and leaving nixl's rows out; without nixl it runs."""
    (tmp_path / "nixl").mkdir()
    for module in ("nixl_cu12.py", "nixl_cu13.py", "nixl/__init__.py"):
        (tmp_path / module).write_text('raise ImportError("hidden by the test")\n')
    env = {"PYTHONPATH": str(tmp_path)}
    proc = bench_kv("--json", "--sizes", "1", "--repeats", "1", env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert "results" not in out and "nixl" in out["error"] and "hidden by the test" in out["error"]
    assert "hidden by the test" in proc.stderr
    proc = bench_kv("--sizes", "1", "--backends", "nixl", "--ucx-tls", "default", env=env, timeout=120)
    assert proc.returncode == 1 and "did not load" in proc.stderr, proc.stderr[-3000:]
    proc = bench_kv(
        "--json", "--sizes", "1", "--backends", "grpc,memcpy", "--repeats", "1", env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {r["backend"] for r in json.loads(proc.stdout)["results"]} == {"grpc", "memcpy"}


def test_kv_bench_reports_the_handle_round_trip_beside_its_grpc_floor() -> None:
    """At 512 MiB the bench also times the handle round trip (four kinds of call in turns) against
    the transfer: every figure is there, positive, and consistent with the others."""
    proc = bench_kv("--json", "--sizes", "512", "--backends", "grpc", "--repeats", "1", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(proc.stdout)["metadata"]
    for key in (
        "handle_rtt_ms",
        "handle_rtt_ms_unary",
        "prefill_call_without_handle_ms",
        "grpc_floor_rtt_ms",
        "transfer_512mib_ms_grpc",
    ):
        assert meta[key] > 0, (key, meta)
    assert meta["handle_rtt_samples"] == 60
    # What the handle adds is the round trip minus the control, signed (noise may make it < 0).
    marginal = meta["handle_rtt_ms"] - meta["prefill_call_without_handle_ms"]
    assert meta["handle_marginal_ms"] == pytest.approx(marginal, abs=2e-3)
    # The bare echo of the same bytes skips protobuf, both frameworks and the handle: it is cheaper
    # than the call it stands for, or it does not measure a floor.
    assert meta["grpc_floor_rtt_ms"] < meta["handle_rtt_ms"], meta
    assert 512 * 2**20 / (meta["transfer_512mib_ms_grpc"] / 1000) / 1e9 < HOST_COPY_CEILING_GBPS
    fraction = meta["grpc_floor_rtt_ms"] / meta["transfer_512mib_ms_grpc"]
    assert abs(meta["grpc_floor_fraction_of_512mib_grpc"] - fraction) < 1e-3
    assert 0 < meta["handle_rtt_fraction_of_512mib_grpc"] < 1


def test_kv_bench_refuses_bad_sizes() -> None:
    proc = bench_kv("--sizes", "big", timeout=60)
    assert proc.returncode == 2 and "--sizes" in proc.stderr


def test_kv_bench_ucx_sweep_reports_each_setting_and_survives_a_broken_one() -> None:
    """`--ucx-tls` runs the bench once per UCX_TLS value; one UCX refuses (shared memory only:
    no peer failure handler) is reported with UCX's reason, and the others still give rows."""
    proc = bench_kv(
        *("--json", "--sizes", "1", "--backends", "nixl,memcpy", "--repeats", "1"),
        *("--ucx-tls", "default;sm,self;tcp,self+UCX_RNDV_THRESH=8192", "--setting-timeout-s", "120"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assigned = "tcp,self+UCX_RNDV_THRESH=8192"
    assert {(r["backend"], r["ucx_tls"]) for r in out["results"]} == {
        ("nixl", "default"),
        ("memcpy", "default"),
        ("nixl", assigned),
        ("memcpy", assigned),
    }
    assert all(r["verified"] for r in out["results"])
    by_setting = {run["ucx_tls"]: run for run in out["sweep"]}
    assert by_setting["default"]["device"] == "cpu" and "metadata" in by_setting["default"]
    assert "UCX_TLS" not in by_setting["default"]["ucx_env"]
    assert (
        by_setting[assigned]["ucx_env"] | {"UCX_TLS": "tcp,self", "UCX_RNDV_THRESH": "8192"}
        == (by_setting[assigned]["ucx_env"])
    )
    assert "no peer failure handler" in by_setting["sm,self"]["error"]


def test_kv_bench_refuses_bad_device_and_ucx_settings() -> None:
    for args, word in ((["--device", "tpu"], "--device"), (["--ucx-tls", "default;;tcp"], "--ucx-tls")):
        proc = bench_kv("--sizes", "1", *args, timeout=60)
        assert proc.returncode == 2 and word in proc.stderr, proc.stderr
