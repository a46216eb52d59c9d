"""SLO mode's planner run: the cheapest replicas of *this* pool that meet its SLOs (pure).

The capacity planner (:mod:`baton_operator.planning.plan`) searches every TP size and both
disaggregated and colocated pools; a running pool has fixed tensor parallelism and batch sizes
per role and per-role replica bounds. This module runs the planner's own machinery
(:class:`~baton_operator.planning.plan.Searcher`: the same simulations, SLO attainment and
throughput bound, and the same choice, the deployment sustaining the highest rate at the least
cost) over the pool's candidates only: P prefill x D decode replicas within each role's
[max(1, minReplicas), maxReplicas] and maxGpus. With fewer simulated requests than `baton plan`
(:data:`PLAN_REQUESTS`), one decision takes tens of milliseconds; :class:`PlanCache` keeps the
answers by (profile, SLO, bounds, rate bucket, length buckets), so a steady load costs none.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from baton_operator.planning.plan import Searcher, Slo, binding
from baton_operator.planning.profile import Profile
from baton_operator.planning.simulate import Deployment
from baton_operator.planning.stats import percentile
from baton_operator.planning.workload import LengthDist, Workload
from baton_operator.spec_slo import SloSpec

PLAN_REQUESTS = 500  # simulated requests per run (`baton plan` defaults to 2000)
CACHE_SIZE = 256
HEADROOM = 1.2  # an SLO out of reach: the least replicas whose throughput bound is 20% above the rate


@dataclass(frozen=True)
class Bounds:
    """Replicas the planner may choose per role, and the GPU budget (None: none)."""

    prefill_min: int
    prefill_max: int
    decode_min: int
    decode_max: int
    max_gpus: int | None = None


@dataclass(frozen=True)
class PoolPlan:
    """The planner's answer for one (rate, prompt length, output length)."""

    prefill: int
    decode: int
    gpus: int
    feasible: bool
    binding: str = ""
    max_rate: float = 0.0
    ttft_p90_ms: float | None = None
    itl_p90_ms: float | None = None
    reason: str = ""
    simulations: int = 0


def gpus(slo: SloSpec, prefill: int, decode: int) -> int:
    """What ``prefill`` + ``decode`` replicas cost against maxGpus."""
    return prefill * slo.prefill.pod_cost + decode * slo.decode.pod_cost


def candidates(slo: SloSpec, bounds: Bounds) -> list[Deployment]:
    """Every deployment of this pool within the bounds, cheapest first."""
    out = [
        Deployment(
            p,
            d,
            slo.prefill.tensor_parallel_size,
            slo.decode.tensor_parallel_size,
            slo.prefill.max_batch_size,
            slo.decode.max_batch_size,
            slo.kv_backend,
        )
        for p in range(max(1, bounds.prefill_min), bounds.prefill_max + 1)
        for d in range(max(1, bounds.decode_min), bounds.decode_max + 1)
        if bounds.max_gpus is None or gpus(slo, p, d) <= bounds.max_gpus
    ]
    return sorted(out, key=lambda d: (gpus(slo, d.prefill_replicas, d.decode_replicas), d.prefill_replicas))


def _result(
    s: Searcher,
    slo: SloSpec,
    dep: Deployment,
    rate: float,
    *,
    binding: str = "",
    max_rate: float = 0.0,
    reason: str = "",
) -> PoolPlan:
    run = s.run(dep, rate)
    return PoolPlan(
        dep.prefill_replicas,
        dep.decode_replicas,
        gpus(slo, dep.prefill_replicas, dep.decode_replicas),
        feasible=not reason,
        binding=binding,
        max_rate=round(max_rate, 3),
        ttft_p90_ms=round(percentile(run.ttft, 90) * 1000, 1),
        itl_p90_ms=round(percentile(run.itl, 90) * 1000, 1),
        reason=reason,
        simulations=s.simulations,
    )


def _below_idle(profile: Profile, slo: SloSpec, isl: int, osl: int) -> str:
    """Why no deployment can meet the SLOs even idle (as `baton plan` says it), or ""."""
    idle_ttft = profile.prefill_seconds(isl, slo.prefill.tensor_parallel_size) + profile.overheads.router_s
    if idle_ttft * 1000 > slo.ttft_ms:
        return (
            f"the TTFT SLO ({slo.ttft_ms:g} ms) is below an idle worker's TTFT for a mean prompt "
            f"({idle_ttft * 1000:.1f} ms)"
        )
    idle_itl = profile.decode_step_seconds(1, isl + osl / 2, slo.decode.tensor_parallel_size)
    if idle_itl * 1000 > slo.itl_ms:
        return f"the ITL SLO ({slo.itl_ms:g} ms) is below a decode step at batch 1 ({idle_itl * 1000:.1f} ms)"
    return ""


