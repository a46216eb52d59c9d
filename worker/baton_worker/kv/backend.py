"""Choosing the KV data path: ``auto | nixl | grpc`` (pure)."""

from __future__ import annotations

from collections.abc import Callable

from baton_worker.kv.errors import KvBackendUnavailable

CHOICES = ("auto", "nixl", "grpc")


def choose_backend(
    requested: str, nixl_loads: Callable[[], bool], why_not: Callable[[], str] = lambda: ""
) -> str:
    """The backend to run: ``nixl`` or ``grpc``.

    ``auto`` picks NIXL when it loads, else gRPC. ``nixl`` insists: KvBackendUnavailable (with
    ``why_not()``) when it does not load. Anything else is a ValueError naming the field.
    """
    if requested not in CHOICES:
        raise ValueError(f"kv_backend: {requested!r} is not one of {', '.join(CHOICES)}")
    if requested == "grpc":
        return "grpc"
    if nixl_loads():
        return "nixl"
    if requested == "nixl":
        raise KvBackendUnavailable(f"kv_backend nixl requested but NIXL does not load: {why_not()}")
    return "grpc"
