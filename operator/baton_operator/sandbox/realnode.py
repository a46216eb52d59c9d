"""The sandbox's real node (`baton sandbox up --real-node`): start it, stop it, clean up after it.

What runs and with which configuration is decided in nodeplan.py. This module changes the
machine, so it records what was there before (``HostSnapshot``) and `down` puts it back:
processes, containers and their shims, mounts under the node's directories, network namespaces,
the pod bridge, iptables chains, ``net.ipv4.ip_forward``, the kubepods cgroups and the files
kubelet and CNI write outside the state directory.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
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
    proxy = launch("kube-proxy", kube_proxy_argv(bins["kube-proxy"], paths))
    wait_for(
        "kube-proxy",
        lambda: _http_ok(f"http://127.0.0.1:{ports.kube_proxy_healthz}/healthz"),
        START_TIMEOUT_S,
        check_alive=_alive(proxy),
    )
    dns = launch("coredns", coredns_argv(bins["coredns"], paths))
    wait_for(
        "coredns",
        lambda: _http_ok(f"http://127.0.0.1:{ports.coredns_ready}/ready"),
        START_TIMEOUT_S,
        check_alive=_alive(dns),
    )
    log("kube-proxy and CoreDNS ready")


# --- images ----------------------------------------------------------------------------------


def _podman_id(reference: str) -> str | None:
    proc = subprocess.run(
        ["podman", "image", "inspect", "--format={{.Id}}", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _containerd_config_digest(paths: NodePaths, reference: str) -> str | None:
    out = ctr(paths, "images", "ls", check=False)
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3 and cols[0] == reference:
            manifest = ctr(paths, "content", "get", cols[2], check=False)
            try:
                return json.loads(manifest)["config"]["digest"].removeprefix("sha256:")
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexa = digest.partition(":")
    return layout / "blobs" / algo / hexa


def _content_blobs(paths: NodePaths) -> Path:
    return paths.containerd_root / "io.containerd.content.v1.content" / "blobs" / "sha256"


def _export(paths: NodePaths, reference: str, layout: Path) -> dict[str, Any]:
    """podman's image as an OCI layout (uncompressed layers: the digests containerd stores).

    The layout starts as hard links to containerd's content store, so skopeo writes only the
    blobs containerd lacks (after a change of baton's code: the top layer and the config).
    Returns the image's descriptor in the layout's index.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}\n')
    content = _content_blobs(paths)
    if content.is_dir():
        for blob in content.iterdir():
            os.link(blob, blobs / blob.name)
    _sh(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-oci-accept-uncompressed-layers",
            f"containers-storage:{reference}",
            f"oci:{layout}:{reference}",
        ],
        timeout=1800,
    )
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == reference:
            return desc
    raise RealNodeError(f"skopeo exported {reference} but {layout}/index.json does not name it")


