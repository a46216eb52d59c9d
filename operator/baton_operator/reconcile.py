"""One level-based reconcile of one InferencePool: read, build, converge children, write status.

Synchronous (run in a worker thread). Decisions come from the pure modules (spec, builders,
status); this module only sequences API calls through :class:`KubeApi`. Transient API errors
propagate as :class:`ApiError` (the caller retries with backoff); permanent ones (bad spec, a
child the API server refuses) land in the pool's status and a Warning Event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from baton_operator import builders, names, netpol
from baton_operator.api import KINDS, WORKLOADS, ApiError, KubeApi, now_rfc3339
from baton_operator.spec import Pool, SpecError, parse_pool
from baton_operator.status import Observed, compute_status, invalid_spec_status, status_patch
from baton_operator.tls import tls_secret_name
from baton_operator.tls_reconcile import ensure_tls_secret

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one reconcile did: children it created/updated, whether it wrote status, whether the pool is gone."""

    gone: bool = False
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    error: str = ""


def _keda_builder() -> Callable[[Mapping[str, Any]], list[dict[str, Any]]] | None:
    """The KEDA ScaledObject builder (baton_operator.autoscaling.keda), when it can be imported."""
    try:
        from baton_operator.autoscaling.keda import build_scaled_objects  # type: ignore[import-not-found]
    except ImportError:
        return None
    return build_scaled_objects


