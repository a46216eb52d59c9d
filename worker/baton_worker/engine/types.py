"""Typed values that pass between the engine's scheduler, its runners and the servers.

Everything here is a frozen dataclass or a typed error: no untyped dicts cross a module boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]
MAX_LOGPROBS = 20  # most alternatives per token (OpenAI's limit for top_logprobs)


class EngineError(Exception):
    """Base class of the engine's typed errors."""


class InvalidRequestError(EngineError, ValueError):
    """A request field is invalid; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class RequestTooLongError(InvalidRequestError):
    """The prompt (plus resume tokens) does not fit the model's context or the KV pool."""

    def __init__(self, request_id: str, num_tokens: int, limit: int, what: str = "max_model_len") -> None:
        super().__init__(
            "prompt_token_ids",
            f"request {request_id!r} has {num_tokens} prompt tokens, which exceeds the {what} limit "
            f"of {limit} tokens (at least one token of room is needed to generate)",
        )
        self.request_id = request_id
        self.num_tokens = num_tokens
        self.limit = limit


class DuplicateRequestError(InvalidRequestError):
    """A request id is already known to the engine."""

    def __init__(self, request_id: str) -> None:
        super().__init__("request_id", f"request {request_id!r} is already running or waiting")
        self.request_id = request_id


@dataclass(frozen=True)
class SamplingParams:
    """How output tokens are chosen and when generation stops.

    ``temperature == 0`` is greedy. ``top_p == 1.0`` and ``top_k == 0`` switch those filters off.
    Output index ``i`` of a request is sampled with a generator seeded from ``(seed, i)``
    (see :func:`baton_worker.engine.sampling.token_generator`), so a token is the same wherever it
    is sampled. ``seed=None`` lets the engine pick one at admission. ``max_tokens`` counts every
    output token, including ``resume_token_ids`` of a failover resume.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # Log-probabilities of each output token (None: off) with this many alternatives (0..20).
    logprobs: int | None = None
    # Log-probabilities of the prompt tokens (None: off) with this many alternatives (0..20).
    prompt_logprobs: int | None = None
    # OpenAI's penalties on tokens already generated: presence subtracts once per token that
    # appeared, frequency once per occurrence; both in [-2, 2]. repetition (> 0; 1 is off) divides
    # positive / multiplies negative logits of every token of the prompt and the output so far.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # EOS and stop_token_ids cannot end the request before this many output tokens.
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequestError(
                "sampling.max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}"
            )
        if not self.temperature >= 0.0:
            raise InvalidRequestError("sampling.temperature", f"must be >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("sampling.top_p", f"must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequestError("sampling.top_k", f"must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise InvalidRequestError("sampling.seed", f"must be a non-negative integer, got {self.seed!r}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("sampling.stop", "stop strings must be non-empty")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or not 0 <= v <= MAX_LOGPROBS):
                raise InvalidRequestError(
                    f"sampling.{name}", f"must be None or in [0, {MAX_LOGPROBS}], got {v!r}"
                )
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidRequestError(
                    f"sampling.{name}", f"must be in [-2, 2], got {getattr(self, name)!r}"
                )
        if not self.repetition_penalty > 0.0:
            raise InvalidRequestError(
                "sampling.repetition_penalty", f"must be > 0, got {self.repetition_penalty!r}"
            )
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequestError(
                "sampling.min_tokens", f"must be an integer in [0, max_tokens], got {self.min_tokens!r}"
            )
        # Lists are accepted for convenience and frozen into tuples so the value stays hashable.
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def processes_logits(self) -> bool:
        """Whether logits are changed before sampling (penalties, min_tokens)."""
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
            or self.min_tokens > 0
        )


@dataclass(frozen=True)
class TokenLogprob:
    """The log-probability of one token under the model (log_softmax of the raw logits, before
    temperature and penalties), and the ``top`` most likely tokens at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Prefilled:
    """The KV of a request's prefix is already in THIS pool's blocks (pulled from a prefill worker).

    ``num_tokens`` = len(prompt) + len(resume_token_ids); ``first_token`` is output index
    ``len(resume_token_ids)``, sampled by the prefill worker. The engine takes ownership of
    ``block_ids`` when the request is added and frees them when it ends.
    """

    block_ids: tuple[int, ...]
    num_tokens: int
    first_token: int
    # What the prefill worker computed with the first token (when the request asked for them).
    first_logprob: TokenLogprob | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_ids", tuple(int(b) for b in self.block_ids))


@dataclass(frozen=True)
class EngineRequest:
    """One generation request handed to :class:`DecodeEngine`.

    ``prefilled=None`` means the engine prefills the prefix itself (conditional disaggregation).
    ``resume_token_ids`` are output tokens the client already has (failover): they are part of the
    prefix, never re-emitted, and generation continues at output index ``len(resume_token_ids)``.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prefilled: Prefilled | None = None
    resume_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.request_id:
            raise InvalidRequestError("request_id", "must be a non-empty string")
        object.__setattr__(self, "prompt_token_ids", tuple(int(t) for t in self.prompt_token_ids))
        object.__setattr__(self, "resume_token_ids", tuple(int(t) for t in self.resume_token_ids))
        if not self.prompt_token_ids:
            raise InvalidRequestError("prompt_token_ids", f"request {self.request_id!r} has an empty prompt")

    @property
    def prefix_len(self) -> int:
        return len(self.prompt_token_ids) + len(self.resume_token_ids)


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request.

    ``new_token_ids`` may include a final stop/EOS token whose text is not in ``text_delta``.
    ``text_delta`` never contains a stop string or anything after it. ``finished`` is True exactly
    once per request, with ``finish_reason`` in ``stop | length | abort``.
    """

    request_id: str
    new_token_ids: tuple[int, ...]
    text_delta: str
    finished: bool
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_output_tokens: int  # total output tokens so far, resume tokens included
    # With sampling.logprobs: one per new token. With sampling.prompt_logprobs: on the request's
    # first output, one per prompt token (None for the first, which has no context).
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    cached_tokens: int = 0  # on the first output: prompt tokens whose KV came from the prefix cache


@dataclass(frozen=True)
class PrefillResult:
    """The outcome of :meth:`PrefillRunner.prefill`.

    ``block_ids`` hold the KV of the first ``num_tokens`` tokens in token order; they stay
    allocated until ``PrefillRunner.release(request_id)``.
    """

    request_id: str
    first_token: int
    block_ids: tuple[int, ...]
    num_tokens: int
    prefill_seconds: float
    first_logprob: TokenLogprob | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    cached_tokens: int = 0  # leading tokens whose KV came from the prefix cache


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the decode engine's load (for Health and metrics)."""

    waiting: int  # requests not yet running (incl. those waiting for blocks in the pool)
    running: int
    free_blocks: int
    total_blocks: int
    queued_prompt_tokens: int
    max_batch_size: int
