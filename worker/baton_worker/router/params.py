"""Validation of OpenAI request bodies into typed requests (pure).

Every field is checked here; a bad one raises :class:`ApiError` 400 naming it. Parameters
OpenAI defines but baton does not implement (``suffix``, ``logit_bias``, tools, a
``response_format`` other than text) are accepted only at their default value and refused
otherwise, so a client never silently gets something other than what it asked for. Unknown
fields are refused too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, bad_param, unsupported

MAX_STOP_STRINGS = 4
MAX_N = 16  # choices per request (n, best_of)
MAX_LOGPROBS = 20  # alternatives per token
UINT64 = 1 << 64

# Fields accepted only at these "off" values (anything else is refused as unsupported).
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
}
# Fields with no effect on generation that clients commonly send.
_IGNORED = {"user", "metadata", "store", "service_tier"}
_SAMPLING = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "stream",
    "stream_options",
    "n",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_tokens",
}
COMPLETION_FIELDS = _SAMPLING | {"prompt", "echo", "best_of"} | set(_DEFAULT_ONLY) | _IGNORED
CHAT_FIELDS = (
    _SAMPLING | {"messages", "max_completion_tokens", "top_logprobs"} | set(_DEFAULT_ONLY) | _IGNORED
)
CHAT_ROLES = ("system", "user", "assistant", "developer", "tool")
_MESSAGE_KEYS = {"role", "content", "name", "tool_call_id"}


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ParsedRequest:
    """A validated completion or chat request; the prompt is tokenized later."""

    kind: str  # "completion" | "chat"
    model: str
    prompt_text: str | None = None  # completions given as text
    prompt_token_ids: tuple[int, ...] | None = None  # completions given as token ids
    messages: tuple[ChatMessage, ...] = ()
    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False
    n: int = 1  # choices returned
    best_of: int = 1  # choices generated (completions): the n most likely are returned
    echo: bool = False  # completions: the prompt precedes the output (and its logprobs)
    # Alternatives per token when logprobs are asked for (completions: `logprobs`; chat:
    # `top_logprobs` with `logprobs: true`); None: no logprobs.
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(
    body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False
) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad_param(name, f"'{name}' must be a number, got {v!r}", code="invalid_type")
    if v < lo or v > hi or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise bad_param(name, f"'{name}' must be in {bound}, got {v}")
    return float(v)


def _int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise bad_param(name, f"'{name}' must be an integer, got {v!r}", code="invalid_type")
    if v < lo or (hi is not None and v > hi):
        raise bad_param(
            name, f"'{name}' must be >= {lo}" + (f" and <= {hi}" if hi is not None else "") + f", got {v}"
        )
    return int(v)


def _bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad_param(name, f"'{name}' must be a boolean, got {v!r}", code="invalid_type")
    return v


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad_param("stop", "'stop' must be a string or a list of strings", code="invalid_type")
    if len(items) > MAX_STOP_STRINGS:
        raise bad_param("stop", f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(items)}")
    if any(s == "" for s in items):
        raise bad_param("stop", "'stop' strings must not be empty")
    return tuple(items)


def _token_ids(v: Any, name: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(_is_int(t) and t >= 0 for t in v):
        raise bad_param(
            name, f"'{name}' must be a list of non-negative integer token ids", code="invalid_type"
        )
    return tuple(v)


def _same(v: Any, d: Any) -> bool:
    # bool is an int in Python: `n: true` must not pass as `n: 1`.
    return v == d and isinstance(v, bool) == isinstance(d, bool)


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise ApiError(
                400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter"
            )
    for name, defaults in _DEFAULT_ONLY.items():
        if name in body and body[name] is not None and not any(_same(body[name], d) for d in defaults):
            accepted = ", ".join(repr(d) for d in defaults if d is not None)
            raise unsupported(name, f"only {accepted} accepted, got {body[name]!r}")


def _common(body: dict[str, Any], kind: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object", code="invalid_json")
    _check_fields(body, allowed)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_param(
            "model", "'model' is required and must be a non-empty string", code="missing_required_parameter"
        )
    seed = _int(body, "seed", -(1 << 63), UINT64 - 1)
    stream_options = body.get("stream_options")
    stream = _bool(body, "stream")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
            raise bad_param("stream_options", "'stream_options' must be an object with only 'include_usage'")
        if not stream:
            raise bad_param("stream_options", "'stream_options' is only allowed when 'stream' is true")
        include_usage = _bool(stream_options, "include_usage")
    n = _int(body, "n", 1, MAX_N) or 1
    return {
        "kind": kind,
        "model": model,
        "n": n,
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "repetition_penalty": _number(body, "repetition_penalty", 1.0, 0.0, 2.0, lo_open=True),
        "min_tokens": _int(body, "min_tokens", 0) or 0,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "top_k": max(0, _int(body, "top_k", -1) or 0),  # -1 and 0 both mean off
        "seed": None if seed is None else seed % UINT64,
        "stop": _stop(body),
        "stop_token_ids": _token_ids(body["stop_token_ids"], "stop_token_ids")
        if body.get("stop_token_ids") is not None
        else (),
        "ignore_eos": _bool(body, "ignore_eos"),
        "stream": stream,
        "include_usage": include_usage,
    }


def parse_completion(body: Any) -> ParsedRequest:
    """Validate a /v1/completions body; raises ApiError(400) naming the bad field."""
    fields = _common(body, "completion", COMPLETION_FIELDS)
    prompt = body.get("prompt")
    text: str | None = None
    ids: tuple[int, ...] | None = None
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        ids = _token_ids(prompt, "prompt")
    elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        text = prompt[0]
    elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        ids = _token_ids(prompt[0], "prompt")
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise unsupported("prompt", "a batch of several prompts; send one request per prompt")
    elif prompt is None:
        raise bad_param("prompt", "'prompt' is required", code="missing_required_parameter")
    else:
        raise bad_param("prompt", "'prompt' must be a string or a list of token ids", code="invalid_type")
    if ids is not None and not ids or text == "":
        raise bad_param("prompt", "'prompt' must not be empty")
    echo = _bool(body, "echo")
    # max_tokens 0 scores the prompt alone (echo + logprobs: what evaluation harnesses send).
    max_tokens = _int(body, "max_tokens", 0 if echo else 1) if body.get("max_tokens") is not None else 16
    logprobs = _int(body, "logprobs", 0, MAX_LOGPROBS)
    best_of = _int(body, "best_of", 1, MAX_N) or fields["n"]
    if best_of < fields["n"]:
        raise bad_param("best_of", f"'best_of' must be >= 'n' ({fields['n']}), got {best_of}")
    if best_of > fields["n"] and fields["stream"]:
        raise bad_param(
            "best_of", "'best_of' greater than 'n' cannot be streamed (the best are known at the end)"
        )
    _check_min_tokens(fields["min_tokens"], max_tokens)
    return ParsedRequest(
        prompt_text=text,
        prompt_token_ids=ids,
        max_tokens=max_tokens,
        echo=echo,
        logprobs=logprobs,
        best_of=best_of,
        **fields,
    )


def _check_min_tokens(min_tokens: int, max_tokens: int | None) -> None:
    if max_tokens is not None and min_tokens > max_tokens:
        raise bad_param("min_tokens", f"'min_tokens' ({min_tokens}) must be <= 'max_tokens' ({max_tokens})")


def _content(v: Any, i: int) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = []
        for j, part in enumerate(v):
            if not isinstance(part, dict) or "type" not in part:
                raise bad_param(
                    f"messages[{i}].content[{j}]",
                    "each content part must be an object with a 'type'",
                    code="invalid_type",
                )
            if part["type"] != "text":
                raise unsupported(f"messages[{i}].content[{j}]", "only text content parts are supported")
            if not isinstance(part.get("text"), str):
                raise bad_param(
                    f"messages[{i}].content[{j}].text",
                    "a text part needs a string 'text'",
                    code="invalid_type",
                )
            parts.append(part["text"])
        return "".join(parts)
    if v is None:
        raise bad_param(
            f"messages[{i}].content", f"messages[{i}] has no content", code="missing_required_parameter"
        )
    raise bad_param(
        f"messages[{i}].content", "content must be a string or a list of text parts", code="invalid_type"
    )


def parse_chat(body: Any) -> ParsedRequest:
    """Validate a /v1/chat/completions body; raises ApiError(400) naming the bad field."""
    fields = _common(body, "chat", CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "'messages' must be a non-empty list", code="missing_required_parameter")
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_param(f"messages[{i}]", "each message must be an object", code="invalid_type")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise bad_param(f"messages[{i}].role", f"role must be one of {list(CHAT_ROLES)}, got {role!r}")
        unknown = sorted(set(m) - _MESSAGE_KEYS)
        if unknown:
            raise unsupported(
                f"messages[{i}].{unknown[0]}", "tool calls and other message fields are not supported"
            )
        if "name" in m and not isinstance(m["name"], str):
            raise bad_param(f"messages[{i}].name", "'name' must be a string", code="invalid_type")
        parsed.append(
            ChatMessage(role="system" if role == "developer" else role, content=_content(m.get("content"), i))
        )
    max_tokens = _int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1)
    want = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", 0, MAX_LOGPROBS)
    if top is not None and not want:
        raise bad_param("top_logprobs", "'top_logprobs' needs 'logprobs' set to true")
    _check_min_tokens(fields["min_tokens"], max_tokens)
    return ParsedRequest(
        messages=tuple(parsed), max_tokens=max_tokens, logprobs=(top or 0) if want else None, **fields
    )
