"""Token sampling: greedy, temperature, top-k, top-p, with a generator per (seed, output index).

Seeding every output index separately makes a token independent of where it is sampled: the
prefill worker samples index 0, the decode worker the rest, and after a failover another worker
continues at index k with the same stream (docs/internals.md, "Sampling determinism").
Non-greedy sampling always runs on the CPU so that CPU and CUDA workers draw the same numbers.
"""

from __future__ import annotations

import secrets

import torch

from baton_worker.engine.types import SamplingParams

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def token_seed(seed: int, index: int) -> int:
    """The generator seed for output index ``index`` of a request seeded with ``seed``."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ index) & ((1 << 63) - 1)


def token_generator(seed: int, index: int) -> torch.Generator:
    """A fresh CPU generator for output index ``index``."""
    return torch.Generator(device="cpu").manual_seed(token_seed(seed, index))


def random_seed() -> int:
    """A seed for a request that carries none."""
    return secrets.randbits(63)


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p for one row of float32 logits (non-greedy)."""
    scaled = logits.float() / params.temperature
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
    return torch.softmax(scaled, dim=-1)


def sample_one(logits: torch.Tensor, params: SamplingParams, seed: int, index: int) -> int:
    """Sample output index ``index`` from one row of logits."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = filtered_probs(logits.detach().to("cpu"), params)
    return int(torch.multinomial(probs, 1, generator=token_generator(seed, index)))


def sample_batch(
    logits: torch.Tensor, params: list[SamplingParams], seeds: list[int], indices: list[int]
) -> list[int]:
    """Sample one token per row of ``logits`` [B, vocab]; greedy rows are one batched argmax."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    out: list[int] = []
    cpu_logits: torch.Tensor | None = None
    for row, p in enumerate(params):
        if p.greedy:
            out.append(int(greedy[row]))
            continue
        if cpu_logits is None:
            cpu_logits = logits.detach().to("cpu")
        probs = filtered_probs(cpu_logits[row], p)
        out.append(int(torch.multinomial(probs, 1, generator=token_generator(seeds[row], indices[row]))))
    return out
