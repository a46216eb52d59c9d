"""The router pairs a decode worker only with prefill workers whose KV it can use.

Real processes: two prefill workers whose KV layouts differ (block size 8 against the decode
worker's 16, as during a rolling update that changes the model or its KV settings), one decode
worker, one router; requests through the official openai client. Workers report their KV
compatibility hash on Health, so no request is prefilled where its KV would be refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from kv_worker_procs import WorkerProc, running
from polling import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "router"))
from router_stack import MODEL, start_router  # noqa: E402

PROMPT = "the quick brown fox jumps over the lazy dog " * 4  # well past local_prefill_max_tokens


def counter(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus counter (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}_total\{{(.*)\}} (\S+)", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, WorkerProc]]:
    procs = {
        "prefill-same": WorkerProc("prefill", "--kv-blocks", "64"),
        "prefill-other": WorkerProc("prefill", "--kv-blocks", "128", "--block-size", "8"),
        "decode": WorkerProc("decode", "--kv-blocks", "64"),
    }
    with running(procs):
        yield procs


def test_workers_report_their_kv_compat_hash(workers: dict[str, WorkerProc]) -> None:
    same, other, decode = (
        workers[k].health().kv_compat_hash for k in ("prefill-same", "prefill-other", "decode")
    )
    assert len(same) == 64 and same == decode
    assert other and other != decode


@pytest.mark.parametrize(
    ("prefill", "placed", "reason"),
    [
        # One of two prefill workers can hand its KV over: every request goes there, even
        # though the other one is as idle (the pick would otherwise be a tie on load).
        (("prefill-same", "prefill-other"), "remote", "disaggregated"),
        # None can: the decode worker prefills locally at once, nothing is prefilled in vain.
        (("prefill-other",), "local", "kv_incompatible"),
    ],
)
def test_router_sends_prefills_only_where_decode_can_use_the_kv(
    workers: dict[str, WorkerProc], prefill: tuple[str, ...], placed: str, reason: str
) -> None:
    # The compatible worker is named localhost:PORT, which sorts after 127.0.0.1:PORT: on a tie
    # of load the router would pick the other one, so only the pairing sends prefills there.
    addresses = [
        workers[k].address.replace("127.0.0.1:", "localhost:") if k == "prefill-same" else workers[k].address
        for k in prefill
    ]
    proc, base = start_router(
        "--prefill",
        ",".join(addresses),
        "--decode",
        workers["decode"].address,
        "--health-interval",
        "0.1",
    )
    try:

        def metrics() -> str:
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
                return r.read().decode()

        # Every worker's Health has been read once the router counts them all usable.
        wait_until(
            lambda: _usable(base) == (len(prefill), 1),
            timeout=60,
            what="the router to see every worker usable",
        )
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for _ in range(6):
            out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
            assert out.choices[0].finish_reason in ("length", "stop")
        text = metrics()
        assert counter(text, "baton_prefill_placement", decision=placed, reason=reason) == 6, text
        assert counter(text, "baton_retries", role="prefill", reason="kv_handle_refused") == 0, text
        if reason == "kv_incompatible":
            # The router says why once, naming the field that differs.
            said = [line for line in proc.lines if "different KV layouts" in line]  # type: ignore[attr-defined]
            assert len(said) == 1 and "block_size: 8 != 16" in said[0], said
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _usable(base: str) -> tuple[int, int]:
    """(prefill, decode) workers the router counts usable, from its /health."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # 503 until a decode worker is usable: same body
        body = json.load(e)
    except OSError:
        return (-1, -1)
    return body["prefill"]["usable"], body["decode"]["usable"]
