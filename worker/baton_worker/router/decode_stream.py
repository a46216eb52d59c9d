"""Reading a decode worker's ``Generate`` stream: chunks to :class:`Progress` events, and a cut of
the stream when the worker stops answering Health."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from baton_worker.rpc import pb2

from .pool import Worker


@dataclass(frozen=True)
class Progress:
    """New output tokens, in order, each exactly once; ``finish_reason`` on the last event."""

    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    # With sampling.logprobs: one per token. With sampling.prompt_logprobs: once, on the
    # event of the first output token (the first prompt token has none: see PromptLogprobs).
    logprobs: tuple[pb2.TokenLogprob, ...] = ()
    prompt_logprobs: pb2.PromptLogprobs | None = None
    cached_tokens: int = 0  # prompt tokens whose KV came from a prefix cache (first event)


def new_tokens(chunk_ids: Sequence[int], chunk_total: int, known: int) -> tuple[list[int], int]:
    """The part of a chunk that is new, and the size of any gap before it.

    ``chunk_total`` is the worker's count of output tokens after this chunk, resumed tokens
    included, so the chunk holds output indices ``[chunk_total - len(chunk_ids), chunk_total)``.
    Tokens below ``known`` (already delivered, e.g. the prefill worker's first token echoed
    by the decode worker) are dropped; a positive gap means the worker skipped tokens.
    """
    start = chunk_total - len(chunk_ids)
    skip = max(0, known - start)
    return list(chunk_ids[skip:]), max(0, start - known)


def chunk_progress(chunk: pb2.TokenChunk, known: int) -> Progress:
    """The event of one chunk when ``known`` output tokens were delivered before it.

    Raises AioRpcError (DATA_LOSS, ABORTED), to be retried on another worker, when the worker
    skipped tokens or gave the request up.
    """
    ids, gap = new_tokens(chunk.token_ids, chunk.completion_tokens, known)
    if gap:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.DATA_LOSS, None, None, f"worker skipped {gap} output tokens"
        )
    finish = chunk.finish_reason or None
    if finish == "abort":
        # The worker gave the request up (drain, cancel): resume it elsewhere.
        raise grpc.aio.AioRpcError(grpc.StatusCode.ABORTED, None, None, "worker aborted the request")
    # The logprobs of tokens dropped as already known go with them.
    logprobs = tuple(chunk.logprobs[len(chunk.logprobs) - len(ids) :]) if chunk.logprobs else ()
    prompt = chunk.prompt_logprobs if chunk.HasField("prompt_logprobs") else None
    return Progress(tuple(ids), finish, logprobs, prompt, chunk.cached_tokens)


class WorkerDown(Exception):
    """The decode worker stopped answering Health while streaming to us."""


async def cancel_when_down(w: Worker, call: grpc.aio.UnaryStreamCall) -> None:
    # Health polling sets `down` when the worker stops answering; a hung stream is then cut.
    await w.down.wait()
    call.cancel()


async def next_chunk(call: grpc.aio.UnaryStreamCall, watcher: asyncio.Task) -> pb2.TokenChunk | None:
    """The next chunk, None at the end of the stream; WorkerDown when the watcher cut it."""
    try:
        chunk = await call.read()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        # grpc.aio reports a locally cancelled call as CancelledError; tell that apart from
        # the cancellation of our own task (client gone), which must propagate.
        if watcher.done() and task is not None and not task.cancelling():
            raise WorkerDown() from None
        raise
    return None if chunk is grpc.aio.EOF else chunk
