"""Fixtures for operator tests on the sandbox.

``operator_process`` (session scope) is a real `baton operator` process running as the chart's
ServiceAccount ``baton-system/baton-operator`` (token kubeconfig, so it gets exactly the chart's
RBAC), started with ``--resync-seconds 5`` and a Prometheus metrics port. Its API, kept stable
for the autoscaling tests:

- ``.sandbox``: the Sandbox handle; ``.process``: the OperatorProcess (``.pid``, ``.log``,
  ``.running()``); ``.kubeconfig``: the ServiceAccount kubeconfig it runs with;
- ``.metrics_url``: ``http://127.0.0.1:<port>/metrics``; ``.metric(name, **labels) -> float``
  reads one sample (sum over unmatched labels);
- ``.restart(kill=False)``: stop (SIGTERM, or SIGKILL with ``kill=True``) and start it again;
- ``.log_tail(lines=40) -> str``.

Before starting, it stops a background operator that `baton sandbox up` may have left running
(it would hold the leader Lease and run older code), and starts it again at the end. ``namespace`` gives each test its own
namespace (deleted afterwards, without waiting). ``polling.wait_until`` (tests/polling.py) polls a
predicate with a deadline.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from baton_dev.bench.operator_pools import serves_metric
from baton_dev.sandbox import procs
from baton_dev.sandbox.handle import Sandbox
from baton_dev.sandbox.operator_proc import (
    OperatorProcess,
    ensure_operator,
    running_operators,
    start_operator,
    stop_operator,
)
from operator_helpers import RESYNC_SECONDS, ROOT, metric
from polling import wait_until

LEASE_WAIT_S = 30.0


@dataclass
class OperatorUnderTest:
    sandbox: Sandbox
    process: OperatorProcess
    metrics_port: int
    args: list[str] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.process.kubeconfig

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
        return metric(self.metrics_url, name, **labels)

    def log_tail(self, lines: int = 40) -> str:
        return procs.tail(self.process.log, lines)

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Until the metrics endpoint answers (the process is up; leadership may follow)."""
        wait_until(
            lambda: serves_metric(self.metrics_url, "baton_operator_reconciles_total"),
            timeout=timeout,
            what="operator metrics endpoint",
            interval=0.25,
        )

    def restart(self, kill: bool = False) -> None:
        """Stop the operator (SIGKILL when ``kill``, else SIGTERM) and start a fresh process."""
        if kill:
            os.kill(self.process.pid, signal.SIGKILL)
            wait_until(lambda: not self.process.running(), timeout=10, what="operator to die", interval=0.25)
        stop_operator(self.sandbox, self.process)
        self.process = _start(self.sandbox, self.metrics_port, self.args)
        self.wait_serving()


def _start(sandbox: Sandbox, port: int, args: list[str]) -> OperatorProcess:
    return start_operator(sandbox, args=[*args, f"--metrics-port={port}"], name="operator-test")


@pytest.fixture(scope="session", autouse=True)
def current_crd(sandbox: Sandbox) -> None:
    """The CRD of this checkout: helm installs crds/ only on a release's first install."""
    crd = yaml.safe_load((ROOT / "crds" / "inferencepools.baton.dev.yaml").read_text())
    sandbox.apply([crd], field_manager="baton-tests")
    sandbox.kubectl("wait", "--for=condition=Established", "crd/inferencepools.baton.dev", "--timeout=30s")


@pytest.fixture(scope="session")
def operator_process(sandbox: Sandbox) -> Iterator[OperatorUnderTest]:
    """A real `baton operator` under the chart's ServiceAccount, for the whole session."""
    background = running_operators(sandbox, "operator")
    for rec in background:
        procs.stop(rec)
    for rec in running_operators(sandbox, "operator-test"):
        procs.stop(rec)
    (port,) = procs.free_ports(1)
    # The default worker image: other operators started by tests on the same pools must agree on it.
    args = ["--all-namespaces", f"--resync-seconds={RESYNC_SECONDS}"]
    op = OperatorUnderTest(sandbox, _start(sandbox, port, args), port, args)
    try:
        op.wait_serving()
        yield op
    finally:
        stop_operator(sandbox, op.process)
        if background:
            ensure_operator(sandbox)  # `baton sandbox up`'s operator, as it was


@pytest.fixture
def namespace(sandbox: Sandbox) -> Iterator[str]:
    """A fresh namespace for one test; deleted (not awaited) afterwards."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    sandbox.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        # Pools first, while an operator runs: kopf must lift its finalizer (the autoscaler's timers
        # put one on every pool), or the namespace would stay Terminating once the session ends.
        sandbox.kubectl("delete", "inferencepools", "--all", "-n", name, "--timeout=30s", check=False)
        sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)
