"""``spec.model.cache``: a PersistentVolumeClaim the worker pods keep their model cache on.

Off unless ``enabled: true``: turning it on replaces the workers' ``model-cache`` emptyDir with
the claim, which changes their pod templates; a default of true would roll every existing pool on
an operator upgrade. The size is canonicalized as the API server stores quantities, so a no-op
resync finds the live claim equal to the desired one and writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from baton_operator.spec_base import SpecError, as_obj, read_bool, read_str

ACCESS_MODES = ("ReadWriteMany", "ReadWriteOnce")
# Unsigned storage sizes: bytes, with a binary or decimal suffix or a decimal exponent.
SIZE_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE]|([eE]\+?[0-9]+))?$"
STORAGE_CLASS_PATTERN = r"^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exp: suffix for suffix, exp in _DECIMAL.items()}


@dataclass(frozen=True)
class ModelCacheSpec:
    """``spec.model.cache``, parsed. ``storage_class_name`` None: the cluster's default class."""

    enabled: bool = False
    size: str = ""  # canonical quantity, "" when disabled and unset
    storage_class_name: str | None = None
    access_mode: str = "ReadWriteMany"


def canonical_size(raw: int | str) -> str:
    """A storage quantity in the form the API server stores it (``2048Mi`` -> ``2Gi``,
    ``20000000000`` -> ``20G``); forms this does not model (exponents) are returned unchanged."""
    text = str(raw)
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if not match or match.group(2) not in {**_BINARY, **_DECIMAL}:
        return text
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix in _BINARY:
        value = number * 1024 ** _BINARY[suffix]
        # Binary sizes stay binary while whole and >= 1Ki, like the API server's canonical form.
        if value == value.to_integral_value() and value >= 1024:
            whole, power = int(value), 0
            while power < 6 and whole % 1024 == 0:
                whole, power = whole // 1024, power + 1
            return f"{whole}{[k for k, v in _BINARY.items() if v == power][0] if power else ''}"
    else:
        value = number * 10 ** _DECIMAL[suffix]
    if value != value.to_integral_value():
        return text  # fractions of a byte: left to the API server
    whole, exp = int(value), 0
    while exp < 18 and whole and whole % 1000 == 0:
        whole, exp = whole // 1000, exp + 3
    return f"{whole}{_DECIMAL_SUFFIX[exp]}"


def _size(raw: Any, path: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not re.fullmatch(SIZE_PATTERN, str(raw)):
        raise SpecError(path, f"must be a storage quantity such as 100Gi, got {raw!r}")
    size = canonical_size(raw)
    if re.fullmatch(r"[0.]+[A-Za-z]*", size):
        raise SpecError(path, f"must be greater than zero, got {raw!r}")
    return size


def parse_model_cache(model: Mapping[str, Any]) -> ModelCacheSpec:
    """``spec.model.cache`` of ``spec.model`` (already an object), with the CRD's defaults."""
    path = "spec.model.cache"
    raw = as_obj(model.get("cache"), path)
    enabled = read_bool(raw, "enabled", path, False)
    size = ""
    if raw.get("size") is not None:
        size = _size(raw["size"], f"{path}.size")
    elif enabled:
        raise SpecError(f"{path}.size", "is required when spec.model.cache.enabled is true")
    storage_class: str | None = None
    if raw.get("storageClassName") is not None:
        storage_class = read_str(raw, "storageClassName", path, "")
        if len(storage_class) > 253 or not re.fullmatch(STORAGE_CLASS_PATTERN, storage_class):
            raise SpecError(
                f"{path}.storageClassName",
                f"must be a StorageClass name (DNS subdomain), got {storage_class!r}",
            )
    return ModelCacheSpec(
        enabled=enabled,
        size=size,
        storage_class_name=storage_class,
        access_mode=read_str(raw, "accessMode", path, "ReadWriteMany", ACCESS_MODES),
    )
