"""No lost requests: a prefill worker and a decode worker are killed (SIGKILL) in the middle of
a burst of 48 requests on a real `baton up` stack (2 prefill + 2 decode workers); every request
completes, and every output equals the one the same request gets without failures."""

from __future__ import annotations

import asyncio
import re
import signal

import httpx
import openai
import pytest
from polling import wait_until
from router_stack import MODEL

pytestmark = pytest.mark.timeout(600)

N = 48
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def stack(stack_factory):  # type: ignore[no-untyped-def]
    # Every prompt is prefilled remotely, so the prefill worker's death matters; no restarts:
    # the survivors must carry everything.
    # Stopped at the end with SIGINT, as Ctrl-C would (the API tests' stack with SIGTERM).
    return stack_factory(
        "--prefill",
        "2",
        "--decode",
        "2",
        "--local-prefill-max-tokens",
        "0",
        "--no-restart",
        stop_signal=signal.SIGINT,
    )


def _metrics(stack) -> str:  # type: ignore[no-untyped-def]
    return httpx.get(stack.url.removesuffix("/v1") + "/metrics", timeout=10).text


def _counter(text: str, pattern: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{pattern}\S* (\S+)$", text, re.M))


async def _burst(url: str, prompts: list[str], on_progress=None) -> list[tuple[str, int, tuple]]:  # type: ignore[no-untyped-def]
    c = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
    received = [0]

    async def one(i: int, p: str) -> tuple[str, int, tuple]:
        # Half greedy, half seeded sampling; half streamed, half not (with logprobs: they too
        # must survive a failover, one per token).
        kw = {"temperature": 0} if i % 2 else {"temperature": 0.7, "seed": 1000 + i}
        if i % 4 < 2:
            r = await c.completions.create(
                model=MODEL,
                prompt=p,
                max_tokens=MAX_TOKENS,
                extra_body={"ignore_eos": True},
                logprobs=1,
                **kw,
            )
            lps = r.choices[0].logprobs
            assert len(lps.token_logprobs) == r.usage.completion_tokens
            return r.choices[0].text, r.usage.completion_tokens, tuple(lps.token_logprobs)
        text, n = "", 0
        stream = await c.completions.create(
            model=MODEL,
            prompt=p,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
            **kw,
        )
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                received[0] += 1
                if on_progress is not None:
                    await on_progress(received[0])
            if chunk.usage:
                n = chunk.usage.completion_tokens
        return text, n, ()

    try:
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    finally:
        await c.close()


def test_router_failover_kill_prefill_and_decode_during_burst_loses_nothing(stack) -> None:  # type: ignore[no-untyped-def]
    prompts = [
        f"request {i}: the prefill pool hands the cache to the decode pool, and then" for i in range(N)
    ]
    baseline = asyncio.run(_burst(stack.url, prompts))
    assert all(n == MAX_TOKENS for _, n, _ in baseline)
    before = _metrics(stack)
    killed: list[str] = []

    async def kill_during_burst(received: int) -> None:
        # The prefill worker dies at the first token, while most requests still wait for their
        # prefill (on a quiet machine all 48 prefills take well under a second, so a later kill
        # can find nothing in flight); the decode worker dies later, in the middle of streams
        # that already sent tokens.
        for name, at in (("prefill-0", 1), ("decode-0", 150)):
            if received >= at and name not in killed:
                killed.append(name)
                stack.kill(name)

    during = asyncio.run(_burst(stack.url, prompts, kill_during_burst))
    assert killed == ["prefill-0", "decode-0"], f"the burst ended before both kill points: {killed}"
    assert len(during) == N
    for i, (got, want) in enumerate(zip(during, baseline, strict=True)):
        assert got[:2] == want[:2], f"request {i} differs after failover"
        # The same tokens from the same model: logprobs equal up to batching's float noise.
        assert len(got[2]) == len(want[2]) and all(
            abs(a - b) < 1e-4 for a, b in zip(got[2], want[2], strict=True)
        ), i
    after = _metrics(stack)
    assert _counter(after, 'baton_retries_total{reason="[a-z_]+",role="prefill"}') > _counter(
        before, 'baton_retries_total{reason="[a-z_]+",role="prefill"}'
    )
    assert _counter(after, "baton_decode_resumes_total") > _counter(before, "baton_decode_resumes_total")
    # The dead workers are ejected: the router reports them as such.
    wait_until(
        lambda: 'baton_workers{role="decode",state="ejected"} 1.0' in _metrics(stack),
        timeout=10,
        what="decode ejection",
    )
    assert 'baton_workers{role="prefill",state="ejected"} 1.0' in _metrics(stack)
    # And serving goes on with the survivors.
    assert [r[:2] for r in asyncio.run(_burst(stack.url, prompts[:4]))] == [r[:2] for r in baseline[:4]]
