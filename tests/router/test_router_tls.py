"""Mutual TLS on a real `baton up` stack: certificates rotated while requests stream, as the kubelet
rotates a mounted Secret (a new directory, then a ``..data`` symlink swap), in the order the
operator follows for a new CA (old+new CA in ca.crt, then the certificate from the new CA, then the
new CA alone). No request fails, is retried or loses a token; afterwards a restarted worker, which
trusts only the new CA, is reached by the router and by the decode worker with the new
certificate. And `baton up --tls`: a throwaway CA, removed at exit."""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from baton_worker.pki import issue_pool, new_leaf, pool_identity, write_dir
from baton_worker.rpc import pb2, pb2_grpc
from polling import wait_until
from router_stack import MODEL, LocalStack

pytestmark = pytest.mark.timeout(900)

N = 12
MAX_TOKENS = 64
DAY = dt.timedelta(days=1)
NAME = pool_identity("router-test", "default")
NOW = dt.datetime.now(dt.UTC)
CA1, LEAF1 = issue_pool(NAME, 30 * DAY, 120 * DAY, NOW)
CA2 = issue_pool(NAME, 30 * DAY, 120 * DAY, NOW)[0]
LEAF2 = new_leaf(NAME, CA2, NOW - dt.timedelta(minutes=5), NOW + 30 * DAY)
# The operator's order for a new CA; each step is one swap of the directory.
PHASES = ((CA1.cert + CA2.cert, LEAF1), (CA1.cert + CA2.cert, LEAF2), (CA2.cert, LEAF2))


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    write_dir(str(d), CA1.cert, LEAF1)
    return d


@pytest.fixture(scope="module")
def stack(stack_factory, tls_dir: Path):  # type: ignore[no-untyped-def]
    # Every prompt prefilled remotely and pulled over PullKv: every gRPC path of a request
    # (router -> prefill, router -> decode, decode -> prefill) runs over TLS.
    return stack_factory(
        "--tls-dir",
        str(tls_dir),
        "--local-prefill-max-tokens",
        "0",
        "--kv-backend",
        "grpc",
    )


def _metrics(stack: LocalStack) -> str:
    return httpx.get(stack.url.removesuffix("/v1") + "/metrics", timeout=10).text


def _counter(text: str, pattern: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{pattern}\S* (\S+)$", text, re.M))


def _stream(url: str, prompt: str) -> tuple[str, int]:
    c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
    text, n = "", 0
    for chunk in c.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ):
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            n = chunk.usage.completion_tokens
    return text, n


def _burst(url: str, prompts: list[str]) -> list[tuple[str, int] | BaseException]:
    results: list[tuple[str, int] | BaseException] = [RuntimeError("not run")] * len(prompts)

    def one(i: int) -> None:
        try:
            results[i] = _stream(url, prompts[i])
        except BaseException as e:  # reported by the test, not lost in a thread
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_plaintext_client_is_refused_by_the_workers(stack: LocalStack) -> None:
    for name in ("prefill-0", "decode-0"):
        with grpc.insecure_channel(stack.grpc[name]) as ch:
            with pytest.raises(grpc.RpcError) as err:
                pb2_grpc.DecodeWorkerStub(ch).Health(pb2.HealthRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rotation_while_streaming_loses_nothing(stack: LocalStack, tls_dir: Path) -> None:
    prompts = [f"stream {i}: the router rotates its certificate while tokens flow, and" for i in range(N)]
    t0 = time.monotonic()
    baseline = _burst(stack.url, prompts)
    took = time.monotonic() - t0
    assert all(isinstance(r, tuple) and r[1] == MAX_TOKENS for r in baseline), baseline
    before = _metrics(stack)

    done = threading.Event()
    during: list = []
    burst = threading.Thread(target=lambda: (during.extend(_burst(stack.url, prompts)), done.set()))
    burst.start()
    swapped_while_running = []
    for bundle, leaf in PHASES:
        time.sleep(took * 0.2)  # the router polls every 0.5 s: each step is seen on its own
        swapped_while_running.append(not done.is_set())
        write_dir(str(tls_dir), bundle, leaf)
    burst.join()
    assert swapped_while_running == [True] * len(PHASES), "the burst ended before the rotation did"
    for i, (got, want) in enumerate(zip(during, baseline, strict=True)):
        assert got == want, f"request {i}: {got!r} != {want!r}"
    after = _metrics(stack)
    for metric in ("baton_request_errors_total", "baton_retries_total", "baton_decode_resumes_total"):
        assert _counter(after, metric) == _counter(before, metric), metric
    output = stack.output()
    assert "TLS files changed: new channels" in output  # the router made new channels
    assert output.count("baton tls: reloaded") >= 3

    # A restarted prefill worker trusts only the new CA: the router (Prefill) and the decode
    # worker (PullKv, Release) reach it only with the new certificate.
    placed = _counter(after, 'baton_prefill_placement_total{decision="remote"')
    stack.kill("prefill-0")
    wait_until(
        lambda: stack.output().count("[prefill-0] baton worker ready") == 2,
        timeout=180,
        what="prefill-0 restarted",
        interval=0.5,
    )

    def prefill_usable() -> bool:
        health = httpx.get(stack.url.removesuffix("/v1") + "/health", timeout=5).json()
        return int((health.get("prefill") or {}).get("usable") or 0) == 1

    wait_until(prefill_usable, timeout=180, what="the restarted prefill worker to be usable", interval=0.5)
    assert _stream(stack.url, prompts[0]) == baseline[0]
    placed_after = _counter(_metrics(stack), 'baton_prefill_placement_total{decision="remote"')
    assert placed_after == placed + 1


def test_baton_up_tls_makes_a_throwaway_ca_and_removes_it() -> None:
    stack = LocalStack("--tls", "--kv-backend", "grpc", "--local-prefill-max-tokens", "0")
    try:
        m = re.search(r"gRPC with mutual TLS \((\S+)\)", stack.output())
        assert m, stack.output()
        directory = m.group(1)
        assert sorted(os.listdir(directory))[-3:] == ["ca.crt", "tls.crt", "tls.key"]
        text, n = _stream(stack.url, "Hello over TLS")
        assert n == MAX_TOKENS and text
        assert re.search(r"baton worker ready role=prefill .* tls=on", stack.output())
    finally:
        stack.stop()
    assert not os.path.exists(directory)
