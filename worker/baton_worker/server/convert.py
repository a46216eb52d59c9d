"""Pure translations between the wire (protobuf) and the engine, and errors to gRPC statuses."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from baton_worker.engine import (
    DuplicateRequestError,
    EngineFailedError,
    InvalidRequestError,
    KvBlockPool,
    PoolExhaustedError,
    RequestOutput,
    RequestTooLongError,
    SamplingParams,
)
from baton_worker.engine.types import TokenLogprob
from baton_worker.kv.errors import KvCompatError, KvError, KvHandleError
from baton_worker.rpc import pb2


def sampling_from_pb(msg: pb2.SamplingParams) -> SamplingParams:
    """Engine SamplingParams from the wire message; InvalidRequestError names a bad field.

    ``max_tokens == 0`` on the wire means "unset" (proto3 default) and maps to the engine default.
    """
    kwargs: dict[str, object] = {
        "temperature": float(msg.temperature),
        "top_p": float(msg.top_p) if msg.top_p > 0 else 1.0,
        "top_k": int(msg.top_k),
        "stop_token_ids": tuple(msg.stop_token_ids),
        "stop": tuple(msg.stop),
        "ignore_eos": bool(msg.ignore_eos),
    }
    if msg.max_tokens:
        kwargs["max_tokens"] = int(msg.max_tokens)
    if msg.HasField("seed"):
        kwargs["seed"] = int(msg.seed)
    for name in ("logprobs", "prompt_logprobs"):
        if msg.HasField(name):
            kwargs[name] = int(getattr(msg, name))
    kwargs["presence_penalty"] = float(msg.presence_penalty)
    kwargs["frequency_penalty"] = float(msg.frequency_penalty)
    kwargs["repetition_penalty"] = float(msg.repetition_penalty) if msg.repetition_penalty else 1.0
    kwargs["min_tokens"] = int(msg.min_tokens)
    return SamplingParams(**kwargs)  # type: ignore[arg-type]


def logprob_to_pb(lp: TokenLogprob) -> pb2.TokenLogprob:
    return pb2.TokenLogprob(
        token_id=lp.token_id,
        logprob=lp.logprob,
        top_token_ids=[t for t, _ in lp.top],
        top_logprobs=[v for _, v in lp.top],
    )


def logprob_from_pb(msg: pb2.TokenLogprob) -> TokenLogprob:
    top = tuple(zip((int(t) for t in msg.top_token_ids), (float(v) for v in msg.top_logprobs), strict=True))
    return TokenLogprob(int(msg.token_id), float(msg.logprob), top)


def prompt_logprobs_to_pb(lps: tuple[TokenLogprob | None, ...]) -> pb2.PromptLogprobs:
    """The first prompt token has no logprob: the message carries those of the others."""
    return pb2.PromptLogprobs(tokens=[logprob_to_pb(lp) for lp in lps[1:] if lp is not None])


def prompt_logprobs_from_pb(msg: pb2.PromptLogprobs) -> tuple[TokenLogprob | None, ...]:
    return (None, *(logprob_from_pb(t) for t in msg.tokens))


@dataclass(frozen=True)
class Status:
    """A gRPC status to abort a call with."""

    code: grpc.StatusCode
    message: str


def status_for(exc: BaseException) -> Status:
    """The gRPC status for an error raised while serving a request.

    Bad requests are INVALID_ARGUMENT / OUT_OF_RANGE (the router answers 400 and does not
    retry); an incompatible or malformed KV handle is FAILED_PRECONDITION; retryable KV
    failures (peer gone, timed out, blocks expired) and a failed engine are UNAVAILABLE;
    no KV memory is RESOURCE_EXHAUSTED. Messages start with a stable code word.
    """
    if isinstance(exc, RequestTooLongError):
        return Status(grpc.StatusCode.OUT_OF_RANGE, f"context_length_exceeded: {exc}")
    if isinstance(exc, DuplicateRequestError):
        return Status(grpc.StatusCode.ALREADY_EXISTS, f"duplicate_request: {exc}")
    if isinstance(exc, InvalidRequestError):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, f"invalid_request: {exc}")
    if isinstance(exc, PoolExhaustedError):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, f"kv_pool_exhausted: {exc}")
    if isinstance(exc, KvCompatError | KvHandleError):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, f"{exc.code}: {exc}")
    if isinstance(exc, KvError):
        code = grpc.StatusCode.UNAVAILABLE if exc.retryable else grpc.StatusCode.FAILED_PRECONDITION
        return Status(code, f"{exc.code}: {exc}")
    if isinstance(exc, EngineFailedError):
        return Status(grpc.StatusCode.UNAVAILABLE, f"engine_failed: {exc}")
    return Status(grpc.StatusCode.INTERNAL, f"internal: {type(exc).__name__}: {exc}")


def token_chunk(out: RequestOutput, kv_seconds: float = 0.0, kv_bytes: int = 0) -> pb2.TokenChunk:
    """A TokenChunk from an engine RequestOutput."""
    chunk = pb2.TokenChunk(
        token_ids=list(out.new_token_ids),
        text=out.text_delta,
        finish_reason=(out.finish_reason or "") if out.finished else "",
        prompt_tokens=out.num_prompt_tokens,
        completion_tokens=out.num_output_tokens,
        kv_transfer_seconds=kv_seconds,
        kv_transfer_bytes=kv_bytes,
        logprobs=[logprob_to_pb(lp) for lp in out.logprobs],
        cached_tokens=out.cached_tokens,
    )
    if out.prompt_logprobs is not None:
        chunk.prompt_logprobs.CopyFrom(prompt_logprobs_to_pb(out.prompt_logprobs))
    return chunk


def prefix_events_pb(pool: KvBlockPool, request: pb2.HealthRequest, engine_id: str) -> pb2.PrefixCacheEvents:
    """The prefix-cache changes a Health caller asked for (a full listing for another engine)."""
    # -1 is below any floor: a full listing.
    after = request.prefix_events_after if request.prefix_events_engine == engine_id else -1
    ev = pool.prefix_events(after)
    return pb2.PrefixCacheEvents(
        salt=pool.cache_salt,
        block_size=pool.block_size,
        seq=ev.seq,
        reset=ev.reset,
        stored=list(ev.stored),
        evicted=list(ev.evicted),
    )
