"""pyproject.toml's version floors are at least the first release of every feature the code uses.

Installing the floors and running the tests on them would take too long here, so the check is a
table instead: each row names a package, the first version with a feature, the feature, and the
file (plus a piece of its text) where the code uses it. A floor lowered below a row fails; a use
that disappears from its file fails too, so the table cannot outlive the code. The floors of
grpcio and protobuf come from the committed generated code itself.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROTO = REPO / "worker" / "baton_worker" / "proto"


@dataclass(frozen=True)
class Floor:
    package: str
    minimum: str  # the first release with the feature
    feature: str
    path: str  # where the code uses it, relative to the repository
    needle: str  # text of that file that is the use


FLOORS = (
    Floor(
        "torch",
        "2.5",
        "scaled_dot_product_attention(enable_gqa=...)",
        "worker/baton_worker/engine/model.py",
        "enable_gqa=True",
    ),
    Floor(
        "transformers",
        "4.56",
        "from_pretrained(dtype=...) (torch_dtype before)",
        "worker/baton_worker/engine/loader.py",
        "from_pretrained(path, dtype=",
    ),
    Floor(
        "transformers",
        "4.56",
        "PreTrainedModel._from_config(config, dtype=...)",
        "worker/baton_worker/engine/loader.py",
        "_from_config(config, dtype=",
    ),
    Floor(
        "transformers",
        "4.56",
        "PretrainedConfig.dtype (torch_dtype before)",
        "worker/baton_worker/engine/builtin.py",
        "config.dtype = ",
    ),
    Floor(
        "kubernetes",
        "37.0.0",
        "ApiClient.param_serialize and call_api(method, url, ...) (the regenerated client)",
        "operator/baton_operator/api.py",
        "self._client.param_serialize(",
    ),
    Floor(
        "nixl-cu12",
        "1.1.0",
        "nixl_agent_config(sync_mode=nixl_thread_sync_t...)",
        "worker/baton_worker/kv/nixl_agent.py",
        "sync_mode=nixl.nixl_thread_sync_t.",
    ),
    Floor(
        "kopf",
        "1.32",
        "kopf.login_with_kubeconfig",
        "operator/baton_operator/main.py",
        "kopf.login_with_kubeconfig(",
    ),
    Floor(
        "prometheus-client",
        "0.14.0",
        "prometheus_client.registry.Collector (custom collectors)",
        "worker/baton_worker/router/metrics.py",
        "from prometheus_client.registry import Collector",
    ),
    Floor(
        "numpy",
        "1.17",
        "numpy.random.default_rng",
        "dev/baton_dev/bench/kv.py",
        "np.random.default_rng(",
    ),
    Floor(
        "cryptography",
        "42.0.0",
        "Certificate.not_valid_before_utc / not_valid_after_utc",
        "worker/baton_worker/pki.py",
        "cert.not_valid_after_utc",
    ),
    Floor(
        "pytest-asyncio",
        "0.24",
        "the asyncio_default_fixture_loop_scope option",
        "pyproject.toml",
        "asyncio_default_fixture_loop_scope = ",
    ),
)

# The interpreter: requires-python against what the code needs of it.
PYTHON_FLOOR = Floor(
    "python", "3.11", "datetime.UTC", "operator/baton_operator/leader.py", "from datetime import UTC"
)


def declared() -> dict[str, Requirement]:
    """Every requirement of the base install and the extras, by canonical name (one entry per
    name: the same floor is kept wherever a package is listed twice)."""
    project = PYPROJECT["project"]
    lists = [project["dependencies"], *project.get("optional-dependencies", {}).values()]
    out: dict[str, Requirement] = {}
    for text in (t for lst in lists for t in lst):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in out:
            assert lower_bound(out[name].specifier) == lower_bound(req.specifier), (
                f"{req.name} is listed with different floors: {out[name]} and {req}"
            )
        out[name] = req
    return out


def lower_bound(spec: SpecifierSet) -> Version | None:
    """The version a specifier set starts at (>= or ==), None when it has no floor."""
    floors = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    return max(floors, default=None)


def test_the_table_names_declared_packages_and_real_uses() -> None:
    deps = declared()
    for row in FLOORS:
        assert canonicalize_name(row.package) in deps, f"{row.package} is not in pyproject.toml"
        text = (REPO / row.path).read_text()
        assert row.needle in text, (
            f"{row.path} no longer contains {row.needle!r} ({row.feature}): "
            f"update the {row.package} row of this table, and the floor if the need went away"
        )


@pytest.mark.parametrize("row", FLOORS, ids=lambda r: f"{r.package}>={r.minimum}")
def test_floor_is_at_least_the_first_release_with_the_feature(row: Floor) -> None:
    req = declared()[canonicalize_name(row.package)]
    floor = lower_bound(req.specifier)
    assert floor is not None, (
        f"{req}: no floor, but {row.path} uses {row.feature} ({row.package} {row.minimum})"
    )
    assert floor >= Version(row.minimum), (
        f"{req}: {row.path} uses {row.feature}, first in {row.package} {row.minimum}"
    )


def test_requires_python_covers_the_language_features_used() -> None:
    assert PYTHON_FLOOR.needle in (REPO / PYTHON_FLOOR.path).read_text()
    floor = lower_bound(SpecifierSet(PYPROJECT["project"]["requires-python"]))
    assert floor is not None and floor >= Version(PYTHON_FLOOR.minimum), (
        f"requires-python {PYPROJECT['project']['requires-python']}: "
        f"{PYTHON_FLOOR.path} uses {PYTHON_FLOOR.feature} (Python {PYTHON_FLOOR.minimum})"
    )


def test_grpcio_floor_is_the_generated_code_s() -> None:
    # baton_pb2_grpc.py refuses to import under an older grpcio than the one that generated it.
    text = (PROTO / "baton_pb2_grpc.py").read_text()
    generated = Version(re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1))
    floor = lower_bound(declared()["grpcio"].specifier)
    assert floor is not None and floor >= generated, f"grpcio floor {floor}, generated code needs {generated}"


def test_protobuf_range_is_the_generated_code_s() -> None:
    # baton_pb2.py checks the runtime: the same major version, and at least the gencode's.
    text = (PROTO / "baton_pb2.py").read_text()
    m = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        text,
    )
    assert m, "baton_pb2.py: no ValidateProtobufRuntimeVersion call"
    major, minor, patch = (int(g) for g in m.groups())
    spec = declared()["protobuf"].specifier
    floor = lower_bound(spec)
    assert floor is not None and floor >= Version(f"{major}.{minor}.{patch}"), (
        f"protobuf floor {floor}, generated code needs {major}.{minor}.{patch}"
    )
    assert not spec.contains(f"{major + 1}.0.0"), (
        f"protobuf {spec} admits {major + 1}.x, which the code refuses"
    )
