"""Token sampling: greedy, temperature, top-k, top-p, with a generator per (seed, output index).

Seeding every output index separately makes a token independent of where it is sampled: the
prefill worker samples index 0, the decode worker the rest, and after a failover another worker
continues at index k with the same stream (docs/internals.md, "Sampling determinism").
Non-greedy sampling always runs on the CPU so that CPU and CUDA workers draw the same numbers.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from baton_worker.engine.types import SamplingParams, TokenLogprob

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


@dataclass(frozen=True)
class Row:
    """What sampling one token of one request needs beyond its logits.

    ``tokens`` is the request's context so far: its ``prompt_len`` prompt tokens, then every
    output token (failover resume tokens included); the token sampled is output ``index``.
    """

    params: SamplingParams
    seed: int
    index: int
    tokens: Sequence[int]
    prompt_len: int
    eos_token_ids: tuple[int, ...] = ()


def processed_logits(logits: torch.Tensor, row: Row) -> torch.Tensor:
    """One row of float32 logits after the penalties and min_tokens of ``row.params`` (a copy).

    repetition_penalty as in transformers and vLLM (every token of prompt and output: positive
    logits divided, negative multiplied); presence and frequency as OpenAI defines them (output
    tokens only: ``- presence * [count > 0] - frequency * count``).
    """
    p = row.params
    out = logits.detach().float().clone()
    outputs = list(row.tokens[row.prompt_len :])
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.tokens)), dtype=torch.long, device=out.device)
        if seen.numel():
            vals = out[seen]
            out[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if outputs and (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0):
        counts = Counter(outputs)
        ids = torch.tensor(list(counts), dtype=torch.long, device=out.device)
        n = torch.tensor(list(counts.values()), dtype=torch.float32, device=out.device)
        out[ids] -= p.presence_penalty + p.frequency_penalty * n
    if row.index < p.min_tokens:
        enders = {*p.stop_token_ids, *(() if p.ignore_eos else row.eos_token_ids)}
        if enders:
            out[torch.tensor(sorted(enders), dtype=torch.long, device=out.device)] = float("-inf")
    return out


def token_logprob(log_probs: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    """The logprob of ``token_id`` in one row of log-probabilities, with the ``top`` best."""
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = torch.topk(log_probs, min(top, log_probs.shape[-1]))
        alternatives = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(int(token_id), float(log_probs[token_id]), alternatives)


def sample_rows(logits: torch.Tensor, rows: list[Row]) -> list[tuple[int, TokenLogprob | None]]:
    """Sample one token per row of ``logits`` [B, vocab], applying each row's penalties and
    min_tokens, and its logprob when asked (of the raw logits: what the model predicted)."""
    if not any(r.params.processes_logits or r.params.logprobs is not None for r in rows):
        tokens = sample_batch(
            logits, [r.params for r in rows], [r.seed for r in rows], [r.index for r in rows]
        )
        return [(t, None) for t in tokens]
    out: list[tuple[int, TokenLogprob | None]] = []
    cpu = logits.detach().float().to("cpu")
    for i, row in enumerate(rows):
        p = row.params
        scores = processed_logits(cpu[i], row) if p.processes_logits else cpu[i]
        if p.greedy:
            token = int(torch.argmax(scores))
        else:
            token = int(
                torch.multinomial(
                    filtered_probs(scores, p), 1, generator=token_generator(row.seed, row.index)
                )
            )
        lp = None
        if p.logprobs is not None:
            lp = token_logprob(torch.log_softmax(cpu[i], dim=-1), token, p.logprobs)
        out.append((token, lp))
    return out


def prompt_logprobs(
    logits: torch.Tensor, token_ids: Sequence[int], top: int
) -> tuple[TokenLogprob | None, ...]:
    """Logprobs of every prompt token from the logits of every prompt position [T, vocab]
    (position t predicts token t + 1); the first token has none."""
    log_probs = torch.log_softmax(logits.detach().float().to("cpu"), dim=-1)
    rest = tuple(token_logprob(log_probs[t - 1], token_ids[t], top) for t in range(1, len(token_ids)))
    return (None, *rest)
