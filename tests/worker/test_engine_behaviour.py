"""Decode engine behaviour on the tiny model: seeded sampling, resume, cancellation, admission
when blocks run out, over-context refusal, stop strings, and the background loop's streams."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest
import torch
from baton_worker.engine import (
    DecodeEngine,
    EngineLoop,
    EngineRequest,
    KvBlockPool,
    Prefilled,
    PrefillRunner,
    RequestTooLongError,
    SamplingParams,
    load_model,
)
from baton_worker.engine.prefill import PoolExhaustedError
from polling import wait_until

torch.set_num_threads(1)

SAMPLED = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, top_k=50, seed=1234)


@functools.cache
def _model():
    return load_model("builtin://tiny")


def _prompt(n: int, start: int = 5) -> tuple[int, ...]:
    return tuple(start + (i * 7) % 700 for i in range(n))


def _collect(result: dict[str, dict], outputs) -> dict[str, dict]:
    for out in outputs:
        r = result.setdefault(out.request_id, {"tokens": [], "text": "", "reason": None})
        r["tokens"] += out.new_token_ids
        r["text"] += out.text_delta
        if out.finished:
            r["reason"] = out.finish_reason
    return result


def _drain(
    engine: DecodeEngine, result: dict[str, dict] | None = None, max_steps: int = 1000
) -> dict[str, dict]:
    result = {} if result is None else result
    for _ in range(max_steps):
        if not engine.has_work():
            return result
        _collect(result, engine.step())
    raise AssertionError("engine did not finish")


def _engine(num_blocks: int = 256, max_batch_size: int = 64, block_size: int = 16) -> DecodeEngine:
    model = _model()
    return DecodeEngine(
        model, KvBlockPool.for_model(model, num_blocks=num_blocks, block_size=block_size), max_batch_size
    )


def test_engine_sampled_same_seed_same_tokens_in_any_batch() -> None:
    alone = _engine()
    alone.add_request(EngineRequest("a", _prompt(9), SAMPLED))
    ref = _drain(alone)["a"]["tokens"]
    crowded = _engine()
    for i in range(10):
        crowded.add_request(
            EngineRequest(f"o{i}", _prompt(3 + 5 * i, 11), SamplingParams(max_tokens=8, temperature=1.0))
        )
    _collect({}, crowded.step())
    crowded.add_request(EngineRequest("a", _prompt(9), SAMPLED))
    assert _drain(crowded)["a"]["tokens"] == ref
    other_seed = _engine()
    other_seed.add_request(EngineRequest("b", _prompt(9), SamplingParams(**{**SAMPLED.__dict__, "seed": 99})))
    assert _drain(other_seed)["b"]["tokens"] != ref


def test_engine_sampled_disaggregated_and_failover_resume_continue_the_same_stream() -> None:
    model = _model()
    local = _engine()
    local.add_request(EngineRequest("a", _prompt(20), SAMPLED))
    ref = _drain(local)["a"]["tokens"]
    # Prefill on a prefill runner (samples index 0), decode elsewhere with Prefilled.
    pool = KvBlockPool.for_model(model, num_blocks=64)
    runner = PrefillRunner(model, pool)
    res = runner.prefill("a", _prompt(20), SAMPLED)
    assert res.first_token == ref[0]
    engine = DecodeEngine(model, pool)
    blocks = runner.held_blocks("a")
    runner._held.pop("a")  # same pool: hand the blocks over instead of copying them
    engine.add_request(
        EngineRequest("a", _prompt(20), SAMPLED, prefilled=Prefilled(blocks, 20, res.first_token))
    )
    assert _drain(engine)["a"]["tokens"] == ref
    # Failover: another worker resumes after 5 tokens the client already has.
    resumed = _engine()
    resumed.add_request(EngineRequest("a", _prompt(20), SAMPLED, resume_token_ids=tuple(ref[:5])))
    out = _drain(resumed)["a"]
    assert out["tokens"] == ref[5:]
    assert out["reason"] == "length"


def test_engine_cancellation_frees_blocks_at_once() -> None:
    engine = _engine(num_blocks=64, block_size=4)
    pool = engine.pool
    for i in range(3):
        engine.add_request(
            EngineRequest(f"c{i}", _prompt(10 + i), SamplingParams(max_tokens=200, ignore_eos=True))
        )
    for _ in range(3):
        engine.step()
    assert pool.num_free < pool.num_blocks
    held_before = pool.num_blocks - pool.num_free
    assert engine.abort("c1")
    assert pool.num_blocks - pool.num_free < held_before  # freed before abort returned
    assert not engine.abort("c1")
    outs = {o.request_id: o for o in engine.step()}
    assert outs["c1"].finished and outs["c1"].finish_reason == "abort"
    assert engine.abort("c0") and engine.abort("c2")
    assert pool.num_free == pool.num_blocks
    # A prefilled request aborted before it was admitted gives its blocks back too.
    blocks = pool.allocate(2)
    engine.add_request(EngineRequest("p", _prompt(6), SamplingParams(), prefilled=Prefilled(blocks, 6, 7)))
    assert engine.abort("p")
    assert pool.num_free == pool.num_blocks
    reasons = {o.request_id: o.finish_reason for o in engine.step()}
    assert reasons == {"c0": "abort", "c2": "abort", "p": "abort"}
    assert not engine.has_work()


def test_engine_out_of_blocks_requests_wait_then_complete() -> None:
    # 8 blocks of 4 tokens: each request needs ~5 blocks over its life, so they cannot all run.
    engine = _engine(num_blocks=8, block_size=4)
    for i in range(4):
        engine.add_request(EngineRequest(f"w{i}", _prompt(12, 20 + i), SamplingParams(max_tokens=8)))
    first = _collect({}, engine.step())
    stats = engine.stats()
    assert stats.waiting >= 1 and stats.running >= 1
    assert stats.queued_prompt_tokens == 12 * stats.waiting
    out = _drain(engine, first)
    assert sorted(out) == ["w0", "w1", "w2", "w3"]
    assert all(r["reason"] in ("stop", "length") for r in out.values())
    for i in range(4):
        alone = _engine()
        alone.add_request(EngineRequest("x", _prompt(12, 20 + i), SamplingParams(max_tokens=8)))
        assert _drain(alone)["x"]["tokens"] == out[f"w{i}"]["tokens"]
    assert engine.pool.num_free == engine.pool.num_blocks


def test_engine_prefill_waits_for_blocks_then_runs() -> None:
    model = _model()
    pool = KvBlockPool.for_model(model, num_blocks=4, block_size=4)
    runner = PrefillRunner(model, pool)
    runner.prefill("first", _prompt(14), SamplingParams())  # holds all 4 blocks
    with pytest.raises(PoolExhaustedError):
        runner.prefill("starved", _prompt(4), SamplingParams(), block_wait_s=0.05)
    result: dict = {}
    waiter = threading.Thread(
        target=lambda: result.update(r=runner.prefill("second", _prompt(8), SamplingParams()))
    )
    waiter.start()
    wait_until(
        lambda: runner.stats().waiting == 1, timeout=10, what="the second prefill to wait", interval=0.01
    )
    assert runner.stats().queued_prompt_tokens == 8
    assert runner.release("first")
    waiter.join(10)
    assert result["r"].num_tokens == 8 and len(result["r"].block_ids) == 2


def test_engine_refuses_request_longer_than_context() -> None:
    engine = _engine()
    limit = engine.model.max_model_len
    with pytest.raises(RequestTooLongError) as err:
        engine.add_request(EngineRequest("big", _prompt(limit), SamplingParams()))
    assert err.value.field == "prompt_token_ids" and str(limit - 1) in str(err.value)
    small_pool = _engine(num_blocks=2, block_size=4)
    with pytest.raises(RequestTooLongError, match="KV pool"):
        small_pool.add_request(EngineRequest("big", _prompt(8), SamplingParams()))
    with pytest.raises(RequestTooLongError):
        PrefillRunner(engine.model, engine.pool).prefill("big", _prompt(limit), SamplingParams())
    assert not engine.has_work() and not small_pool.has_work()


def test_engine_stop_string_stop_token_and_length() -> None:
    engine = _engine()
    tok = _model().tokenizer
    prompt = tuple(tok("Once upon a time")["input_ids"])
    engine.add_request(EngineRequest("full", prompt, SamplingParams(max_tokens=16, ignore_eos=True)))
    full = _drain(engine)["full"]
    assert full["reason"] == "length" and len(full["tokens"]) == 16
    text = full["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop and stop in text
    engine.add_request(
        EngineRequest("s", prompt, SamplingParams(max_tokens=16, stop=(stop,), ignore_eos=True))
    )
    engine.add_request(
        EngineRequest(
            "t", prompt, SamplingParams(max_tokens=16, stop_token_ids=(full["tokens"][3],), ignore_eos=True)
        )
    )
    out = _drain(engine)
    assert out["s"]["reason"] == "stop" and out["s"]["text"] == text[: text.index(stop)]
    assert (
        out["t"]["reason"] == "stop"
        and out["t"]["tokens"] == full["tokens"][: full["tokens"].index(full["tokens"][3]) + 1]
    )


def test_engine_loop_streams_to_asyncio_and_aborts() -> None:
    engine = _engine()
    loop = EngineLoop(engine).start()
    try:

        async def main() -> tuple[list, list]:
            a = loop.submit(EngineRequest("a", _prompt(7), SamplingParams(max_tokens=6)))
            b = loop.submit(
                EngineRequest("b", _prompt(9), SamplingParams(max_tokens=10_000, ignore_eos=True))
            )
            with pytest.raises(RequestTooLongError):
                loop.submit(EngineRequest("c", _prompt(engine.model.max_model_len), SamplingParams()))
            got_a = [o async for o in a]
            first_b = await asyncio.wait_for(b.__anext__(), 10)
            assert await loop.abort_async("b")
            rest_b = [o async for o in b]
            return got_a, [first_b, *rest_b]

        got_a, got_b = asyncio.run(asyncio.wait_for(main(), 60))
        assert sum(len(o.new_token_ids) for o in got_a) <= 6 and got_a[-1].finished
        assert got_b[-1].finish_reason == "abort"
        assert engine.pool.num_free == engine.pool.num_blocks
    finally:
        loop.stop()


def test_engine_runs_in_bfloat16_and_float16() -> None:
    for dtype in ("bfloat16", "float16"):
        model = load_model("builtin://tiny", dtype=dtype)
        pool = KvBlockPool.for_model(model, num_blocks=32)
        assert pool.storage.dtype == model.dtype == getattr(torch, dtype)
        engine = DecodeEngine(model, pool)
        engine.add_request(EngineRequest("h", _prompt(10), SamplingParams(max_tokens=5, ignore_eos=True)))
        out = _drain(engine)["h"]
        assert len(out["tokens"]) == 5 and out["reason"] == "length"
        assert all(0 <= t < model.shape.vocab_size for t in out["tokens"])


def test_engine_bench_decode_cli_reports_json() -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton_worker.cli",
            "bench",
            "decode",
            "--json",
            "--batches",
            "1,2",
            "--context",
            "24",
            "--prompt-len",
            "16",
            "--steps",
            "3",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r["batch"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
    assert report["decode_ratio_64_to_1"] is None  # no batch 64 was asked for


def test_engine_prefill_batches_concurrent_callers() -> None:
    model = _model()
    single = PrefillRunner(model, KvBlockPool.for_model(model, num_blocks=64))
    expected = {i: single.prefill(f"s{i}", _prompt(5 + 9 * i, i), SAMPLED).first_token for i in range(6)}
    pool = KvBlockPool.for_model(model, num_blocks=64)
    batched = PrefillRunner(model, pool, max_batch_size=4)
    results: dict = {}
    threads = [
        threading.Thread(
            target=lambda i=i: results.update({i: batched.prefill(f"b{i}", _prompt(5 + 9 * i, i), SAMPLED)})
        )
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {i: r.first_token for i, r in results.items()} == expected
    blocks = [b for r in results.values() for b in r.block_ids]
    assert len(blocks) == len(set(blocks)) == pool.num_blocks - pool.num_free
    assert batched.stats().held_requests == 6
    for i in range(6):
        assert batched.release(f"b{i}")
    assert pool.num_free == pool.num_blocks
