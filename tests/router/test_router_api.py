"""The OpenAI API of a real `baton up` stack (1 prefill + 1 decode worker), driven with the
official `openai` client: completions and chat, streamed and not, 64 concurrent requests equal to
single-process generation, malformed requests, client disconnects, overload answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json

import grpc
import httpx
import openai
import pytest
from baton_worker.rpc import pb2, pb2_grpc
from polling import wait_until
from router_stack import MODEL, reference_generate, start_router, tokenizer

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(stack_factory):  # type: ignore[no-untyped-def]
    # Prompts of at most 4 tokens prefill on the decode worker, longer ones on the prefill worker.
    return stack_factory("--prefill", "1", "--decode", "1", "--local-prefill-max-tokens", "4", "--no-restart")


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=stack.url, api_key="unused", max_retries=0, timeout=120)


def test_router_up_ready_and_lists_the_model(stack, client) -> None:  # type: ignore[no-untyped-def]
    assert stack.ready_s < 120, f"baton up took {stack.ready_s:.1f}s to be ready"
    assert {"prefill-0", "decode-0", "router"} <= set(stack.pids)
    # Listed under its short name; requests may use it or the source (the tests use the source).
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens == 2
    health = httpx.get(stack.url.removesuffix("/v1") + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["decode"]["usable"] == 1 and health["prefill"]["usable"] == 1


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "top_p": 0.9, "seed": 1234}])
def test_router_completion_streamed_equals_not_streamed(client, sampling) -> None:  # type: ignore[no-untyped-def]
    prompt = "The router sends the prompt to a prefill worker and"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, **sampling)
    assert full.object == "text_completion" and full.choices[0].finish_reason in ("length", "stop")
    assert full.usage.prompt_tokens == len(tokenizer().encode(prompt))
    assert 1 <= full.usage.completion_tokens <= 24
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
            **sampling,
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason


def test_router_chat_streamed_equals_not_streamed(client) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi to the decode pool"},
    ]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    msg = full.choices[0].message
    assert full.object == "chat.completion" and msg.role == "assistant" and isinstance(msg.content, str)
    tok = tokenizer()
    from baton_worker.router.params import ChatMessage

    expected_prompt = tok.encode_chat([ChatMessage(m["role"], m["content"]) for m in messages])
    assert full.usage.prompt_tokens == len(expected_prompt)
    [ref] = reference_generate([expected_prompt], max_tokens=20, temperature=0.0)
    assert msg.content == tok.decode(ref) and full.usage.completion_tokens == len(ref)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=20, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_router_64_concurrent_requests_equal_single_process_generation(stack) -> None:  # type: ignore[no-untyped-def]
    tok = tokenizer()
    words = "prefill decode router cache block token stream batch handle worker".split()
    prompts = [" ".join(words[(i * 7 + k) % len(words)] for k in range(1 + i % 23)) for i in range(64)]
    ids = [tok.encode(p) for p in prompts]
    assert any(len(p) <= 4 for p in ids) and any(len(p) > 4 for p in ids)  # both placements happen
    greedy = reference_generate(ids, max_tokens=16, temperature=0.0)
    sampled = reference_generate(ids, max_tokens=16, temperature=0.8, seed=99)

    async def run() -> list:
        c = openai.AsyncOpenAI(base_url=stack.url, api_key="unused", max_retries=0, timeout=300)
        jobs = [
            c.completions.create(
                model=MODEL,
                prompt=p,
                max_tokens=16,
                **({"temperature": 0} if i % 2 else {"temperature": 0.8, "seed": 99}),
            )
            for i, p in enumerate(prompts)
        ]
        try:
            return await asyncio.gather(*jobs)
        finally:
            await c.close()

    results = asyncio.run(run())
    for i, r in enumerate(results):
        ref = greedy[i] if i % 2 else sampled[i]
        assert r.choices[0].text == tok.decode(ref), f"request {i} ({prompts[i]!r})"
        assert r.usage.completion_tokens == len(ref), f"request {i}"
    metrics = httpx.get(stack.url.removesuffix("/v1") + "/metrics", timeout=10).text
    assert 'baton_prefill_placement_total{decision="remote",reason="disaggregated"}' in metrics
    assert 'baton_prefill_placement_total{decision="local",reason="short_prompt"}' in metrics
    for name in ('baton_queue_depth{role="prefill"}', 'baton_queue_depth{role="decode"}'):
        assert name in metrics
    assert _metric(metrics, "baton_kv_transfer_bytes_count") > 0
    # Every remote prefill went over the worker's long-lived PrefillStream, none unary.
    assert _metric(metrics, 'baton_prefill_calls_total{transport="stream"}') >= 1
    assert 'baton_prefill_calls_total{transport="unary"}' not in metrics
    assert _metric(metrics, "baton_time_to_first_token_seconds_count") >= 64


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


MALFORMED = [
    # (path, raw body, status, param, code)
    ("/completions", b"{not json", 400, None, "invalid_json"),
    ("/completions", b'["a list"]', 400, None, "invalid_json"),
    ("/completions", {"model": "nope", "prompt": "x"}, 404, "model", "model_not_found"),
    ("/completions", {"model": MODEL, "prompt": "x", "n": 17}, 400, "n", "invalid_value"),
    ("/completions", {"model": MODEL, "prompt": "x", "temperature": 7}, 400, "temperature", "invalid_value"),
    ("/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("/completions", {"model": MODEL, "prompt": "x", "max_tokens": "9"}, 400, "max_tokens", "invalid_type"),
    (
        "/completions",
        {"model": MODEL, "prompt": "x", "suffix": "!"},
        400,
        "suffix",
        "unsupported_parameter",
    ),
    ("/completions", {"model": MODEL, "prompt": "x", "bogus": 1}, 400, "bogus", "unknown_parameter"),
    ("/completions", {"model": MODEL}, 400, "prompt", "missing_required_parameter"),
    ("/completions", {"model": MODEL, "prompt": [5] * 3000}, 400, "prompt", "context_length_exceeded"),
    (
        "/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": 5000},
        400,
        "max_tokens",
        "context_length_exceeded",
    ),
    ("/completions", {"model": MODEL, "prompt": [10**9]}, 400, "prompt", "invalid_value"),
    ("/chat/completions", {"model": MODEL}, 400, "messages", "missing_required_parameter"),
    (
        "/chat/completions",
        {"model": MODEL, "messages": [{"role": "x", "content": "y"}]},
        400,
        "messages[0].role",
        "invalid_value",
    ),
    (
        "/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "y"}], "tools": [{}]},
        400,
        "tools",
        "unsupported_parameter",
    ),
    (
        "/chat/completions",
        {"model": MODEL, "messages": [{"role": "user"}]},
        400,
        "messages[0].content",
        "missing_required_parameter",
    ),
    (
        "/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "y"}],
            "response_format": {"type": "json_object"},
        },
        400,
        "response_format",
        "unsupported_parameter",
    ),
]


def test_router_malformed_requests_get_openai_errors_and_serving_goes_on(stack, client) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for path, body, status, param, code in MALFORMED:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (path, body, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
            assert (err["param"], err["code"]) == (param, code), (body, err)
    # The official client maps them to its typed errors.
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=MODEL, prompt="x", n=30)
    assert ei.value.body["param"] == "n"
    ok = client.completions.create(model=MODEL, prompt="still serving", max_tokens=3, temperature=0)
    assert ok.usage.completion_tokens == 3


def _health(address: str, role: str) -> pb2.HealthResponse:
    stub_cls = pb2_grpc.PrefillWorkerStub if role == "prefill" else pb2_grpc.DecodeWorkerStub
    with grpc.insecure_channel(address) as ch:
        return stub_cls(ch).Health(pb2.HealthRequest(), timeout=5)


def test_router_client_disconnect_cancels_work_on_both_workers(stack) -> None:  # type: ignore[no-untyped-def]
    body = {
        "model": MODEL,
        "prompt": "a long story about prefill and decode workers " * 3,
        "max_tokens": 1500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(timeout=60) as http, http.stream("POST", stack.url + "/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data: "):
                seen += 1
                if seen >= 3:
                    break
        d = _health(stack.grpc["decode-0"], "decode")
        assert d.running + d.queue_depth >= 1  # the request is on the decode worker now
    # The connection is closed: both workers must drop the request long before 1500 tokens.
    wait_until(
        lambda: (
            (h := _health(stack.grpc["decode-0"], "decode")).running == 0 and h.free_blocks == h.total_blocks
        ),
        timeout=15,
        what="the decode worker to cancel the request and free its blocks",
    )
    wait_until(
        lambda: (h := _health(stack.grpc["prefill-0"], "prefill")).free_blocks == h.total_blocks,
        timeout=15,
        what="the prefill worker to hold no blocks",
    )


def test_router_overload_answers_429_and_503_with_retry_after() -> None:
    # A router allowed one request at a time whose only decode worker does not exist: the first
    # request waits for a decode worker (then gets 503); meanwhile a second one gets 429.
    proc, base = start_router("--decode", "127.0.0.1:9", "--worker-wait", "10", "--max-inflight", "1")
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, base + "/v1/completions", json=body, timeout=60)
            # While it waits it is the decode role's queue: the signal that scales decode from zero.
            wait_until(
                lambda: (
                    'baton_queue_depth{role="decode"} 1.0' in httpx.get(base + "/metrics", timeout=5).text
                ),
                timeout=30,
                what="the first request to wait for a decode worker",
            )
            r = httpx.post(base + "/v1/completions", json=body, timeout=30)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
            assert r.json()["error"]["type"] == "rate_limit_error"
            r = first.result(timeout=60)
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert "decode" in r.json()["error"]["message"]
        # Not ready without a decode worker, but alive (a liveness probe must not restart it).
        assert httpx.get(base + "/health", timeout=5).status_code == 503
        assert httpx.get(base + "/livez", timeout=5).status_code == 200
        # Waiting requests count in the autoscaling signal while they wait; none is left now.
        assert 'baton_queue_depth{role="decode"} 0.0' in httpx.get(base + "/metrics", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
