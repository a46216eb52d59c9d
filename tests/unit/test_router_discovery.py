"""EndpointSlices -> ready worker addresses, static lists, response shapes (pure)."""

from __future__ import annotations

import json

import pytest
from baton_worker.router import openai_format as fmt
from baton_worker.router.discovery import parse_static, ready_endpoints
from baton_worker.router.errors import overloaded, unavailable


def eps(endpoints: list[dict], ports: list[dict] | None = None) -> dict:
    return {
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports
        if ports is not None
        else [{"name": "metrics", "port": 9000}, {"name": "grpc", "port": 50051}],
    }


def ep(addr: str, **cond) -> dict:
    return {"addresses": [addr], "conditions": cond} if cond else {"addresses": [addr]}


@pytest.mark.parametrize(
    ("slices", "port_name", "want"),
    [
        ([], "grpc", []),
        ([eps([ep("10.0.0.1", ready=True)])], "grpc", ["10.0.0.1:50051"]),
        ([eps([ep("10.0.0.1")])], "grpc", ["10.0.0.1:50051"]),  # no conditions: ready
        ([eps([ep("10.0.0.1", ready=False)])], "grpc", []),
        ([eps([ep("10.0.0.1", ready=True, terminating=True)])], "grpc", []),
        (
            [eps([ep("10.0.0.2", ready=True), ep("10.0.0.1", ready=True)])],
            "grpc",
            ["10.0.0.1:50051", "10.0.0.2:50051"],
        ),
        (
            [eps([ep("10.0.0.1")]), eps([ep("10.0.0.1")])],
            "grpc",
            ["10.0.0.1:50051"],
        ),  # duplicate across slices
        ([eps([ep("fd00::1")])], "grpc", ["[fd00::1]:50051"]),
        ([eps([ep("10.0.0.1")], ports=[{"name": "http", "port": 80}])], "grpc", []),  # no grpc port
        ([eps([ep("10.0.0.1")], ports=[{"name": "x", "port": 81}])], None, ["10.0.0.1:81"]),
        ([{"endpoints": None, "ports": [{"name": "grpc", "port": 1}]}], "grpc", []),
    ],
)
def test_ready_endpoints(slices, port_name, want) -> None:
    assert ready_endpoints(slices, port_name) == want


def test_parse_static() -> None:
    assert parse_static("a:1, b:2,,a:1", "--prefill") == ["a:1", "b:2"]
    assert parse_static("", "--prefill") == []
    for bad in ("a", "a:b", ":5", "a:0", "a:70000"):
        with pytest.raises(ValueError, match="--decode"):
            parse_static(bad, "--decode")


def test_overload_errors_carry_retry_after() -> None:
    e = overloaded("busy", 2.4)
    assert e.status == 429 and e.headers() == {"Retry-After": "2"}
    assert set(e.body()["error"]) == {"message", "type", "param", "code"}
    assert unavailable("none", 0.2).headers() == {"Retry-After": "1"}


def test_response_shapes() -> None:
    full = fmt.full_response("chat", "id1", 5, "m", "hey", "length", 3, 2)
    assert full["object"] == "chat.completion" and full["choices"][0]["message"] == {
        "role": "assistant",
        "content": "hey",
    }
    assert full["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    cached = fmt.usage_chunk("chat", "i", 1, "m", 40, 2, 32)["usage"]
    assert cached["prompt_tokens_details"] == {"cached_tokens": 32} and cached["total_tokens"] == 42
    c = fmt.stream_chunk("completion", "id1", 5, "m", "x", None)
    assert c["choices"][0]["text"] == "x" and c["object"] == "text_completion"
    first = fmt.stream_chunk("chat", "id1", 5, "m", "", None, role=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = fmt.stream_chunk("chat", "id1", 5, "m", None, "stop")
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    raw = fmt.sse(c)
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n") and json.loads(raw[6:]) == c
    assert fmt.usage_chunk("chat", "i", 1, "m", 1, 2)["choices"] == []
