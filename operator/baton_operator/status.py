"""Pure status: what the operator observed of a pool's children -> the pool's status and conditions.

The operator owns observedGeneration, conditions, endpoint, <role>.replicas/readyReplicas/summary,
router, and <role>.desiredReplicas while that role's autoscaling is off (docs/internals.md). The
autoscaler owns the rest of each role's block and status.autoscaling; this module only reads those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from baton_operator.names import ROLE_LABEL, model_cache_claim_name
from baton_operator.spec import Pool

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "ScalingActive", "ModelCacheReady")


@dataclass(frozen=True)
class Observed:
    """Live state of a pool's children as read from the API (plain dicts, None when absent)."""

    prefill: Mapping[str, Any] | None = None  # the StatefulSet
    decode: Mapping[str, Any] | None = None  # the Deployment
    router: Mapping[str, Any] | None = None  # the Deployment
    router_service: Mapping[str, Any] | None = None
    model_cache: Mapping[str, Any] | None = None  # the PersistentVolumeClaim of spec.model.cache
    pods: Sequence[Mapping[str, Any]] = field(default_factory=list)
    # A permanent problem (bad spec) or the last failed apply, already phrased for a user.
    error: str = ""
    error_reason: str = ""


@dataclass(frozen=True)
class RoleView:
    name: str
    desired: int
    replicas: int
    ready: int
    updated: int
    current: bool  # the controller has seen the latest generation of the workload
    exists: bool


