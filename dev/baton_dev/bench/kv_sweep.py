"""`baton bench kv --ucx-tls 'default;A;B+UCX_X=y'`: the KV bench once per UCX setting.

UCX reads its environment once per process, so each setting runs the whole bench in a process
of its own; a setting UCX cannot use fails (or hangs) there, is reported with UCX's reason, and
the sweep goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def parse_ucx_settings(text: str) -> list[str]:
    """``--ucx-tls``: settings separated by ``;``. A setting is a UCX_TLS value, ``default`` (UCX's
    own choice of transports), or either followed by ``+UCX_NAME=value`` assignments, e.g.
    ``default+UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto`` (UCX's stock behaviour, without baton's
    defaults, which only fill in what the environment leaves unset)."""
    settings = [t.strip() for t in text.split(";")]
    if not text.strip() or any(not t or " " in t for t in settings):
        raise ValueError(f"--ucx-tls: expected settings separated by ';', got {text!r}")
    for setting in settings:
        ucx_env(setting)  # raises on a malformed assignment
    return list(dict.fromkeys(settings))


def ucx_env(setting: str) -> dict[str, str]:
    """The UCX variables one ``--ucx-tls`` setting sets (see :func:`parse_ucx_settings`)."""
    tls, *assignments = setting.split("+")
    env = {} if tls == "default" else {"UCX_TLS": tls}
    if not tls or "=" in tls:
        raise ValueError(f"--ucx-tls: {setting!r} must start with a UCX_TLS value or 'default'")
    for item in assignments:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith("UCX_") or not value:
            raise ValueError(f"--ucx-tls: {item!r} in {setting!r} is not UCX_NAME=value")
        env[name] = value
    return env


def why_failed(stderr: str, code: int) -> str:
    """The line of a failed run's stderr that says why: its last error line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return (errors[-1] if errors else lines[-1] if lines else f"exit code {code}")[-600:]


def _reported_error(stdout: str) -> str:
    """The ``error`` of a run that failed on purpose (``{"error": ...}`` on stdout), else ''."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        return ""
    return str(doc.get("error", "")) if isinstance(doc, dict) else ""


def sweep(settings: list[str], bench_args: list[str], timeout_s: float) -> dict:
    """Run the whole bench once per UCX_TLS setting, each in a process of its own (UCX reads its
    environment once), and gather the rows, each marked with its ``ucx_tls``. A setting that
    fails or hangs (UCX wire-up can hang on a transport list it cannot use) is reported as such
    and the sweep goes on."""
    rows: list[dict] = []
    runs: list[dict] = []
    for setting in settings:
        env = {k: v for k, v in os.environ.items() if k != "UCX_TLS"}
        env.update(ucx_env(setting))
        cmd = [sys.executable, "-m", "baton_dev.bench.kv", "--json", *bench_args]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            runs.append({"ucx_tls": setting, "error": f"no result within {timeout_s:.0f}s (hung?)"})
            continue
        if proc.returncode != 0:
            error = _reported_error(proc.stdout) or proc.stderr.strip()[-1500:] or f"exit {proc.returncode}"
            runs.append({"ucx_tls": setting, "error": error})
            continue
        out = json.loads(proc.stdout)
        rows += [{**row, "ucx_tls": setting} for row in out["results"]]
        runs.append({
            "ucx_tls": setting,
            "metadata": out["metadata"],
            "device": out.get("device"),
            "ucx_env": out.get("ucx_env"),  # every UCX_* variable the run saw, baton's defaults included
        })  # fmt: skip
    return {"results": rows, "sweep": runs}
