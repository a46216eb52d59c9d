"""The performance profile: measured costs of one model on one kind of hardware (``baton-profile/v1``).

A profile is a JSON file written by ``baton profile`` (on a worker) or by hand from published
figures. :func:`load_profile` validates it strictly — every error names the field, e.g.
``prefill[2].seconds: must be a number > 0, got -1`` — and returns a frozen :class:`Profile`
whose methods are the fitted cost functions the simulator uses (see :mod:`.fit` for the shapes):

* :meth:`Profile.prefill_seconds` — one prefill of ``tokens`` prompt tokens at a TP size;
* :meth:`Profile.decode_step_seconds` — one continuous-batching decode step;
* :meth:`Profile.kv_transfer_seconds` — moving a prompt's KV from prefill to decode.

Only the TP sizes a profile measures are offered: nothing is scaled to unmeasured sizes.
Unknown fields inside an object or a measured point are errors (they may change what a figure
means: a prefill point with a ``batch`` is not a batch-1 figure); unknown top-level keys are
metadata and ignored (``baton profile`` adds ``profile_seconds``); ``sources`` is free text keyed
by what it explains. ``kv_transfer`` may be empty: such a profile plans colocated pools only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton_operator.planning.fit import DecodeSurface, Linear, Piecewise
from baton_operator.spec import DEVICES, DTYPES, TENSOR_PARALLEL_SIZES

FORMAT = "baton-profile/v1"
REQUIRED_SOURCES = ("prefill", "decode", "kv_transfer")


class ProfileError(ValueError):
    """A profile that cannot be used; ``field`` is the path of the offending field."""

    def __init__(self, field_path: str, message: str, file: str = "") -> None:
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{field_path or '(top level)'}: {message}")
        self.field = field_path
        self.message = message


@dataclass(frozen=True)
class Hardware:
    device: str  # cuda | cpu
    name: str
    gpus_per_worker_tp1: int  # GPUs (cpu: 1 = one worker) a TP-1 worker occupies


@dataclass(frozen=True)
class ModelInfo:
    source: str
    dtype: str
    kv_bytes_per_token: int


@dataclass(frozen=True)
class PrefillPoint:
    tp: int
    prompt_tokens: int
    seconds: float


@dataclass(frozen=True)
class DecodePoint:
    tp: int
    batch: int
    context_tokens: int
    step_seconds: float


@dataclass(frozen=True)
class KvTransferPoint:
    backend: str
    tokens: int
    seconds: float


@dataclass(frozen=True)
class Overheads:
    router_s: float
    handoff_s: float


@dataclass(frozen=True)
class Profile:
    hardware: Hardware
    model: ModelInfo
    measured_by: str
    sources: Mapping[str, str]
    prefill: tuple[PrefillPoint, ...]
    decode: tuple[DecodePoint, ...]
    kv_transfer: tuple[KvTransferPoint, ...]
    overheads: Overheads
    format: str = FORMAT
    _fits: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        fits = self._fits
        for tp in {p.tp for p in self.prefill}:
            pts = [(p.prompt_tokens, p.seconds) for p in self.prefill if p.tp == tp]
            fits[("prefill", tp)] = Piecewise.through(pts, single="proportional")
        for tp in {p.tp for p in self.decode}:
            pts3 = [(p.batch, p.context_tokens, p.step_seconds) for p in self.decode if p.tp == tp]
            fits[("decode", tp)] = DecodeSurface.through(pts3)
        for name in {p.backend for p in self.kv_transfer}:
            fits[("kv", name)] = Linear.fit(
                [(p.tokens, p.seconds) for p in self.kv_transfer if p.backend == name]
            )

    # ---- what was measured -------------------------------------------------------------------
    @property
    def prefill_tp_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({p.tp for p in self.prefill}))

    @property
    def decode_tp_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({p.tp for p in self.decode}))

    @property
    def kv_backends(self) -> tuple[str, ...]:
        return tuple(sorted({p.backend for p in self.kv_transfer}))

    @property
    def unit(self) -> str:
        """What a deployment's cost counts: GPUs, or workers on a CPU profile."""
        return "workers" if self.hardware.device == "cpu" else "GPUs"

    def count(self, n: int) -> str:
        """``n`` in the profile's unit: "1 GPU", "3 GPUs", "1 worker"."""
        return f"{n} {self.unit if n != 1 else self.unit[:-1]}"

    def worker_cost(self, tp: int) -> int:
        """GPUs (cpu: workers) one worker of tensor parallel size ``tp`` occupies."""
        return 1 if self.hardware.device == "cpu" else tp * self.hardware.gpus_per_worker_tp1

    def resolve_backend(self, backend: str) -> str:
        """The profile's KV backend for a deployment's ``backend`` (auto: nixl, else grpc, else any)."""
        names = self.kv_backends
        if not names:
            raise ValueError("the profile has no kv_transfer figures: it plans colocated pools only")
        if backend == "auto":
            for preferred in ("nixl", "grpc"):
                if preferred in names:
                    return preferred
            return names[0]
        if backend not in names:
            raise ValueError(
                f"the profile has no kv_transfer figures for backend {backend!r} (has: {', '.join(names)})"
            )
        return backend

    # ---- fitted costs ------------------------------------------------------------------------
    def _fit(self, kind: str, key: Any, measured: tuple[Any, ...]) -> Any:
        try:
            return self._fits[(kind, key)]
        except KeyError:
            raise ValueError(
                f"the profile has no {kind} figures at {'backend' if kind == 'kv' else 'tensor parallel size'} "
                f"{key} (measured: {', '.join(str(m) for m in measured)})"
            ) from None

    def prefill_seconds(self, tokens: float, tp: int = 1) -> float:
        """One prefill of ``tokens`` prompt tokens (a batch: their sum) at TP ``tp``."""
        return self._fit("prefill", tp, self.prefill_tp_sizes)(tokens)

    def decode_step_seconds(self, batch: float, mean_context: float, tp: int = 1) -> float:
        """One decode step of ``batch`` sequences whose mean context is ``mean_context`` tokens."""
        return self._fit("decode", tp, self.decode_tp_sizes)(batch, mean_context)

    def kv_transfer_seconds(self, tokens: float, backend: str = "auto") -> float:
        """Moving ``tokens`` tokens of KV from a prefill to a decode worker over ``backend``."""
        return self.kv_fit(backend)(tokens)

    def prefill_fit(self, tp: int) -> Piecewise:
        return self._fit("prefill", tp, self.prefill_tp_sizes)

    def decode_fit(self, tp: int) -> DecodeSurface:
        return self._fit("decode", tp, self.decode_tp_sizes)

    def kv_fit(self, backend: str = "auto") -> Linear:
        return self._fit("kv", self.resolve_backend(backend), self.kv_backends)


