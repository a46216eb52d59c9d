"""Pure pieces of the engine: request validation, sampling, the block pool, finish rules, detokenizer."""

from __future__ import annotations

import functools
import threading

import pytest
import torch
from baton_worker.engine.builtin import build_tokenizer
from baton_worker.engine.kv_pool import KvBlockPool
from baton_worker.engine.sampling import filtered_probs, sample_batch, sample_one, token_seed
from baton_worker.engine.sequence import finish_reason_for
from baton_worker.engine.types import EngineRequest, InvalidRequestError, SamplingParams
from baton_worker.text import IncrementalDetokenizer

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"temperature": -0.1}, "sampling.temperature"),
        ({"temperature": float("nan")}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"top_k": -1}, "sampling.top_k"),
        ({"seed": -3}, "sampling.seed"),
        ({"stop": ("",)}, "sampling.stop"),
    ],
)
def test_engine_sampling_params_reject_bad_fields(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert err.value.field == field
    assert field in str(err.value)


def test_engine_request_validation() -> None:
    with pytest.raises(InvalidRequestError, match="request_id"):
        EngineRequest("", (1,))
    with pytest.raises(InvalidRequestError, match="prompt_token_ids"):
        EngineRequest("r", ())
    req = EngineRequest("r", [1, 2], SamplingParams(stop=["x"], stop_token_ids=[3]), resume_token_ids=[4])
    assert req.prompt_token_ids == (1, 2) and req.prefix_len == 3 and req.sampling.stop == ("x",)


def test_engine_token_seed_is_deterministic_and_distinct() -> None:
    assert token_seed(7, 0) == token_seed(7, 0)
    seeds = {token_seed(s, i) for s in range(20) for i in range(50)}
    assert len(seeds) == 1000
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    "params, allowed",
    [
        (SamplingParams(temperature=1.0, top_k=1), {3}),
        (SamplingParams(temperature=1.0, top_k=2), {3, 1}),
        (SamplingParams(temperature=1.0, top_p=0.5), {3}),  # top token alone has 0.64
        (SamplingParams(temperature=1.0, top_p=0.7), {3, 1}),
        (SamplingParams(temperature=1.0), {0, 1, 2, 3}),
    ],
)
def test_engine_filtered_probs_keep_the_right_tokens(params: SamplingParams, allowed: set[int]) -> None:
    logits = torch.log(torch.tensor([0.01, 0.25, 0.10, 0.64]))
    probs = filtered_probs(logits, params)
    assert {i for i, p in enumerate(probs.tolist()) if p > 0} == allowed
    assert abs(float(probs.sum()) - 1.0) < 1e-5


def test_engine_sampling_same_seed_same_index_same_token() -> None:
    logits = torch.randn(2, 500, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=1.5)
    draws = [sample_one(logits[0], p, seed=42, index=i) for i in range(30)]
    assert draws == [sample_one(logits[0], p, seed=42, index=i) for i in range(30)]
    assert len(set(draws)) > 5  # different indices really draw differently
    greedy = SamplingParams()
    batch = sample_batch(logits, [p, greedy], seeds=[42, 1], indices=[4, 0])
    assert batch == [draws[4], int(torch.argmax(logits[1]))]


def _pool(**kw) -> KvBlockPool:
    args = dict(num_layers=2, num_kv_heads=4, head_dim=8, block_size=4, num_blocks=6)
    args.update(kw)
    return KvBlockPool(**args)


