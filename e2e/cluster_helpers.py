"""Helpers of the real-node tests: polling the cluster, reaching pods from the node, and the
same prompts answered by a local `baton up` (a uniquely named module, not conftest.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from polling import wait_until

if TYPE_CHECKING:
    from baton_dev.sandbox.handle import Sandbox

T = TypeVar("T")

PROMPTS = ["Hello", "The KV cache moves from prefill to decode over the network", "Kubernetes runs pods"]
CHAT = [{"role": "user", "content": "Which pool decodes the tokens?"}]
MAX_TOKENS = 24


def pods(sb: Sandbox, selector: str, namespace: str = "default") -> list[dict[str, Any]]:
    return sb.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


def ready(pod: dict[str, Any]) -> bool:
    """Running, Ready by its real readiness probe, and not being deleted."""
    status = pod.get("status", {})
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return (
        status.get("phase") == "Running"
        and conditions.get("Ready") == "True"
        and not pod["metadata"].get("deletionTimestamp")
    )


def ready_pods(
    sb: Sandbox, selector: str, count: int, namespace: str = "default"
) -> list[dict[str, Any]] | None:
    """The role's pods when exactly ``count`` exist and all are Ready, else None."""
    found = pods(sb, selector, namespace)
    return found if len(found) == count and all(ready(p) for p in found) else None


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return c["status"]
    return None


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - pod addresses on the node
        return resp.status, resp.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def answers(base_url: str, model: str) -> dict[str, Any]:
    """Greedy completions of PROMPTS and a streamed greedy chat answer, with the openai client."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    completions = [
        client.completions.create(model=model, prompt=p, max_tokens=MAX_TOKENS, temperature=0).choices[0].text
        for p in PROMPTS
    ]
    chunks = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=model, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        if c.choices
    ]
    return {"completions": completions, "chat": "".join(chunks), "chat_chunks": len(chunks)}


@contextmanager
def local_stack() -> Iterator[str]:
    """`baton up` (1 prefill, 1 decode, the builtin tiny model) on this machine; yields its /v1 URL."""
    cmd = [sys.executable, "-m", "baton_worker.cli", "up", "--model", "builtin://tiny", "--port", "0"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())

    threading.Thread(target=read, daemon=True).start()
    try:

        def url() -> str | None:
            if proc.poll() is not None:
                raise AssertionError("baton up exited:\n" + "\n".join(lines[-30:]))
            for line in lines:
                m = re.search(r"^baton up ready.*url=(\S+)", line)
                if m:
                    return m.group(1)
            return None

        base = wait_until(url, timeout=240, what="`baton up` to be ready", interval=0.2)
        yield base if base.endswith("/v1") else base.rstrip("/") + "/v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
