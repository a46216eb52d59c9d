"""Pure helpers of the operator's shell: drift comparison, lease takeover, backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from baton_operator.api import _resource_of, is_subset
from baton_operator.controller import Settings, next_backoff
from baton_operator.leader import may_acquire, micro_time

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("desired", "live", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),  # server defaults are not drift
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": "8"}}, {"a": {"b": "8", "c": 1}}, True),
        ({"a": {"b": "8"}}, {"a": {}}, False),  # a field of ours removed
        ({"l": [1, 2]}, {"l": [1, 2]}, True),
        ({"l": [1, 2]}, {"l": [2, 1]}, False),
        (
            {"l": [{"key": "x"}]},
            {"l": [{"key": "x"}, {"key": "y"}]},
            False,
        ),  # atomic lists: extra item is drift
        # lists keyed by name: entries another manager added stay theirs
        (
            {"c": [{"name": "w", "image": "i"}]},
            {"c": [{"name": "w", "image": "i", "x": 1}, {"name": "side"}]},
            True,
        ),
        ({"c": [{"name": "w", "image": "i"}]}, {"c": [{"name": "w", "image": "j"}]}, False),
        ({"c": [{"name": "a"}, {"name": "b"}]}, {"c": [{"name": "b"}, {"name": "a"}]}, False),
        ({"r": True}, {"r": 1}, False),
        ({"port": 8000}, {"port": 8000.0}, True),
        ({"q": "1"}, {"q": 1}, True),  # quantities round-trip as strings
        ({"m": {}}, {"m": {"x": 1}}, True),
        ({"m": {}}, {}, False),
    ],
)
def test_is_subset(desired, live, expected):
    assert is_subset(desired, live) is expected


def lease(holder, renewed_ago_s, duration=15):
    return {
        "holderIdentity": holder,
        "renewTime": micro_time(NOW - timedelta(seconds=renewed_ago_s)),
        "leaseDurationSeconds": duration,
    }


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, True),
        ({}, True),
        (lease("", 1), True),
        (lease("me", 1), True),
        (lease("other", 5), False),
        (lease("other", 16), True),  # expired
        ({"holderIdentity": "other", "leaseDurationSeconds": 15}, True),  # never renewed
    ],
)
def test_may_acquire(spec, expected):
    assert may_acquire(spec, "me", NOW) is expected


def test_backoff_doubles_to_a_cap():
    s = Settings(default_image="i", backoff_initial_seconds=1, backoff_max_seconds=10)
    seq, cur = [], 0.0
    for _ in range(6):
        cur = next_backoff(cur, s)
        seq.append(cur)
    assert seq == [1, 2, 4, 8, 10, 10]


def test_resource_of_paths():
    assert _resource_of("/apis/apps/v1/namespaces/ns/statefulsets/p-prefill") == "statefulsets"
    assert (
        _resource_of("/apis/baton.dev/v1alpha1/namespaces/ns/inferencepools/p/status")
        == "inferencepools/status"
    )
    assert _resource_of("/api/v1/namespaces/ns/events") == "events"


def test_child_cache_tracks_watch_events():
    from baton_operator.cache import ChildCache

    cache = ChildCache()
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"namespace": "ns", "name": "p-decode"}}
    key = ("apps/v1", "Deployment", "ns", "p-decode")
    cache.observe(None, obj)
    assert cache.get(key) == obj
    cache.observe("MODIFIED", {**obj, "spec": {"replicas": 3}})
    assert cache.get(key)["spec"] == {"replicas": 3}
    cache.observe("DELETED", obj)
    assert cache.get(key) is None and len(cache) == 0
