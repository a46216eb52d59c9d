"""Leader election on a coordination.k8s.io Lease, so only one operator replica writes.

Every replica runs kopf and watches; only the holder of the Lease reconciles. The decision of
whether a Lease may be taken is a pure function (:func:`may_acquire`); :class:`LeaderElector`
is the thin loop that reads and writes the Lease (optimistic concurrency via resourceVersion).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from baton_operator.api import KINDS, ApiError, KubeApi

log = logging.getLogger(__name__)

LEASE = KINDS[("coordination.k8s.io/v1", "Lease")]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def may_acquire(lease_spec: Mapping[str, Any] | None, identity: str, now: datetime) -> bool:
    """True when ``identity`` holds the lease already, nobody holds it, or the holder's lease expired."""
    if not lease_spec:
        return True
    holder = lease_spec.get("holderIdentity") or ""
    if not holder or holder == identity:
        return True
    renewed = _parse_time(lease_spec.get("renewTime")) or _parse_time(lease_spec.get("acquireTime"))
    duration = int(lease_spec.get("leaseDurationSeconds") or 0)
    if renewed is None:
        return True
    return (now - renewed).total_seconds() > duration


class LeaderElector:
    """Holds a Lease while alive. ``is_leader`` is safe to call from any thread."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        on_elected: Callable[[], None] = lambda: None,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self._on_elected = on_elected
        self._leader = False
        self._last_renew: datetime | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="baton-leader", daemon=True)

    def is_leader(self) -> bool:
        # Stop acting as soon as the lease may have passed to someone else.
        if not self._leader or self._last_renew is None:
            return False
        return (datetime.now(UTC) - self._last_renew).total_seconds() < self.lease_seconds

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and hand the lease back, so a successor need not wait for it to expire."""
        self._stop.set()
        self._thread.join(timeout=self.renew_seconds + 5)
        if not self._leader:
            return
        self._leader = False
        try:
            lease = self.api.get(LEASE, self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                self.api.request("PUT", LEASE.path(self.namespace, self.name), {**lease, "spec": spec})
        except ApiError as e:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, e)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._try_once()
            except ApiError as e:
                log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            self._stop.wait(self.renew_seconds)

    def _try_once(self) -> None:
        now = datetime.now(UTC)
        lease = self.api.get(LEASE, self.namespace, self.name)
        spec = (lease or {}).get("spec") or {}
        if not may_acquire(spec, self.identity, now):
            if self._leader:
                log.warning(
                    "lost the lease %s/%s to %s", self.namespace, self.name, spec.get("holderIdentity")
                )
            self._leader = False
            return
        new_spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": micro_time(now),
            "acquireTime": spec.get("acquireTime")
            if spec.get("holderIdentity") == self.identity
            else micro_time(now),
            "leaseTransitions": int(spec.get("leaseTransitions") or 0)
            + (0 if spec.get("holderIdentity") in (self.identity, None, "") else 1),
        }
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": new_spec,
                }
                self.api.request("POST", LEASE.path(self.namespace), body)
            else:
                body = {**lease, "spec": new_spec}
                self.api.request("PUT", LEASE.path(self.namespace, self.name), body)
        except ApiError as e:
            if e.status == 409:  # someone else wrote first
                self._leader = False
                return
            raise
        was_leader = self._leader
        self._leader, self._last_renew = True, now
        if not was_leader:
            log.info("became leader (lease %s/%s as %s)", self.namespace, self.name, self.identity)
            self._on_elected()
