"""Smoke tests of the images `make images` builds, run with podman as a restricted pod would run
them: non-root (uid 65532), read-only root filesystem, every capability dropped.

The worker image is a fresh, non-editable install of baton's wheel: it imports every module,
answers --help, and serves a completion as a decode worker behind a router (both containers on
the host network, talking over 127.0.0.1). The operator image's liveness endpoint answers while
it runs against the real-node sandbox's API server.
"""

from __future__ import annotations

import json
import resource
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import http_get
from polling import wait_until

pytestmark = [pytest.mark.images, pytest.mark.slow]

WORKER = "baton-worker:dev"
CONTAINER_RLIMIT = 8192
OPERATOR = "baton-operator:dev"

# Imports every module of the installed package and reports what it found, as JSON.
IMPORT_ALL = """
import importlib, importlib.util, json, os, pkgutil, subprocess, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
mods, failed = [], {}
for pkg in [importlib.import_module(p) for p in PACKAGES]:
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        try:
            importlib.import_module(m.name)
            mods.append(m.name)
        except Exception as exc:
            failed[m.name] = repr(exc)
helps = {c: subprocess.run(["baton", c, "--help"], capture_output=True, text=True).returncode for c in HELP}
dev = importlib.util.find_spec("baton_dev") is not None
print(json.dumps({"uid": os.getuid(), "site": site, "writable": os.access(site, os.W_OK), "dev": dev,
                  "modules": mods, "failed": failed, "help": helps,
                  "proto_files": sorted(os.listdir(os.path.dirname(importlib.import_module("baton_worker.proto").__file__)))}))

"""


def _limits() -> list[str]:
    # This machine withholds CAP_SYS_RESOURCE: podman's default rlimits (above the current hard
    # limits) cannot be set, and neither can the current ones (conmon runs with lower ones), so
    # containers get modest limits below both.
    out = []
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, _ = resource.getrlimit(which)
        value = CONTAINER_RLIMIT if soft == resource.RLIM_INFINITY else min(soft, CONTAINER_RLIMIT)
        out.append(f"--ulimit={name}={value}:{value}")
    return out


def restricted(image: str, *args: str, entrypoint: str | None = None, detach: bool = False) -> list[str]:
    """`podman run` as a restricted pod runs: uid 65532, read-only root, no capabilities."""
    argv = ["podman", "--runtime=runc", "run", "--read-only", "--user=65532:65532", "--cap-drop=ALL"]
    argv += ["--security-opt=no-new-privileges", "--network=host", *_limits()]
    # A detached container stays after it exits, so its log can be read; callers remove it.
    argv += ["--detach", f"--name=baton-smoke-{uuid.uuid4().hex[:8]}"] if detach else ["--rm"]
    if entrypoint:
        argv.append(f"--entrypoint={entrypoint}")
    return [*argv, image, *args]


