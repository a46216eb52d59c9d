"""The queue depth of a pool with several routers (pure): each router reports the workers' queues
it sees plus what it holds itself, so the workers' part must be counted once, not once per router."""

from __future__ import annotations

import pytest
from baton_operator.autoscaling.keda import DEFAULT_ROLE_PROMQL
from baton_operator.autoscaling.signal import (
    DEFAULT_PROMQL,
    RouterView,
    combine_router_views,
    parse_queue_depths,
    parse_router_views,
)
from baton_worker.router.metrics import RouterMetrics

V = RouterView


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        pytest.param([], {}, id="no-router"),
        pytest.param([{"prefill": V(10, 2)}], {"prefill": 10}, id="one-router"),
        # workers hold 8; router a holds 2, router b 3: 8 + 2 + 3, not 10 + 11
        pytest.param([{"prefill": V(10, 2)}, {"prefill": V(11, 3)}], {"prefill": 13}, id="two-routers"),
        # b polled the workers' Health after one of their requests started: the larger view wins
        pytest.param([{"decode": V(8, 0)}, {"decode": V(7, 0)}], {"decode": 8}, id="views-differ"),
        # a router that does not export what it holds counts whole in the larger view
        pytest.param([{"decode": V(9)}, {"decode": V(10, 2)}], {"decode": 11}, id="one-without-held"),
        pytest.param([{"decode": V(9)}, {"decode": V(10)}], {"decode": 10}, id="none-with-held"),
        pytest.param(
            [{"prefill": V(4, 4), "decode": V(1, 0)}, {"prefill": V(0, 0)}],
            {"prefill": 4, "decode": 1},
            id="roles-apart",
        ),
    ],
)
def test_combine_router_views(views, expected):
    assert combine_router_views(views) == expected


def router_page(workers: dict[str, int], held: dict[str, int]) -> str:
    """What a real router's /metrics shows when its workers report ``workers`` and it holds ``held``."""
    snapshot = {role: (workers[role] + held[role], 1, 0) for role in workers}
    return RouterMetrics(lambda: snapshot, lambda: 0, held=lambda: held).render().decode()


def test_two_real_router_pages_count_each_worker_once():
    workers = {"prefill": 12, "decode": 30}
    a = router_page(workers, {"prefill": 2, "decode": 0})
    b = router_page(workers, {"prefill": 1, "decode": 5})
    assert parse_router_views(a) == [{"decode": V(30, 0), "prefill": V(14, 2)}]
    views = parse_router_views(a) + parse_router_views(b)
    assert combine_router_views(views) == {"prefill": 15.0, "decode": 35.0}
    # the old reading, a sum over routers, counted the workers twice
    assert sum(parse_queue_depths(page)["decode"] for page in (a, b)) == 65.0


def test_one_page_of_several_routers_told_apart_by_their_labels():
    page = "\n".join(
        [
            'baton_queue_depth{pod="p-router-x-1",role="prefill"} 10',
            'baton_router_queue_depth{pod="p-router-x-1",role="prefill"} 2',
            'baton_queue_depth{pod="p-router-x-2",role="prefill"} 9',
            'baton_router_queue_depth{pod="p-router-x-2",role="prefill"} 1',
        ]
    )
    assert len(parse_router_views(page)) == 2
    assert parse_queue_depths(page) == {"prefill": 11.0}


def test_a_router_without_the_held_gauge_parses_as_before():
    router = RouterMetrics(lambda: {"prefill": (3, 1, 0), "decode": (0, 1, 0)}, lambda: 0)
    assert parse_queue_depths(router.render().decode()) == {"prefill": 3.0, "decode": 0.0}


def test_default_queries_take_the_workers_part_once():
    for query in (DEFAULT_PROMQL, DEFAULT_ROLE_PROMQL):
        assert "max" in query and "sum(baton_queue_depth" not in query
        assert "baton_queue_depth{" in query and "baton_router_queue_depth{" in query
        assert query.count("(") == query.count(")")
