"""PrefillStream over real gRPC: the router's PrefillCaller against a worker's PrefillStreams.

The server is a real grpc server in this process; what serves each call is a scripted stand-in
for the prefill engine (the request id says what it does), so that every path of the stream
(ordering, refusals, deadlines, cancellation, breaks, fallback to unary) can be driven exactly.
The engine behind the real service is covered end to end by the router and KV handoff tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from baton_worker.router.prefill_stream import FALLBACK_S, PrefillCaller
from baton_worker.rpc import pb2, pb2_grpc
from baton_worker.server.prefill_stream import CallRefused, CallState, PrefillStreams
from polling import wait_until, wait_until_async


class Engine:
    """Serves a call as its request id says: ``sleep-<ms>``, ``refuse``, ``boom``, ``block``
    (until ``release`` is set or nobody waits for the call any more)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen_inactive: list[str] = []  # calls that found nobody waiting when done
        self.remaining: dict[str, float | None] = {}

    def __call__(self, request: pb2.PrefillRequest, call: CallState) -> pb2.PrefillResponse:
        rid = request.request_id
        self.remaining[rid] = call.time_remaining()
        if rid.startswith("sleep-"):
            time.sleep(int(rid.split("-")[1]) / 1000)
        elif rid.startswith("refuse"):
            raise CallRefused(grpc.StatusCode.OUT_OF_RANGE, f"context_length_exceeded: {rid} is too long")
        elif rid.startswith("boom"):
            raise ValueError("engine bug")
        elif rid.startswith("block"):  # like a long prefill: runs until released or abandoned
            end = time.monotonic() + 30
            while call.is_active() and not self.release.is_set() and time.monotonic() < end:
                time.sleep(0.005)
        if not call.is_active():
            self.seen_inactive.append(rid)
        resp = pb2.PrefillResponse(first_token=len(request.prompt_token_ids))
        resp.handle.request_id = rid
        return resp


