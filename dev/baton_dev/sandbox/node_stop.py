"""Stopping the real node and undoing what it did to the machine (see realnode.HostSnapshot)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from . import procs
from .addresses import BRIDGE
from .nodeplan import CNI_NETWORK, NodePaths
from .realnode import (
    CNI_CACHE,
    CONTAINER_LOGS,
    DRAIN_TIMEOUT_S,
    NETNS_DIR,
    HostSnapshot,
    NodeState,
    _chains,
    _kubepods_cgroups,
    ctr,
)


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
                    [binary, "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True, check=False
                )
        for chain in new:
            subprocess.run([binary, "-t", table, "-F", chain], capture_output=True, check=False)
        for chain in new:
            subprocess.run([binary, "-t", table, "-X", chain], capture_output=True, check=False)


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
