"""A discrete-event simulation of a baton pool serving a workload (pure, deterministic).

It models what baton does, with costs from a :class:`~.profile.Profile`:

Disaggregated (P prefill workers, D decode workers):
  * the router (``overheads.router_s``) places each request on the prefill worker with the fewest
    pending prompt tokens and on the decode worker with the fewest requests in flight (ties: the
    lowest index), as ``router/placement.py`` does on its reported loads;
  * a prefill worker runs FIFO batches of up to ``prefill_max_batch`` requests; a batch takes
    ``prefill_seconds(sum of their tokens)`` and yields every request's first token (TTFT);
  * the KV then moves (``kv_transfer_seconds(prompt tokens)`` + ``overheads.handoff_s``) and the
    request waits FIFO on its decode worker, joining the continuous batch at the next step
    boundary when a slot is free (an idle worker starts a step at once);
  * each decode step emits one token for every running request and takes
    ``decode_step_seconds(batch, mean context)``.
Colocated (N workers, ``prefill_replicas == 0``, as an InferencePool without a prefill pool):
  * each step first admits waiting requests FIFO while slots are free and their prefill tokens fit
    the step's budget (4096; the first is always admitted), as ``engine/decode.py`` does; the step
    takes their prefill time plus the decode step time of the whole batch, and admitted requests
    get their first token and their second at its end. Long prompts arriving stall every running
    request's next token: that is the ITL cost colocation pays.

Every step costs O(log n) whatever the batch: a request's finishing step is known when it joins
(steps it needs from the step counter), and the batch's summed context grows by the batch size
per step. 2000 requests simulate in a few tens of milliseconds.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from baton_operator.planning.profile import Profile
from baton_operator.planning.stats import SimResult
from baton_operator.planning.workload import Requests, Workload

ARRIVE, PREFILL_DONE, KV_READY, STEP_END = 0, 1, 2, 3
COLOCATED_PREFILL_BUDGET = 4096  # engine/decode.py's max_prefill_tokens_per_step


@dataclass(frozen=True)
class Deployment:
    """Workers of a pool. ``prefill_replicas == 0`` is colocated: ``decode_replicas`` workers that
    each prefill and decode (the InferencePool with ``spec.prefill.replicas: 0``)."""

    prefill_replicas: int
    decode_replicas: int
    prefill_tp: int = 1
    decode_tp: int = 1
    prefill_max_batch: int = 1
    decode_max_batch: int = 64
    kv_backend: str = "auto"
    prefill_budget: int = COLOCATED_PREFILL_BUDGET

    def __post_init__(self) -> None:
        if self.prefill_replicas < 0 or self.decode_replicas < 1:
            raise ValueError("a deployment needs >= 0 prefill and >= 1 decode workers")
        if self.prefill_max_batch < 1 or self.decode_max_batch < 1:
            raise ValueError("max batch sizes must be >= 1")

    @classmethod
    def colocated(cls, workers: int, tp: int = 1, max_batch: int = 64) -> Deployment:
        return cls(0, workers, tp, tp, decode_max_batch=max_batch)

    @property
    def mode(self) -> str:
        return "colocated" if self.prefill_replicas == 0 else "disaggregated"

    def cost(self, profile: Profile) -> int:
        """GPUs (cpu profile: workers) this deployment occupies."""
        return self.prefill_replicas * profile.worker_cost(
            self.prefill_tp
        ) + self.decode_replicas * profile.worker_cost(self.decode_tp)

    def describe(self) -> str:
        if self.mode == "colocated":
            return f"{self.decode_replicas} colocated (TP {self.decode_tp}, batch {self.decode_max_batch})"
        return (
            f"{self.prefill_replicas} prefill (TP {self.prefill_tp}, batch {self.prefill_max_batch}) + "
            f"{self.decode_replicas} decode (TP {self.decode_tp}, batch {self.decode_max_batch})"
        )


class _Decoder:
    """One worker's continuous batch: requests run until their last token, counted in steps."""

    __slots__ = ("waiting", "running", "ctx_sum", "steps", "finish", "busy", "inflight", "admitted")

    def __init__(self) -> None:
        self.waiting: deque[int] = deque()
        self.running = 0
        self.ctx_sum = 0  # summed context of the running requests during the next step
        self.steps = 0  # completed steps
        self.finish: list[tuple[int, int, int]] = []  # (last step, request, context to remove)
        self.busy = False
        self.inflight = 0  # requests placed here and not finished (the router's load)
        self.admitted: list[int] = []  # colocated: prefilled in the current step

    def join(self, rid: int, prompt: int, tokens_left: int) -> None:
        """``rid`` runs from the next step on for ``tokens_left`` steps."""
        self.running += 1
        self.ctx_sum += prompt + 1
        heapq.heappush(self.finish, (self.steps + tokens_left, rid, prompt + 1 + tokens_left))

    def end_step(self) -> list[int]:
        """Count a finished step; the requests whose last token it was."""
        self.steps += 1
        self.ctx_sum += self.running
        done = []
        while self.finish and self.finish[0][0] <= self.steps:
            _, rid, ctx = heapq.heappop(self.finish)
            self.running -= 1
            self.ctx_sum -= ctx
            done.append(rid)
        return done


def simulate(profile: Profile, workload: Workload | Requests, deployment: Deployment) -> SimResult:
    """Simulate ``deployment`` serving ``workload`` (sampled with its seed) on ``profile``'s costs."""
    reqs = workload.sample() if isinstance(workload, Workload) else workload
    if deployment.mode == "colocated":
        first, last = _colocated(profile, reqs, deployment)
    else:
        first, last = _disaggregated(profile, reqs, deployment)
    return SimResult.of(reqs, first, last, deployment.describe())


