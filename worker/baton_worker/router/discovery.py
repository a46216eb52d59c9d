"""Where the workers are: a static list, or the role Services' EndpointSlices in Kubernetes.

:func:`ready_endpoints` is the pure part (EndpointSlice objects -> ready ``host:port``);
:class:`EndpointSliceWatcher` is the thin shell that watches the API and reports changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger("baton.router.discovery")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def parse_static(spec: str, flag: str) -> list[str]:
    """``"h1:p1,h2:p2"`` -> ``["h1:p1", "h2:p2"]``; raises ValueError naming the flag on a bad entry."""
    out: list[str] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{flag}: expected host:port, got {item!r}")
        if item not in out:
            out.append(item)
    return out


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _port(ports: Iterable[Mapping[str, Any]] | None, port_name: str | None) -> int | None:
    plist = list(ports or [])
    if port_name:
        plist = [p for p in plist if p.get("name") == port_name]
    for p in plist:
        if p.get("port"):
            return int(p["port"])
    return None


def ready_endpoints(slices: Iterable[Mapping[str, Any]], port_name: str | None = "grpc") -> list[str]:
    """Ready ``host:port`` addresses of EndpointSlices (API JSON, camelCase), sorted, no duplicates.

    An endpoint counts when ``conditions.ready`` is true or absent (the API says absent means
    ready) and it is not terminating. The port is the slice port named ``port_name`` (any
    port of the slice when ``port_name`` is empty); slices without it contribute nothing.
    """
    found: set[str] = set()
    for s in slices:
        port = _port(s.get("ports"), port_name)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            for addr in ep.get("addresses") or []:
                found.add(_hostport(addr, port))
    return sorted(found)


class EndpointSliceWatcher:
    """Watches one Service's EndpointSlices and calls ``on_change(addresses)`` on every change.

    Runs in a daemon thread (the kubernetes client is synchronous); re-lists after a watch
    ends or fails, with a short back-off, so a restarted API server is survived.
    """

    def __init__(
        self,
        namespace: str,
        service: str,
        on_change: Callable[[list[str]], None],
        port_name: str | None = "grpc",
    ) -> None:
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"eps-{service}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client, config, watch

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.DiscoveryV1Api()
        serialize = client.ApiClient().sanitize_for_serialization
        selector = f"{SERVICE_NAME_LABEL}={self.service}"
        last: list[str] | None = None
        while not self._stop.is_set():
            try:
                listing = api.list_namespaced_endpoint_slice(self.namespace, label_selector=selector)
                slices = {s.metadata.name: serialize(s) for s in listing.items}
                last = self._emit(slices, last)
                w = watch.Watch()
                for event in w.stream(
                    api.list_namespaced_endpoint_slice,
                    self.namespace,
                    label_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=60,
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = event["object"]
                    if event["type"] == "DELETED":
                        slices.pop(obj.metadata.name, None)
                    else:
                        slices[obj.metadata.name] = serialize(obj)
                    last = self._emit(slices, last)
            except Exception as e:  # any API failure: log, back off, re-list
                log.warning("watching EndpointSlices of %s/%s failed: %s", self.namespace, self.service, e)
                self._stop.wait(2.0)

    def _emit(self, slices: Mapping[str, Mapping[str, Any]], last: list[str] | None) -> list[str]:
        current = ready_endpoints(slices.values(), self.port_name)
        if current != last:
            log.info("service %s/%s endpoints: %s", self.namespace, self.service, current)
            self._on_change(current)
        return current