@contextmanager
def container(image: str, *args: str, ready: str, timeout: float = 180) -> Iterator[str]:
    """A detached restricted container, yielded once its log shows ``ready``; removed after."""
    proc = subprocess.run(restricted(image, *args, detach=True), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    try:

        def logs() -> str:
            out = subprocess.run(["podman", "logs", cid], capture_output=True, text=True, check=False)
            state = subprocess.run(
                ["podman", "inspect", "--format={{.State.Running}}", cid],
                capture_output=True,
                text=True,
                check=False,
            )
            if state.stdout.strip() != "true":
                raise AssertionError(f"{image} {args[0]} exited:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
            text = out.stdout + out.stderr
            return text if ready in text else ""

        wait_until(logs, timeout=timeout, what=f"{image} {args[0]} to log {ready!r}", interval=0.5)
        yield cid
    finally:
        subprocess.run(["podman", "rm", "--force", "--time=5", cid], capture_output=True, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def images_built() -> None:
    for image in (WORKER, OPERATOR):
        proc = subprocess.run(["podman", "image", "exists", image], check=False)
        assert proc.returncode == 0, f"{image} is not built: run `make images`"


def _labels(image: str) -> dict[str, str]:
    out = subprocess.run(
        ["podman", "image", "inspect", "--format={{json .Labels}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("image", [WORKER, OPERATOR])
def test_image_is_non_root_and_labelled(image: str) -> None:
    out = subprocess.run(
        ["podman", "image", "inspect", "--format={{.Config.User}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "65532:65532"
    labels = _labels(image)
    for key in ("source", "version", "revision", "title"):
        assert labels.get(f"org.opencontainers.image.{key}"), (key, labels)
    assert labels["org.opencontainers.image.title"] == image.split(":")[0]


# What each image must import: the worker image everything, the operator image (no torch) the
# operator and the `baton` command.
IMPORTS = {
    WORKER: (("baton_worker", "baton_operator"), ("worker", "router", "operator")),
    OPERATOR: (("baton_operator",), ("operator",)),
}


@pytest.mark.parametrize("image", [WORKER, OPERATOR])
def test_image_imports_every_module_read_only_as_non_root(image: str) -> None:
    packages, helps = IMPORTS[image]
    script = IMPORT_ALL.replace("PACKAGES", repr(packages)).replace("HELP", repr(helps))
    proc = subprocess.run(
        restricted(image, "-c", script, entrypoint="python3"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["uid"] == 65532 and not report["writable"]
    assert report["failed"] == {}
    # The development tools (sandbox, benchmarks, profiler) are not part of any image.
    assert report["dev"] is False
    assert report["help"] == dict.fromkeys(helps, 0)
    assert "baton_operator.main" in report["modules"]
    if image == WORKER:
        assert {"baton_worker.rpc", "baton_worker.server.main", "baton_worker.router.main"} <= set(
            report["modules"]
        )
    # The wire contract and its generated code ship in the package; nothing was generated at import.
    assert {"baton.proto", "baton_pb2.py", "baton_pb2_grpc.py"} <= set(report["proto_files"])


def test_worker_and_router_containers_serve_a_completion() -> None:
    from openai import OpenAI

    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    decode = (
        "worker",
        "--role=decode",
        "--model=builtin://tiny",
        "--host=127.0.0.1",
        f"--port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--threads=1",
    )
    with container(WORKER, *decode, ready="baton worker ready"):
        code, _ = http_get(f"http://127.0.0.1:{metrics_port}/health")
        assert code == 200
        router = ("router", "--host=127.0.0.1", f"--port={http_port}", f"--decode=127.0.0.1:{grpc_port}")
        with container(WORKER, *router, "--model=builtin://tiny", ready="baton router ready"):
            client = OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0)
            out = client.completions.create(
                model="builtin://tiny", prompt="Hello", max_tokens=8, temperature=0
            )
            assert out.usage is not None and out.usage.completion_tokens == 8
            assert out.choices[0].text


def test_operator_image_liveness_endpoint_answers(real_sandbox: Any, tmp_path: Path) -> None:
    from baton_dev.sandbox.kubeconfig import kubeconfig_dict, write_kubeconfig
    from baton_dev.sandbox.operator_proc import (
        NAMESPACE,
        SERVICE_ACCOUNT,
        find_chart,
        in_cluster_operator_values,
        install_chart,
    )

    chart = find_chart()
    assert chart is not None
    install_chart(real_sandbox, chart, in_cluster_operator_values())  # the ServiceAccount and its RBAC
    # A token kubeconfig of the chart's ServiceAccount, readable by uid 65532, mounted read-only.
    token = real_sandbox.service_account_token(NAMESPACE, SERVICE_ACCOUNT)
    user = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
    shutil.copy(real_sandbox.ca_file, tmp_path / "ca.crt")
    write_kubeconfig(
        tmp_path / "config", kubeconfig_dict(real_sandbox.server, Path("/kube/ca.crt"), user, token=token)
    )
    for path in (tmp_path, tmp_path / "ca.crt", tmp_path / "config"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    args = (
        "operator",
        "--kubeconfig=/kube/config",
        f"--namespace=smoke-{uuid.uuid4().hex[:6]}",
        f"--lease-namespace={NAMESPACE}",
        f"--liveness=http://127.0.0.1:{port}/healthz",
    )
    argv = restricted(OPERATOR, *args, detach=True)
    argv[argv.index(OPERATOR) : argv.index(OPERATOR)] = [f"--volume={tmp_path}:/kube:ro"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    try:
        wait_until(
            lambda: _running(cid) and http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200,
            timeout=120,
            what="the operator's /healthz",
            interval=0.5,
        )
    finally:
        subprocess.run(["podman", "rm", "--force", "--time=5", cid], capture_output=True, check=False)


def _running(cid: str) -> bool:
    """True while the container runs; an AssertionError with its log once it has exited."""
    state = subprocess.run(
        ["podman", "inspect", "--format={{.State.Running}}", cid], capture_output=True, text=True, check=False
    )
    if state.stdout.strip() != "true":
        logs = subprocess.run(["podman", "logs", cid], capture_output=True, text=True, check=False)
        raise AssertionError(f"container {cid[:12]} exited:\n{(logs.stdout + logs.stderr)[-3000:]}")
    return True
