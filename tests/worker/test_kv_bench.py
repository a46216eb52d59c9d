"""`baton bench kv --json` between two real processes prints one JSON object with verified results."""

from __future__ import annotations

import json
import subprocess
import sys


def bench_kv(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`baton bench kv ARGS` in a process of its own."""
    cmd = [sys.executable, "-m", "baton_worker.cli", "bench", "kv", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_kv_bench_json_small_sizes() -> None:
    proc = bench_kv("--json", "--sizes", "1,4", "--repeats", "1", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # exactly one JSON document on stdout
    rows = out["results"]
    assert {(r["backend"], r["bytes"]) for r in rows} == {
        (b, n << 20) for b in ("nixl", "grpc", "memcpy") for n in (1, 4)
    }
    for r in rows:
        assert r["gbps"] > 0 and r["verified"] is True, r
    assert out["metadata"]["agent_first_contact_ms"] > 0


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
    assert meta["handle_marginal_ms"] >= 0
    assert meta["grpc_floor_rtt_ms_best"] <= meta["grpc_floor_rtt_ms"]
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
