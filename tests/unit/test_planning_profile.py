"""The baton-profile/v1 format: validation errors that name the field, fits exact at measured points."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from baton_operator.planning.fit import FLOOR, DecodeSurface, Linear, Piecewise
from baton_operator.planning.profile import FORMAT, ProfileError, load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[2]
H100 = ROOT / "profiles" / "h100-llama3-8b.json"


def doc() -> dict[str, Any]:
    return json.loads(H100.read_text())


def test_the_h100_profile_loads_with_tp_1_only() -> None:
    p = load_profile(H100)
    assert p.format == FORMAT
    assert (p.hardware.device, p.hardware.name, p.unit) == ("cuda", "NVIDIA H100 80GB HBM3", "GPUs")
    assert p.model.kv_bytes_per_token == 128 * 1024
    assert p.prefill_tp_sizes == (1,) and p.decode_tp_sizes == (1,)
    assert p.kv_backends == ("nixl",)
    assert set(p.sources) >= {"prefill", "decode", "kv_transfer"}
    with pytest.raises(ValueError, match=r"no prefill figures at tensor parallel size 2 \(measured: 1\)"):
        p.prefill_seconds(512, tp=2)
    with pytest.raises(ValueError, match=r"no decode figures at tensor parallel size 8"):
        p.decode_step_seconds(8, 1024, tp=8)


def test_the_h100_profile_keeps_the_published_figures() -> None:
    p = load_profile(H100)
    # 4096 tokens x 128 KiB at NIXL's published 42.6 GB/s.
    assert p.kv_transfer_seconds(4096) == pytest.approx(4096 * 131072 / 42.6e9, rel=1e-3)
    assert [round(p.prefill_seconds(n) * 1000, 1) for n in (512, 2048, 8192)] == [35.5, 62.2, 261.6]
    steps = [round(p.decode_step_seconds(b, 1024) * 1000, 1) for b in (1, 8, 32, 64, 128)]
    assert steps == [35.1, 36.2, 25.8, 40.5, 69.8]


def test_every_fit_is_exact_at_every_measured_point() -> None:
    p = load_profile(H100)
    for pt in p.prefill:
        assert p.prefill_seconds(pt.prompt_tokens, pt.tp) == pytest.approx(pt.seconds, rel=1e-12)
    for pt in p.decode:
        assert p.decode_step_seconds(pt.batch, pt.context_tokens, pt.tp) == pytest.approx(
            pt.step_seconds, rel=1e-12
        )
    for pt in p.kv_transfer:
        assert p.kv_transfer_seconds(pt.tokens, pt.backend) == pytest.approx(pt.seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("x", "want"),
    [
        (512, 0.0355),  # measured
        (1280, (0.0355 + 0.0622) / 2),  # halfway between two points
        (8192 + 6144, 0.2616 + (0.2616 - 0.0622)),  # beyond: the last segment's slope
        (0, 0.0355 - 512 * (0.0622 - 0.0355) / 1536),  # below: the first segment's slope
    ],
)
def test_prefill_is_piecewise_linear_and_extends_the_end_segments(x: float, want: float) -> None:
    assert load_profile(H100).prefill_seconds(x) == pytest.approx(want)


def test_one_point_fits_are_proportional_or_constant_and_never_below_the_floor() -> None:
    assert Piecewise.through([(100, 1.0)], single="proportional")(300) == pytest.approx(3.0)
    assert Piecewise.through([(8, 0.02)])(64) == pytest.approx(0.02)
    assert Piecewise.through([(1, 1.0), (2, 0.5)])(10) == FLOOR  # the line crossed zero
    assert Linear.fit([(4096, 0.0126)])(2048) == pytest.approx(0.0063)
    with pytest.raises(ValueError, match="distinct"):
        Piecewise.through([(1, 1.0), (1, 2.0)])


def test_the_decode_surface_is_bilinear_between_measured_contexts() -> None:
    pts = [(1, 1000, 0.010), (64, 1000, 0.030), (1, 3000, 0.012), (64, 3000, 0.050)]
    s = DecodeSurface.through(pts)
    for b, c, y in pts:
        assert s(b, c) == pytest.approx(y)
    assert s(64, 2000) == pytest.approx(0.040)  # halfway in context
    assert s(64, 5000) == pytest.approx(0.070)  # beyond: linear in context
    assert s.context_span == (1000, 3000) and s.batch_span == (1, 64)


def test_kv_transfer_is_a_least_squares_line_and_auto_prefers_nixl() -> None:
    line = Linear.fit([(1000, 0.002), (2000, 0.003), (4000, 0.005)])
    assert (line.intercept, line.slope) == (pytest.approx(0.001), pytest.approx(1e-6))
    d = doc()
    d["kv_transfer"] = [
        {"backend": "grpc", "tokens": 1000, "seconds": 0.05},
        {"backend": "nixl", "tokens": 1000, "seconds": 0.004},
        {"backend": "nixl", "tokens": 3000, "seconds": 0.008},
    ]
    p = parse_profile(d)
    assert p.resolve_backend("auto") == "nixl"
    assert p.kv_transfer_seconds(2000) == pytest.approx(0.006)
    assert p.kv_transfer_seconds(2000, "grpc") == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"no kv_transfer figures for backend 'ucx' \(has: grpc, nixl\)"):
        p.kv_transfer_seconds(10, "ucx")


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    keys = path.replace("[", ".").replace("]", "").split(".")
    for k in keys[:-1]:
        d = d[int(k)] if k.isdigit() else d[k]
    last = keys[-1]
    if value is DELETE:
        del d[int(last) if last.isdigit() else last]
    elif last.isdigit():
        d[int(last)] = value
    else:
        d[last] = value


DELETE = object()
INVALID = [
    ("format", DELETE, "format: is required"),
    ("format", "baton-profile/v2", "format: unsupported format 'baton-profile/v2'"),
    ("hardware.device", "tpu", "hardware.device: must be one of cuda, cpu, got 'tpu'"),
    ("hardware.gpus_per_worker_tp1", 0, "hardware.gpus_per_worker_tp1: must be >= 1, got 0"),
    ("hardware.name", "", "hardware.name: must be a non-empty string"),
    ("model.kv_bytes_per_token", 1.5, "model.kv_bytes_per_token: must be an integer, got 1.5"),
    ("model.dtype", "int4", "model.dtype: must be one of bfloat16, float16, float32"),
    ("measured_by", DELETE, "measured_by: is required"),
    ("sources.decode", DELETE, "sources.decode: is required"),
    ("sources.prefill", 3, "sources.prefill: must be a non-empty string"),
    ("prefill", [], "prefill: must be a non-empty list"),
    ("prefill[1].seconds", -1, "prefill[1].seconds: must be a number > 0, got -1"),
    ("prefill[0].tp", 3, "prefill[0].tp: must be one of 1, 2, 4, 8, got 3"),
    ("prefill[2].prompt_tokens", "8k", "prefill[2].prompt_tokens: must be an integer, got '8k'"),
    ("prefill[0].batch", 1, "prefill[0].batch: unknown field (expected: tp, prompt_tokens, seconds)"),
    ("prefill[1].prompt_tokens", 512, "prefill[1]: duplicates prefill[0] (same tp and prompt_tokens)"),
    ("decode[0].batch", True, "decode[0].batch: must be an integer, got True"),
    ("decode[2].step_seconds", DELETE, "decode[2].step_seconds: is required"),
    ("decode[3].step_seconds", float("nan"), "decode[3].step_seconds: must be a number, got nan"),
    ("decode[1].batch", 1, "decode[1]: duplicates decode[0] (same tp, batch and context_tokens)"),
    ("decode", {"tp": 1}, "decode: must be a non-empty list"),
    ("kv_transfer[0].backend", "", "kv_transfer[0].backend: must be a non-empty string"),
    ("kv_transfer[0].seconds", 0, "kv_transfer[0].seconds: must be a number > 0, got 0"),
    ("overheads.router_s", "fast", "overheads.router_s: must be a number, got 'fast'"),
    ("overheads.handoff_s", -0.001, "overheads.handoff_s: must be a number >= 0"),
    ("overheads", DELETE, "overheads: is required"),
    (
        "hardware.memory_gb",
        80,
        "hardware.memory_gb: unknown field (expected: device, name, gpus_per_worker_tp1)",
    ),
    ("kv_transfer", {}, "kv_transfer: must be a list of measured points"),
]


@pytest.mark.parametrize(("path", "value", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_profiles_name_the_field(path: str, value: Any, message: str) -> None:
    d = copy.deepcopy(doc())
    _set(d, path, value)
    with pytest.raises(ProfileError) as e:
        parse_profile(d)
    assert message in str(e.value)
    assert e.value.field == message.split(":")[0]


def test_a_cpu_profile_allows_tp_1_only() -> None:
    d = doc()
    d["hardware"]["device"] = "cpu"
    d["prefill"][0]["tp"] = 2
    with pytest.raises(ProfileError, match=r"prefill\[0\].tp: must be one of 1, got 2"):
        parse_profile(d)


def test_a_profile_must_be_an_object() -> None:
    with pytest.raises(ProfileError, match=r"\(top level\): must be a JSON object, got list"):
        parse_profile([])


def test_load_profile_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"format": "baton-profile/v1",\n "hardware": }')
    with pytest.raises(ProfileError, match=rf"{bad}: \(top level\): not JSON: .* line 2"):
        load_profile(bad)
    d = doc()
    d["decode"][4]["context_tokens"] = 0
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match=rf"{bad}: decode\[4\].context_tokens: must be >= 1, got 0"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_top_level_metadata_is_ignored_and_kv_transfer_may_be_empty() -> None:
    # As `baton profile --kv-backends ''` writes it: a timing of its own run, no KV figures.
    d = doc()
    d["profile_seconds"] = 12.5
    d["kv_transfer"] = []
    p = parse_profile(d)
    assert p.kv_backends == ()
    with pytest.raises(ValueError, match="no kv_transfer figures: it plans colocated pools only"):
        p.kv_transfer_seconds(100)
    assert (p.count(1), p.count(3)) == ("1 GPU", "3 GPUs")
