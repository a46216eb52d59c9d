"""Logprobs in OpenAI's shapes (pure): completions' legacy object and chat's ``content`` list.

Values are what the workers computed: the log_softmax of the model's raw logits at each position
(before temperature and penalties), for the chosen token and the most likely alternatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from baton_worker.rpc import pb2


@dataclass(frozen=True)
class Scored:
    """One token of an answer with its logprob; ``logprob`` is None for the first prompt token
    (nothing precedes it), ``top`` the alternatives (token id, logprob), best first."""

    token_id: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def from_pb(msg: pb2.TokenLogprob) -> Scored:
    return Scored(
        int(msg.token_id), float(msg.logprob), tuple(zip(msg.top_token_ids, msg.top_logprobs, strict=True))
    )


def prompt_from_pb(prompt_ids: Sequence[int], msg: pb2.PromptLogprobs) -> list[Scored]:
    """The prompt's tokens scored: the first has no logprob, the others come from ``msg``."""
    rest = [from_pb(t) for t in msg.tokens]
    if [s.token_id for s in rest] != list(prompt_ids[1:]):
        raise ValueError("the prompt logprobs do not match the prompt's tokens")
    return [Scored(int(prompt_ids[0]), None), *rest]


def total(scored: Sequence[Scored]) -> float:
    """The sum of the logprobs (how likely the whole answer is): best_of ranks choices by it."""
    return sum(s.logprob for s in scored if s.logprob is not None)


def completion_logprobs(
    scored: Sequence[Scored], token_text: Callable[[int], str], top: int, offset: int = 0
) -> dict[str, Any]:
    """The ``logprobs`` object of a completion choice: ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (token text -> logprob, up to ``top``; None where there is no logprob) and
    ``text_offset`` (where each token's text starts, counted from ``offset``)."""
    tokens, offsets = [], []
    at = offset
    for s in scored:
        text = token_text(s.token_id)
        tokens.append(text)
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [s.logprob for s in scored],
        "top_logprobs": [
            None if s.logprob is None else {token_text(t): lp for t, lp in s.top[:top]} for s in scored
        ],
        "text_offset": offsets,
    }


def chat_logprobs(scored: Sequence[Scored], token_text: Callable[[int], str], top: int) -> dict[str, Any]:
    """The ``logprobs`` object of a chat choice: one entry per output token with its bytes."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = []
    for s in scored:
        item = entry(s.token_id, s.logprob if s.logprob is not None else 0.0)
        item["top_logprobs"] = [entry(t, lp) for t, lp in s.top[:top]]
        content.append(item)
    return {"content": content, "refusal": None}