def _get(obj: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return default
        cur = cur.get(key)
    return default if cur is None else cur


def _role_view(name: str, workload: Mapping[str, Any] | None, spec_desired: int | None) -> RoleView:
    if workload is None:
        return RoleView(name, spec_desired or 0, 0, 0, 0, False, False)
    live_desired = _get(workload, "spec", "replicas", default=1)
    desired = live_desired if spec_desired is None else spec_desired
    generation = _get(workload, "metadata", "generation", default=0)
    seen = _get(workload, "status", "observedGeneration", default=0)
    return RoleView(
        name=name,
        desired=int(desired),
        replicas=int(_get(workload, "status", "replicas", default=0)),
        ready=int(_get(workload, "status", "readyReplicas", default=0)),
        updated=int(_get(workload, "status", "updatedReplicas", default=0)),
        current=seen >= generation,
        exists=True,
    )


def unschedulable_reasons(pods: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """role -> the scheduler's message for that role's first unschedulable pod (PodScheduled=False)."""
    found: dict[str, str] = {}
    for pod in sorted(pods, key=lambda p: str(_get(p, "metadata", "name", default=""))):
        role = _get(pod, "metadata", "labels", ROLE_LABEL, default="")
        if not role or role in found or _get(pod, "metadata", "deletionTimestamp"):
            continue
        for cond in _get(pod, "status", "conditions", default=[]) or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                found[role] = str(cond.get("message") or cond.get("reason") or "Unschedulable").strip()
    return found


def crashing_pods(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of pods with a container stuck in CrashLoopBackOff, image pull errors and the like."""
    bad = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"}
    names = []
    for pod in pods:
        for cs in _get(pod, "status", "containerStatuses", default=[]) or []:
            if _get(cs, "state", "waiting", "reason") in bad:
                names.append(f"{_get(pod, 'metadata', 'name')} ({cs['state']['waiting']['reason']})")
                break
    return sorted(names)


def endpoint(pool: Pool, service: Mapping[str, Any] | None) -> str:
    """The router's URL: the load balancer's address once it has one, else the in-cluster DNS name."""
    port = pool.spec.router.port
    for ingress in _get(service, "status", "loadBalancer", "ingress", default=[]) or []:
        host = ingress.get("ip") or ingress.get("hostname")
        if host:
            return f"http://{host}:{port}"
    return f"http://{pool.name}-router.{pool.namespace}.svc:{port}"


def _condition(
    ctype: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = previous.get(ctype)
    # lastTransitionTime moves only when the status flips.
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }


def _scaling_condition(
    pool: Pool, autoscaling_status: Mapping[str, Any], previous: Mapping[str, Mapping[str, Any]], now: str
) -> dict[str, Any] | None:
    roles = [r for r in ("prefill", "decode") if pool.spec.role(r).autoscaling.enabled]
    if not roles:
        return None
    if pool.spec.autoscaling.mode == "keda":
        return _condition(
            "ScalingActive",
            True,
            "KedaManaged",
            f"KEDA scales {', '.join(roles)}",
            pool.generation,
            previous,
            now,
        )
    if not autoscaling_status:
        return _condition(
            "ScalingActive",
            False,
            "AwaitingMetrics",
            "no queue-depth sample yet",
            pool.generation,
            previous,
            now,
        )
    if autoscaling_status.get("metricsAvailable") is False:
        message = str(autoscaling_status.get("message") or "queue-depth metrics unavailable; replicas held")
        return _condition(
            "ScalingActive", False, "MetricsUnavailable", message, pool.generation, previous, now
        )
    limited = str(autoscaling_status.get("limitedBy") or "")
    if limited:
        message = str(autoscaling_status.get("message") or f"scaling limited by {limited}")
        return _condition("ScalingActive", True, "ScalingLimited", message, pool.generation, previous, now)
    message = str(autoscaling_status.get("message") or f"autoscaling {', '.join(roles)} on queue depth")
    return _condition("ScalingActive", True, "MetricsAvailable", message, pool.generation, previous, now)


# (status, reason, message) of one condition.
Verdict = tuple[bool, str, str]


def model_cache_verdict(pool: Pool, claim: Mapping[str, Any] | None) -> Verdict:
    """ModelCacheReady: True once the cache's claim is Bound; else the claim's phase and the
    likely cause (pods that mount an unbound claim cannot be scheduled)."""
    cache = pool.spec.model.cache
    name = model_cache_claim_name(pool)
    if claim is None:
        return (False, "ClaimMissing", f"model cache claim {name} does not exist yet")
    if _get(claim, "metadata", "deletionTimestamp"):
        return (False, "ClaimTerminating", f"model cache claim {name} is being deleted")
    phase = str(_get(claim, "status", "phase", default="Pending"))
    if phase == "Bound":
        capacity = _get(claim, "status", "capacity", "storage", default=cache.size)
        volume = _get(claim, "spec", "volumeName", default="")
        return (
            True,
            "Bound",
            f"model cache claim {name} is Bound to {volume} ({capacity}, {cache.access_mode})",
        )
    if phase == "Lost":
        return (
            False,
            "ClaimLost",
            f"model cache claim {name} is Lost: its PersistentVolume is gone; turn spec.model.cache off "
            "and on again to replace the claim",
        )
    mode = cache.access_mode
    if cache.storage_class_name is None:
        hint = f"no StorageClass provides {mode}?"
    elif cache.storage_class_name:
        hint = f"StorageClass {cache.storage_class_name} is missing or provides no {mode} volume?"
    else:
        hint = f"no PersistentVolume without a class provides {mode} and {cache.size}?"
    return (False, f"Claim{phase}", f"model cache claim {name} is {phase}: {hint}")


def _worker_roles(
    pool: Pool, observed: Observed, previous_status: Mapping[str, Any]
) -> tuple[dict[str, RoleView], dict[str, dict[str, Any]]]:
    """Views and status blocks of prefill and decode; an autoscaled role's desired replicas are the
    autoscaler's, so its block leaves desiredReplicas out."""
    views: dict[str, RoleView] = {}
    roles_status: dict[str, dict[str, Any]] = {}
    for name, workload in (("prefill", observed.prefill), ("decode", observed.decode)):
        role = pool.spec.role(name)
        auto = role.autoscaling.enabled
        prev_desired = _get(previous_status, name, "desiredReplicas")
        spec_desired = None if auto else role.replicas
        if auto and workload is None and prev_desired is not None:
            spec_desired = int(prev_desired)
        view = _role_view(name, workload, spec_desired)
        views[name] = view
        block: dict[str, Any] = {
            "replicas": view.replicas,
            "readyReplicas": view.ready,
            "summary": f"{view.ready}/{view.desired}",
        }
        if not auto:
            block["desiredReplicas"] = view.desired
        roles_status[name] = block
    return views, roles_status


def _verdicts(observed: Observed, views: Mapping[str, RoleView]) -> tuple[Verdict, Verdict, Verdict]:
    """Ready, Progressing and Degraded from what was observed."""
    unschedulable = unschedulable_reasons(observed.pods)
    crashing = crashing_pods(observed.pods)
    missing = [v.name for v in views.values() if not v.exists]
    not_ready = [v for v in views.values() if v.ready < v.desired]
    rolling = [v for v in views.values() if v.exists and (not v.current or v.updated < v.desired)]
    progress = ", ".join(f"{v.name} {v.ready}/{v.desired} ready" for v in views.values())

    ready: Verdict
    if observed.error:
        ready = (False, observed.error_reason or "ReconcileError", observed.error)
    elif unschedulable:
        text = "; ".join(f"{role} pods unschedulable: {msg}" for role, msg in sorted(unschedulable.items()))
        ready = (False, "Unschedulable", text)
    elif missing:
        ready = (False, "Creating", f"creating {', '.join(missing)}")
    elif not_ready or rolling:
        ready = (False, "PodsNotReady", progress)
    else:
        ready = (True, "AllReplicasReady", progress)

    progressing: Verdict
    if observed.error or missing:
        progressing = (True, "Reconciling", observed.error or f"creating {', '.join(missing)}")
    elif rolling:
        progressing = (True, "RollingOut", "rolling out " + ", ".join(v.name for v in rolling))
    elif not_ready:
        progressing = (True, "ScalingUp", progress)
    else:
        progressing = (False, "Stable", "every role runs its desired replicas")

    problems = []
    if observed.error:
        problems.append(observed.error)
    problems += [f"{role} pods unschedulable: {msg}" for role, msg in sorted(unschedulable.items())]
    if crashing:
        problems.append("pods failing: " + ", ".join(crashing))
    degraded: Verdict
    if problems:
        reason = observed.error_reason or ("Unschedulable" if unschedulable else "PodsFailing")
        degraded = (True, reason, "; ".join(problems))
    else:
        degraded = (False, "AsExpected", "no problems observed")
    return ready, progressing, degraded


def compute_status(
    pool: Pool, observed: Observed, previous_status: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """The operator's part of status.

    Promises: conditions Ready/Progressing/Degraded always present (ScalingActive when a role
    autoscales, ModelCacheReady when spec.model.cache is on); lastTransitionTime carried over
    unless the status flipped; Ready False naming the scheduler's reason when pods are
    unschedulable; the autoscaler's fields never included for an autoscaled role. ``now`` is an
    RFC 3339 timestamp.
    """
    previous_status = previous_status or {}
    previous = {c.get("type"): c for c in previous_status.get("conditions") or [] if isinstance(c, Mapping)}
    views, roles_status = _worker_roles(pool, observed, previous_status)
    router = _role_view("router", observed.router, pool.spec.router.replicas)
    views["router"] = router
    ready, progressing, degraded = _verdicts(observed, views)
    conditions = [
        _condition("Ready", *ready, pool.generation, previous, now),
        _condition("Progressing", *progressing, pool.generation, previous, now),
        _condition("Degraded", *degraded, pool.generation, previous, now),
    ]
    scaling = _scaling_condition(pool, previous_status.get("autoscaling") or {}, previous, now)
    if scaling:
        conditions.append(scaling)
    if pool.spec.model.cache.enabled:
        verdict = model_cache_verdict(pool, observed.model_cache)
        conditions.append(_condition("ModelCacheReady", *verdict, pool.generation, previous, now))
    return {
        "observedGeneration": pool.generation,
        "conditions": conditions,
        "endpoint": endpoint(pool, observed.router_service),
        "prefill": roles_status["prefill"],
        "decode": roles_status["decode"],
        "router": {"replicas": router.replicas, "readyReplicas": router.ready},
    }


def status_patch(desired: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    """The merge patch taking ``current`` status to ``desired`` (only differing keys); {} = no write."""
    current = current or {}
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        cur = current.get(key)
        if isinstance(value, Mapping) and isinstance(cur, Mapping):
            sub = status_patch(value, cur)
            if sub:
                patch[key] = sub
        elif value != cur:
            patch[key] = value
    return patch


def invalid_spec_status(
    generation: int, error: str, previous_status: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """Status of a pool whose spec cannot be parsed: not Ready, Degraded, the field named in the message."""
    previous_status = previous_status or {}
    previous = {c.get("type"): c for c in previous_status.get("conditions") or [] if isinstance(c, Mapping)}
    return {
        "observedGeneration": generation,
        "conditions": [
            _condition("Ready", False, "InvalidSpec", error, generation, previous, now),
            _condition(
                "Progressing", False, "InvalidSpec", "waiting for a valid spec", generation, previous, now
            ),
            _condition("Degraded", True, "InvalidSpec", error, generation, previous, now),
        ],
    }
