"""The prefill side of `baton bench kv`: a child process holding a patterned KV pool.

It has no model: a Llama-3-8B-shaped pool (32 layers, 8 KV heads of dim 128, bfloat16: 128 KiB
per token) filled with a counting pattern, served through the real :class:`KvSource` and gRPC
service (``Prefill`` returns a real KvHandle, ``GetAgentMetadata``, ``PullKv``, ``Release``,
``PrefillStream``), plus a bare echo stream that measures the gRPC floor. :mod:`.kv` starts it
with :func:`start_source` and plays the decode side.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
from concurrent import futures

MIB = 1 << 20
LAYERS, HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 8
BLOCK_BYTES = LAYERS * 2 * HEADS * BLOCK * HEAD_DIM * 2  # all layers of one block: 1 MiB
RTT_MIB = 512  # an 8B model's 4k-token prompt: the size the handle round trip is compared with
NO_HANDLE = "nohandle-"  # request ids the bench source answers without issuing a handle


def geometry_blocks(nbytes: int) -> int:
    return max(1, nbytes // BLOCK_BYTES)


def fill_pattern(storage) -> None:  # noqa: ANN001 - a torch tensor
    import torch

    flat = storage.view(-1).view(torch.int64)
    torch.arange(flat.numel(), dtype=torch.int64, out=flat)


def serve_source(num_blocks: int, device: str = "cpu") -> int:
    """The child: hold a patterned pool and serve the prefill side's control plane."""
    import grpc
    import torch
    from baton_worker.kv.grpc_stream import GRPC_OPTIONS
    from baton_worker.kv.nixl_agent import apply_ucx_defaults, nixl_available
    from baton_worker.kv.source import KvSource, PullRefused
    from baton_worker.rpc import pb2, pb2_grpc
    from baton_worker.server.prefill_stream import PrefillStreams

    torch.set_num_threads(1)
    backend = "nixl" if nixl_available() else "grpc"
    if backend == "nixl":
        apply_ucx_defaults(cuda=device.startswith("cuda"))
    storage = torch.empty(LAYERS, num_blocks, 2, HEADS, BLOCK, HEAD_DIM, dtype=torch.bfloat16, device=device)
    fill_pattern(storage)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    source = KvSource(
        storage=storage,
        compat=bench_compat(),
        free=lambda _rid, _blocks: None,
        backend=backend,
        address=f"127.0.0.1:{port}",
        ttl_s=600,
    )

    def prefill(request, call):  # noqa: ANN001, ANN202 - the worker's Prefill, without a model
        if request.request_id.startswith(NO_HANDLE):
            return pb2.PrefillResponse(first_token=1)  # the control: the same call, no KV handed out
        n = len(request.prompt_token_ids) // BLOCK
        handle = source.issue(request.request_id, list(range(n)), n * BLOCK)
        if not call.is_active():
            source.release(request.request_id)
        return pb2.PrefillResponse(handle=handle)

    streams = PrefillStreams(prefill, max_calls=4)

    class Servicer(pb2_grpc.PrefillWorkerServicer):
        def Prefill(self, request, context):  # noqa: N802, ANN001, ANN201
            return prefill(request, context)

        def PrefillStream(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
            return streams.serve(request_iterator, context)

        def Release(self, request, context):  # noqa: N802, ANN001, ANN201
            return pb2.ReleaseResponse(released=source.release(request.request_id))

        def GetAgentMetadata(self, request, context):  # noqa: N802, ANN001, ANN201
            try:
                return source.agent_metadata(request.rank)
            except PullRefused as exc:
                context.abort(getattr(grpc.StatusCode, exc.status), str(exc))

        def PullKv(self, request, context):  # noqa: N802, ANN001, ANN201
            try:
                yield from source.pull(request)
            except PullRefused as exc:
                context.abort(getattr(grpc.StatusCode, exc.status), str(exc))

    pb2_grpc.add_PrefillWorkerServicer_to_server(Servicer(), server)
    server.add_generic_rpc_handlers((_echo_handler(source),))
    server.start()
    print(f"kv-bench-source ready {port} {backend}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    streams.close()
    server.stop(0)
    source.close()
    return 0


ECHO_METHOD = "/baton.bench.Echo/Stream"


def _echo_handler(source):  # noqa: ANN001, ANN202 - a KvSource; a grpc.GenericRpcHandler
    """The gRPC floor: a bare bidi stream of bytes that answers every message with the bytes of a
    PrefillReply carrying a real 4k-token handle. No protobuf, no framework: what any Python
    gRPC round trip of the same sizes costs on this machine."""
    import grpc
    from baton_worker.rpc import pb2

    n = geometry_blocks(RTT_MIB * MIB)
    reply = pb2.PrefillReply(
        call_id=1, response=pb2.PrefillResponse(handle=source.issue("echo", list(range(n)), n * BLOCK))
    )
    source.release("echo")
    reply_bytes = reply.SerializeToString()

    def echo(messages, _context):  # noqa: ANN001, ANN202
        for _ in messages:
            yield reply_bytes

    same = lambda b: b  # noqa: E731
    return grpc.method_handlers_generic_handler(
        ECHO_METHOD.split("/")[1], {"Stream": grpc.stream_stream_rpc_method_handler(echo, same, same)}
    )


def start_source(num_blocks: int, device: str = "cpu") -> tuple[subprocess.Popen, str, str]:
    """Start the prefill-side child (:func:`serve_source`); returns it, its gRPC address and its
    backend (``nixl`` or ``grpc``). It runs until its stdin is closed."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "baton_dev.bench.kv",
            "--serve-source",
            str(num_blocks),
            "--device",
            device,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The child's stderr (UCX and NIXL log there) is passed on to ours, and its last lines kept
    # to say why, should it fail to start.
    tail: collections.deque[str] = collections.deque(maxlen=200)

    def pump() -> None:
        assert child.stderr is not None
        for text in child.stderr:
            tail.append(text)
            sys.stderr.write(text)

    pumping = threading.Thread(target=pump, name="kv-bench-source-stderr", daemon=True)
    pumping.start()
    line, seen = "", []
    while child.stdout and not line.startswith("kv-bench-source ready"):
        line = child.stdout.readline()
        if not line:
            child.kill()
            child.wait(timeout=30)
            pumping.join(timeout=5)
            said = [x.strip() for x in tail if x.strip()]
            why = [x for x in said if "ERROR" in x or "Error" in x][-5:] or said[-5:]
            raise RuntimeError(
                "bench source did not start: " + " | ".join([*map(str.strip, seen[-5:]), *why])
            )
        seen.append(line)
    _, _, port, backend = line.split()
    return child, f"127.0.0.1:{port}", backend


def bench_compat():  # noqa: ANN202
    """What the bench pool's KV handles announce (both sides use it)."""
    from baton_worker.kv.handle import CompatInfo

    return CompatInfo(
        model="bench/llama-3-8b-shape",
        revision="pattern",
        dtype="bfloat16",
        num_layers=LAYERS,
        num_kv_heads=HEADS,
        head_dim=HEAD_DIM,
        block_size=BLOCK,
    )
