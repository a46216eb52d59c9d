"""The Argo CD health check (Lua) for InferencePool, run in Lua 5.1 as Argo CD's gopher-lua runs it."""

from __future__ import annotations

from pathlib import Path

import lupa.lua51 as lua51  # dev extra; Argo CD runs health checks in gopher-lua (Lua 5.1)
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "charts" / "baton" / "argocd" / "inferencepool-health.lua"


def health(obj: dict) -> tuple[str, str]:
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT.read_text())
    return hs["status"], hs["message"]


def cond(kind: str, status: str, message: str = "", reason: str = "R") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def pool(generation: int = 2, observed: int | None = 2, conditions: list | None = None, **status) -> dict:
    st = dict(status)
    if observed is not None:
        st["observedGeneration"] = observed
    if conditions is not None:
        st["conditions"] = conditions
    return {"metadata": {"name": "p", "generation": generation}, "status": st}


@pytest.mark.parametrize(
    "obj,want_status,want_in_message",
    [
        ({"metadata": {"name": "p", "generation": 1}}, "Progressing", "operator to report"),
        (pool(observed=1, conditions=[cond("Ready", "True")]), "Progressing", "generation 2"),
        (pool(conditions=[cond("Ready", "True", "2/2 prefill, 3/3 decode ready")]), "Healthy", "3/3 decode"),
        (
            pool(
                conditions=[
                    cond("Ready", "True", "ok"),
                    cond("ScalingActive", "False", "cannot read queue depth"),
                ]
            ),
            "Healthy",
            "autoscaling inactive: cannot read queue depth",
        ),
        (
            pool(conditions=[cond("Ready", "True"), cond("Degraded", "True", "decode crash-looping")]),
            "Degraded",
            "crash-looping",
        ),
        (
            pool(
                conditions=[
                    cond("Ready", "False", "1/2 prefill ready"),
                    cond("Progressing", "True", "rolling out"),
                ]
            ),
            "Progressing",
            "rolling out",
        ),
        (
            pool(
                conditions=[
                    cond("Ready", "False", "0/1 prefill: Unschedulable"),
                    cond("Progressing", "False"),
                ]
            ),
            "Degraded",
            "Unschedulable",
        ),
        # Autoscaled replicas differing from anything in git never matter.
        (
            pool(conditions=[cond("Ready", "True", "ok")], prefill={"replicas": 7, "desiredReplicas": 7}),
            "Healthy",
            "ok",
        ),
    ],
)
def test_autoscaling_argocd_health(obj: dict, want_status: str, want_in_message: str) -> None:
    status, message = health(obj)
    assert status == want_status
    assert want_in_message in message
