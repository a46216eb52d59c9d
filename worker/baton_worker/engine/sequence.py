"""Per-request state of the decode engine and the pure rules for when a request finishes."""

from __future__ import annotations

from dataclasses import dataclass, field

from baton_worker.engine.types import EngineRequest, FinishReason, RequestOutput, SamplingParams, TokenLogprob
from baton_worker.text import IncrementalDetokenizer


def finish_reason_for(
    token_id: int,
    sampling: SamplingParams,
    eos_token_ids: tuple[int, ...],
    num_outputs: int,
    total_len: int,
    max_model_len: int,
    stop_string_hit: bool,
) -> FinishReason | None:
    """Why a request ends after emitting ``token_id`` as its ``num_outputs``-th output token, if it does.

    Order matters: a stop token or string wins over reaching the length limit on the same token.
    """
    if token_id in sampling.stop_token_ids or (not sampling.ignore_eos and token_id in eos_token_ids):
        return "stop"
    if stop_string_hit:
        return "stop"
    if num_outputs >= sampling.max_tokens or total_len >= max_model_len:
        return "length"
    return None


@dataclass
class Sequence:
    """One request inside the engine: its tokens, its KV blocks and its output progress.

    ``tokens`` = prompt + resume + new outputs. ``num_cached`` tokens have their KV in
    ``block_ids``; the last token is the input of the next decode step.
    """

    request: EngineRequest
    seed: int
    detok: IncrementalDetokenizer
    tokens: list[int]
    block_ids: list[int] = field(default_factory=list)
    num_cached: int = 0
    num_outputs: int = 0
    finish_reason: FinishReason | None = None
    # Set when the sequence was preempted: its KV must be recomputed before it decodes again.
    needs_recompute: bool = False
    # Prefix-cache hashes of its first full blocks of ``tokens`` (extended as it grows).
    hashes: list[bytes] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens whose KV came from a prefix cache at admission

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    def append(
        self, token_id: int, eos_token_ids: tuple[int, ...], max_model_len: int
    ) -> tuple[str, FinishReason | None]:
        """Record output token ``token_id``; return its text delta and the finish reason, if any."""
        self.tokens.append(token_id)
        self.num_outputs += 1
        sampling = self.request.sampling
        is_stop_token = token_id in sampling.stop_token_ids or (
            not sampling.ignore_eos and token_id in eos_token_ids
        )
        delta, hit = ("", False) if is_stop_token else self.detok.push(token_id)
        reason = finish_reason_for(
            token_id, sampling, eos_token_ids, self.num_outputs, len(self.tokens), max_model_len, hit
        )
        if reason is not None:
            self.finish_reason = reason
            delta += self.detok.flush()
        return delta, reason


class OutputCollector:
    """Merges what one step produced per request into one :class:`RequestOutput` each."""

    def __init__(self) -> None:
        self._ids: dict[str, list[int]] = {}
        self._text: dict[str, str] = {}
        self._last: dict[str, tuple[bool, FinishReason | None, int, int]] = {}
        self._logprobs: dict[str, list[TokenLogprob]] = {}
        self._prompt_logprobs: dict[str, tuple[TokenLogprob | None, ...]] = {}
        self._cached: dict[str, int] = {}

    def add(
        self,
        seq: Sequence,
        token_ids: list[int],
        text: str,
        logprobs: list[TokenLogprob] | None = None,
        prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None,
    ) -> None:
        rid = seq.request_id
        self._ids.setdefault(rid, []).extend(token_ids)
        self._text[rid] = self._text.get(rid, "") + text
        if logprobs:
            self._logprobs.setdefault(rid, []).extend(logprobs)
        if prompt_logprobs is not None:
            self._prompt_logprobs[rid] = prompt_logprobs
        if seq.num_outputs - len(seq.request.resume_token_ids) == len(token_ids):  # its first output
            self._cached[rid] = seq.cached_tokens
        self._last[rid] = (
            seq.finish_reason is not None,
            seq.finish_reason,
            seq.num_prompt_tokens,
            seq.num_outputs,
        )

    def add_abort(self, request_id: str, num_prompt_tokens: int, num_outputs: int) -> None:
        self._ids.setdefault(request_id, [])
        self._text.setdefault(request_id, "")
        self._last[request_id] = (True, "abort", num_prompt_tokens, num_outputs)

    def outputs(self) -> list[RequestOutput]:
        out = []
        for rid, ids in self._ids.items():
            finished, reason, n_prompt, n_out = self._last[rid]
            out.append(
                RequestOutput(
                    rid,
                    tuple(ids),
                    self._text[rid],
                    finished,
                    reason,
                    n_prompt,
                    n_out,
                    tuple(self._logprobs.get(rid, ())),
                    self._prompt_logprobs.get(rid),
                    self._cached.get(rid, 0),
                )
            )
        return out