def plan_pool(
    profile: Profile,
    slo: SloSpec,
    bounds: Bounds,
    rate: float,
    isl: int,
    osl: int,
    requests: int = PLAN_REQUESTS,
) -> PoolPlan:
    """The cheapest replicas meeting ``slo`` at ``rate`` req/s with mean lengths ``isl``/``osl``.

    Walks the candidates by cost; at the first cost where some meet both SLOs (for
    ``slo.attainment`` of the simulated requests, under the throughput bound), the one that
    sustains the highest rate wins. None does: the closest miss (highest attainment; when the
    rate is beyond every candidate's throughput, the one with the most), ``feasible`` False. An
    SLO that even an idle worker misses: the least replicas with 20% throughput headroom.
    No requests (rate 0): the least replicas. Raises ValueError when the profile lacks the
    pool's TP sizes or KV backend.
    """
    deps = candidates(slo, bounds)
    if not deps:
        raise ValueError("no deployment fits the bounds and maxGpus")
    if rate <= 0:
        d = deps[0]
        return PoolPlan(d.prefill_replicas, d.decode_replicas, gpus(slo, *_pd(d)), True, reason="no requests")
    profile.resolve_backend(slo.kv_backend)
    workload = Workload(rate, LengthDist.fixed(isl), LengthDist.fixed(osl), num_requests=requests)
    s = Searcher(profile, workload, Slo(slo.ttft_ms / 1000, slo.itl_ms / 1000, slo.attainment))
    unreachable = _below_idle(profile, slo, isl, osl)
    if unreachable:  # no replica count helps: enough to keep up with the rate, no simulation sweep
        stable = [d for d in deps if s.bound(d) >= rate * HEADROOM]
        dep = stable[0] if stable else max(deps, key=s.bound)
        return _result(s, slo, dep, rate, reason=f"{unreachable}; sized to keep up with the rate")
    by_cost: dict[int, list[Deployment]] = {}
    for d in deps:
        by_cost.setdefault(gpus(slo, *_pd(d)), []).append(d)
    closest: tuple[Deployment, float] | None = None
    for cost in sorted(by_cost):
        ok = [d for d in by_cost[cost] if s.meets(d, rate)]
        if ok:
            chosen, max_rate = s.best(ok, rate)
            assert chosen is not None
            return _result(s, slo, chosen, rate, binding=binding(s, chosen, max_rate), max_rate=max_rate)
        for d in by_cost[cost]:
            if rate <= s.bound(d):
                att = s.run(d, rate).attainment(s.slo.ttft_s, s.slo.itl_s)
                if closest is None or att > closest[1]:
                    closest = (d, att)
    if closest is not None:
        dep, att = closest
        why = (
            f"the closest, {_pd(dep)[0]} prefill + {_pd(dep)[1]} decode, meets both for {att:.0%} of requests"
        )
    else:
        dep = max(deps, key=s.bound)
        why = f"none has the throughput: the most, {_pd(dep)[0]} prefill + {_pd(dep)[1]} decode, sustains {s.bound(dep):.1f} req/s"
    reason = f"no deployment within the bounds meets both SLOs for {slo.attainment:.0%} of requests; {why}"
    return _result(s, slo, dep, rate, reason=reason)


def _pd(d: Deployment) -> tuple[int, int]:
    return d.prefill_replicas, d.decode_replicas


class PlanCache:
    """The latest :data:`CACHE_SIZE` plans by key; ``hits`` and ``misses`` are counted."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._plans: OrderedDict[Hashable, PoolPlan] = OrderedDict()
        self._size = size
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], PoolPlan]) -> tuple[PoolPlan, bool]:
        """The plan for ``key`` (computed on a miss) and whether it came from the cache."""
        if key in self._plans:
            self._plans.move_to_end(key)
            self.hits += 1
            return self._plans[key], True
        plan = compute()
        self.misses += 1
        self._plans[key] = plan
        if len(self._plans) > self._size:
            self._plans.popitem(last=False)
        return plan, False
