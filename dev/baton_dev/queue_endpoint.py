"""A settable `baton_queue_depth` endpoint: what a router's /metrics shows, under the caller's control.

`baton bench autoscale` and the sandbox tests point `spec.autoscaling.metricsUrl` at it to create
a queue spike on demand (the sandbox has no pod network, so the real router is not reachable).
It also records when each scrape arrived, so a bench can tell scrape latency from actuation.
For SLO mode it can also export a router's request and token counters, growing at a set rate
(``set_load``), and reset them as a restarted router would (``restart_router``).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QueueEndpoint:
    """HTTP server on 127.0.0.1 (port 0 = any free port) serving ``/metrics``.

    ``set(prefill=..., decode=...)`` changes the exported queue depths; ``hold(prefill=...)`` the
    part of them this "router" holds itself (``baton_router_queue_depth``, exported once set);
    ``fail(status)`` makes it answer an HTTP error; ``stop()`` closes the socket (the endpoint
    becomes unreachable).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._depths: dict[str, float] = {"prefill": 0.0, "decode": 0.0}
        self._held: dict[str, float] = {}
        self._error: int | None = None
        self._load: tuple[float, float, float] | None = None  # req/s, prompt and output tokens each
        self._counts = [0.0, 0.0, 0.0]  # requests, prompt tokens, generation tokens at _since
        self._since = self._started = time.time()
        self.scrapes: list[float] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with endpoint._lock:
                    endpoint.scrapes.append(time.time())
                    error = endpoint._error
                    body = endpoint._text().encode()
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                if error is not None:
                    self.send_error(error)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="queue-endpoint", daemon=True
        )
        self._thread.start()

    def _text(self) -> str:
        lines = ["# HELP baton_queue_depth Requests waiting for a role.", "# TYPE baton_queue_depth gauge"]
        lines += [f'baton_queue_depth{{role="{r}"}} {v}' for r, v in sorted(self._depths.items())]
        if self._held:
            lines += ["# TYPE baton_router_queue_depth gauge"]
            lines += [f'baton_router_queue_depth{{role="{r}"}} {v}' for r, v in sorted(self._held.items())]
        if self._load is not None:
            lines += self._counter_lines()
        return "\n".join(lines) + "\n"

    def _advance(self, now: float) -> None:
        if self._load is not None:
            rate, isl, osl = self._load
            n = rate * max(0.0, now - self._since)
            self._counts = [self._counts[0] + n, self._counts[1] + n * isl, self._counts[2] + n * osl]
        self._since = now

    def _counter_lines(self) -> list[str]:
        """A router's counters (requests finish as they arrive), as prometheus_client writes them."""
        self._advance(time.time())
        requests, prompt, generation = self._counts
        return [
            "# TYPE baton_requests_total counter",
            f'baton_requests_total{{api="completions",stream="false"}} {requests}',
            "# TYPE baton_e2e_request_latency_seconds histogram",
            f'baton_e2e_request_latency_seconds_bucket{{le="+Inf"}} {requests}',
            f"baton_e2e_request_latency_seconds_count {requests}",
            f"baton_e2e_request_latency_seconds_sum {requests}",
            "# TYPE baton_prompt_tokens_total counter",
            f"baton_prompt_tokens_total {prompt}",
            "# TYPE baton_prompt_tokens_created gauge",
            f"baton_prompt_tokens_created {self._started}",
            "# TYPE baton_generation_tokens_total counter",
            f"baton_generation_tokens_total {generation}",
        ]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def set(self, **depths: float) -> None:
        """Set the queue depth of the named roles; the next scrape sees them."""
        with self._lock:
            self._depths.update({k: float(v) for k, v in depths.items()})
            self._error = None

    def hold(self, **held: float) -> None:
        """Set the requests this endpoint's "router" holds per role (part of what ``set`` set)."""
        with self._lock:
            self._held.update({k: float(v) for k, v in held.items()})

    def set_load(self, rate_rps: float, input_tokens: float = 1000, output_tokens: float = 200) -> None:
        """From now on requests arrive (and finish) at ``rate_rps`` with these mean lengths: the
        exported counters grow accordingly, read at each scrape. Counters are exported once set."""
        with self._lock:
            self._advance(time.time())
            self._load = (float(rate_rps), float(input_tokens), float(output_tokens))

    def restart_router(self) -> None:
        """Counters back to zero with a new start time, as after a router restart."""
        with self._lock:
            self._counts = [0.0, 0.0, 0.0]
            self._since = self._started = time.time()

    def fail(self, status: int = 503) -> None:
        with self._lock:
            self._error = status

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> QueueEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
