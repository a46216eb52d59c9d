"""SLO mode's read over real HTTP: queue depths and router counters from one scrape, per router."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from baton_dev.queue_endpoint import QueueEndpoint
from baton_operator.autoscaling import slo_signal
from baton_operator.autoscaling.signal import SignalError, Source
from baton_operator.autoscaling.slo_rate import estimate, window


def test_one_scrape_gives_queue_depths_and_a_rate() -> None:
    with QueueEndpoint() as ep:
        ep.set(prefill=3, decode=7)
        ep.set_load(20, 1000, 200)
        source = Source("scrape", ep.url)
        first = slo_signal.read(source, 2.0, time.time())
        time.sleep(1.0)
        second = slo_signal.read(source, 2.0, time.time())
        assert second.depths == {"prefill": 3.0, "decode": 7.0} and len(ep.scrapes) == 2
        assert first.counters is not None and second.counters is not None
        w, why = window(first.counters, second.counters, 60)
        assert w is not None, why
        est = estimate([w], second.counters.time, 60)
        assert est is not None and est.rate_rps == pytest.approx(20, rel=0.2)
        assert est.input_tokens == pytest.approx(1000) and est.output_tokens == pytest.approx(200)
        ep.restart_router()
        third = slo_signal.read(source, 2.0, time.time())
        assert window(second.counters, third.counters, 60)[0] is None  # the restart's window


def test_routers_are_told_apart_and_a_service_url_is_not_trusted() -> None:
    with QueueEndpoint() as a, QueueEndpoint() as b:
        a.set_load(5)
        b.set_load(5)
        service = Source("routers", a.url)
        got = slo_signal.read(service, 2.0, time.time(), lambda: [a.url, b.url])
        assert got.counters is not None and got.counters.identified
        assert sorted(got.counters.routers) == sorted([f"{a.url}|", f"{b.url}|"])
        # No router address known: the Service (here: a) may be a different router on each read.
        fallback = slo_signal.read(service, 2.0, time.time(), lambda: [])
        assert fallback.counters is not None and not fallback.counters.identified
        assert window(fallback.counters, fallback.counters, 60)[0] is None


def test_an_older_router_without_counters_still_gives_the_queue() -> None:
    with QueueEndpoint() as ep:
        ep.set(prefill=1, decode=2)  # no set_load: no counters on the page
        got = slo_signal.read(Source("scrape", ep.url), 2.0, time.time())
        assert got.depths == {"prefill": 1.0, "decode": 2.0} and got.counters is None
        assert "baton_requests_total" in got.counters_error
        ep.fail(503)
        with pytest.raises(SignalError, match="503"):
            slo_signal.read(Source("scrape", ep.url), 2.0, time.time())


def test_prometheus_gives_the_counters_per_router_pod() -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            query = parse_qs(urlparse(self.path).query)["query"][0]
            seen.append(query)
            if "__name__" in query:
                result = [
                    {"metric": {"__name__": n, "namespace": "ml", "pod": "p-router-a-1"}, "value": [0, v]}
                    for n, v in (("baton_requests_total", "10"), ("baton_prompt_tokens_total", "9000"))
                ]
            else:
                result = [{"metric": {"role": r}, "value": [0, "2"]} for r in ("prefill", "decode")]
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        got = slo_signal.read(Source("prometheus", url, "q"), 2.0, 5.0, pool="p", namespace="ml")
        assert got.depths == {"prefill": 2.0, "decode": 2.0}
        assert got.counters is not None
        (counters,) = got.counters.routers.values()
        assert (counters.requests, counters.prompt_tokens) == (10, 9000)
        assert 'namespace="ml", pod=~"p-router-[^-]+-[^-]+"' in seen[1]
    finally:
        server.shutdown()
        server.server_close()
