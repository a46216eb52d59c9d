"""What every spec parser shares: :class:`SpecError` and the field readers that raise it.

Each reader takes the parent object, the key and the parent's path, applies the CRD's default and
raises SpecError naming the whole path of the field (``spec.decode.replicas``) when the value is
unusable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SpecError(ValueError):
    """A permanent problem with an InferencePool's spec; ``field`` is its path, e.g. spec.prefill.gpu.type."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


def as_obj(raw: Any, path: str) -> Mapping[str, Any]:
    """``raw`` as an object; an absent (None) one is empty."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(path, f"must be an object, got {type(raw).__name__}")
    return raw


def read_int(raw: Mapping[str, Any], key: str, path: str, default: int, minimum: int | None = None) -> int:
    """``raw[key]`` (default when absent), an integer (not a bool) of at least ``minimum``."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}.{key}", f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(f"{path}.{key}", f"must be >= {minimum}, got {value}")
    return value


def read_num(raw: Mapping[str, Any], key: str, path: str, default: float, minimum: float = 0.0) -> float:
    """``raw[key]`` (default when absent), a number of at least ``minimum``, as a float."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{path}.{key}", f"must be a number, got {value!r}")
    if value < minimum:
        raise SpecError(f"{path}.{key}", f"must be >= {minimum}, got {value}")
    return float(value)


def read_bool(raw: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    """``raw[key]`` (default when absent), true or false."""
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{path}.{key}", f"must be true or false, got {value!r}")
    return value


def read_str(raw: Mapping[str, Any], key: str, path: str, default: str, choices: tuple[str, ...] = ()) -> str:
    """``raw[key]`` (default when absent), a string, one of ``choices`` when given."""
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise SpecError(f"{path}.{key}", f"must be a string, got {value!r}")
    if choices and value not in choices:
        raise SpecError(f"{path}.{key}", f"must be one of {', '.join(choices)}; got {value!r}")
    return value
