"""The CRD's ``spec.autoscaling.slo`` (SLO mode), its cross-field CEL rules, and its status block.

The rules mirror :func:`baton_operator.spec_slo.parse_slo`: SLO mode needs the builtin autoscaler,
both roles autoscaled, and a ``maxGpus`` that holds both roles at their minimum. Messages are
static (a messageExpression with string(int) exceeds the API server's CEL cost budget here).
"""

from __future__ import annotations

from baton_operator.crd_types import S, boolean, integer, number, obj, string
from baton_operator.spec_slo import (
    DEFAULT_ATTAINMENT,
    DEFAULT_PROFILE_KEY,
    DEFAULT_RATE_WINDOW_S,
    DEFAULT_SCALE_UP_INTERVALS,
    MAX_RATE_WINDOW_S,
    MAX_SCALE_UP_INTERVALS,
)

_SLO = "has(self.autoscaling) && has(self.autoscaling.slo)"


def slo_schema() -> S:
    """``spec.autoscaling.slo``."""
    return obj(
        "SLO mode: every interval the autoscaler measures the arrival rate and mean prompt and output "
        "lengths from the routers' counters, runs the capacity planner (baton plan) on the profile, "
        "and sets both roles to the cheapest deployment meeting ttftMs and itlMs, within each role's "
        "minReplicas/maxReplicas and maxGpus. Each role's queue-depth policy stays on as a floor: "
        "replicas = max(planner, queue depth), so a burst the model did not predict still scales. "
        "Needs mode builtin and autoscaling enabled on both roles. See docs/autoscaling.md.",
        {
            "ttftMs": number(
                "Time-to-first-token target in milliseconds, met by `attainment` of requests.",
                minimum=0,
                exclusiveMinimum=True,
            ),
            "itlMs": number(
                "Inter-token latency target in milliseconds (each request's mean time per output token "
                "after the first), met by `attainment` of requests.",
                minimum=0,
                exclusiveMinimum=True,
            ),
            "attainment": number(
                "Fraction of requests that must meet both targets (DistServe's goodput definition).",
                default=DEFAULT_ATTAINMENT,
                minimum=0,
                exclusiveMinimum=True,
                maximum=1,
            ),
            "profile": obj(
                "The performance profile (baton-profile/v1 JSON, as `baton profile --out` writes it "
                "or profiles/*.json) the planner simulates with.",
                {
                    "configMapRef": obj(
                        "A ConfigMap in the pool's namespace holding the profile, e.g. "
                        "kubectl create configmap llama-profile --from-file=profile.json=profiles/h100-llama3-8b.json. "
                        "Re-read within 30 s of a change.",
                        {
                            "name": string("The ConfigMap's name.", minLength=1),
                            "key": string(
                                "The key holding the JSON.", default=DEFAULT_PROFILE_KEY, minLength=1
                            ),
                        },
                        required=["name"],
                    )
                },
                required=["configMapRef"],
            ),
            "maxGpus": integer(
                "Most GPUs the pool may use (prefill replicas x tensorParallelSize + decode replicas x "
                "tensorParallelSize; a device: cpu pod counts 1). Unset: only maxReplicas bound it.",
                minimum=1,
            ),
            "rateWindowSeconds": integer(
                "The arrival rate and mean lengths are averaged over this many seconds of router "
                "counters (windows where a router restarted or appeared are left out).",
                default=DEFAULT_RATE_WINDOW_S,
                minimum=1,
                maximum=MAX_RATE_WINDOW_S,
            ),
            "scaleUpIntervals": integer(
                "The planner must ask for more replicas on this many consecutive intervals before a "
                "scale-up (a queue-depth scale-up is immediate). Scale-downs wait for the role's "
                "scaleDownStabilizationSeconds.",
                default=DEFAULT_SCALE_UP_INTERVALS,
                minimum=1,
                maximum=MAX_SCALE_UP_INTERVALS,
            ),
        },
        required=["ttftMs", "itlMs", "profile"],
    )


def _pod_cost(role: str) -> str:
    r = f"self.{role}"
    tp = f"(has({r}.tensorParallelSize) ? {r}.tensorParallelSize : 1)"
    return f"(has({r}.device) && {r}.device == 'cpu' ? 1 : {tp})"


def _least(role: str) -> str:
    m = f"self.{role}.autoscaling.minReplicas"
    return f"(has({m}) && {m} > 1 ? {m} : 1)"


def slo_rules() -> list[S]:
    """Spec-level CEL rules of SLO mode."""
    rules: list[S] = [
        {
            "rule": f"!({_SLO}) || !has(self.autoscaling.mode) || self.autoscaling.mode == 'builtin'",
            "message": "spec.autoscaling.mode must be builtin with spec.autoscaling.slo: KEDA scales on "
            "queue depth only",
            "fieldPath": ".autoscaling.mode",
            "reason": "FieldValueInvalid",
        }
    ]
    for role in ("prefill", "decode"):
        rules.append(
            {
                "rule": f"!({_SLO}) || (has(self.{role}) && has(self.{role}.autoscaling) && "
                f"has(self.{role}.autoscaling.enabled) && self.{role}.autoscaling.enabled)",
                "message": f"spec.{role}.autoscaling.enabled must be true with spec.autoscaling.slo: SLO "
                "mode sizes both roles within their minReplicas and maxReplicas",
                "fieldPath": f".{role}",
                "reason": "FieldValueInvalid",
            }
        )
    both = "has(self.prefill) && has(self.prefill.autoscaling) && has(self.decode) && has(self.decode.autoscaling)"
    rules.append(
        {
            "rule": f"!({_SLO}) || !has(self.autoscaling.slo.maxGpus) || !({both}) || "
            f"{_least('prefill')} * {_pod_cost('prefill')} + {_least('decode')} * {_pod_cost('decode')} "
            "<= self.autoscaling.slo.maxGpus",
            "message": "spec.autoscaling.slo.maxGpus must hold both roles at minReplicas (at least one "
            "prefill replica): minReplicas x tensorParallelSize of each role, added up",
            "fieldPath": ".autoscaling.slo.maxGpus",
            "reason": "FieldValueInvalid",
        }
    )
    return rules


def slo_status_schema() -> S:
    """``status.autoscaling.slo``: the planner's latest decision."""
    return obj(
        "SLO mode: the capacity planner's latest decision (before stabilization and the queue-depth "
        "floor; the roles' desiredReplicas say what was applied).",
        {
            "rateRps": number(
                "Arrival rate planned for (req/s): the measured rate rounded up to its 10% bucket."
            ),
            "inputTokens": integer("Mean prompt length planned for, rounded up to its 10% bucket."),
            "outputTokens": integer("Mean output length planned for, rounded up to its 10% bucket."),
            "prefillReplicas": integer("Prefill replicas the planner asks for."),
            "decodeReplicas": integer("Decode replicas the planner asks for."),
            "gpus": integer("GPUs of that deployment."),
            "feasible": boolean(
                "Whether that deployment meets both targets; false: the closest one within the bounds."
            ),
            "binding": string(
                "What limits that deployment just above its highest sustainable rate: ttft, itl, "
                "prefill capacity or decode capacity."
            ),
            "maxRateRps": number("Highest rate that deployment sustains within the targets (req/s)."),
            "ttftP90Ms": number("Predicted TTFT p90 at the planned rate (ms)."),
            "itlP90Ms": number("Predicted inter-token latency p90 at the planned rate (ms)."),
            "message": string(
                "The decision in words, or why there is none (no rate yet, profile unreadable)."
            ),
        },
    )
