"""`baton operator`: run the InferencePool operator (kopf) against the current cluster.

All kopf settings are made in the one @kopf.on.startup handler below. Several replicas may run;
only the holder of the Lease `<lease-namespace>/<lease-name>` reconciles (unless --standalone).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import uuid
from typing import Any

import kopf

from baton_operator import handlers as _handlers  # noqa: F401  (registers the kopf handlers)
from baton_operator import runtime
from baton_operator.api import KubeApi
from baton_operator.controller import Controller, Settings
from baton_operator.leader import LeaderElector

try:  # the autoscaler's kopf timers, when that package is present
    from baton_operator.autoscaling import handlers as _autoscaling_handlers  # noqa: F401
except ImportError as e:
    if e.name != "baton_operator.autoscaling.handlers":
        raise

log = logging.getLogger("baton_operator")


def parse_args(argv: list[str]) -> runtime.Options:
    p = argparse.ArgumentParser(prog="baton operator", description=__doc__.splitlines()[0])
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    p.add_argument(
        "--standalone", action="store_true", help="no leader election: this process always reconciles"
    )
    p.add_argument(
        "--worker-image", default=runtime.Options.default_image, help="image when a pool sets none"
    )
    p.add_argument("--resync-seconds", type=float, default=30.0, help="period of the drift-correcting resync")
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)"
    )
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "baton-system"))
    p.add_argument("--lease-name", default="baton-operator")
    p.add_argument("--liveness", default="", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.resync_seconds <= 0:
        p.error("--resync-seconds: must be > 0")
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not a.verbose:
        # kopf logs every handler success at INFO: one line per event and per timer tick.
        for name in ("kopf.objects", "kopf.activities", "kopf._core.engines.activities"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return runtime.Options(
        namespaces=list(a.namespace),
        all_namespaces=a.all_namespaces or not a.namespace,
        standalone=a.standalone,
        default_image=a.worker_image,
        resync_seconds=a.resync_seconds,
        kubeconfig=a.kubeconfig,
        lease_namespace=a.lease_namespace,
        lease_name=a.lease_name,
        identity=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        liveness=a.liveness,
        metrics_port=a.metrics_port,
    )


@kopf.on.login(id="operator_login")
def operator_login(**kwargs: Any) -> Any:
    """The kubeconfig given with --kubeconfig, else in-cluster credentials, else $KUBECONFIG.

    kopf's default login asks the kubernetes package for its default kubeconfig, whose path that
    package fixes when it is imported, before --kubeconfig is known: an explicit file must be
    read here.
    """
    if runtime.options().kubeconfig:
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(id="operator_startup")
async def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    opts = runtime.options()
    # The operator posts its own Events (api.post_event); kopf's would duplicate them.
    settings.posting.enabled = False
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    if not opts.all_namespaces:
        # Namespaced RBAC grants nothing cluster-wide: do not watch CRDs (kopf's resource scanning).
        settings.scanning.disabled = True
    api = KubeApi.from_environment(opts.kubeconfig)
    ctl: Controller
    elector: LeaderElector | None = None
    if opts.standalone:
        ctl = Controller(api, Settings(default_image=opts.default_image, resync_seconds=opts.resync_seconds))
    else:
        holder: list[LeaderElector] = []
        ctl = Controller(
            api,
            Settings(default_image=opts.default_image, resync_seconds=opts.resync_seconds),
            is_leader=lambda: bool(holder) and holder[0].is_leader(),
        )
        elector = LeaderElector(
            api, opts.lease_namespace, opts.lease_name, opts.identity, on_elected=ctl.trigger_all_threadsafe
        )
        holder.append(elector)
        elector.start()
    runtime.install(api, ctl, elector)
    if opts.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(opts.metrics_port)
    log.info(
        "baton operator %s: %s, resync every %.0fs",
        opts.identity,
        "all namespaces" if opts.all_namespaces else ", ".join(opts.namespaces),
        opts.resync_seconds,
    )


def main(argv: list[str]) -> int:
    """Run until interrupted. Returns the process exit code."""
    opts = parse_args(argv)
    if opts.kubeconfig:
        os.environ["KUBECONFIG"] = opts.kubeconfig  # kopf's own login reads it too
    runtime.configure(opts)
    asyncio.run(
        kopf.operator(
            standalone=True,  # kopf's peering is replaced by the Lease in leader.py
            clusterwide=opts.all_namespaces,
            namespaces=opts.namespaces,
            liveness_endpoint=opts.liveness or None,
            # Without it kopf asks getpass for the user name, which fails for a uid without a
            # passwd entry (a container run as an arbitrary uid).
            identity=opts.identity,  # type: ignore[arg-type]  # kopf: NewType of str
        )
    )
    return 0
