"""SLO mode's profile: the baton-profile/v1 JSON in a ConfigMap of the pool's namespace.

:class:`ProfileSource` reads a ConfigMap at most once per ``refresh_s`` (30 s) and parses a key
only when the ConfigMap's resourceVersion changed, so a steady pool costs one GET every 30 s and
no parsing; an edit of the profile takes effect within ``refresh_s``. The version it returns
is part of the planner's cache key. Every problem is a :class:`ProfileUnavailable` whose message
names the ConfigMap and key (and the profile's field, from planning.profile's errors).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from baton_operator.planning.profile import Profile, ProfileError, parse_profile

REFRESH_S = 30.0

# (namespace, name) -> the ConfigMap as JSON, or None when it does not exist.
ReadConfigMap = Callable[[str, str], Mapping[str, Any] | None]


class ProfileUnavailable(RuntimeError):
    """The profile cannot be used; the message says which ConfigMap and key, and why."""


@dataclass
class _Entry:
    fetched: float
    version: str
    data: Mapping[str, str] | None  # None: the ConfigMap does not exist
    parsed: dict[str, Profile | ProfileUnavailable] = field(default_factory=dict)


class ProfileSource:
    """Profiles from ConfigMaps, cached (see the module docstring)."""

    def __init__(
        self,
        read_config_map: ReadConfigMap,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read_config_map
        self._refresh_s = refresh_s
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()  # kopf runs the pools' passes on several threads
        self.reads = 0
        self.parses = 0

    def _entry(self, namespace: str, name: str) -> _Entry:
        key, now = (namespace, name), self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.fetched < self._refresh_s:
            return entry
        self.reads += 1
        try:
            obj = self._read(namespace, name)
        except Exception as e:  # noqa: BLE001 - an API error: keep what was read before, if anything
            if entry is not None:
                entry.fetched = now
                return entry
            raise ProfileUnavailable(f"cannot read ConfigMap {namespace}/{name}: {e}") from e
        version = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "") if obj else ""
        if entry is not None and obj is not None and entry.data is not None and entry.version == version:
            entry.fetched = now
            return entry
        data = dict((obj or {}).get("data") or {}) if obj is not None else None
        entry = _Entry(now, version, data)
        self._entries[key] = entry
        return entry

    def get(self, namespace: str, name: str, key: str) -> tuple[Profile, str]:
        """The profile at ``key`` of ConfigMap ``namespace/name`` and a version string that changes
        with its content; raises ProfileUnavailable."""
        with self._lock:
            entry = self._entry(namespace, name)
            where = f"ConfigMap {namespace}/{name}"
            if entry.data is None:
                raise ProfileUnavailable(f"{where} not found (spec.autoscaling.slo.profile.configMapRef)")
            if key not in entry.parsed:
                entry.parsed[key] = self._parse(entry.data, key, where)
            found = entry.parsed[key]
        if isinstance(found, ProfileUnavailable):
            raise found
        return found, f"{namespace}/{name}@{entry.version}/{key}"

    def _parse(self, data: Mapping[str, str], key: str, where: str) -> Profile | ProfileUnavailable:
        if key not in data:
            has = ", ".join(sorted(data)) or "none"
            return ProfileUnavailable(f"{where} has no key {key!r} (keys: {has})")
        self.parses += 1
        try:
            return parse_profile(json.loads(data[key]))
        except ValueError as e:  # json.JSONDecodeError and ProfileError are ValueErrors
            kind = "profile" if isinstance(e, ProfileError) else "JSON"
            return ProfileUnavailable(f"{where} key {key!r}: invalid {kind}: {e}")