def test_engine_pool_allocates_all_or_nothing_and_rejects_double_free() -> None:
    pool = _pool()
    a = pool.allocate(4)
    assert a is not None and len(set(a)) == 4 and pool.num_free == 2
    assert pool.allocate(3) is None and pool.num_free == 2
    pool.free(a[:2])
    with pytest.raises(ValueError, match="not allocated"):
        pool.free([a[0]])
    with pytest.raises(ValueError, match="not allocated"):
        pool.free([a[2], a[2]])
    assert pool.num_free == 4  # the failed frees changed nothing
    assert [pool.blocks_needed(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_engine_pool_layout_is_lnkhbd_and_sized_from_memory() -> None:
    pool = _pool(dtype="bfloat16")
    s = pool.storage
    assert s.shape == (2, 6, 2, 4, 4, 8) and s.is_contiguous() and s.dtype == torch.bfloat16
    # internals.md: offset of (l, b, s, h0) = ((((l*N + b)*2 + s)*H + h0) * block_size * head_dim)
    layer, b, kv, h = 1, 3, 1, 2
    expect = (((layer * 6 + b) * 2 + kv) * 4 + h) * 4 * 8
    assert s[layer, b, kv, h].data_ptr() - s.data_ptr() == expect * s.element_size()
    per_block = 2 * 2 * 4 * 4 * 8 * 2
    assert pool.bytes_per_block == per_block
    assert _pool(num_blocks=None, memory_bytes=per_block * 10 + 5, dtype="bfloat16").num_blocks == 10
    with pytest.raises(ValueError, match="memory_bytes"):
        _pool(num_blocks=None, memory_bytes=per_block - 1, dtype="bfloat16")
    with pytest.raises(ValueError, match="exactly one"):
        _pool(memory_bytes=10**6)
    with pytest.raises(ValueError, match="dtype"):
        _pool(dtype="int8")


def test_engine_pool_blocking_allocation_waits_for_free() -> None:
    pool = _pool()
    held = pool.allocate(6)
    got: list = []
    t = threading.Thread(target=lambda: got.append(pool.allocate_blocking(2, timeout=10, num_tokens=7)))
    t.start()
    for _ in range(1000):
        if pool.usage().waiters == 1:
            break
        threading.Event().wait(0.005)
    assert pool.usage().waiting_tokens == 7
    pool.free(held[:2])
    t.join(10)
    assert got and sorted(got[0]) == sorted(held[:2]) and pool.usage().waiters == 0
    assert pool.allocate_blocking(1, timeout=0.01) is None
    with pytest.raises(ValueError):
        pool.allocate_blocking(7, timeout=0.01)


EOS = (1,)


@pytest.mark.parametrize(
    "token, params, n_out, total, hit, expected",
    [
        (5, SamplingParams(max_tokens=4), 1, 10, False, None),
        (5, SamplingParams(max_tokens=4), 4, 10, False, "length"),
        (1, SamplingParams(max_tokens=4), 1, 10, False, "stop"),
        (1, SamplingParams(max_tokens=4, ignore_eos=True), 1, 10, False, None),
        (9, SamplingParams(max_tokens=4, stop_token_ids=(9,)), 4, 10, False, "stop"),
        (5, SamplingParams(max_tokens=4), 2, 10, True, "stop"),
        (5, SamplingParams(max_tokens=40), 2, 32, False, "length"),  # hit max_model_len
    ],
)
def test_engine_finish_reason_rules(token, params, n_out, total, hit, expected) -> None:
    assert finish_reason_for(token, params, EOS, n_out, total, 32, hit) == expected


@functools.cache
def _tok():
    return build_tokenizer()


def test_engine_detokenizer_streams_the_same_text_as_a_full_decode() -> None:
    tok = _tok()
    text = "Hello, world! The quick brown fox — naïve café 日本語 tokens."
    ids = tok(text)["input_ids"]
    prompt = tok("Say:")["input_ids"]
    d = IncrementalDetokenizer(tok, prompt)
    pieces = [d.push(t)[0] for t in ids]
    assert "".join(pieces) + d.flush() == text
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("stop", ["fox", "quick brown", "Hello", "s."])
def test_engine_detokenizer_stops_before_stop_string(stop: str) -> None:
    tok = _tok()
    text = "Hello, world! The quick brown fox jumps over the dogs."
    d = IncrementalDetokenizer(tok, (), stop=(stop, "never-there"))
    sent, hit = "", False
    for t in tok(text)["input_ids"]:
        piece, hit = d.push(t)
        sent += piece
        assert stop not in sent
        if hit:
            break
    assert hit and sent == text[: text.index(stop)]
