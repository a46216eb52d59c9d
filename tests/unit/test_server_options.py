"""Worker flags, wire <-> engine conversion and error -> gRPC status mapping (pure)."""

from __future__ import annotations

import grpc
import pytest
from baton_worker.engine import (
    DuplicateRequestError,
    InvalidRequestError,
    PoolExhaustedError,
    RequestOutput,
    RequestTooLongError,
)
from baton_worker.kv.errors import KvCompatError, KvExpiredError, KvHandleError, KvTransferError
from baton_worker.rpc import pb2
from baton_worker.server.convert import sampling_from_pb, status_for, token_chunk
from baton_worker.server.lifecycle import Lifecycle, NotAccepting
from baton_worker.server.main import parse_options


def test_server_defaults_depend_on_role() -> None:
    assert parse_options(["--role", "prefill"]).max_batch_size == 1
    d = parse_options(["--role", "decode", "--served-model-name", "llama"])
    assert d.max_batch_size == 64 and d.served_model_name == "llama" and d.kv_backend == "auto"
    assert d.kv_read_lanes == 0  # auto
    assert parse_options(["--role", "decode", "--kv-read-lanes", "3"]).kv_read_lanes == 3


def test_server_advertise_host_for_wildcard_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    assert parse_options(["--role", "decode", "--host", "0.0.0.0"]).advertise_host == "10.1.2.3"
    assert parse_options(["--role", "decode", "--host", "127.0.0.1"]).advertise_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--kv-blocks", "0"], "--kv-blocks"),
        (["--block-size", "-1"], "--block-size"),
        (["--kv-ttl-s", "0"], "--kv-ttl-s"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--tensor-parallel-size", "3"], "--tensor-parallel-size"),
        (["--kv-read-lanes", "-1"], "--kv-read-lanes"),
    ],
)
def test_server_bad_flags(args: list[str], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        parse_options(["--role", "decode", *args])


def test_server_sampling_from_wire() -> None:
    sp = sampling_from_pb(
        pb2.SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, top_k=5, seed=3, stop=["x"])
    )
    assert (sp.max_tokens, sp.temperature, sp.top_k, sp.seed, sp.stop) == (7, 0.5, 5, 3, ("x",))
    unset = sampling_from_pb(pb2.SamplingParams())
    assert unset.top_p == 1.0 and unset.seed is None and unset.max_tokens == 16
    with pytest.raises(InvalidRequestError, match="sampling.temperature"):
        sampling_from_pb(pb2.SamplingParams(temperature=-1))


@pytest.mark.parametrize(
    ("exc", "code", "word"),
    [
        (RequestTooLongError("r", 10, 5), grpc.StatusCode.OUT_OF_RANGE, "context_length_exceeded"),
        (DuplicateRequestError("r"), grpc.StatusCode.ALREADY_EXISTS, "duplicate_request"),
        (InvalidRequestError("sampling.top_p", "bad"), grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p"),
        (PoolExhaustedError("r", 3, 1.0), grpc.StatusCode.RESOURCE_EXHAUSTED, "kv_pool_exhausted"),
        (KvCompatError({"dtype": ("a", "b")}), grpc.StatusCode.FAILED_PRECONDITION, "kv_incompatible"),
        (KvHandleError("block_ids", "x"), grpc.StatusCode.FAILED_PRECONDITION, "kv_handle_invalid"),
        (KvTransferError("peer died"), grpc.StatusCode.UNAVAILABLE, "kv_transfer_failed"),
        (KvExpiredError("gone"), grpc.StatusCode.UNAVAILABLE, "kv_expired"),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL, "boom"),
    ],
)
def test_server_status_for(exc: BaseException, code: grpc.StatusCode, word: str) -> None:
    s = status_for(exc)
    assert s.code == code and word in s.message


def test_server_token_chunk() -> None:
    out = RequestOutput("r", (5, 6), "ab", True, "length", 3, 4)
    c = token_chunk(out, 0.5, 100)
    assert list(c.token_ids) == [5, 6] and c.finish_reason == "length" and c.completion_tokens == 4
    assert token_chunk(RequestOutput("r", (5,), "a", False, None, 3, 1)).finish_reason == ""


def test_server_lifecycle() -> None:
    life = Lifecycle()
    assert life.readiness() == (False, "loading")
    with pytest.raises(NotAccepting), life.request():
        pass
    life.set_loaded()
    assert life.readiness() == (True, "ready")
    with life.request():
        assert life.inflight == 1
        assert not life.wait_idle(0.01)
        life.start_drain()
        assert life.readiness() == (False, "draining")
    assert life.wait_idle(0.01)
    with pytest.raises(NotAccepting, match="draining"), life.request():
        pass