def desired_children(pool: Pool, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every child to apply, including KEDA ScaledObjects when autoscaling.mode is keda.

    Raises SpecError (naming the field) when the spec cannot be turned into children, e.g. a
    custom PromQL query the KEDA builder cannot use.
    """
    children = builders.build_children(pool)
    autoscaled = pool.spec.prefill.autoscaling.enabled or pool.spec.decode.autoscaling.enabled
    if pool.spec.autoscaling.mode == "keda" and autoscaled:
        build = _keda_builder()
        if build is not None:
            try:
                children += build(body)
            except ValueError as e:
                field_path = getattr(e, "field", "spec.autoscaling")
                raise SpecError(field_path, str(e).removeprefix(f"{field_path}: ")) from e
    return children


def _condition(status: Mapping[str, Any] | None, ctype: str) -> tuple[str, str]:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status")), str(cond.get("reason"))
    return "", ""


def _events_for_flip(
    api: KubeApi, body: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
) -> None:
    before, after = _condition(old, "Ready"), _condition(new, "Ready")
    if before == after:
        return
    message = next((c["message"] for c in new["conditions"] if c["type"] == "Ready"), "")
    if after[0] == "True":
        api.post_event(body, "Normal", "Ready", message)
    elif after[1] in ("Unschedulable", "InvalidSpec", "ApplyFailed"):
        api.post_event(body, "Warning", after[1], message)


def _write_status(
    api: KubeApi, body: Mapping[str, Any], desired: Mapping[str, Any], outcome: Outcome
) -> None:
    meta = body["metadata"]
    current = body.get("status") or {}
    patch = status_patch(desired, current)
    if patch:
        api.patch_pool_status(meta["namespace"], meta["name"], patch)
        outcome.status_written = True
        _events_for_flip(api, body, current, desired)


def _owned_by(obj: Mapping[str, Any], pool: Pool) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == pool.uid and ref.get("controller") for ref in refs)


def prune_children(api: KubeApi, pool: Pool, outcome: Outcome) -> str:
    """Delete the children a pool must no longer have: its NetworkPolicies once it opts out
    (``spec.networkPolicy.enabled: false``). Only objects the pool controls (owner reference with
    its uid) go; a user's policy carrying the same labels stays. One list per reconcile of an
    opted-out pool, no write once they are gone. Returns an error message, "" when none."""
    if pool.spec.network_policy.enabled:
        return ""
    kind = KINDS[(netpol.API_VERSION, netpol.KIND)]
    selector = f"{names.pool_selector(pool.name)},{names.MANAGED_BY_LABEL}={names.MANAGED_BY}"
    label = "NetworkPolicies"
    try:
        for obj in api.list(kind, pool.namespace, selector):
            if not _owned_by(obj, pool):
                continue
            meta = obj["metadata"]
            label = f"{netpol.KIND}/{meta['name']}"
            if api.delete(kind, pool.namespace, meta["name"], meta["uid"]):
                outcome.deleted.append(label)
    except ApiError as e:
        if e.transient:
            raise
        return f"deleting {label}: {e.message}"
    return ""


def prune_model_cache(api: KubeApi, pool: Pool, outcome: Outcome) -> str:
    """Delete the pool's model cache claim once ``spec.model.cache`` is off. Looked up in the
    watch-fed cache, not listed: most pools never had one, and a claim the cache has not seen yet
    arrives as a watch event that triggers the next reconcile. Only a claim this pool controls
    goes; one already terminating (its pods still mount it) is not deleted again. Returns an error
    message, "" when none."""
    if pool.spec.model.cache.enabled:
        return ""
    kind = KINDS[("v1", "PersistentVolumeClaim")]
    name = names.model_cache_claim_name(pool)
    claim = api.cache.get(("v1", kind.kind, pool.namespace, name))
    if claim is None or not _owned_by(claim, pool) or claim["metadata"].get("deletionTimestamp"):
        return ""
    try:
        if api.delete(kind, pool.namespace, name, claim["metadata"]["uid"]):
            outcome.deleted.append(f"{kind.kind}/{name}")
    except ApiError as e:
        if e.transient:
            raise
        return f"deleting {kind.kind}/{name}: {e.message}"
    return ""


def reconcile_pool(api: KubeApi, namespace: str, name: str, default_image: str) -> Outcome:
    """Converge one pool. Raises ApiError only for transient failures worth a retry."""
    outcome = Outcome()
    body = api.get_pool(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        # Children go with their owner through garbage collection (ownerReferences).
        outcome.gone = True
        return outcome
    try:
        pool = parse_pool(body, default_image)
        children = desired_children(pool, body)
    except SpecError as e:
        outcome.error = str(e)
        generation = int(body["metadata"].get("generation") or 0)
        _write_status(
            api, body, invalid_spec_status(generation, str(e), body.get("status"), now_rfc3339()), outcome
        )
        return outcome

    live: dict[tuple[str, str, str], dict[str, Any]] = {}
    error, error_reason = "", ""
    # Before the workloads, whose pods mount it.
    tls_action, tls_error = ensure_tls_secret(api, pool, body, datetime.now(UTC))
    if tls_action:
        (outcome.created if tls_action == "issue" else outcome.updated).append(
            f"Secret/{tls_secret_name(pool)}"
        )
    if tls_error:
        error, error_reason = tls_error, "ApplyFailed"
        log.warning("%s/%s: %s", namespace, name, error)
    for manifest in children:
        key = (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])
        label = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            action, obj = api.ensure(manifest)
        except ApiError as e:
            if e.transient:
                raise
            # The API server refused what the builders made from this spec: say so, keep going.
            error, error_reason = f"applying {label}: {e.message}", "ApplyFailed"
            log.warning("%s/%s: %s", namespace, name, error)
            continue
        live[key] = obj
        if action == "created":
            outcome.created.append(label)
        elif action == "updated":
            outcome.updated.append(label)
    prune_error = prune_children(api, pool, outcome)
    prune_error = prune_model_cache(api, pool, outcome) or prune_error
    if prune_error:
        error, error_reason = prune_error, "ApplyFailed"
        log.warning("%s/%s: %s", namespace, name, error)
    if outcome.created:
        api.post_event(body, "Normal", "Created", "created " + ", ".join(outcome.created))
    if outcome.updated:
        api.post_event(body, "Normal", "Updated", "applied " + ", ".join(outcome.updated))
    if outcome.deleted:
        api.post_event(body, "Normal", "Deleted", "deleted " + ", ".join(outcome.deleted))

    def workload(role: str) -> dict[str, Any] | None:
        kind = WORKLOADS[role]
        return live.get((kind.api_version, kind.kind, builders.child_name(pool, role)))

    pods = api.list(KINDS[("v1", "Pod")], namespace, names.pool_selector(name))
    observed = Observed(
        prefill=workload("prefill"),
        decode=workload("decode"),
        router=workload("router"),
        router_service=live.get(("v1", "Service", builders.child_name(pool, "router"))),
        model_cache=live.get(("v1", "PersistentVolumeClaim", names.model_cache_claim_name(pool))),
        pods=pods,
        error=error,
        error_reason=error_reason,
    )
    outcome.error = error
    _write_status(api, body, compute_status(pool, observed, body.get("status"), now_rfc3339()), outcome)
    return outcome
