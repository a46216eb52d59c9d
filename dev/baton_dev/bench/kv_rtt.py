"""The control plane of `baton bench kv`: what a request pays before its KV bytes move (the
Prefill call that returns a KvHandle, then the decode side's check of it), and gRPC's own floor
for the same round trip (:func:`baton_dev.bench.kv_report.rtt_metadata` reports them)."""

from __future__ import annotations

import time

from baton_dev.bench.kv_source import ECHO_METHOD, NO_HANDLE, bench_compat


async def handle_round_trips(address: str, ids: list[int], samples: int) -> dict[str, list[float]]:
    """Seconds per handle round trip of a prompt of token ``ids``, the way the router makes it, by kind:

    - ``stream``: ``Prefill`` of the prompt over the worker's long-lived PrefillStream
      (:class:`PrefillCaller`, grpc.aio) returning the KV handle, then the decode side's
      ``check_handle``: what the router does;
    - ``unary``: the same as one unary ``Prefill`` call (what the router did before);
    - ``stream_no_handle``: the same call answered without a handle (nothing issued, nothing
      checked): the control. ``stream`` minus this is what the KV metadata itself costs;
    - ``grpc_floor``: the bytes of the same call and of a reply with a handle, echoed over a bare
      bidi stream (``_echo_handler`` in :mod:`.kv_source`): no protobuf work, no framework, no handle issued or
      checked. What Python gRPC alone costs for this round trip on this machine.

    The kinds take turns call by call, so that the machine's noise hits them alike.
    """
    import grpc
    from baton_worker.kv.handle import check_handle
    from baton_worker.router.prefill_stream import PrefillCaller
    from baton_worker.rpc import pb2, pb2_grpc

    compat = bench_compat()
    out: dict[str, list[float]] = {"stream": [], "unary": [], "stream_no_handle": [], "grpc_floor": []}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb2_grpc.PrefillWorkerStub(ch)
        caller = PrefillCaller(ch, address)
        same = lambda b: b  # noqa: E731
        echo = ch.stream_stream(ECHO_METHOD, request_serializer=same, response_deserializer=same)()
        floor_call = pb2.PrefillCall(
            call_id=1, request=pb2.PrefillRequest(request_id="floor", prompt_token_ids=ids), timeout_ms=30000
        ).SerializeToString()

        async def floor(_request: pb2.PrefillRequest) -> pb2.PrefillResponse:
            await echo.write(floor_call)
            if await echo.read() == grpc.aio.EOF:
                raise AssertionError("the bench source's echo stream ended: no floor to measure")
            return pb2.PrefillResponse()  # nothing to check or release: the bytes were all it cost

        calls = {
            "stream": lambda r: caller.prefill(r, 30),
            "unary": lambda r: stub.Prefill(r, timeout=30),
            "stream_no_handle": lambda r: caller.prefill(r, 30),
            "grpc_floor": floor,
        }
        seq = 0
        for i in range(samples + 5):  # the first calls warm the channel and the threads
            for kind, call in calls.items():
                seq += 1
                rid = f"{NO_HANDLE if kind == 'stream_no_handle' else 'rtt-'}{seq}"
                request = pb2.PrefillRequest(request_id=rid, prompt_token_ids=ids)
                t0 = time.perf_counter()
                pre = await call(request)
                if pre.HasField("handle"):
                    check_handle(pre.handle, compat)
                took = time.perf_counter() - t0
                if i >= 5:
                    out[kind].append(took)
                # Every kind makes the Release the real flow makes (a no-op for the control).
                await stub.Release(
                    pb2.ReleaseRequest(request_id=rid, engine_id=pre.handle.engine_id), timeout=30
                )
        if caller.unary_calls:
            raise AssertionError("the bench source did not take a PrefillStream")
        await caller.close()
        await echo.done_writing()
    return out
