"""The sandbox's real node (`baton sandbox up --real-node`): check the machine, record it, start it.

What runs and with which configuration is decided in nodeplan.py; node_images.py hands it the
images, node_stop.py stops it. Starting it changes the machine, so this module records what was
there before (``HostSnapshot``) and `down` puts it back:
processes, containers and their shims, mounts under the node's directories, network namespaces,
the pod bridge, iptables chains, ``net.ipv4.ip_forward``, the kubepods cgroups and the files
kubelet and CNI write outside the state directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .addresses import BRIDGE, NODE_IP, NODE_NAME, POD_SUBNET
from .build import Resolved, cache_root
from .certs import Pki
from .health import NotReady, wait_for
from .kubeconfig import kubeconfig_dict, write_kubeconfig
from .nodeplan import (
    CNI_NETWORK,
    NodePaths,
    NodePorts,
    cni_conflist,
    containerd_argv,
    containerd_config,
    coredns_argv,
    corefile,
    kube_proxy_argv,
    kube_proxy_config,
    kubelet_argv,
    kubelet_config,
    yaml_text,
)

START_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 60.0
IPTABLES = ("iptables", "ip6tables")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_LOGS = Path("/var/log/containers")
CNI_CACHE = Path("/var/lib/cni")
NETNS_DIR = Path("/run/netns")
# Directories kubelet, containerd (its shims' sockets, whatever its configuration says) and CNI
# create at fixed places; `down` removes those that did not exist before `up`.
HOST_DIRS: tuple[str, ...] = (
    "/var/log/containers",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/run/containerd",
    "/run/netns",
    "/opt/containerd",
)
REQUIRED_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "skopeo": "skopeo",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "ip": "iproute2",
}
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")


class RealNodeError(RuntimeError):
    """The real node could not be started (or checked); the message says what and why."""


@dataclass
class HostSnapshot:
    """What the machine looked like before the node started, so `down` restores exactly that."""

    ip_forward: str
    chains: dict[str, list[str]]
    netns: list[str]
    cgroups: list[str]
    # HOST_DIRS that did not exist.
    absent_dirs: list[str]


@dataclass
class NodeState:
    """The real node as recorded in the sandbox state."""

    ports: NodePorts
    host: HostSnapshot
    procs: list[procs.ProcRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ports": self.ports.as_dict(),
            "host": asdict(self.host),
            "procs": [p.to_json() for p in self.procs],
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> NodeState:
        return NodeState(
            ports=NodePorts(**d["ports"]),
            host=HostSnapshot(**d["host"]),
            procs=[procs.ProcRecord.from_json(p) for p in d.get("procs", [])],
        )


def node_paths(state_dir: Path) -> NodePaths:
    return NodePaths(state_dir=state_dir, cache_dir=cache_root())


def _sh(argv: list[str], *, check: bool = True, input: str | None = None, timeout: float = 60.0) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


# --- preflight -------------------------------------------------------------------------------


def preflight(bins: Resolved) -> None:
    """Refuse early, naming the missing piece: root, tools, CNI plugins, a free pod subnet."""
    if os.geteuid() != 0:
        raise RealNodeError(
            "--real-node needs root: kubelet, containerd and CNI change mounts, cgroups and networking"
        )
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    missing += (
        ["containernetworking-plugins"]
        if any(not (Path("/usr/lib/cni") / p).exists() for p in CNI_PLUGINS)
        else []
    )
    if missing:
        raise RealNodeError(f"--real-node needs Debian packages: apt-get install {' '.join(missing)}")
    for name in ("kubelet", "kube-proxy", "coredns"):
        if name not in bins.paths:
            raise RealNodeError(f"{name} is not built: run `baton sandbox build`")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        # One real node per machine: its bridge, pod subnet and node address are fixed.
        raise RealNodeError(
            f"another real-node sandbox runs on this machine (bridge {BRIDGE} exists): "
            "`baton sandbox down` it first (its --state-dir, e.g. $BATON_REAL_SANDBOX_DIR)"
        )
    subnet = ipaddress.ip_network(POD_SUBNET)
    for line in _sh(["ip", "-4", "route", "show"]).splitlines():
        dest = line.split()[0]
        if dest == "default" or f"dev {BRIDGE}" in line:
            continue
        try:
            if ipaddress.ip_network(dest, strict=False).overlaps(subnet):
                raise RealNodeError(
                    f"the pod subnet {POD_SUBNET} overlaps this machine's route {line.strip()!r}"
                )
        except ValueError:
            continue


def _chains() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for binary in IPTABLES:
        if shutil.which(binary) is None:
            continue
        for table in IPTABLES_TABLES:
            out = subprocess.run(
                [binary, "-t", table, "-S"], capture_output=True, text=True, check=False
            ).stdout
            found[f"{binary}/{table}"] = [ln.split()[1] for ln in out.splitlines() if ln.startswith("-N ")]
    return found


def _kubepods_cgroups() -> list[str]:
    return sorted(str(p) for p in CGROUP_ROOT.glob("*/kubepods*"))


def snapshot_host() -> HostSnapshot:
    return HostSnapshot(
        ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        chains=_chains(),
        netns=sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else [],
        cgroups=_kubepods_cgroups(),
        absent_dirs=[d for d in HOST_DIRS if not Path(d).exists()],
    )


# --- start -----------------------------------------------------------------------------------


def default_mtu() -> int:
    """MTU of the interface behind the default route (pods must not send bigger frames)."""
    out = _sh(["ip", "-4", "route", "show", "default"], check=False).split()
    if "dev" in out:
        dev = out[out.index("dev") + 1]
        try:
            return int(Path(f"/sys/class/net/{dev}/mtu").read_text())
        except (OSError, ValueError):
            pass
    return 1500


def setup_bridge() -> None:
    """The pod bridge with the node address, made before the API server binds to it."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        _sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    prefix = ipaddress.ip_network(POD_SUBNET).prefixlen
    if NODE_IP not in _sh(["ip", "-4", "addr", "show", "dev", BRIDGE]):
        _sh(["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE])
    _sh(["ip", "link", "set", BRIDGE, "mtu", str(default_mtu()), "up"])
    # Pods reach Services through the node (kube-proxy DNAT), which must route for them.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def write_configs(paths: NodePaths, ports: NodePorts, pki: Pki, server: str) -> None:
    for d in (paths.root, paths.cni_conf_dir, paths.cni_ipam_dir, paths.kubelet_root, paths.pod_logs):
        d.mkdir(parents=True, exist_ok=True)
    paths.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.containerd_root.mkdir(parents=True, exist_ok=True)
    paths.containerd_config.write_text(containerd_config(paths))
    (paths.cni_conf_dir / f"10-{CNI_NETWORK}.conflist").write_text(
        json.dumps(cni_conflist(paths, default_mtu()), indent=1) + "\n"
    )
    paths.kubelet_config.write_text(yaml_text(kubelet_config(paths, ports, pki)))
    paths.kube_proxy_config.write_text(yaml_text(kube_proxy_config(paths, ports)))
    paths.corefile.write_text(corefile(paths, ports))
    for stem in ("kubelet", "kube-proxy", "coredns"):
        cfg = kubeconfig_dict(
            server, pki.ca_cert, stem, client_cert=pki.client_cert(stem), client_key=pki.client_key(stem)
        )
        write_kubeconfig(paths.kubeconfig(stem), cfg)


def ctr(paths: NodePaths, *args: str, check: bool = True, timeout: float = 60.0) -> str:
    """``ctr`` against the node's containerd, in the CRI's namespace."""
    return _sh(
        ["ctr", f"--address={paths.containerd_socket}", "--namespace=k8s.io", *args],
        check=check,
        timeout=timeout,
    )


def containerd_ready(paths: NodePaths) -> bool:
    proc = subprocess.run(
        ["ctr", f"--address={paths.containerd_socket}", "version"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return proc.returncode == 0


def _alive(rec: procs.ProcRecord) -> Callable[[], None]:
    def check() -> None:
        if not procs.is_running(rec):
            raise NotReady(f"{rec.name} died; last lines of {rec.log}:\n{procs.tail(rec.log)}")

    return check


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback health URL
            return resp.status == 200
    except OSError:
        return False


def _launcher(
    logs: Path, record: Callable[[procs.ProcRecord], None]
) -> Callable[[str, list[str]], procs.ProcRecord]:
    def launch(name: str, argv: list[str]) -> procs.ProcRecord:
        rec = procs.start(name, argv, logs / f"{name}.log")
        record(rec)  # recorded at once, so `down` can stop a half-started node
        return rec

    return launch


def start_containerd(
    paths: NodePaths, logs: Path, record: Callable[[procs.ProcRecord], None], log: Callable[[str], None]
) -> None:
    """The node's containerd (its images are loaded next, before kubelet asks for any)."""
    launch = _launcher(logs, record)
    rec = launch("containerd", containerd_argv(Path(shutil.which("containerd") or "containerd"), paths))
    wait_for("containerd", lambda: containerd_ready(paths), START_TIMEOUT_S, check_alive=_alive(rec))
    log("containerd ready")


def start_agents(
    paths: NodePaths,
    ports: NodePorts,
    bins: Resolved,
    logs: Path,
    record: Callable[[procs.ProcRecord], None],
    node_ready: Callable[[], bool],
    log: Callable[[str], None],
) -> None:
    """kubelet (until the API shows the node Ready), then kube-proxy and CoreDNS."""
    launch = _launcher(logs, record)
    kubelet = launch("kubelet", kubelet_argv(bins["kubelet"], paths))
    wait_for(
        f"node {NODE_NAME} Ready", node_ready, START_TIMEOUT_S, check_alive=_alive(kubelet), interval_s=0.5
    )
    log(f"kubelet: node {NODE_NAME} Ready")
    for name, argv, url in (
        (
            "kube-proxy",
            kube_proxy_argv(bins["kube-proxy"], paths),
            f"127.0.0.1:{ports.kube_proxy_healthz}/healthz",
        ),
        ("coredns", coredns_argv(bins["coredns"], paths), f"127.0.0.1:{ports.coredns_ready}/ready"),
    ):
        rec = launch(name, argv)
        wait_for(name, lambda url=url: _http_ok(f"http://{url}"), START_TIMEOUT_S, check_alive=_alive(rec))
    log("kube-proxy and CoreDNS ready")
