"""Install baton's Helm chart into the sandbox and run `baton operator` as a local process.

The chart's operator Deployment is disabled in the sandbox (kwok pods run nothing); the
operator runs here instead, with a token kubeconfig for the chart's ServiceAccount, so it is
held to exactly the RBAC the chart grants.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from baton_operator.images import DEV_TAG, OPERATOR, WORKER, dev_image

from . import procs
from .cluster import SandboxError, load_state, save_state, state_lock
from .handle import Sandbox

RELEASE = "baton"
NAMESPACE = "baton-system"
SERVICE_ACCOUNT = "baton-operator"
HELM_TIMEOUT_S = 120
# With a real node helm waits for the operator pod to be Ready (image already loaded).
REAL_NODE_HELM_TIMEOUT_S = 180


def find_chart() -> Path | None:
    """charts/baton of this checkout (next to the installed package, else under the cwd)."""
    here = Path(__file__).resolve()
    for root in (*here.parents, Path.cwd(), *Path.cwd().parents):
        chart = root / "charts" / "baton"
        if (chart / "Chart.yaml").is_file():
            return chart
    return None


def in_cluster_operator_values() -> list[str]:
    """helm --set values running the chart's operator Deployment from the local images."""
    return [
        "operator.enabled=true",
        f"operator.image.repository={OPERATOR}",
        f"operator.image.tag={DEV_TAG}",
        f"operator.workerImage={dev_image(WORKER)}",
    ]


def install_chart(
    sandbox: Sandbox, chart: Path, extra_set: Sequence[str] = (), wait_s: int = HELM_TIMEOUT_S
) -> str:
    """`helm upgrade --install` the chart, by default with the operator Deployment off (``extra_set``
    may turn it on); returns helm's output.

    Helm installs a chart's CRDs only once and never upgrades them, so the chart's CRDs are
    server-side applied first: a sandbox that outlives a CRD change gets the new schema.
    Raises SandboxError with helm's (or kubectl's) last lines when the install fails.
    """
    crd_dir = chart / "crds"
    if crd_dir.is_dir():
        proc = sandbox.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=helm",
            "-f",
            str(crd_dir),
            check=False,
        )
        if proc.returncode != 0:
            last = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise SandboxError(f"applying the CRDs of {chart} failed: {last}")
    cmd = [
        str(sandbox.helm_path),
        "upgrade",
        "--install",
        RELEASE,
        str(chart),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "--set",
        "operator.enabled=false",
        *(a for s in extra_set for a in ("--set", s)),
        "--wait",
        f"--timeout={wait_s}s",
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=sandbox.env(), timeout=wait_s + 30, check=False
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(f"helm install of {chart} took over {wait_s + 30} s") from None
    if proc.returncode != 0:
        last = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise SandboxError(f"helm install of {chart} failed: {last}")
    return proc.stdout


@dataclass(frozen=True)
class OperatorProcess:
    """A `baton operator` process running against the sandbox."""

    record: procs.ProcRecord
    kubeconfig: Path

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def log(self) -> Path:
        return Path(self.record.log)

    def running(self) -> bool:
        return procs.is_running(self.record)


def _baton_command() -> list[str]:
    exe = Path(sys.executable).with_name("baton")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from baton_worker.cli import main; sys.exit(main())"]


def start_operator(
    sandbox: Sandbox,
    *,
    namespace: str = NAMESPACE,
    service_account: str = SERVICE_ACCOUNT,
    args: Sequence[str] = (),
    name: str = "operator",
    env: dict[str, str] | None = None,
) -> OperatorProcess:
    """Start `baton operator <args>` in the background as ServiceAccount ``namespace/service_account``.

    The process is recorded in the sandbox state, so `baton sandbox down` stops it even when
    its starter did not; its log is ``<state>/logs/<name>.log``. Call ``stop_operator`` to stop it.
    """
    kubeconfig = sandbox.kubeconfig_for_service_account(namespace, service_account)
    full_env = {**sandbox.env(kubeconfig), **(env or {})}
    log = sandbox.layout.log(name)
    # --kubeconfig on the command line as well: it names the state dir, so `down` can find this
    # process even if its record is lost.
    kc_arg = [] if any(a.startswith("--kubeconfig") for a in args) else [f"--kubeconfig={kubeconfig}"]
    rec = procs.start(name, [*_baton_command(), "operator", *kc_arg, *args], log, env=full_env)
    layout = sandbox.layout
    with state_lock(layout):
        state = load_state(layout)
        if state is None:
            procs.stop(rec)
            raise SandboxError(f"no sandbox state in {layout.state_dir}; bring the sandbox up first")
        state.extra.append(rec)
        save_state(layout, state)
    return OperatorProcess(record=rec, kubeconfig=kubeconfig)


def stop_operator(sandbox: Sandbox, operator: OperatorProcess, timeout_s: float = 15.0) -> bool:
    """Stop an operator started by ``start_operator``; True when it is gone."""
    gone = procs.stop(operator.record, timeout_s=timeout_s)
    layout = sandbox.layout
    with state_lock(layout):
        state = load_state(layout)
        if state is not None and gone:
            state.extra = [p for p in state.extra if p.pid != operator.pid]
            save_state(layout, state)
    return gone


def running_operators(sandbox: Sandbox, name: str = "operator") -> list[procs.ProcRecord]:
    """Recorded operator processes named ``name`` that are still alive."""
    state = load_state(sandbox.layout)
    if state is None:
        return []
    return [p for p in state.extra if p.name == name and procs.is_running(p)]


def ensure_operator(sandbox: Sandbox, args: Sequence[str] = ()) -> tuple[OperatorProcess | None, bool]:
    """The `up` step: keep a live recorded operator or start one. Returns (process, started)."""
    alive = running_operators(sandbox)
    if alive:
        return None, False
    return start_operator(sandbox, args=args), True
