"""Pure parts of PrefillStream: reply decoding, the fall-back-to-unary rule, a call's liveness."""

from __future__ import annotations

import grpc
import pytest
from baton_worker.router.prefill_stream import (
    MAX_TIMEOUT_MS,
    PREFILL_STREAM_METHOD,
    encode_call,
    means_no_stream,
    reply_outcome,
    timeout_ms,
)
from baton_worker.rpc import pb2
from baton_worker.server.prefill_stream import StreamCall, status_reply
from polling import wait_until


def test_an_ok_reply_is_the_response() -> None:
    reply = pb2.PrefillReply(call_id=3, response=pb2.PrefillResponse(first_token=42))
    out = reply_outcome(reply)
    assert isinstance(out, pb2.PrefillResponse) and out.first_token == 42


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_a_refused_reply_is_the_error_the_unary_call_would_raise(code: grpc.StatusCode) -> None:
    out = reply_outcome(status_reply(9, code, "why: because"))
    assert isinstance(out, grpc.aio.AioRpcError)
    assert (out.code(), out.details()) == (code, "why: because")


def test_an_unknown_status_number_is_unknown() -> None:
    out = reply_outcome(pb2.PrefillReply(call_id=1, status_code=999, status_message="?"))
    assert isinstance(out, grpc.aio.AioRpcError) and out.code() == grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize(
    ("code", "details", "answered", "expected"),
    [
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", False, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "prefill_streams_exhausted: 8 open", False, True),
        # Other exhaustion (say, a message over the size limit) may have run calls: not a fallback.
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", False, False),
        (grpc.StatusCode.UNAVAILABLE, "connection refused", False, False),
        (grpc.StatusCode.CANCELLED, "", False, False),
        # Once the stream served a call, any failure may have cut calls that ran.
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", True, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "prefill_streams_exhausted: 8 open", True, False),
    ],
)
def test_which_stream_failures_mean_call_it_unary(
    code: grpc.StatusCode, details: str, answered: bool, expected: bool
) -> None:
    assert means_no_stream(code, details, answered) is expected


def test_a_stream_call_is_active_until_cancelled_or_past_its_deadline_or_its_stream_closes() -> None:
    stream_open = [True]
    call = StreamCall(60_000, lambda: stream_open[0])
    assert call.is_active()
    left = call.time_remaining()
    assert left is not None and 59 < left <= 60
    call.cancelled.set()
    assert not call.is_active()

    closing = StreamCall(0, lambda: stream_open[0])  # 0: no deadline of its own
    assert closing.time_remaining() is None and closing.is_active()
    stream_open[0] = False
    assert not closing.is_active()

    late = StreamCall(1, lambda: True)
    wait_until(lambda: not late.is_active(), timeout=5, what="the 1 ms call to expire", interval=0.001)
    assert late.time_remaining() == 0.0


@pytest.mark.parametrize("call_id", [1, 127, 128, 300, 2**32 + 5, 2**63 + 1])
@pytest.mark.parametrize("timeout_ms", [1, 127, 128, 120_000, 2**32 - 1])
def test_an_encoded_call_parses_as_the_prefill_call_it_stands_for(call_id: int, timeout_ms: int) -> None:
    request = pb2.PrefillRequest(
        request_id="req-é",
        prompt_token_ids=[0, 1, 127, 128, 131_071, 2**31 - 1],
        sampling=pb2.SamplingParams(max_tokens=16, temperature=0.5),
        resume_token_ids=[7, 8],
    )
    data = encode_call(call_id, request, timeout_ms)
    want = pb2.PrefillCall(call_id=call_id, request=request, timeout_ms=timeout_ms)
    got = pb2.PrefillCall.FromString(data)
    assert got == want and not got.cancel
    assert data == want.SerializeToString()


def test_an_empty_request_still_encodes_its_field() -> None:
    got = pb2.PrefillCall.FromString(encode_call(5, pb2.PrefillRequest(), 10))
    assert got.HasField("request") and (got.call_id, got.timeout_ms) == (5, 10)


def test_the_stream_method_is_the_generated_stubs() -> None:
    assert PREFILL_STREAM_METHOD == "/baton.v1.PrefillWorker/PrefillStream"


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        (120, 120_000),
        (0.0001, 1),  # 0 would mean no deadline
        (0, 1),
        (2.5e-3, 3),
        (2**32 / 1000, MAX_TIMEOUT_MS),  # 2**32 ms would wrap to 0 (no deadline) on the worker
        (1e12, MAX_TIMEOUT_MS),
        (float("inf"), MAX_TIMEOUT_MS),
        (float("nan"), MAX_TIMEOUT_MS),
    ],
)
def test_a_call_timeout_fits_the_uint32_field(seconds: float, ms: int) -> None:
    assert timeout_ms(seconds) == ms
    assert (
        pb2.PrefillCall.FromString(encode_call(1, pb2.PrefillRequest(), timeout_ms(seconds))).timeout_ms == ms
    )


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_encode_call_refuses_a_timeout_the_field_cannot_hold(bad: int) -> None:
    with pytest.raises(ValueError, match="uint32"):
        encode_call(1, pb2.PrefillRequest(), bad)
