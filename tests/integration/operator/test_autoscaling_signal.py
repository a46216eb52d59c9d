"""The signal over real HTTP: a local endpoint the test controls, errors and deadlines."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from baton_dev.queue_endpoint import QueueEndpoint
from baton_operator.autoscaling.signal import SignalError, Source, read_queue_depths


def test_autoscaling_scrape_reads_settable_endpoint() -> None:
    with QueueEndpoint() as ep:
        ep.set(prefill=12, decode=3)
        assert read_queue_depths(Source("scrape", ep.url), 2.0) == {"prefill": 12.0, "decode": 3.0}
        ep.set(prefill=0)
        assert read_queue_depths(Source("scrape", ep.url), 2.0)["prefill"] == 0.0
        assert len(ep.scrapes) == 2


def test_autoscaling_scrape_http_error_names_url() -> None:
    with QueueEndpoint() as ep:
        ep.fail(503)
        with pytest.raises(SignalError, match=r"HTTP 503") as err:
            read_queue_depths(Source("scrape", ep.url), 2.0)
        assert ep.url in str(err.value)


def test_autoscaling_scrape_unreachable_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(SignalError, match="refused"):
        read_queue_depths(Source("scrape", f"http://127.0.0.1:{port}/metrics"), 2.0)
    assert time.monotonic() - start < 2.0


def test_autoscaling_scrape_respects_deadline() -> None:
    # A server that accepts and never answers: the read must give up at its deadline.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        start = time.monotonic()
        with pytest.raises(SignalError, match="timed out"):
            read_queue_depths(Source("scrape", f"http://127.0.0.1:{srv.getsockname()[1]}/metrics"), 0.5)
        assert time.monotonic() - start < 2.0
    finally:
        srv.close()


def test_autoscaling_two_routers_count_the_workers_once() -> None:
    # Both routers see the same workers (12 prefill, 30 decode requests queued); each also holds
    # requests of its own for want of a usable worker.
    with QueueEndpoint() as a, QueueEndpoint() as b:
        a.set(prefill=12 + 2, decode=30)
        a.hold(prefill=2, decode=0)
        b.set(prefill=12 + 1, decode=30 + 5)
        b.hold(prefill=1, decode=5)
        service = Source("routers", "http://127.0.0.1:9/metrics")  # not used while routers are known
        depths = read_queue_depths(service, 2.0, lambda: [a.url, b.url])
        assert depths == {"prefill": 15.0, "decode": 35.0}  # a sum over routers said 27 and 65
        assert len(a.scrapes) == len(b.scrapes) == 1
        b.stop()  # a router that does not answer: the workers' part still comes from the other
        assert read_queue_depths(service, 2.0, lambda: [a.url, b.url]) == {"prefill": 14.0, "decode": 30.0}
    with pytest.raises(SignalError, match="127.0.0.1:9/metrics"):
        read_queue_depths(service, 2.0, lambda: [])  # no router known: the Service URL, unreachable here


def test_autoscaling_prometheus_instant_query() -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            seen.append(parse_qs(url.query)["query"][0])
            body = json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [
                            {"metric": {"role": "prefill"}, "value": [0, "7"]},
                            {"metric": {"role": "decode"}, "value": [0, "1"]},
                        ],
                    },
                }
            ).encode()
            self.send_response(200 if url.path == "/api/v1/query" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        query = 'sum by (role) (baton_queue_depth{namespace="ml"})'
        assert read_queue_depths(Source("prometheus", url, query), 2.0) == {"prefill": 7.0, "decode": 1.0}
        assert seen == [query]
    finally:
        server.shutdown()
        server.server_close()
