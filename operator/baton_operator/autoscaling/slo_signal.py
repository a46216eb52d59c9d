"""SLO mode's read: the queue depth per role and every router's request and token counters, from
the same scrape (each router's /metrics once per interval), or from Prometheus.

The queue depth is what signal.py computes (the workers' queues once, plus what each router
holds). The counters are kept per router, keyed by where they were read (the router's URL) and
the labels telling routers apart on one page (``pod``, ``instance``), so slo_rate.py can take
deltas router by router and notice restarts. A Service URL may reach a different router on each
read: such samples are marked unidentified and make no rate window.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from string import Template

from prometheus_client.parser import text_string_to_metric_families

from baton_operator.autoscaling import signal
from baton_operator.autoscaling.signal import RouterView, SignalError, Source
from baton_operator.autoscaling.slo_rate import (
    COUNTER_SAMPLES,
    FINISHED,
    GENERATION_TOKENS,
    PROMPT_TOKENS,
    REQUESTS,
    STARTED,
    Counters,
    CounterSample,
)

_FIELDS = {REQUESTS: 0, FINISHED: 1, PROMPT_TOKENS: 2, GENERATION_TOKENS: 3}
# Labels of one router's own series, not of the router: summed over.
_SERIES_LABELS = {"api", "stream", "le", "role", "__name__"}
_NAMES = "|".join((*COUNTER_SAMPLES, STARTED))
# Prometheus: the routers' raw counters, one series per router and label set.
COUNTERS_PROMQL = f'{{__name__=~"{_NAMES}", {signal.ROUTERS}}}'


@dataclass(frozen=True)
class Reading:
    """One pass's read: ``depths`` per role, and the routers' ``counters`` (None when they could
    not be read; ``counters_error`` says why)."""

    depths: dict[str, float]
    counters: CounterSample | None
    counters_error: str = ""


def _router_key(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in _SERIES_LABELS)


def _add(found: dict[str, list[float | None]], key: str, name: str, value: float) -> None:
    row = found.setdefault(key, [0.0, 0.0, 0.0, 0.0, None])
    if name == STARTED:
        row[4] = value
    elif name in _FIELDS:
        row[_FIELDS[name]] = (row[_FIELDS[name]] or 0.0) + value


def _counters(found: dict[str, list[float | None]], prefix: str = "") -> dict[str, Counters]:
    return {
        f"{prefix}{key}": Counters(*(float(v or 0.0) for v in row[:4]), started=row[4])
        for key, row in found.items()
    }


def parse_counters(text: str, prefix: str = "") -> dict[str, Counters]:
    """Per router on a Prometheus text page (a router being the labels other than ``api``,
    ``stream``, ``le``, ``role``), its counters; routers exporting none are absent. Raises
    SignalError on unparsable text."""
    found: dict[str, list[float | None]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in _FIELDS or sample.name == STARTED:
                    _add(found, _router_key(sample.labels), sample.name, float(sample.value))
    except ValueError as e:
        raise SignalError(f"unparsable Prometheus text: {e}") from e
    return _counters(found, prefix)


def parse_counter_vector(body: bytes) -> dict[str, Counters]:
    """Per router, the counters of a Prometheus instant-query answer for :data:`COUNTERS_PROMQL`."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise SignalError(f"Prometheus answered non-JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise SignalError(f"Prometheus query failed: {str(doc)[:200]}")
    found: dict[str, list[float | None]] = {}
    for item in (doc.get("data") or {}).get("result") or []:
        labels = dict(item.get("metric") or {})
        try:
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise SignalError(f"Prometheus result without a number: {item!r}") from e
        _add(found, _router_key(labels), str(labels.get("__name__", "")), value)
    return _counters(found)


def _page(url: str, timeout_s: float) -> tuple[str, str] | SignalError:
    try:
        return url, signal.http_get(url, timeout_s).decode("utf-8", errors="replace")
    except SignalError as e:
        return e


def _scrape_all(urls: Sequence[str], timeout_s: float) -> list[tuple[str, str]]:
    """Every page that answers (at once, each within ``timeout_s``); SignalError when none does."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(urls))), thread_name_prefix="scrape") as pool:
        results = list(pool.map(lambda u: _page(u, timeout_s), urls))
    pages = [r for r in results if not isinstance(r, SignalError)]
    if not pages:
        errors = [str(e) for e in results if isinstance(e, SignalError)]
        raise SignalError(
            "; ".join(errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        )
    return pages


def read(
    source: Source,
    timeout_s: float,
    now: float,
    routers: Callable[[], list[str]] | None = None,
    pool: str = "",
    namespace: str = "",
) -> Reading:
    """Queue depths and counters of a pool, read once. SignalError when the queue depth cannot be
    read (as signal.read_queue_depths); a counter problem alone is reported in the Reading."""
    if source.kind == "prometheus":
        depths = signal.read_queue_depths(source, timeout_s)
        query = Template(COUNTERS_PROMQL).safe_substitute(pool=pool, namespace=namespace)
        url = source.url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            counters = parse_counter_vector(signal.http_get(url, timeout_s, "application/json"))
        except SignalError as e:
            return Reading(depths, None, f"cannot read the routers' counters from Prometheus: {e}")
        return _reading(depths, counters, now, True, f"Prometheus {source.url}")
    urls = (routers() if routers is not None else []) if source.kind == "routers" else []
    identified = bool(urls) or source.kind == "scrape"
    pages = _scrape_all(urls or [source.url], timeout_s)
    views: list[dict[str, RouterView]] = []
    counters: dict[str, Counters] = {}
    for url, text in pages:
        views += signal.parse_router_views(text)
        counters.update(parse_counters(text, prefix=f"{url}|"))
    return _reading(signal.combine_router_views(views), counters, now, identified, source.describe())


def _reading(
    depths: dict[str, float], counters: dict[str, Counters], now: float, identified: bool, where: str
) -> Reading:
    if not counters:
        return Reading(depths, None, f"no {REQUESTS} or {PROMPT_TOKENS} at {where}")
    return Reading(depths, CounterSample(now, counters, identified))
