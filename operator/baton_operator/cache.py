"""The last seen state of the operator's children, fed by the watch events kopf delivers.

A reconcile that finds the desired child already matching the cached object skips the GET; any
mismatch (or a miss) is re-checked against a fresh GET before anything is written, so a stale
cache can cost a read, never a wrong write. A change the cache has not seen yet arrives as an
event, which triggers the pool's next reconcile anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

Key = tuple[str, str, str, str]  # (apiVersion, kind, namespace, name)


class ChildCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}

    @staticmethod
    def key_of(obj: Mapping[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return (
            str(obj.get("apiVersion")),
            str(obj.get("kind")),
            str(meta.get("namespace")),
            str(meta.get("name")),
        )

    def observe(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """Record a watch event (None = initial listing, ADDED, MODIFIED, DELETED)."""
        key = self.key_of(obj)
        with self._lock:
            if event_type == "DELETED":
                self._objects.pop(key, None)
            else:
                self._objects[key] = dict(obj)

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)
