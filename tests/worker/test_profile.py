"""`baton profile` measures this machine (the engine alone and through a `baton up` stack) and
writes a baton-profile/v1 file `baton plan` can read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_profile_writes_a_plannable_profile(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton_worker.cli",
            "profile",
            "--threads",
            "1",
            "--prompt-tokens",
            "32,512",
            "--batches",
            "1,16",
            "--contexts",
            "64",
            "--kv-backends",
            "grpc",
            "--kv-tokens",
            "64,512",
            "--repeats",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    prof = json.loads(out.read_text())
    assert prof["format"] == "baton-profile/v1"
    assert prof["model"]["kv_bytes_per_token"] == 4 * 2 * 8 * 32 * 4  # builtin://tiny, float32
    pre = {r["prompt_tokens"]: r["seconds"] for r in prof["prefill"]}
    assert 0 < pre[32] < pre[512]  # a 16x longer prompt takes longer
    dec = {r["batch"]: r["step_seconds"] for r in prof["decode"]}
    # Served steps carry a per-token cost of their own, so 16 streams may step about as fast as
    # one; but batching must pay: 16 streams deliver more tokens per second than one.
    assert 0 < dec[1] and 0 < dec[16] < 16 * dec[1]
    kv = {r["tokens"]: r["seconds"] for r in prof["kv_transfer"]}
    assert set(kv) == {64, 512} and 0 < kv[64] < kv[512]
    assert all(prof["sources"][k] for k in ("prefill", "decode", "kv_transfer", "router"))
    # Measured through a baton up stack: the router's share of a request is not free.
    assert 0 < prof["overheads"]["router_s"] < 1.0
    # And `baton plan` reads what `baton profile` wrote.
    from baton_operator.planning.profile import load_profile

    assert load_profile(out).overheads.router_s == prof["overheads"]["router_s"]
