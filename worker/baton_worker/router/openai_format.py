"""OpenAI response objects for completions and chat, streamed and not (pure)."""

from __future__ import annotations

import json
from typing import Any


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt_tokens_details.cached_tokens`` counts the prompt tokens
    whose KV came from a prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def choice(
    kind: str, index: int, text: str, finish: str, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One choice of a non-streamed completion (``kind="completion"``) or chat response."""
    if kind == "chat":
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish,
        }
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def response(
    kind: str,
    rid: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """The non-streamed body of a completion or chat response with its ``choices``."""
    return {
        "id": rid,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
    }


def full_response(
    kind: str,
    rid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """The non-streamed body of a one-choice response."""
    return response(
        kind, rid, created, model, [choice(kind, 0, text, finish)], prompt_tokens, completion_tokens
    )


def stream_chunk(
    kind: str,
    rid: str,
    created: int,
    model: str,
    text: str | None,
    finish: str | None,
    role: bool = False,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed chunk of choice ``index``; chat chunks carry a ``delta`` (the first one
    also the role)."""
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        item: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        item = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [item]}


def usage_chunk(
    kind: str,
    rid: str,
    created: int,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """The extra last chunk sent when ``stream_options.include_usage`` is true."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
    }


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def models_list(names: list[str], created: int, max_model_len: int = 0) -> dict[str, Any]:
    """``/v1/models``; ``max_model_len`` (the context length) as vLLM reports it, when known."""
    extra = {"max_model_len": max_model_len} if max_model_len else {}
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": created, "owned_by": "baton", **extra} for n in names
        ],
    }
