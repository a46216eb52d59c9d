"""`baton worker` processes: /health and /metrics, graceful drain on SIGTERM, bad flags."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
from baton_worker.rpc import pb2
from kv_worker_procs import WorkerProc, generate, running
from polling import wait_until

PROMPT = list(range(10, 40))


def http_get(worker: WorkerProc, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{worker.metrics}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def pair() -> dict[str, WorkerProc]:
    procs = {
        "prefill": WorkerProc("prefill", "--kv-backend", "grpc", "--kv-blocks", "32"),
        "decode": WorkerProc("decode", "--kv-backend", "grpc", "--kv-blocks", "300", "--drain-grace-s", "30"),
        "short": WorkerProc("decode", "--kv-backend", "grpc", "--kv-blocks", "300", "--drain-grace-s", "1"),
    }
    with running(procs):
        yield procs


def test_server_health_and_metrics(pair: dict[str, WorkerProc]) -> None:
    prefill, decode = pair["prefill"], pair["decode"]
    for w in (prefill, decode):
        status, body = http_get(w, "/health")
        assert status == 200 and '"ready": true' in body
        h = w.health()
        assert h.role == w.role and h.ready and not h.draining
        assert h.total_blocks == h.free_blocks > 0 and h.model == "builtin://tiny" and h.max_model_len > 0
    rid = f"m-{uuid.uuid4().hex[:6]}"
    sp = pb2.SamplingParams(max_tokens=4)
    pre = prefill.prefill_stub().Prefill(
        pb2.PrefillRequest(request_id=rid, prompt_token_ids=PROMPT, sampling=sp), timeout=30
    )
    generate(decode, rid, PROMPT, sp, pre)
    _, text = http_get(decode, "/metrics")
    for needle in (
        'baton_worker_queue_depth{role="decode"}',
        'baton_worker_running{role="decode"}',
        'baton_worker_kv_blocks{role="decode",state="free"} 300.0',
        'baton_worker_kv_block_usage{role="decode"}',
        'baton_worker_kv_transfer_bytes_total{backend="grpc",role="decode"}',
        'baton_worker_kv_transfer_seconds_count{backend="grpc",role="decode"} 1.0',
        'baton_worker_requests_total{outcome="length",role="decode"} 1.0',
    ):
        assert needle in text, needle
    _, text = http_get(prefill, "/metrics")
    assert 'baton_worker_requests_total{outcome="ok",role="prefill"} 1.0' in text
    assert 'baton_worker_kv_freed{reason="release",role="prefill"} 1.0' in text


def _long_generate(worker: WorkerProc, max_tokens: int, out: dict) -> threading.Thread:
    def run() -> None:
        sp = pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        try:
            out["tokens"], out["chunks"] = generate(
                worker, f"long-{uuid.uuid4().hex[:6]}", PROMPT, sp, timeout=120
            )
        except grpc.RpcError as exc:
            out["error"] = exc

    th = threading.Thread(target=run)
    th.start()
    wait_until(lambda: worker.health().running == 1, timeout=30, what="the request to run", interval=0.02)
    return th


def test_server_sigterm_drains_running_requests(pair: dict[str, WorkerProc]) -> None:
    decode = pair["decode"]
    out: dict = {}
    th = _long_generate(decode, 150, out)
    decode.proc.send_signal(15)
    wait_until(
        lambda: http_get(decode, "/health")[0] == 503, timeout=5, what="readiness to drop", interval=0.02
    )
    assert "draining" in http_get(decode, "/health")[1]
    h = decode.health()
    assert h.draining and not h.ready
    with pytest.raises(grpc.RpcError) as info:
        generate(decode, "refused", PROMPT, pb2.SamplingParams(max_tokens=2))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in info.value.details()
    th.join(timeout=90)
    assert "error" not in out, out.get("error")
    assert len(out["tokens"]) == 150 and out["chunks"][-1].finish_reason == "length"
    assert decode.proc.wait(timeout=30) == 0


def test_server_drain_grace_over_aborts_the_rest(pair: dict[str, WorkerProc]) -> None:
    short = pair["short"]
    out: dict = {}
    th = _long_generate(short, 1900, out)
    t0 = time.monotonic()
    short.proc.send_signal(15)
    th.join(timeout=60)
    assert not th.is_alive()
    assert "error" not in out, out.get("error")
    assert out["chunks"][-1].finish_reason == "abort"
    assert short.proc.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 20


def test_server_bad_flags_name_the_flag() -> None:
    for args, flag in (
        (["--kv-blocks", "0"], "--kv-blocks"),
        (["--tensor-parallel-size", "3"], "--tensor-parallel-size"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "baton_worker.cli", "worker", "--role", "decode", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and flag in proc.stderr, proc.stderr
