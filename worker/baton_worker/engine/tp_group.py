"""A tensor-parallel worker group: N rank processes, rank 0 driving the others step by step.

Rank 0 lives in the serving process. :meth:`TpGroup.launch` starts ranks ``1..N-1`` as child
processes (``python -m baton_worker.engine.tp_group --role ROLE --rank R``), joins them in a
``torch.distributed`` group (NCCL on CUDA, gloo on CPU) and returns once every rank has loaded
its shard of the model and registered its own KV pool shard for transfer (what a rank holds and
runs: :mod:`baton_worker.engine.tp_rank`).

Rank 0 tells the others what to run over a private pipe per rank (not a collective: an idle
worker must be able to wait for its next request for hours, and a pipe closes when rank 0 dies,
so followers never outlive it). Each forward is then run by all ranks together: the sharded
layers' all-reduces keep them in lock step. Block ids are chosen by rank 0's pool alone; every
rank uses the same ids in its own pool shard. A pull runs on every rank at once, each reading its
own KV heads directly from the prefill ranks that hold them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch

from baton_worker.engine.tp_rank import PullCommand, RankState, TpGroupError, TpSpec, build_rank, check_spec


class _Follower:
    def __init__(self, rank: int, proc: subprocess.Popen, cmd: Connection, reply: Connection) -> None:
        self.rank, self.proc, self.cmd, self.reply = rank, proc, cmd, reply

    def recv(self, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while not self.reply.poll(0.05):
            if self.proc.poll() is not None:
                raise TpGroupError(f"TP rank {self.rank} exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TpGroupError(f"TP rank {self.rank} did not answer within {timeout_s:.0f}s")
        try:
            ok, value = self.reply.recv()
        except EOFError:
            raise TpGroupError(
                f"TP rank {self.rank} closed its pipe (exit code {self.proc.wait(5)})"
            ) from None
        if not ok:
            raise TpGroupError(f"TP rank {self.rank}: {value}")
        return value


class TpDrivenModel:
    """Rank 0's stand-in for a PagedModel: each forward is announced to every rank, then run.

    Give it to a PrefillRunner or DecodeEngine built on ``group.model`` / ``group.pool`` by
    assigning their ``runner`` attribute (see :meth:`TpGroup.drive`)."""

    def __init__(self, group: TpGroup) -> None:
        self._group = group
        self.model = group.rank0.model
        self.pool = group.rank0.pool
        self.device = group.rank0.paged.device

    def prefill(
        self, token_ids: list[list[int]], block_tables: list[list[int]], starts: Sequence[int] = ()
    ) -> torch.Tensor:
        return self.prefill_full(token_ids, block_tables, (), starts)[0]

    def prefill_full(
        self,
        token_ids: list[list[int]],
        block_tables: list[list[int]],
        keep: Sequence[bool],
        starts: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        # The followers run the same forward (the same cached prefix in their own head shard);
        # only rank 0's logits are read.
        self._group._announce(("prefill", token_ids, block_tables, list(starts)))
        return self._group.rank0.paged.prefill_full(token_ids, block_tables, keep, starts)

    def decode(
        self, token_ids: torch.Tensor, positions: torch.Tensor, block_table: torch.Tensor
    ) -> torch.Tensor:
        # Plain lists: pickled tensors would travel as shared-memory handles, not bytes.
        self._group._announce(("decode", token_ids.tolist(), positions.tolist(), block_table.tolist()))
        return self._group.rank0.paged.decode(token_ids, positions, block_table)


class TpGroup:
    """Rank 0 of a TP group (see the module docstring). ``model``/``pool`` are rank 0's shard."""

    def __init__(self, spec: TpSpec, rank0: RankState, followers: list[_Follower], init_file: str) -> None:
        self.spec = spec
        self.rank0 = rank0
        self.model = rank0.model
        self.pool = rank0.pool
        self.compat = rank0.compat
        self._followers = followers
        self._init_file = init_file
        self._send_lock = threading.Lock()  # whole messages, in one order for every rank
        self._pull_lock = threading.Lock()  # one pull at a time: replies come back in order
        self.shards: list[Any] = []  # a prefill group's ShardInfo per rank (None: the caller's)

    @classmethod
    def launch(cls, spec: TpSpec) -> TpGroup:
        """Start ranks 1..N-1, build rank 0 here, wait until every rank is ready.

        Raises TpConfigError for a TP size the model cannot use, TpGroupError naming the rank
        that failed to start (the others are stopped)."""
        check_spec(spec)
        fd, init_file = tempfile.mkstemp(prefix="baton-tp-", suffix=".store")
        os.close(fd)
        os.unlink(init_file)  # the file store creates it; a stale one would confuse it
        followers: list[_Follower] = []
        try:
            for rank in range(1, spec.tp_size):
                followers.append(_spawn(spec, rank, init_file))
            rank0 = build_rank(spec, 0, init_file)
            group = cls(spec, rank0, followers, init_file)
            infos = [rank0.shard_info()] + [f.recv(spec.timeout_s) for f in followers]
            group.shards = infos if spec.nixl and spec.role == "prefill" else []
            return group
        except BaseException:
            for f in followers:
                f.proc.kill()
                f.proc.wait(10)
            raise

    def drive(self, runner: Any) -> Any:
        """Make a PrefillRunner / DecodeEngine built on this group's model and pool run every
        forward on all ranks; returns ``runner``."""
        runner.runner = TpDrivenModel(self)
        return runner

    def _announce(self, cmd: tuple) -> None:
        with self._send_lock:
            for f in self._followers:
                try:
                    f.cmd.send(cmd)
                except (BrokenPipeError, OSError) as exc:
                    raise TpGroupError(f"TP rank {f.rank} is gone ({exc})") from exc

    def pull(self, handle_bytes: bytes, dst_blocks: list[int], timeout_s: float = 30.0) -> list[Any]:
        """Every rank pulls its own KV heads of a serialised KvHandle into ``dst_blocks`` at
        once; returns one PullResult per rank (rank order). Raises the first rank's error."""
        cmd = PullCommand(handle_bytes, list(dst_blocks), timeout_s)
        with self._pull_lock:
            self._announce(("pull", cmd))
            results: list[Any] = []
            error: BaseException | None = None
            try:
                results.append(self.rank0.pull(cmd))
            except Exception as exc:  # still collect the others' replies, keeping the pipes in step
                error = exc
            for f in self._followers:
                try:
                    results.append(f.recv(timeout_s + 10))
                except TpGroupError as exc:
                    error = error or exc
            if error is not None:
                raise error
            return results

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every rank (the followers exit on their own when the pipes close)."""
        for f in self._followers:
            try:
                f.cmd.send(("stop",))
            except OSError:
                pass
        for f in self._followers:
            try:
                f.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                f.proc.kill()
                f.proc.wait(timeout_s)
            f.cmd.close()
            f.reply.close()
        self.rank0.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if os.path.exists(self._init_file):
            os.unlink(self._init_file)


def _spawn(spec: TpSpec, rank: int, init_file: str) -> _Follower:
    cmd_r, cmd_w = os.pipe()
    rep_r, rep_w = os.pipe()
    argv = [
        sys.executable, "-m", "baton_worker.engine.tp_group", "--role", spec.role, "--rank", str(rank),
        "--spec", json.dumps(dataclasses.asdict(spec)), "--init-file", init_file,
        "--cmd-fd", str(cmd_r), "--reply-fd", str(rep_w),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, pass_fds=(cmd_r, rep_w), stdin=subprocess.DEVNULL)
    os.close(cmd_r)
    os.close(rep_w)
    return _Follower(rank, proc, Connection(cmd_w, readable=False), Connection(rep_r, writable=False))


def follower_main(argv: list[str]) -> int:
    """Rank 1..N-1: build the shard, report its KV shard, then run what rank 0 announces."""
    p = argparse.ArgumentParser(prog="baton-tp-rank")
    p.add_argument("--role", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--spec", required=True)
    p.add_argument("--init-file", required=True)
    p.add_argument("--cmd-fd", type=int, required=True)
    p.add_argument("--reply-fd", type=int, required=True)
    args = p.parse_args(argv)
    cmds = Connection(args.cmd_fd, writable=False)
    reply = Connection(args.reply_fd, readable=False)
    spec = TpSpec(**json.loads(args.spec))
    try:
        state = build_rank(spec, args.rank, args.init_file)
        reply.send((True, state.shard_info()))
    except Exception as exc:
        reply.send((False, f"start-up failed: {type(exc).__name__}: {exc}"))
        return 1
    try:
        while True:
            try:
                cmd = cmds.recv()
            except EOFError:  # rank 0 is gone
                return 0
            if cmd[0] == "stop":
                return 0
            try:
                out = state.run(cmd)
            except Exception as exc:
                if cmd[0] != "pull":
                    # A failed forward leaves the group out of step: leave, so rank 0's
                    # collective fails at once instead of waiting for its timeout.
                    reply.send((False, f"{cmd[0]} failed: {type(exc).__name__}: {exc}"))
                    return 1
                reply.send((False, f"pull failed: {type(exc).__name__}: {exc}"))
                continue
            if cmd[0] == "pull":
                reply.send((True, out))
    finally:
        state.close()


if __name__ == "__main__":
    # Run the module's own copy, so pickled classes are named baton_worker.engine.tp_group.*, not __main__.*
    from baton_worker.engine.tp_group import follower_main as _entry

    sys.exit(_entry(sys.argv[1:]))
