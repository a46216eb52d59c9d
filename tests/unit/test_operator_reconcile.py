"""desired_children: what the operator applies for a pool, and how a spec it cannot build is refused."""

from __future__ import annotations

import pytest
from baton_operator.reconcile import desired_children
from baton_operator.spec import SpecError, parse_pool


def body(query: str) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "model": {"source": "builtin://tiny"},
            "autoscaling": {"mode": "keda", "prometheus": {"url": "http://prom:9090", "query": query}},
            "decode": {"autoscaling": {"enabled": True}},
        },
    }


def test_keda_mode_adds_a_scaled_object_per_autoscaled_role():
    b = body('sum(baton_queue_depth{role="$role"})')
    kinds = [c["kind"] for c in desired_children(parse_pool(b, "img"), b)]
    assert kinds.count("ScaledObject") == 1


def test_unusable_keda_query_is_a_spec_error_naming_the_field():
    b = body("sum(baton_queue_depth)")
    with pytest.raises(SpecError) as err:
        desired_children(parse_pool(b, "img"), b)
    assert err.value.field.startswith("spec.autoscaling")
