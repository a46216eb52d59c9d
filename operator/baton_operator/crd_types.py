"""Schema helpers for the CRD, and Kubernetes' own types (Affinity, Toleration, ...) spelled out.

A structural schema may not use preserve-unknown-fields, so the Kubernetes types a pool embeds are
written out here, each property with a description.
"""

from __future__ import annotations

from typing import Any

S = dict[str, Any]


def obj(
    description: str, properties: S, required: list[str] | None = None, rules: list[S] | None = None
) -> S:
    schema: S = {"type": "object", "description": description, "properties": properties}
    if required:
        schema["required"] = required
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def string(description: str, **extra: Any) -> S:
    return {"type": "string", "description": description, **extra}


def integer(description: str, **extra: Any) -> S:
    return {"type": "integer", "description": description, **extra}


def number(description: str, **extra: Any) -> S:
    return {"type": "number", "description": description, **extra}


def boolean(description: str, **extra: Any) -> S:
    return {"type": "boolean", "description": description, **extra}


def array(description: str, items: S, **extra: Any) -> S:
    return {"type": "array", "description": description, "items": items, **extra}


def string_map(description: str) -> S:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"


def quantity(description: str | None = None) -> S:
    """A Kubernetes quantity (1, 500m, 64Gi): an integer or a string."""
    schema: S = {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        "pattern": QUANTITY_PATTERN,
    }
    return {"description": description, **schema} if description else schema


def quantity_map(description: str) -> S:
    return {"type": "object", "description": description, "additionalProperties": quantity()}


def label_selector(description: str) -> S:
    expression = obj(
        "A label selector requirement.",
        {
            "key": string("The label key the selector applies to."),
            "operator": string(
                "How the key relates to the values.", enum=["In", "NotIn", "Exists", "DoesNotExist"]
            ),
            "values": array(
                "Values for In and NotIn; empty for Exists and DoesNotExist.", {"type": "string"}
            ),
        },
        required=["key", "operator"],
    )
    return obj(
        description,
        {
            "matchLabels": string_map("Labels that must all match."),
            "matchExpressions": array("Label selector requirements, ANDed.", expression),
        },
    )


def _node_selector_term() -> S:
    requirement = obj(
        "A node selector requirement.",
        {
            "key": string("The node label key (or field name for matchFields)."),
            "operator": string(
                "How the key relates to the values.",
                enum=["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"],
            ),
            "values": array("Values to compare with; one integer for Gt and Lt.", {"type": "string"}),
        },
        required=["key", "operator"],
    )
    return obj(
        "A node selector term: its requirements are ANDed.",
        {
            "matchExpressions": array("Requirements on node labels.", requirement),
            "matchFields": array("Requirements on node fields.", requirement),
        },
    )


def _pod_affinity_term() -> S:
    return obj(
        "Pods (matched by labelSelector in namespaces) this pod should be co-located with (or not).",
        {
            "labelSelector": label_selector("Selects the pods this term is about."),
            "namespaceSelector": label_selector("Selects the namespaces the labelSelector applies to."),
            "namespaces": array("Namespaces the labelSelector applies to.", {"type": "string"}),
            "topologyKey": string(
                "Node label whose value defines a topology domain (e.g. kubernetes.io/hostname)."
            ),
            "matchLabelKeys": array(
                "Pod label keys whose values are added to labelSelector.", {"type": "string"}
            ),
            "mismatchLabelKeys": array("Pod label keys whose values must differ.", {"type": "string"}),
        },
        required=["topologyKey"],
    )


def _weighted(description: str, key: str, term: S) -> S:
    return array(
        description,
        obj(
            "A preference with a weight.",
            {"weight": integer("Weight of this preference, 1-100.", minimum=1, maximum=100), key: term},
            required=["weight", key],
        ),
    )


def _pod_affinity(description: str) -> S:
    return obj(
        description,
        {
            "requiredDuringSchedulingIgnoredDuringExecution": array(
                "Terms that must hold when the pod is scheduled.", _pod_affinity_term()
            ),
            "preferredDuringSchedulingIgnoredDuringExecution": _weighted(
                "Terms the scheduler prefers.", "podAffinityTerm", _pod_affinity_term()
            ),
        },
    )


def affinity_schema() -> S:
    """Kubernetes' Affinity type, spelled out (structural schema; unknown fields rejected)."""
    return obj(
        "Affinity of this role's pods (Kubernetes Affinity), added to the GPU-type node selector.",
        {
            "nodeAffinity": obj(
                "Node affinity scheduling rules.",
                {
                    "requiredDuringSchedulingIgnoredDuringExecution": obj(
                        "Node selector terms (ORed) a node must match.",
                        {"nodeSelectorTerms": array("The terms, ORed.", _node_selector_term())},
                        required=["nodeSelectorTerms"],
                    ),
                    "preferredDuringSchedulingIgnoredDuringExecution": _weighted(
                        "Node selector terms the scheduler prefers.", "preference", _node_selector_term()
                    ),
                },
            ),
            "podAffinity": _pod_affinity("Pods to co-locate with."),
            "podAntiAffinity": _pod_affinity("Pods to stay away from."),
        },
    )


def toleration_schema() -> S:
    return obj(
        "A Kubernetes toleration.",
        {
            "key": string("Taint key the toleration applies to; empty with operator Exists matches all."),
            "operator": string("Exists or Equal (default Equal).", enum=["Exists", "Equal"]),
            "value": string("Taint value to match with operator Equal."),
            "effect": string(
                "Taint effect to match; empty matches all.",
                enum=["NoSchedule", "PreferNoSchedule", "NoExecute", ""],
            ),
            "tolerationSeconds": integer("How long a NoExecute taint is tolerated.", format="int64"),
        },
    )