class Servicer(pb2_grpc.PrefillWorkerServicer):
    def __init__(self, engine: Engine, streams: PrefillStreams | None) -> None:
        self.engine = engine
        self.streams = streams
        self.unary = 0
        self.streams_opened = 0

    def Prefill(self, request, context):  # noqa: N802, ANN001, ANN201
        self.unary += 1
        try:
            return self.engine(request, context)
        except CallRefused as exc:
            context.abort(exc.code, exc.message)

    def PrefillStream(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
        self.streams_opened += 1
        if self.streams is None:  # a worker of an older version
            return super().PrefillStream(request_iterator, context)
        return self.streams.serve(request_iterator, context)


class Worker:
    def __init__(
        self, *, with_streams: bool = True, max_streams: int = 8, max_calls: int = 32, port: int = 0
    ) -> None:
        self.engine = Engine()
        self.streams = (
            PrefillStreams(self.engine, max_calls=max_calls, max_streams=max_streams)
            if with_streams
            else None
        )
        self.servicer = Servicer(self.engine, self.streams)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb2_grpc.add_PrefillWorkerServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(5)  # first: a blocked call must not finish before the server dies
        self.engine.release.set()
        if self.streams is not None:
            self.streams.close()


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.stop()


def request(rid: str, tokens: int = 3) -> pb2.PrefillRequest:
    return pb2.PrefillRequest(request_id=rid, prompt_token_ids=list(range(tokens)))


def run_client(address: str, body) -> object:  # noqa: ANN001
    """Run ``await body(caller)`` with a PrefillCaller on a fresh grpc.aio channel."""

    async def main() -> object:
        async with grpc.aio.insecure_channel(address) as ch:
            caller = PrefillCaller(ch, address)
            try:
                return await body(caller)
            finally:
                await caller.close()

    return asyncio.run(main())


def test_concurrent_calls_share_one_stream_and_each_gets_its_own_reply(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> tuple:
        used: list[str] = []
        # Later calls finish first: replies come back out of order and must still match.
        jobs = [
            caller.prefill(request(f"sleep-{(20 - i) * 10}-{i}", tokens=i + 1), 10, used.append)
            for i in range(20)
        ]
        return await asyncio.gather(*jobs), used, caller.stream_calls, caller.unary_calls

    replies, used, stream_calls, unary_calls = run_client(worker.address, body)
    assert [r.handle.request_id for r in replies] == [f"sleep-{(20 - i) * 10}-{i}" for i in range(20)]
    assert [r.first_token for r in replies] == [i + 1 for i in range(20)]
    assert (stream_calls, unary_calls, worker.servicer.unary) == (20, 0, 0)
    assert used == ["stream"] * 20
    # Every call had its deadline sent along: the worker saw the time left (under 10 s).
    assert all(0 < (left or 0) <= 10 for left in worker.engine.remaining.values())


def test_refused_and_failed_calls_keep_the_unary_status_and_the_stream_goes_on(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> list:
        out = []
        for rid in ("refuse-1", "boom-1", "sleep-1-ok"):
            try:
                out.append((await caller.prefill(request(rid), 10)).handle.request_id)
            except grpc.aio.AioRpcError as e:
                out.append((e.code(), e.details()))
        out.append(caller.stream_calls)
        return out

    refused, boom, ok, stream_calls = run_client(worker.address, body)
    assert refused == (grpc.StatusCode.OUT_OF_RANGE, "context_length_exceeded: refuse-1 is too long")
    assert boom[0] == grpc.StatusCode.INTERNAL and "ValueError: engine bug" in boom[1]
    assert ok == "sleep-1-ok"
    assert stream_calls == 3


def test_a_call_past_its_deadline_fails_and_the_worker_knows_nobody_waits(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> tuple:
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await caller.prefill(request("block-deadline"), 0.3)
        took = time.monotonic() - t0
        # The stream still serves the next call.
        nxt = await caller.prefill(request("sleep-1-after"), 10)
        return err.value, took, nxt

    err, took, nxt = run_client(worker.address, body)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 5
    assert nxt.handle.request_id == "sleep-1-after"
    # The engine finished the abandoned call and saw it inactive: the real service frees its KV.
    wait_until(
        lambda: "block-deadline" in worker.engine.seen_inactive,
        timeout=10,
        what="the abandoned call to be inactive",
    )


def test_a_cancelled_caller_tells_the_worker_over_the_open_stream(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> tuple[bool, bool]:
        task = asyncio.create_task(caller.prefill(request("block-cancel"), 30))
        await wait_until_async(
            lambda: "block-cancel" in worker.engine.remaining,
            timeout=10,
            what="the worker to start block-cancel",
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancel message, not the end of the stream, must stop the call: the stream stays open.
        await wait_until_async(
            lambda: "block-cancel" in worker.engine.seen_inactive,
            timeout=5,
            what="the worker to see block-cancel given up",
        )
        return "block-cancel" in worker.engine.seen_inactive, caller.streaming

    seen, still_streaming = run_client(worker.address, body)
    assert seen and still_streaming


def test_calls_waiting_for_a_serving_slot_past_their_deadline_never_run() -> None:
    w = Worker(max_calls=2)
    try:

        async def body(caller: PrefillCaller) -> list:
            # Two calls take both slots until their deadline (1 s); four more wait for a slot, and
            # their own deadline (0.3 s) passes while they wait.
            running = [asyncio.create_task(caller.prefill(request(f"block-run-{i}"), 1.0)) for i in range(2)]
            await wait_until_async(lambda: len(w.engine.remaining) >= 2, timeout=10, what="two calls to run")
            waiting = [caller.prefill(request(f"block-wait-{i}"), 0.3) for i in range(4)]
            return await asyncio.gather(*running, *waiting, return_exceptions=True)

        outcomes = run_client(w.address, body)
        assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes), outcomes
        assert {o.code() for o in outcomes} == {grpc.StatusCode.DEADLINE_EXCEEDED}
        wait_until(
            lambda: len(w.engine.seen_inactive) >= 2, timeout=10, what="the two running calls to give up"
        )
        # The waiting calls were answered without running once a slot freed.
        assert sorted(w.engine.remaining) == ["block-run-0", "block-run-1"]
    finally:
        w.stop()


def test_cancelling_one_caller_mid_send_leaves_the_others_and_the_stream_alone(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> tuple:
        # Prompts of 200k tokens (~1 MB each) fill HTTP/2's flow-control window: sends queue.
        jobs = [
            asyncio.create_task(caller.prefill(request(f"sleep-1-big-{i}", 200_000), 60)) for i in range(12)
        ]
        await asyncio.sleep(0)
        jobs[5].cancel()
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        return outcomes

    outcomes = run_client(worker.address, body)
    assert isinstance(outcomes[5], asyncio.CancelledError)
    ok = [o for i, o in enumerate(outcomes) if i != 5]
    assert all(isinstance(o, pb2.PrefillResponse) for o in ok), [
        o for o in ok if not isinstance(o, pb2.PrefillResponse)
    ]
    assert worker.servicer.streams_opened == 1


def test_a_broken_stream_fails_calls_in_flight_unavailable_and_the_next_call_reconnects() -> None:
    first = Worker()
    port = first.port

    async def body(caller: PrefillCaller) -> tuple:
        task = asyncio.create_task(caller.prefill(request("block-dies"), 30))
        await wait_until_async(
            lambda: "block-dies" in first.engine.remaining, timeout=10, what="the worker to start block-dies"
        )
        t0 = time.monotonic()
        await asyncio.to_thread(first.stop)  # the worker dies mid-call
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await task
        took = time.monotonic() - t0
        second = await asyncio.to_thread(Worker, port=port)  # restarted on the same address
        try:
            for _ in range(100):  # the channel reconnects after its back-off
                try:
                    return (
                        err.value,
                        took,
                        (await caller.prefill(request("sleep-1-again"), 5)),
                        caller.stream_calls,
                    )
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.1)
            raise AssertionError("no call succeeded after the worker restarted")
        finally:
            await asyncio.to_thread(second.stop)

    err, took, again, stream_calls = run_client(f"127.0.0.1:{port}", body)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert "prefill stream" in err.details()
    assert took < 10
    assert again.handle.request_id == "sleep-1-again"
    assert stream_calls >= 2


def test_reset_fails_calls_in_flight_at_once(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> grpc.aio.AioRpcError:
        task = asyncio.create_task(caller.prefill(request("block-reset"), 30))
        await wait_until_async(
            lambda: "block-reset" in worker.engine.remaining,
            timeout=10,
            what="the worker to start block-reset",
        )
        caller.reset("worker stopped answering Health (DEADLINE_EXCEEDED)")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(task, 5)
        return err.value

    err = run_client(worker.address, body)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "was reset: worker stopped answering Health" in err.details()
    wait_until(
        lambda: "block-reset" in worker.engine.seen_inactive, timeout=10, what="the reset call to be inactive"
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"with_streams": False}, {"max_streams": 0}],
    ids=["older-worker-unimplemented", "stream-slots-exhausted"],
)
def test_a_worker_taking_no_stream_is_called_unary_for_a_while(kwargs: dict) -> None:
    w = Worker(**kwargs)
    try:

        async def body(caller: PrefillCaller) -> tuple:
            used: list[str] = []
            a = await caller.prefill(request("sleep-1-a"), 5, used.append)
            b = await caller.prefill(request("sleep-1-b"), 5, used.append)
            return a, b, used, caller._unary_until  # noqa: SLF001

        a, b, used, unary_until = run_client(w.address, body)
        assert (a.handle.request_id, b.handle.request_id) == ("sleep-1-a", "sleep-1-b")
        assert used == ["unary", "unary"]
        assert w.servicer.unary == 2  # each call ran exactly once
        # ... for FALLBACK_S, then the stream is tried again (the worker may have been upgraded).
        assert time.monotonic() + FALLBACK_S - 5 < unary_until <= time.monotonic() + FALLBACK_S
    finally:
        w.stop()


def test_end_all_ends_streams_and_callers_reconnect(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> tuple:
        await caller.prefill(request("sleep-1-a"), 5)
        assert worker.streams is not None and worker.streams.open_streams == 1
        inflight = asyncio.create_task(caller.prefill(request("block-at-end"), 30))
        await wait_until_async(
            lambda: "block-at-end" in worker.engine.remaining,
            timeout=10,
            what="the worker to start block-at-end",
        )
        worker.streams.end_all()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(inflight, 10)
        await wait_until_async(lambda: not caller.streaming, timeout=10, what="the stream to end")
        streaming_after_end = caller.streaming
        b = await caller.prefill(request("sleep-1-b"), 5)
        return err.value, streaming_after_end, b, worker.servicer.streams_opened

    err, streaming_after_end, b, opened = run_client(worker.address, body)
    # A call in flight when the worker ends its streams fails retryable, and the worker knows
    # nobody waits for it.
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    wait_until(
        lambda: "block-at-end" in worker.engine.seen_inactive, timeout=10, what="the cut call to be inactive"
    )
    assert streaming_after_end is False
    assert b.handle.request_id == "sleep-1-b"
    assert opened == 2


def test_closing_the_caller_still_delivers_calls_in_flight(worker: Worker) -> None:
    async def body(caller: PrefillCaller) -> str:
        task = asyncio.create_task(caller.prefill(request("sleep-300-inflight"), 10))
        await wait_until_async(
            lambda: "sleep-300-inflight" in worker.engine.remaining,
            timeout=10,
            what="the worker to start sleep-300-inflight",
        )
        await caller.close()  # half-close: the worker finishes what it has
        return (await task).handle.request_id

    assert run_client(worker.address, body) == "sleep-300-inflight"


def test_a_duplicate_call_id_is_refused_without_ending_the_stream(worker: Worker) -> None:
    release = threading.Event()

    def calls() -> Iterator[pb2.PrefillCall]:
        yield pb2.PrefillCall(call_id=7, request=request("sleep-300-x"), timeout_ms=5000)
        yield pb2.PrefillCall(call_id=7, request=request("sleep-1-y"), timeout_ms=5000)
        release.wait(10)

    with grpc.insecure_channel(worker.address) as ch:
        replies = pb2_grpc.PrefillWorkerStub(ch).PrefillStream(calls(), timeout=20)
        first = next(replies)
        second = next(replies)
        release.set()
        rest = list(replies)
    assert (first.call_id, first.status_code) == (7, grpc.StatusCode.INTERNAL.value[0])
    assert "call_id 7 is already in flight" in first.status_message
    assert (second.call_id, second.status_code, second.response.handle.request_id) == (7, 0, "sleep-300-x")
    assert rest == []