# ---- parsing ---------------------------------------------------------------------------------
def _obj(raw: Any, path: str, required: tuple[str, ...], extra_ok: bool = False) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ProfileError(path, f"must be an object, got {type(raw).__name__}")
    for key in required:
        if key not in raw:
            raise ProfileError(_join(path, key), "is required")
    unknown = sorted(set(raw) - set(required))
    if unknown and not extra_ok:
        expected = ", ".join(required)
        raise ProfileError(_join(path, unknown[0]), f"unknown field (expected: {expected})")
    return raw


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _num(raw: Mapping[str, Any], key: str, path: str, positive: bool) -> float:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(_join(path, key), f"must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ProfileError(
            _join(path, key), f"must be a number {'> 0' if positive else '>= 0'}, got {value!r}"
        )
    return float(value)


def _int(raw: Mapping[str, Any], key: str, path: str, minimum: int = 1, choices: tuple[int, ...] = ()) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(_join(path, key), f"must be an integer, got {value!r}")
    if value < minimum:
        raise ProfileError(_join(path, key), f"must be >= {minimum}, got {value}")
    if choices and value not in choices:
        raise ProfileError(_join(path, key), f"must be one of {', '.join(map(str, choices))}, got {value}")
    return value


def _str(raw: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...] = ()) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(_join(path, key), f"must be a non-empty string, got {value!r}")
    if choices and value not in choices:
        raise ProfileError(_join(path, key), f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _points(raw: Mapping[str, Any], key: str, empty_ok: bool = False) -> list[tuple[str, Mapping[str, Any]]]:
    items = raw[key]
    if not isinstance(items, list) or not (items or empty_ok):
        what = "a list" if empty_ok else "a non-empty list"
        raise ProfileError(key, f"must be {what} of measured points, got {items!r}")
    return [(f"{key}[{i}]", item) for i, item in enumerate(items)]


def _unique(points: list[tuple[str, tuple[Any, ...]]], what: str) -> None:
    seen: dict[tuple[Any, ...], str] = {}
    for path, key in points:
        if key in seen:
            raise ProfileError(path, f"duplicates {seen[key]} (same {what})")
        seen[key] = path


def _parse_points(raw: Mapping[str, Any], device: str) -> tuple[tuple, tuple, tuple]:
    tps = (1,) if device == "cpu" else TENSOR_PARALLEL_SIZES
    prefill, decode, kv = [], [], []
    for path, p in _points(raw, "prefill"):
        p = _obj(p, path, ("tp", "prompt_tokens", "seconds"))
        prefill.append(
            (
                path,
                PrefillPoint(
                    _int(p, "tp", path, choices=tps),
                    _int(p, "prompt_tokens", path),
                    _num(p, "seconds", path, positive=True),
                ),
            )
        )
    for path, p in _points(raw, "decode"):
        p = _obj(p, path, ("tp", "batch", "context_tokens", "step_seconds"))
        decode.append(
            (
                path,
                DecodePoint(
                    _int(p, "tp", path, choices=tps),
                    _int(p, "batch", path),
                    _int(p, "context_tokens", path),
                    _num(p, "step_seconds", path, True),
                ),
            )
        )
    for path, p in _points(raw, "kv_transfer", empty_ok=True):
        p = _obj(p, path, ("backend", "tokens", "seconds"))
        kv.append(
            (
                path,
                KvTransferPoint(
                    _str(p, "backend", path), _int(p, "tokens", path), _num(p, "seconds", path, positive=True)
                ),
            )
        )
    _unique([(path, (p.tp, p.prompt_tokens)) for path, p in prefill], "tp and prompt_tokens")
    _unique([(path, (p.tp, p.batch, p.context_tokens)) for path, p in decode], "tp, batch and context_tokens")
    _unique([(path, (p.backend, p.tokens)) for path, p in kv], "backend and tokens")
    return tuple(p for _, p in prefill), tuple(p for _, p in decode), tuple(p for _, p in kv)


def parse_profile(raw: Any) -> Profile:
    """A :class:`Profile` from a decoded JSON document; :class:`ProfileError` names what is wrong."""
    if not isinstance(raw, Mapping):
        raise ProfileError("", f"must be a JSON object, got {type(raw).__name__}")
    if "format" not in raw:
        raise ProfileError("format", f"is required (this baton reads {FORMAT!r})")
    if raw["format"] != FORMAT:
        raise ProfileError("format", f"unsupported format {raw['format']!r}; this baton reads {FORMAT!r}")
    top = _obj(
        raw,
        "",
        (
            "format",
            "hardware",
            "model",
            "measured_by",
            "sources",
            "prefill",
            "decode",
            "kv_transfer",
            "overheads",
        ),
        extra_ok=True,
    )
    hw = _obj(top["hardware"], "hardware", ("device", "name", "gpus_per_worker_tp1"))
    hardware = Hardware(
        _str(hw, "device", "hardware", DEVICES),
        _str(hw, "name", "hardware"),
        _int(hw, "gpus_per_worker_tp1", "hardware"),
    )
    m = _obj(top["model"], "model", ("source", "dtype", "kv_bytes_per_token"))
    model = ModelInfo(
        _str(m, "source", "model"), _str(m, "dtype", "model", DTYPES), _int(m, "kv_bytes_per_token", "model")
    )
    src = top["sources"]
    if not isinstance(src, Mapping):
        raise ProfileError("sources", f"must be an object, got {type(src).__name__}")
    for key in REQUIRED_SOURCES:
        if key not in src:
            raise ProfileError(f"sources.{key}", "is required: say where these figures come from")
    sources = {str(k): _str(src, k, "sources") for k in src}
    oh = _obj(top["overheads"], "overheads", ("router_s", "handoff_s"))
    overheads = Overheads(_num(oh, "router_s", "overheads", False), _num(oh, "handoff_s", "overheads", False))
    prefill, decode, kv = _parse_points(top, hardware.device)
    # A TP size measured for one role only is fine: each role chooses its TP size on its own.
    return Profile(hardware, model, _str(top, "measured_by", ""), sources, prefill, decode, kv, overheads)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a ``baton-profile/v1`` JSON file; errors name the file and the field."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except OSError as e:
        raise ProfileError("", f"cannot read: {e.strerror or e}", str(p)) from None
    except json.JSONDecodeError as e:
        raise ProfileError("", f"not JSON: {e.msg} at line {e.lineno} column {e.colno}", str(p)) from None
    try:
        return parse_profile(raw)
    except ProfileError as e:
        raise ProfileError(e.field, e.message, str(p)) from None