def _disaggregated(profile: Profile, r: Requests, dep: Deployment) -> tuple[list[float], list[float]]:
    n = len(r)
    first, last = [0.0] * n, [0.0] * n
    prefill_fit, decode_fit = profile.prefill_fit(dep.prefill_tp), profile.decode_fit(dep.decode_tp)
    kv_fit = profile.kv_fit(dep.kv_backend)
    handoff, router = profile.overheads.handoff_s, profile.overheads.router_s
    queues: list[deque[int]] = [deque() for _ in range(dep.prefill_replicas)]
    pending = [0] * dep.prefill_replicas  # prompt tokens placed there and not yet prefilled
    busy = [False] * dep.prefill_replicas
    decoders = [_Decoder() for _ in range(dep.decode_replicas)]
    placed = [0] * n  # each request's decode worker
    prefilling: list[list[int]] = [[] for _ in range(dep.prefill_replicas)]  # each worker's batch
    events: list[tuple[float, int, int, int]] = [(r.arrival[i] + router, i, ARRIVE, i) for i in range(n)]
    heapq.heapify(events)
    seq = n

    def start_prefill(p: int, now: float) -> None:
        nonlocal seq
        q, batch = queues[p], []
        while q and len(batch) < dep.prefill_max_batch:
            batch.append(q.popleft())
        busy[p] = True
        seq += 1
        done = now + prefill_fit(sum(r.prefill_tokens[i] for i in batch))
        heapq.heappush(events, (done, seq, PREFILL_DONE, p))
        prefilling[p] = batch

    def start_step(d: int, now: float) -> None:
        nonlocal seq
        w = decoders[d]
        while w.waiting and w.running < dep.decode_max_batch:
            rid = w.waiting.popleft()
            w.join(rid, r.prompt_tokens[rid], r.output_tokens[rid] - 1)
        w.busy = w.running > 0
        if w.busy:
            seq += 1
            step = decode_fit(w.running, w.ctx_sum / w.running)
            heapq.heappush(events, (now + step, seq, STEP_END, d))

    while events:
        now, _, kind, x = heapq.heappop(events)
        if kind == ARRIVE:
            p = min(range(len(pending)), key=pending.__getitem__)
            pending[p] += r.prefill_tokens[x]
            d = min(range(len(decoders)), key=lambda j: decoders[j].inflight)
            decoders[d].inflight += 1
            placed[x] = d
            queues[p].append(x)
            if not busy[p]:
                start_prefill(p, now)
        elif kind == PREFILL_DONE:
            for rid in prefilling[x]:
                first[rid] = now
                pending[x] -= r.prefill_tokens[rid]
                if r.output_tokens[rid] <= 1:
                    last[rid] = now
                    decoders[placed[rid]].inflight -= 1
                    continue
                seq += 1
                ready = now + kv_fit(r.prompt_tokens[rid]) + handoff
                heapq.heappush(events, (ready, seq, KV_READY, rid))
            busy[x] = False
            if queues[x]:
                start_prefill(x, now)
        elif kind == KV_READY:
            w = decoders[placed[x]]
            w.waiting.append(x)
            if not w.busy:
                start_step(placed[x], now)
        else:
            w = decoders[x]
            for rid in w.end_step():
                last[rid] = now
                w.inflight -= 1
            start_step(x, now)
    return first, last


def _colocated(profile: Profile, r: Requests, dep: Deployment) -> tuple[list[float], list[float]]:
    n = len(r)
    first, last = [0.0] * n, [0.0] * n
    prefill_fit, decode_fit = profile.prefill_fit(dep.decode_tp), profile.decode_fit(dep.decode_tp)
    router = profile.overheads.router_s
    workers = [_Decoder() for _ in range(dep.decode_replicas)]
    events: list[tuple[float, int, int, int]] = [(r.arrival[i] + router, i, ARRIVE, i) for i in range(n)]
    heapq.heapify(events)
    seq = n

    def start_step(k: int, now: float) -> None:
        nonlocal seq
        w = workers[k]
        budget, tokens = dep.prefill_budget, 0
        w.admitted = []
        while w.waiting and w.running + len(w.admitted) < dep.decode_max_batch:
            rid = w.waiting[0]
            need = r.prefill_tokens[rid]
            if w.admitted and need > budget:
                break
            w.waiting.popleft()
            w.admitted.append(rid)
            budget -= need
            tokens += need
        for rid in w.admitted:
            if r.output_tokens[rid] > 1:  # finished at its first token: never decodes
                w.join(rid, r.prompt_tokens[rid], r.output_tokens[rid] - 1)
        step = prefill_fit(tokens) if tokens else 0.0
        if w.running:
            step += decode_fit(w.running, w.ctx_sum / w.running)
        w.busy = bool(w.admitted) or w.running > 0
        if w.busy:
            seq += 1
            heapq.heappush(events, (now + step, seq, STEP_END, k))

    while events:
        now, _, kind, x = heapq.heappop(events)
        if kind == ARRIVE:
            k = min(range(len(workers)), key=lambda j: workers[j].inflight)
            w = workers[k]
            w.inflight += 1
            w.waiting.append(x)
            if not w.busy:
                start_step(k, now)
        else:
            w = workers[x]
            for rid in w.admitted:
                first[rid] = now
                if r.output_tokens[rid] <= 1:
                    last[rid] = now
                    w.inflight -= 1
            if w.running:
                for rid in w.end_step():
                    last[rid] = now
                    w.inflight -= 1
            start_step(x, now)
    return first, last
