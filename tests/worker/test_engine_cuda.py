"""GPU-only checks of the engine (skipped where torch sees no CUDA device): the CUDA decode path,
with captured graphs, gives HF generate()'s greedy tokens."""

from __future__ import annotations

import random

import pytest
import torch
from baton_worker.engine import DecodeEngine, EngineRequest, KvBlockPool, SamplingParams, load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_engine_cuda_graphs_greedy_equals_hf_generate() -> None:
    model = load_model("builtin://tiny", dtype="float32", device="cuda")
    pool = KvBlockPool.for_model(model, num_blocks=512)
    engine = DecodeEngine(model, pool, max_batch_size=64)
    assert engine._graphs is not None
    rng = random.Random(7)
    prompts = [
        tuple(rng.randrange(3, model.shape.vocab_size) for _ in range(rng.randrange(1, 60)))
        for _ in range(20)
    ]
    tokens: dict[str, list[int]] = {}
    for step in range(400):
        if step < len(prompts):
            engine.add_request(EngineRequest(f"g{step}", prompts[step], SamplingParams(max_tokens=12)))
        elif not engine.has_work():
            break
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert not engine._graphs.failed and engine._graphs._graphs
    for i, p in enumerate(prompts):
        ref = model.hf_model.generate(
            torch.tensor([p], device="cuda"), max_new_tokens=12, do_sample=False, pad_token_id=0
        )
        assert tokens[f"g{i}"] == ref[0, len(p) :].tolist(), f"request g{i}"
