"""Validation of OpenAI request bodies (pure)."""

from __future__ import annotations

import pytest
from baton_worker.router.errors import ApiError
from baton_worker.router.params import parse_chat, parse_completion

OK = {"model": "m", "prompt": "hi"}


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": "5"}, "max_tokens", "invalid_type"),
        ({"max_tokens": True}, "max_tokens", "invalid_type"),
        ({"temperature": -0.1}, "temperature", "invalid_value"),
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"top_p": 1.5}, "top_p", "invalid_value"),
        ({"top_k": -2}, "top_k", "invalid_value"),
        ({"seed": 1.5}, "seed", "invalid_type"),
        ({"stop": 3}, "stop", "invalid_type"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stop": [""]}, "stop", "invalid_value"),
        ({"n": 17}, "n", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"n": True}, "n", "invalid_type"),
        ({"n": 3, "best_of": 2}, "best_of", "invalid_value"),
        ({"best_of": 3, "stream": True}, "best_of", "invalid_value"),
        ({"echo": 1}, "echo", "invalid_type"),
        ({"logprobs": 21}, "logprobs", "invalid_value"),
        ({"logprobs": True}, "logprobs", "invalid_type"),
        ({"presence_penalty": 2.5}, "presence_penalty", "invalid_value"),
        ({"frequency_penalty": -3}, "frequency_penalty", "invalid_value"),
        ({"repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens", "invalid_value"),
        ({"suffix": "x"}, "suffix", "unsupported_parameter"),
        ({"logit_bias": {"5": 1}}, "logit_bias", "unsupported_parameter"),
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"prompt": None}, "prompt", "missing_required_parameter"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"prompt": ["a", "b"]}, "prompt", "unsupported_parameter"),
        ({"prompt": [1, -2]}, "prompt", "invalid_type"),
        ({"prompt": 7}, "prompt", "invalid_type"),
        ({"model": ""}, "model", "missing_required_parameter"),
        ({"model": None}, "model", "missing_required_parameter"),
    ],
)
def test_completion_refusals_name_the_field(extra: dict, param: str, code: str) -> None:
    with pytest.raises(ApiError) as ei:
        parse_completion({**OK, **extra})
    e = ei.value
    assert (e.status, e.param, e.code) == (400, param, code)
    assert e.body()["error"]["param"] == param and e.body()["error"]["message"]


def test_completion_defaults_and_values() -> None:
    r = parse_completion(OK)
    assert (r.max_tokens, r.temperature, r.top_p, r.top_k, r.seed, r.stop, r.stream) == (
        16,
        1.0,
        1.0,
        0,
        None,
        (),
        False,
    )
    r = parse_completion(
        {
            **OK,
            "max_tokens": 7,
            "temperature": 0,
            "top_p": 0.5,
            "top_k": -1,
            "seed": -1,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 1,
            "echo": False,
            "logprobs": None,
            "user": "u",
        }
    )
    assert (r.max_tokens, r.temperature, r.top_p, r.top_k, r.stop, r.stream, r.include_usage) == (
        7,
        0.0,
        0.5,
        0,
        ("\n",),
        True,
        True,
    )
    assert r.seed == (1 << 64) - 1  # negative seeds wrap into uint64


@pytest.mark.parametrize(
    ("prompt", "text", "ids"),
    [("abc", "abc", None), (["abc"], "abc", None), ([1, 2, 3], None, (1, 2, 3)), ([[4, 5]], None, (4, 5))],
)
def test_completion_prompt_forms(prompt, text, ids) -> None:
    r = parse_completion({"model": "m", "prompt": prompt})
    assert (r.prompt_text, r.prompt_token_ids) == (text, ids)


def test_chat_messages() -> None:
    r = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "max_completion_tokens": 9,
            "max_tokens": 3,
        }
    )
    assert [(m.role, m.content) for m in r.messages] == [("system", "be brief"), ("user", "ab")]
    assert r.max_tokens == 9 and r.kind == "chat"
    assert parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}).max_tokens is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "a"}]}]},
            "messages[0].content[0]",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "messages[0].tool_calls",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
            "response_format",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "echo": True}, "echo"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "prompt"),
    ],
)
def test_chat_refusals(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as ei:
        parse_chat(body)
    assert ei.value.status == 400 and ei.value.param == param


def test_body_must_be_object() -> None:
    with pytest.raises(ApiError) as ei:
        parse_completion([1, 2])
    assert ei.value.status == 400 and ei.value.code == "invalid_json"


def test_completion_sampling_extensions_are_parsed() -> None:
    r = parse_completion(
        {
            "model": "m",
            "prompt": "hi",
            "n": 2,
            "best_of": 4,
            "echo": True,
            "logprobs": 3,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.25,
            "repetition_penalty": 1.1,
            "min_tokens": 2,
            "max_tokens": 5,
            "user": "someone",
        }
    )
    assert (r.n, r.best_of, r.echo, r.logprobs) == (2, 4, True, 3)
    assert (r.presence_penalty, r.frequency_penalty, r.repetition_penalty, r.min_tokens) == (
        0.5,
        -0.25,
        1.1,
        2,
    )
    # Evaluation harnesses score a prompt with echo, logprobs and max_tokens 0.
    scored = parse_completion({"model": "m", "prompt": "hi", "echo": True, "logprobs": 0, "max_tokens": 0})
    assert (scored.max_tokens, scored.logprobs, scored.n, scored.best_of) == (0, 0, 1, 1)
    with pytest.raises(ApiError):
        parse_completion({"model": "m", "prompt": "hi", "max_tokens": 0})  # without echo: nothing to return


def test_chat_logprobs_are_a_flag_with_a_count_of_alternatives() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x", "name": "ann"}]}
    assert parse_chat(base).logprobs is None
    assert parse_chat({**base, "logprobs": True}).logprobs == 0
    assert parse_chat({**base, "logprobs": True, "top_logprobs": 5}).logprobs == 5
    assert parse_chat({**base, "logprobs": False}).logprobs is None
    assert parse_chat({**base, "n": 3, "seed": 4}).n == 3
    assert parse_chat({**base, "response_format": {"type": "text"}}).kind == "chat"
