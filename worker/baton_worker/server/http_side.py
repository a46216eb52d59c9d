"""The worker's small HTTP side server: ``/health`` (readiness) and ``/metrics`` (Prometheus).

``/health`` answers 200 only when the worker is ready (model loaded, not draining), else 503
with a JSON body saying why, so a Kubernetes readiness probe drops a draining pod from its
Service before the process exits.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class SideServer:
    """Serves /health from ``readiness()`` -> (ready, reason) and /metrics from ``registry``."""

    def __init__(
        self, host: str, port: int, readiness: Callable[[], tuple[bool, str]], registry: CollectorRegistry
    ) -> None:
        side = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path in ("/health", "/healthz", "/ready", "/readyz"):
                    ready, reason = side.readiness()
                    body = json.dumps({"ready": ready, "reason": reason}).encode()
                    self._send(200 if ready else 503, "application/json", body)
                elif path in ("/live", "/livez"):
                    self._send(200, "application/json", b'{"alive": true}')
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(side.registry))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes every second: quiet
                return

        self.readiness = readiness
        self.registry = registry
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="baton-http-side", daemon=True)

    def start(self) -> SideServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
