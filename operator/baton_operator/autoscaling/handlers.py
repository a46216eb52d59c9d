"""kopf glue of the built-in autoscaler: one timer per InferencePool.

Importing this module registers the timer (the operator's main imports it). kopf timers have a
fixed interval, so the timer ticks every half second and runs a pass when the pool's
``spec.autoscaling.intervalSeconds`` has elapsed (per pool, remembered in kopf's per-object memo).
The handler is synchronous: kopf runs it in its executor, so blocking HTTP and API calls (all with
deadlines) never stall the event loop. It never raises: failures end up in status and Events.
Only the operator replica holding the leader Lease scales; the others forget their samples, so a
new leader starts every window from scratch instead of from stale data. A replica that cannot
tell (the operator has not started) does not scale: two replicas must never both actuate.
All Kubernetes I/O (reads, replicas, status, Events) goes through the operator's API client.
"""

from __future__ import annotations

import time
from typing import Any

import kopf

from baton_operator import runtime
from baton_operator.autoscaling import config, controller, signal, slo_pass, slo_signal
from baton_operator.autoscaling.actuation import REQUEST_TIMEOUT_S, KubeCluster
from baton_operator.autoscaling.slo_profile import ProfileSource
from baton_operator.spec import GROUP, PLURAL, VERSION

TICK_S = 0.5
_MEMO_KEY = "baton_autoscaler"
_SLO_MEMO_KEY = "baton_autoscaler_slo"
_cluster: KubeCluster | None = None
_profiles: ProfileSource | None = None
_CLEARED: dict[str, Any] = {"autoscaling": None}


def _kube() -> KubeCluster:
    global _cluster
    if _cluster is None:
        _cluster = KubeCluster(runtime.api())
    return _cluster


def _profile_source() -> ProfileSource:
    """SLO mode's profiles, read from ConfigMaps and cached (shared by every pool)."""
    global _profiles
    if _profiles is None:
        _profiles = ProfileSource(lambda namespace, name: _kube().config_map(namespace, name))
    return _profiles


def _signal_timeout(cfg: config.AutoscalingConfig) -> float:
    # Leave room in the interval for the API calls of the pass.
    return max(0.5, min(3.0, cfg.interval_s / 2))


def _post(body: Any, event: controller.ScaleEvent) -> None:
    kind = "Warning" if event.warning else "Normal"
    runtime.api().post_event(dict(body), kind, event.reason, event.message)


def _state(memo: Any) -> controller.PoolState:
    state = getattr(memo, _MEMO_KEY, None)
    if state is None:
        state = controller.PoolState()
        setattr(memo, _MEMO_KEY, state)
    return state


def _slo_state(memo: Any) -> slo_pass.SloState:
    state = getattr(memo, _SLO_MEMO_KEY, None)
    if state is None:
        state = slo_pass.SloState()
        setattr(memo, _SLO_MEMO_KEY, state)
    return state


def _run(
    cfg: config.AutoscalingConfig, name: str, namespace: str, memo: Any, now: float
) -> controller.PassResult:
    """One pass: queue depth alone, or SLO mode (slo_pass.py) when spec.autoscaling.slo is set."""
    state = _state(memo)
    source = signal.source_for(cfg, name, namespace)
    timeout = _signal_timeout(cfg)

    def routers() -> list[str]:
        return _kube().router_metrics_urls(namespace, name)

    if cfg.slo is None:
        if _slo_state(memo).spec is not None:
            _slo_state(memo).reset(None)  # a switch back to SLO mode starts from scratch
        return controller.run_pass(
            state,
            cfg,
            name,
            namespace,
            now,
            lambda: signal.read_queue_depths(source, timeout, routers),
            _kube(),
            source.describe(),
        )
    return slo_pass.run_slo_pass(
        state,
        _slo_state(memo),
        cfg,
        name,
        namespace,
        now,
        lambda: slo_signal.read(source, timeout, now, routers, name, namespace),
        _kube(),
        _profile_source().get,
        source.describe(),
    )


@kopf.timer(GROUP, VERSION, PLURAL, id="baton-autoscaler", interval=TICK_S)
def inferencepool_autoscale(
    spec: Any, name: str, namespace: str, status: Any, body: Any, memo: Any, logger: Any, **_: Any
) -> None:
    """Run one autoscaling pass on this pool when its interval has elapsed."""
    state = _state(memo)
    now = time.time()
    if not runtime.is_leader():
        state.roles.clear()
        state.last_pass = float("-inf")
        _slo_state(memo).reset(None)
        return
    try:
        cfg = config.parse(dict(spec))
    except config.ConfigError as e:
        if state.written is None or state.written.get("autoscaling", {}).get("message") != str(e):
            patch = {"autoscaling": {"metricsAvailable": False, "message": f"invalid spec: {e}"}}
            _write_status(namespace, name, state, patch, now, logger)
        return
    if cfg.mode != "builtin" or not cfg.roles:
        state.roles.clear()  # KEDA (or nobody) scales: forget samples so a switch back starts clean
        state.last_pass = float("-inf")
        _slo_state(memo).reset(None)
        if (status or {}).get("autoscaling") is not None and state.written != _CLEARED:
            _write_status(namespace, name, state, _CLEARED, now, logger)
        return
    if not controller.due(state, cfg, now):
        return
    controller.seed_from_status(state, status)
    try:
        result = _run(cfg, name, namespace, memo, now)
    except Exception as e:  # noqa: BLE001 - an API outage must not kill the timer; the next tick retries
        logger.warning(f"autoscaling pass failed: {e}")
        return
    took = time.time() - now
    if took > cfg.interval_s:
        logger.warning(f"autoscaling pass took {took:.1f}s, longer than the {cfg.interval_s:g}s interval")
    for event in result.events:
        _post(body, event)
    patch = controller.status_to_write(state, result, now)
    if cfg.slo is None and ((status or {}).get("autoscaling") or {}).get("slo") is not None:
        patch = {
            **result.status,
            "autoscaling": {**result.status["autoscaling"], "slo": None},
        }  # SLO mode off
    if patch is not None:
        _write_status(namespace, name, state, patch, now, logger)


def _write_status(
    namespace: str, name: str, state: controller.PoolState, patch: dict, now: float, logger: Any
) -> None:
    try:
        runtime.api().patch_pool_status(namespace, name, patch, timeout=REQUEST_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - status is retried on the next pass
        logger.warning(f"autoscaling status write failed: {e}")
        return
    controller.mark_written(state, patch, now)
