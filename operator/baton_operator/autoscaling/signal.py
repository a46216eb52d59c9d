"""Reading the autoscaling signal: `baton_queue_depth{role=...}` per role.

Sources, first match wins: a Prometheus server (`spec.autoscaling.prometheus.url` + query, instant
query API), `spec.autoscaling.metricsUrl` (Prometheus text, e.g. a router's /metrics), or the
pool's router Service `http://<pool>-router.<ns>.svc:<port>/metrics`. Every read has a deadline;
any failure raises :class:`SignalError` whose message says what and where, for the condition.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from string import Template

from prometheus_client.parser import text_string_to_metric_families

from baton_operator.autoscaling.config import AutoscalingConfig

METRIC = "baton_queue_depth"
# `$pool` and `$namespace` are substituted; labels as a prometheus-operator ServiceMonitor sets them.
DEFAULT_PROMQL = 'sum by (role) (baton_queue_depth{namespace="$namespace", service="$pool-router"})'
MAX_BODY = 4 << 20  # a router's /metrics is a few KiB; refuse to buffer anything absurd


class SignalError(RuntimeError):
    """The queue depth could not be read; the message names the source."""


@dataclass(frozen=True)
class Source:
    """Where one pool's signal comes from: ``kind`` is "prometheus" or "scrape"."""

    kind: str
    url: str
    query: str = ""

    def describe(self) -> str:
        return f"Prometheus {self.url} query {self.query!r}" if self.kind == "prometheus" else self.url


def source_for(cfg: AutoscalingConfig, pool: str, namespace: str) -> Source:
    """The signal source of a pool, per its spec (pure)."""
    if cfg.prometheus_url:
        query = Template(cfg.prometheus_query or DEFAULT_PROMQL).safe_substitute(
            pool=pool, namespace=namespace
        )
        return Source("prometheus", cfg.prometheus_url, query)
    if cfg.metrics_url:
        return Source("scrape", cfg.metrics_url)
    return Source("scrape", f"http://{pool}-router.{namespace}.svc:{cfg.router_port}/metrics")


def parse_queue_depths(text: str) -> dict[str, float]:
    """Sum of `baton_queue_depth` per `role` label in Prometheus text exposition.

    Several series of one role (several routers behind one scrape target) add up: the queue of a
    role is every request waiting for it. Raises SignalError on unparsable text.
    """
    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name != METRIC:
                continue
            for sample in family.samples:
                role = sample.labels.get("role")
                if sample.name == METRIC and role:
                    out[role] = out.get(role, 0.0) + float(sample.value)
    except ValueError as e:
        raise SignalError(f"unparsable Prometheus text: {e}") from e
    return out


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


def read_queue_depths(source: Source, timeout_s: float) -> dict[str, float]:
    """Queue depth per role from ``source`` within ``timeout_s`` seconds, or SignalError."""
    if source.kind == "prometheus":
        url = source.url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": source.query})
        return parse_prometheus_vector(_get(url, timeout_s, "application/json"))
    body = _get(source.url, timeout_s, "text/plain;version=0.0.4")
    return parse_queue_depths(body.decode("utf-8", errors="replace"))
