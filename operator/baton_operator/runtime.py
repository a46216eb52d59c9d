"""Process-wide state of a running operator: its options, API client, controller and leader lease.

`baton operator` parses its flags into :class:`Options` before kopf starts; the single
@kopf.on.startup handler in main.py builds the rest from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from baton_operator.api import KubeApi
from baton_operator.controller import Controller
from baton_operator.images import DEFAULT_WORKER_IMAGE
from baton_operator.leader import LeaderElector

log = logging.getLogger(__name__)


@dataclass
class Options:
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    standalone: bool = False
    default_image: str = DEFAULT_WORKER_IMAGE
    resync_seconds: float = 30.0
    kubeconfig: str | None = None
    lease_namespace: str = "baton-system"
    lease_name: str = "baton-operator"
    identity: str = ""
    liveness: str = ""
    metrics_port: int = 0


@dataclass
class Runtime:
    options: Options
    api: KubeApi | None = None
    controller: Controller | None = None
    elector: LeaderElector | None = None


_state = Runtime(options=Options())


def configure(options: Options) -> None:
    _state.options = options


def options() -> Options:
    return _state.options


def install(api: KubeApi, ctl: Controller, elector: LeaderElector | None) -> None:
    _state.api, _state.controller, _state.elector = api, ctl, elector


def controller() -> Controller:
    if _state.controller is None:
        raise RuntimeError("the operator has not started (no controller)")
    return _state.controller


def is_leader() -> bool:
    """Whether this replica may write now: the reconcile controller's own answer, so the
    autoscaler and the reconciler agree; False before the operator has started."""
    if _state.controller is None:
        log.error("leadership asked before the operator started: acting as a follower")
        return False
    return _state.controller.is_leader()


def api() -> KubeApi:
    if _state.api is None:
        raise RuntimeError("the operator has not started (no API client)")
    return _state.api


async def shutdown() -> None:
    if _state.elector is not None:
        _state.elector.stop()
    if _state.controller is not None:
        await _state.controller.stop()
