"""Start real `baton worker` processes for the KV and server tests, and talk to them over gRPC."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from baton_dev import worker_proc
from baton_worker.rpc import pb2


class WorkerProc(worker_proc.WorkerProc):
    """A `baton worker` on one thread, as the tests run it (the machine has two cores)."""

    def __init__(self, role: str, *args: str) -> None:
        super().__init__(role, "--threads", "1", *args)


def all_blocks_free(worker: WorkerProc) -> bool:
    h = worker.health()
    return h.free_blocks == h.total_blocks


def generate(
    decode: WorkerProc,
    request_id: str,
    prompt: list[int],
    sampling: pb2.SamplingParams,
    prefill: pb2.PrefillResponse | None = None,
    timeout: float = 60.0,
) -> tuple[list[int], list[pb2.TokenChunk]]:
    """Run Generate to the end; returns (all token ids, chunks)."""
    req = pb2.GenerateRequest(request_id=request_id, prompt_token_ids=prompt, sampling=sampling)
    if prefill is not None:
        req.handle.CopyFrom(prefill.handle)
        req.first_token = prefill.first_token
    chunks = list(decode.decode_stub().Generate(req, timeout=timeout))
    return [t for c in chunks for t in c.token_ids], chunks


@contextlib.contextmanager
def running(procs: dict[str, WorkerProc]) -> Iterator[dict[str, WorkerProc]]:
    """Wait until every worker of ``procs`` is ready; kill them all on the way out (also when one
    of them fails to start)."""
    try:
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.kill()
