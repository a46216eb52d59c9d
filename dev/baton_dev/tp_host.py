"""A TP worker group driven from another process, for tests and benchmarks.

:meth:`TpHost.start` runs rank 0 of a :class:`~baton_worker.engine.tp_group.TpGroup` in a child
process (``python -m baton_dev.tp_host --role ROLE``), which starts the other ranks.
The caller then asks it, over a private pipe, to prefill (a prefill group returns the first token
and a real serialised KvHandle describing every rank's shard), to release, or to generate (a
decode group checks the handle, has every rank pull its own heads over NIXL from the prefill
ranks, then decodes greedily to the end). The gRPC servers (``baton worker``) wrap the same
group; this host only replaces their request plumbing, so several groups can run side by side
from one test process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from baton_worker.engine.tp_group import TpGroup, _Follower
from baton_worker.engine.tp_rank import TpGroupError, TpSpec
from baton_worker.engine.types import EngineRequest, Prefilled, SamplingParams

HANDLE_TTL_S = 120.0


@dataclass(frozen=True)
class Generated:
    """What a decode group produced for one request."""

    token_ids: list[int]
    pulls: list[Any]  # one PullResult per rank (empty for a local prefill)
    kv_seconds: float


@dataclass(frozen=True)
class PrefillReply:
    first_token: int
    handle: bytes  # serialised pb2.KvHandle
    prefill_seconds: float


class TpHost:
    """The caller's side of a hosted TP group."""

    def __init__(self, spec: TpSpec, follower: _Follower) -> None:
        self.spec = spec
        self._rank0 = follower
        self.shards: list[dict] = []  # every rank's KvShard fields, once ready

    @classmethod
    def start(cls, spec: TpSpec) -> TpHost:
        """Start the group; returns once every rank is ready, TpGroupError otherwise."""
        return cls.spawn(spec).wait_ready()

    @classmethod
    def spawn(cls, spec: TpSpec) -> TpHost:
        """Start the group's processes without waiting (several groups start side by side)."""
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        argv = [
            sys.executable, "-m", "baton_dev.tp_host", "--role", spec.role,
            "--spec", json.dumps(dataclasses.asdict(spec)), "--cmd-fd", str(cmd_r), "--reply-fd", str(rep_w),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, pass_fds=(cmd_r, rep_w), stdin=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(rep_w)
        return cls(
            spec, _Follower(0, proc, Connection(cmd_w, readable=False), Connection(rep_r, writable=False))
        )

    def wait_ready(self) -> TpHost:
        """Wait until every rank is ready; on failure stop the group and raise TpGroupError."""
        try:
            self.shards = self._rank0.recv(self.spec.timeout_s * 2)
        except BaseException:
            self.close()
            raise
        return self

    def call(self, *cmd: Any, timeout_s: float | None = None) -> Any:
        self._rank0.cmd.send(cmd)
        return self._rank0.recv(timeout_s or self.spec.timeout_s)

    def prefill(self, request_id: str, prompt: list[int], sampling: SamplingParams) -> PrefillReply:
        return self.call("prefill", request_id, prompt, sampling)

    def release(self, request_id: str) -> bool:
        return self.call("release", request_id)

    def generate(
        self, request_id: str, prompt: list[int], sampling: SamplingParams, pre: PrefillReply | None = None
    ) -> Generated:
        return self.call("generate", request_id, prompt, sampling, pre)

    def free_blocks(self) -> int:
        return self.call("free_blocks")

    def stop(self) -> None:
        """Ask the group to stop, without waiting (several groups stop side by side)."""
        try:
            self._rank0.cmd.send(("stop",))
        except OSError:
            pass

    def close(self, timeout_s: float = 20.0) -> None:
        """Stop the group and wait for rank 0 (which waits for the others); kill it if late."""
        self.stop()
        try:
            self._rank0.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._rank0.proc.kill()
            self._rank0.proc.wait(timeout_s)
        self._rank0.cmd.close()
        self._rank0.reply.close()


class _Rank0:
    """Rank 0's request handling inside the hosted process."""

    def __init__(self, group: TpGroup) -> None:
        from baton_worker.engine.decode import DecodeEngine
        from baton_worker.engine.prefill import PrefillRunner

        self.group = group
        if group.spec.role == "prefill":
            self.prefill_runner = group.drive(PrefillRunner(group.model, group.pool))
        else:
            self.engine = group.drive(DecodeEngine(group.model, group.pool))

    def prefill(self, request_id: str, prompt: list[int], sampling: SamplingParams) -> PrefillReply:
        from baton_worker.kv.handle import build_handle

        res = self.prefill_runner.prefill(request_id, prompt, sampling)
        shards = self.group.shards
        if not shards:  # no KV registered for transfer (TpSpec.nixl off): nothing to hand over
            return PrefillReply(res.first_token, b"", res.prefill_seconds)
        handle = build_handle(
            request_id=request_id,
            engine_id=self.group.spec.engine_id,
            compat=self.group.compat,
            num_tokens=res.num_tokens,
            shards=shards,
            block_ids=list(res.block_ids),
            prefill_address=shards[0].metadata_address,
            expires_unix_ms=int((time.time() + HANDLE_TTL_S) * 1000),
            backend="nixl",
        )
        return PrefillReply(res.first_token, handle.SerializeToString(), res.prefill_seconds)

    def generate(
        self, request_id: str, prompt: list[int], sampling: SamplingParams, pre: PrefillReply | None
    ) -> Generated:
        from baton_worker.kv.handle import check_handle
        from baton_worker.rpc import pb2

        pulls: list[Any] = []
        prefilled = None
        kv_seconds = 0.0
        if pre is not None:
            handle = pb2.KvHandle.FromString(pre.handle)
            check_handle(handle, self.group.compat)
            n = handle.layout.num_tokens
            blocks = self.group.pool.allocate(self.group.pool.blocks_needed(n))
            if blocks is None:
                raise TpGroupError(f"request {request_id!r}: no free KV blocks for {n} tokens")
            t0 = time.monotonic()
            try:
                pulls = self.group.pull(pre.handle, blocks)
            except BaseException:
                self.group.pool.free(blocks)
                raise
            kv_seconds = time.monotonic() - t0
            prefilled = Prefilled(tuple(blocks), n, pre.first_token)
        self.engine.add_request(EngineRequest(request_id, tuple(prompt), sampling, prefilled))
        tokens: list[int] = []
        while True:
            outs = [o for o in self.engine.step() if o.request_id == request_id]
            for out in outs:
                tokens.extend(out.new_token_ids)
                if out.finished:
                    return Generated(tokens, pulls, kv_seconds)

    def run(self, cmd: tuple) -> Any:
        kind = cmd[0]
        if kind == "prefill":
            return self.prefill(*cmd[1:])
        if kind == "release":
            return self.prefill_runner.release(cmd[1])
        if kind == "generate":
            return self.generate(*cmd[1:])
        if kind == "free_blocks":
            return self.group.pool.num_free
        raise ValueError(f"command: unknown {kind!r}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="baton-tp-host")
    p.add_argument("--role", required=True, choices=("prefill", "decode"))
    p.add_argument("--spec", required=True)
    p.add_argument("--cmd-fd", type=int, required=True)
    p.add_argument("--reply-fd", type=int, required=True)
    args = p.parse_args(argv)
    cmds = Connection(args.cmd_fd, writable=False)
    reply = Connection(args.reply_fd, readable=False)
    try:
        group = TpGroup.launch(TpSpec(**json.loads(args.spec)))
    except Exception as exc:
        reply.send((False, f"start-up failed: {type(exc).__name__}: {exc}"))
        return 1
    try:
        rank0 = _Rank0(group)
        reply.send((True, [dataclasses.asdict(s) for s in group.shards]))
        while True:
            try:
                cmd = cmds.recv()
            except EOFError:
                return 0
            if cmd[0] == "stop":
                return 0
            try:
                reply.send((True, rank0.run(cmd)))
            except Exception as exc:
                reply.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        group.close()


if __name__ == "__main__":
    # Run the module's own copy, so pickled classes are named baton_dev.tp_host.*, not __main__.*
    from baton_dev.tp_host import main as _entry

    sys.exit(_entry(sys.argv[1:]))
