"""Reading the autoscaling signal: the queue depth per role, from the pool's routers.

Sources, first match wins: a Prometheus server (`spec.autoscaling.prometheus.url` + query, instant
query API), `spec.autoscaling.metricsUrl` (Prometheus text, e.g. a router's /metrics), or every
ready router of the pool (the addresses in the EndpointSlices of `<pool>-router`, port `http`;
the Service URL `http://<pool>-router.<ns>.svc:<port>/metrics` when none are known). Every read
has a deadline; any failure raises :class:`SignalError` whose message says what and where, for
the condition.

Several routers: each router's `baton_queue_depth{role}` is the workers' queues as it last saw
them plus the requests it holds itself (`baton_router_queue_depth{role}`). Every router sees the
same workers, so a sum over routers would count each worker's queue once per router;
:func:`combine_router_views` takes the workers' part once (the largest view) and adds up the
held parts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from string import Template

from prometheus_client.parser import text_string_to_metric_families

from baton_operator.autoscaling.config import AutoscalingConfig

METRIC = "baton_queue_depth"
HELD_METRIC = "baton_router_queue_depth"  # the requests one router holds: its own part of METRIC
# `$pool` and `$namespace` are substituted; `namespace` and `pod` are the labels Prometheus puts on
# what it scrapes from pods (the chart's PodMonitor, a ServiceMonitor, the kubernetes-pods job).
ROUTERS = 'namespace="$namespace", pod=~"$pool-router-[^-]+-[^-]+"'
# The workers' part once (the largest router's view) plus every router's held requests; a router
# that does not export baton_router_queue_depth counts whole in the largest view and holds 0 (as
# combine_router_views does). `or` keeps a router's own series where the other side lacks it.
_Q, _H = f"baton_queue_depth{{{ROUTERS}}}", f"baton_router_queue_depth{{{ROUTERS}}}"
DEFAULT_PROMQL = f"max by (role) (({_Q} - {_H}) or {_Q}) + sum by (role) ({_H} or ({_Q} * 0))"
MAX_BODY = 4 << 20  # a router's /metrics is a few KiB; refuse to buffer anything absurd


class SignalError(RuntimeError):
    """The queue depth could not be read; the message names the source."""


@dataclass(frozen=True)
class Source:
    """Where one pool's signal comes from: ``kind`` is "prometheus", "scrape" (one URL) or "routers"
    (every router of the pool; ``url`` is its Service's, used when no router address is known)."""

    kind: str
    url: str
    query: str = ""

    def describe(self) -> str:
        if self.kind == "prometheus":
            return f"Prometheus {self.url} query {self.query!r}"
        return f"the routers behind {self.url}" if self.kind == "routers" else self.url


@dataclass(frozen=True)
class RouterView:
    """One router's queue of one role: ``total`` (`baton_queue_depth`) and ``held``
    (`baton_router_queue_depth`; None from a router that does not export it)."""

    total: float
    held: float | None = None

    @property
    def workers(self) -> float:
        """The workers' queues as this router saw them."""
        return max(0.0, self.total - (self.held or 0.0))


def combine_router_views(views: Iterable[Mapping[str, RouterView]]) -> dict[str, float]:
    """Queue depth per role of a pool from its routers' views (one mapping role -> view per router).

    The workers' part is counted once: the largest of the routers' views (they differ only by
    when each router last polled the workers' Health). The requests each router holds are its
    own, so they add up. A router without ``held`` counts whole in the largest view: its held
    requests are not lost, and no worker is counted twice.
    """
    workers: dict[str, float] = {}
    held: dict[str, float] = {}
    for view in views:
        for role, v in view.items():
            workers[role] = max(workers.get(role, 0.0), v.workers)
            held[role] = held.get(role, 0.0) + (v.held or 0.0)
    return {role: workers[role] + held[role] for role in workers}


def source_for(cfg: AutoscalingConfig, pool: str, namespace: str) -> Source:
    """The signal source of a pool, per its spec (pure)."""
    if cfg.prometheus_url:
        query = Template(cfg.prometheus_query or DEFAULT_PROMQL).safe_substitute(
            pool=pool, namespace=namespace
        )
        return Source("prometheus", cfg.prometheus_url, query)
    if cfg.metrics_url:
        return Source("scrape", cfg.metrics_url)
    return Source("routers", f"http://{pool}-router.{namespace}.svc:{cfg.router_port}/metrics")


def parse_router_views(text: str) -> list[dict[str, RouterView]]:
    """The routers' views in Prometheus text exposition: one per router, a router being the set
    of labels other than ``role`` (one router's /metrics: one; a federated or aggregated page with
    ``pod`` or ``instance`` labels: one per router). Raises SignalError on unparsable text."""
    series: dict[tuple[tuple[str, str], ...], dict[str, dict[str, float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name not in (METRIC, HELD_METRIC):
                continue
            for sample in family.samples:
                role = sample.labels.get("role")
                if sample.name != family.name or not role:
                    continue
                router = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "role"))
                series.setdefault(router, {}).setdefault(role, {})[family.name] = float(sample.value)
    except ValueError as e:
        raise SignalError(f"unparsable Prometheus text: {e}") from e
    views: list[dict[str, RouterView]] = []
    for roles in series.values():
        # A held count without a total (not something a router exports) holds no worker queue.
        views.append(
            {
                role: RouterView(m.get(METRIC, m.get(HELD_METRIC, 0.0)), m.get(HELD_METRIC))
                for role, m in roles.items()
            }
        )
    return views


def parse_queue_depths(text: str) -> dict[str, float]:
    """Queue depth per role of the routers in one Prometheus text page (:func:`parse_router_views`
    combined by :func:`combine_router_views`). Raises SignalError on unparsable text."""
    return combine_router_views(parse_router_views(text))


def parse_prometheus_vector(body: bytes) -> dict[str, float]:
    """Values per `role` from a Prometheus instant-query JSON response (resultType vector)."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise SignalError(f"Prometheus answered non-JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("status") != "success":
        err = doc.get("error") if isinstance(doc, dict) else None
        raise SignalError(f"Prometheus query failed: {err or str(doc)[:200]}")
    data = doc.get("data") or {}
    if data.get("resultType") != "vector":
        raise SignalError(f"Prometheus query must return a vector, got {data.get('resultType')!r}")
    out: dict[str, float] = {}
    for item in data.get("result") or []:
        role = (item.get("metric") or {}).get("role")
        try:
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise SignalError(f"Prometheus result without a number: {item!r}") from e
        if role:
            out[role] = out.get(role, 0.0) + value
    return out


def _get(url: str, timeout_s: float, accept: str) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "baton-autoscaler"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as e:
        raise SignalError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise SignalError(f"{url}: {reason}") from e
    if len(body) > MAX_BODY:
        raise SignalError(f"{url}: response larger than {MAX_BODY} bytes")
    return body


def http_get(url: str, timeout_s: float, accept: str = "text/plain;version=0.0.4") -> bytes:
    """The body at ``url`` within ``timeout_s`` (at most MAX_BODY bytes), or SignalError naming it."""
    return _get(url, timeout_s, accept)


def _scrape(url: str, timeout_s: float) -> list[dict[str, RouterView]]:
    body = _get(url, timeout_s, "text/plain;version=0.0.4")
    return parse_router_views(body.decode("utf-8", errors="replace"))


def scrape_routers(urls: Sequence[str], timeout_s: float) -> dict[str, float]:
    """Scrape every router at once (each within ``timeout_s``) and combine their views.

    A router that does not answer is left out (the workers' part comes from any router; only the
    requests it holds are missing); SignalError only when none answers.
    """

    def attempt(url: str) -> list[dict[str, RouterView]] | SignalError:
        try:
            return _scrape(url, timeout_s)
        except SignalError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(urls))), thread_name_prefix="scrape") as pool:
        results = list(pool.map(attempt, urls))
    answers = [views for views in results if not isinstance(views, SignalError)]
    if not answers:
        errors = [str(e) for e in results if isinstance(e, SignalError)]
        raise SignalError(
            "; ".join(errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        )
    return combine_router_views(view for views in answers for view in views)


def read_queue_depths(
    source: Source, timeout_s: float, routers: Callable[[], list[str]] | None = None
) -> dict[str, float]:
    """Queue depth per role from ``source`` within ``timeout_s`` seconds, or SignalError.

    For a "routers" source, ``routers()`` gives the routers' /metrics URLs; none (or no
    ``routers``): the Service URL, which reaches one router per read.
    """
    if source.kind == "prometheus":
        url = source.url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": source.query})
        return parse_prometheus_vector(_get(url, timeout_s, "application/json"))
    urls = (routers() if routers is not None else []) if source.kind == "routers" else []
    return scrape_routers(urls or [source.url], timeout_s)
