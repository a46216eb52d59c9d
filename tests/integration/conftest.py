"""Session fixtures for the integration tests that need the Kubernetes sandbox.

``sandbox`` (session scope) yields a ``baton_dev.sandbox.handle.Sandbox``:

- ``sandbox.kubeconfig``: admin kubeconfig path (group ``system:masters``);
- ``sandbox.kubectl_path`` / ``sandbox.helm_path``: the sandbox's own kubectl and helm (v1.35);
- ``sandbox.kubectl(*args, input=None, check=True, timeout=60, kubeconfig=None)``: run kubectl as
  admin (or with ``kubeconfig``), returns ``CompletedProcess``; raises ``KubectlError`` on failure
  when ``check``; ``sandbox.kubectl_json(*args)`` parses ``-o json``;
- ``sandbox.apply(manifests)``: server-side apply a list of dicts as admin;
- ``sandbox.kubeconfig_for_service_account(ns, name)``: token kubeconfig acting as that
  ServiceAccount (it must exist), so RBAC gaps fail tests;
- ``sandbox.env(kubeconfig=None)``: environment with KUBECONFIG and PATH for subprocesses;
- ``sandbox.state_dir`` / ``sandbox.layout.logs``: state directory and component logs.

It brings the sandbox up once (reusing one that is already up in ``$BATON_SANDBOX_DIR`` or
``~/.cache/baton/sandbox/state``), installs charts/baton with helm when the chart exists
(``operator.enabled=false``), and does NOT start the background operator: tests that need one
start their own with ``baton_dev.sandbox.operator_proc.start_operator(sandbox, args=...)``
and stop it with ``stop_operator(sandbox, op)``. At session end it runs ``down`` only if a test
session started the sandbox and no other test session still uses it.

``sandbox_cluster`` is the same sandbox without the chart step (for tests of the sandbox itself).
Mark tests that use either with ``@pytest.mark.sandbox``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from baton_dev.sandbox.handle import Sandbox

# The sandbox modules are imported inside the fixtures, so integration tests that never use
# the sandbox do not depend on its imports.


@pytest.fixture(scope="session")
def sandbox_cluster() -> Iterator[Sandbox]:
    """The running sandbox control plane with its node pools (no chart step)."""
    from baton_dev.sandbox import cluster

    handle, started = cluster.up(log=lambda msg: print(f"[sandbox] {msg}"))
    # Several test sessions may share one sandbox: the last to leave stops it, and only if
    # a test session (not a person running `baton sandbox up`) started it.
    cluster.join(handle.state_dir, auto_down=started)
    try:
        yield handle
    finally:
        if cluster.leave(handle.state_dir):
            stuck = cluster.down(handle.state_dir)
            assert not stuck, f"sandbox processes would not stop: {stuck}"


@pytest.fixture(scope="session")
def sandbox(sandbox_cluster: Sandbox) -> Sandbox:
    """The sandbox with charts/baton installed (when the chart exists), operator not running."""
    from baton_dev.sandbox.operator_proc import find_chart, install_chart

    chart = find_chart()
    if chart is not None:
        install_chart(sandbox_cluster, chart)
    return sandbox_cluster