def _import(paths: NodePaths, layout: Path, desc: dict[str, Any]) -> int:
    """Stream an OCI archive of one image into containerd, holding only the blobs it lacks
    (containerd takes the others from its content store). Returns the bytes sent."""
    manifest = json.loads(_blob(layout, desc["digest"]).read_text())
    wanted = [
        desc["digest"],
        manifest["config"]["digest"],
        *(layer["digest"] for layer in manifest["layers"]),
    ]
    have = set(ctr(paths, "content", "ls", "--quiet", check=False).split())
    missing = [d for d in dict.fromkeys(wanted) if d not in have]
    load = subprocess.Popen(
        ["ctr", f"--address={paths.containerd_socket}", "--namespace=k8s.io", "images", "import", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert load.stdin is not None
    sent = 0
    try:
        with tarfile.open(fileobj=load.stdin, mode="w|") as tar:
            tar.add(layout / "oci-layout", arcname="oci-layout")
            index = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
            info = tarfile.TarInfo("index.json")
            info.size = len(index)
            tar.addfile(info, io.BytesIO(index))
            for digest in missing:
                blob = _blob(layout, digest)
                sent += blob.stat().st_size
                tar.add(blob, arcname=str(blob.relative_to(layout)))
    except BrokenPipeError:
        pass  # ctr exited early: its error is reported below
    finally:
        load.stdin.close()
    err = load.stderr.read().decode(errors="replace") if load.stderr else ""
    if load.wait(timeout=1800) != 0:
        raise RealNodeError(f"ctr images import of {desc['annotations']} failed: {err.strip()[-500:]}")
    return sent


def load_images(paths: NodePaths, references: Iterable[str], log: Callable[[str], None]) -> list[str]:
    """Import podman's images into the node's containerd unless it already has the same ones.

    No registry is reachable: pods run what was imported (``imagePullPolicy: IfNotPresent``).
    Only layers containerd lacks are exported and sent, so after a change of baton's code the
    worker image's 6 GB of dependencies are not moved again. Returns the references imported.
    """
    imported: list[str] = []
    for ref in references:
        image_id = _podman_id(ref)
        if image_id is None:
            raise RealNodeError(f"image {ref} is not built: run `make images` (`baton sandbox images`)")
        if _containerd_config_digest(paths, ref) == image_id:
            continue
        t0 = time.monotonic()
        # On the content store's file system, so the layout's hard links work.
        with tempfile.TemporaryDirectory(prefix=".export-", dir=paths.containerd_root) as tmp:
            layout = Path(tmp) / "oci"
            sent = _import(paths, layout, _export(paths, ref, layout))
        log(
            f"imported {ref} into the node's containerd in {time.monotonic() - t0:.1f} s ({sent / 1e6:.0f} MB sent)"
        )
        imported.append(ref)
    return imported


# --- stop and clean up -----------------------------------------------------------------------


def _running_tasks(paths: NodePaths) -> list[str]:
    if not paths.containerd_socket.exists():
        return []
    out = ctr(paths, "tasks", "ls", check=False, timeout=20)
    return [ln.split()[0] for ln in out.splitlines()[1:] if ln.split() and "RUNNING" in ln]


def wait_containers_gone(paths: NodePaths, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    """Whether every container of the node stopped within ``timeout_s`` (kubelet tears pods down)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _running_tasks(paths):
            return True
        time.sleep(0.5)
    return False


def kill_containers(paths: NodePaths) -> None:
    """SIGKILL and delete what is left (kubelet could not stop it, or is gone)."""
    for task in _running_tasks(paths):
        ctr(paths, "tasks", "kill", "--signal=SIGKILL", task, check=False)
    deadline = time.monotonic() + 15
    while _running_tasks(paths) and time.monotonic() < deadline:
        time.sleep(0.3)
    out = ctr(paths, "tasks", "ls", check=False) if paths.containerd_socket.exists() else ""
    for line in out.splitlines()[1:]:
        if line.split():
            ctr(paths, "tasks", "delete", "--force", line.split()[0], check=False)


def _mounts_under(prefixes: Iterable[Path]) -> list[str]:
    roots = [str(p.resolve()) if p.exists() else str(p) for p in prefixes]
    found: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == r or point.startswith(r + "/") for r in roots):
            found.append(point)
    # Deepest first.
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(prefixes: Iterable[Path]) -> list[str]:
    """Unmount everything mounted under ``prefixes``; returns what stays mounted."""
    prefixes = list(prefixes)
    for _ in range(3):
        points = _mounts_under(prefixes)
        if not points:
            return []
        for point in points:
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return _mounts_under(prefixes)


def _stray_shims(paths: NodePaths) -> list[int]:
    needle = str(paths.containerd_socket).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in argv and needle in argv:
            found.append(int(entry.name))
    return found


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _restore_iptables(before: dict[str, list[str]]) -> None:
    """Remove every chain created since the snapshot, and the rules that jump to them."""
    for key, chains in _chains().items():
        binary, table = key.split("/")
        new = [c for c in chains if c not in set(before.get(key, []))]
        if not new:
            continue
        rules = subprocess.run(
            [binary, "-t", table, "-S"], capture_output=True, text=True, check=False
        ).stdout
        pattern = re.compile(r"-j (" + "|".join(re.escape(c) for c in new) + r")(\s|$)")
        for rule in rules.splitlines():
            if rule.startswith("-A ") and pattern.search(rule):
                chain = rule.split()[1]
                if chain in new:
                    continue  # goes away with its chain
                subprocess.run(
                    [binary, "-t", table, "-D", *_split_rule(rule)[1:]], capture_output=True, check=False
                )
        for chain in new:
            subprocess.run([binary, "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in new:
            subprocess.run([binary, "-t", table, "-X", chain], capture_output=True, check=False)


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def _pod_processes(before: list[str]) -> list[int]:
    """Processes still in the kubepods cgroups created since `up` (containers nobody stopped)."""
    keep = set(before)
    pids: set[int] = set()
    for top in _kubepods_cgroups():
        if top in keep:
            continue
        for procs_file in Path(top).rglob("cgroup.procs"):
            try:
                pids.update(int(x) for x in procs_file.read_text().split())
            except (OSError, ValueError):
                continue
    return sorted(pids)


def _remove_cgroups(before: list[str]) -> None:
    keep = set(before)
    for top in _kubepods_cgroups():
        if top in keep:
            continue
        # Depth first: a cgroup directory can only be removed once it has no children.
        for d in sorted(Path(top).rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError:
                    pass
        try:
            Path(top).rmdir()
        except OSError:
            pass


def _remove_netns(before: list[str]) -> None:
    if not NETNS_DIR.is_dir():
        return
    for name in os.listdir(NETNS_DIR):
        if name not in before and name.startswith("cni-"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def _remove_host_files(paths: NodePaths, host: HostSnapshot) -> None:
    if CONTAINER_LOGS.is_dir():
        for link in CONTAINER_LOGS.iterdir():
            try:
                if link.is_symlink() and os.readlink(link).startswith(str(paths.pod_logs)):
                    link.unlink()
            except OSError:
                pass
    results = CNI_CACHE / "results"
    if results.is_dir():
        # <network>-<sandbox id>-<interface>: ours, and the loopback entries of the same sandboxes.
        ours = [f for f in results.glob(f"{CNI_NETWORK}-*")]
        ids = {f.name[len(CNI_NETWORK) + 1 :].rsplit("-", 1)[0] for f in ours}
        for f in [*ours, *(results / f"cni-loopback-{i}-lo" for i in ids)]:
            f.unlink(missing_ok=True)
    for d in host.absent_dirs:
        shutil.rmtree(d, ignore_errors=True)


def stop(paths: NodePaths, node: NodeState, cleanup_iptables: Callable[[], None]) -> list[str]:
    """Stop the node's processes and undo what it did to the machine; returns what stuck.

    Call it after kubelet had its chance to stop the pods (the caller cordons the node and
    deletes its pods while the API server still runs); what is left is killed here.
    """
    stuck: list[str] = []
    by_name = {p.name: p for p in node.procs}
    for name in ("coredns", "kube-proxy", "kubelet"):
        rec = by_name.get(name)
        if rec is not None and not procs.stop(rec):
            stuck.append(f"{name} (pid {rec.pid})")
    if "containerd" in by_name and procs.is_running(by_name["containerd"]):
        kill_containers(paths)
    _kill_pids(_pod_processes(node.host.cgroups))
    rec = by_name.get("containerd")
    if rec is not None and not procs.stop(rec, timeout_s=20):
        stuck.append(f"containerd (pid {rec.pid})")
    _kill_pids(_stray_shims(paths))
    cleanup_iptables()
    left = unmount_all([paths.kubelet_root, paths.runtime_dir, paths.containerd_root])
    stuck += [f"mount {m}" for m in left]
    _remove_netns(node.host.netns)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    _restore_iptables(node.host.chains)
    Path("/proc/sys/net/ipv4/ip_forward").write_text(node.host.ip_forward + "\n")
    _remove_cgroups(node.host.cgroups)
    _remove_host_files(paths, node.host)
    if not left:
        shutil.rmtree(paths.runtime_dir, ignore_errors=True)
    return stuck
