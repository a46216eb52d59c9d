"""``spec.networkPolicy``: whether the operator fences a pool's pods, and who may reach what.

Parsed (pure) into what :mod:`baton_operator.netpol` builds the NetworkPolicies from. Peers are
Kubernetes NetworkPolicyPeers (``namespaceSelector``, ``podSelector``, ``ipBlock``), normalized
to what the API server stores (empty ``matchLabels``, ``matchExpressions``, ``values`` and
``except`` left out), so a no-op resync finds the live policies equal to the desired ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baton_operator.spec_base import SpecError, as_obj, read_bool, read_str

MAX_PEERS = 32
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PEER_SELECTORS = ("namespaceSelector", "podSelector")


@dataclass(frozen=True)
class NetworkPolicySpec:
    """``spec.networkPolicy``; an empty ``metrics_from`` / ``router_from`` means from anywhere."""

    enabled: bool = True
    metrics_from: tuple[dict[str, Any], ...] = ()
    router_from: tuple[dict[str, Any], ...] = ()


def _strings(raw: Any, path: str) -> list[str]:
    items = [] if raw is None else raw
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise SpecError(path, "must be a list of strings")
    return list(items)


def parse_label_selector(raw: Any, path: str) -> dict[str, Any]:
    """A Kubernetes LabelSelector; ``{}`` selects everything (all namespaces, all pods)."""
    sel = as_obj(raw, path)
    out: dict[str, Any] = {}
    labels = as_obj(sel.get("matchLabels"), f"{path}.matchLabels")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise SpecError(f"{path}.matchLabels.{key}", "must be a string")
    if labels:
        out["matchLabels"] = dict(labels)
    exprs = sel.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SpecError(f"{path}.matchExpressions", "must be a list")
    parsed: list[dict[str, Any]] = []
    for i, item in enumerate(exprs):
        where = f"{path}.matchExpressions[{i}]"
        expr = as_obj(item, where)
        key = read_str(expr, "key", where, "")
        if not key:
            raise SpecError(f"{where}.key", "is required")
        op = read_str(expr, "operator", where, "", SELECTOR_OPERATORS)
        values = _strings(expr.get("values"), f"{where}.values")
        if op in ("In", "NotIn") and not values:
            raise SpecError(f"{where}.values", f"must not be empty with operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise SpecError(f"{where}.values", f"must be empty with operator {op}")
        parsed.append({"key": key, "operator": op, **({"values": values} if values else {})})
    if parsed:
        out["matchExpressions"] = parsed
    return out


def _ip_block(raw: Any, path: str) -> dict[str, Any]:
    block = as_obj(raw, path)
    cidr = read_str(block, "cidr", path, "")
    if not cidr:
        raise SpecError(f"{path}.cidr", "is required, e.g. 10.0.0.0/8")
    excluded = _strings(block.get("except"), f"{path}.except")
    return {"cidr": cidr, **({"except": excluded} if excluded else {})}


def parse_peer(raw: Any, path: str) -> dict[str, Any]:
    """One NetworkPolicyPeer: selectors (ANDed when both are set) or an ipBlock."""
    peer = as_obj(raw, path)
    given = [key for key in (*PEER_SELECTORS, "ipBlock") if peer.get(key) is not None]
    if not given:
        raise SpecError(path, "must set namespaceSelector, podSelector or ipBlock")
    if "ipBlock" in given and len(given) > 1:
        raise SpecError(f"{path}.ipBlock", "cannot be combined with namespaceSelector or podSelector")
    if "ipBlock" in given:
        return {"ipBlock": _ip_block(peer["ipBlock"], f"{path}.ipBlock")}
    return {key: parse_label_selector(peer[key], f"{path}.{key}") for key in given}


def _peers(raw: Any, path: str) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(path, f"must be a list, got {type(raw).__name__}")
    if not raw:
        raise SpecError(path, "must not be empty: leave it out to allow every source")
    if len(raw) > MAX_PEERS:
        raise SpecError(path, f"at most {MAX_PEERS} entries, got {len(raw)}")
    return tuple(parse_peer(item, f"{path}[{i}]") for i, item in enumerate(raw))


def parse_network_policy(spec: Mapping[str, Any]) -> NetworkPolicySpec:
    """``spec.networkPolicy`` of an InferencePool ``spec`` (already an object), defaults applied."""
    path = "spec.networkPolicy"
    raw = as_obj(spec.get("networkPolicy"), path)
    return NetworkPolicySpec(
        enabled=read_bool(raw, "enabled", path, True),
        metrics_from=_peers(raw.get("metricsFrom"), f"{path}.metricsFrom"),
        router_from=_peers(raw.get("routerFrom"), f"{path}.routerFrom"),
    )
