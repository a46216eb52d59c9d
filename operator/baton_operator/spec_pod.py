"""The pod-level parts of an InferencePool's spec: model credentials, environment, pull secrets.

``spec.model.secretRef``, ``spec.env``, ``spec.envFrom`` and ``spec.imagePullSecrets``, parsed
(pure) into what the builders put on every worker and router pod. The environment variables the
operator sets itself are reserved: the CRD refuses them with CEL rules, and the parser refuses
them again (objects stored before the rule existed, a CRD not upgraded) naming the field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from baton_worker.router.auth import API_KEY_ENV

from baton_operator.spec_base import SpecError, as_obj, read_str

# The variable huggingface_hub reads its token from (downloads of hf:// sources, gated repos).
MODEL_TOKEN_ENV = "HF_TOKEN"
DEFAULT_MODEL_SECRET_KEY = "HF_TOKEN"
# What Kubernetes accepts everywhere (newer API servers accept more; this is the portable subset).
ENV_NAME_PATTERN = "^[-._a-zA-Z][-._a-zA-Z0-9]*$"
MAX_ENV_NAME = 256
# Set on every baton container by the operator (pods.container_env).
OPERATOR_ENV = ("POD_NAME", "POD_NAMESPACE", "POD_IP", "BATON_POOL", "BATON_ROLE", "BATON_CONFIG")
# Names spec.env may not set, each group with where to set it instead. Kubernetes would keep the
# last of two entries of one name without a word; the operator refuses instead.
RESERVED_ENV: tuple[tuple[tuple[str, ...], str], ...] = (
    ((MODEL_TOKEN_ENV,), "set it with spec.model.secretRef"),
    ((API_KEY_ENV,), "set it with spec.router.auth.apiKeySecretRef"),
    (OPERATOR_ENV, "set by the operator on every pod"),
)
RESERVED_ENV_PREFIX = "UCX_"  # the workers' UCX settings: spec.kvTransfer.ucx
RESERVED_PREFIX_HINT = "set UCX variables in spec.kvTransfer.ucx"
ENV_VALUE_SOURCES = ("configMapKeyRef", "secretKeyRef", "fieldRef", "resourceFieldRef")
ENV_FROM_SOURCES = ("configMapRef", "secretRef")
MAX_ENV = 128
MAX_ENV_FROM = 32
MAX_PULL_SECRETS = 16


class SecretKeyRef(NamedTuple):
    """One key of a Secret in the pool's namespace (unpacks as ``name, key``)."""

    name: str
    key: str


@dataclass(frozen=True)
class PodOptions:
    """``spec.env``, ``spec.envFrom`` and ``spec.imagePullSecrets``, as the pod templates carry them.

    Entries are normalized to what the API server stores (an empty ``value`` or ``prefix`` is
    left out), so a no-op resync finds the live pod template equal to the desired one.
    """

    env: tuple[dict[str, Any], ...] = ()
    env_from: tuple[dict[str, Any], ...] = ()
    image_pull_secrets: tuple[str, ...] = ()


def reserved_env_hint(name: str) -> str | None:
    """Why ``name`` may not be set in spec.env (where to set it instead), None when it may."""
    for names, hint in RESERVED_ENV:
        if name in names:
            return hint
    return RESERVED_PREFIX_HINT if name.startswith(RESERVED_ENV_PREFIX) else None


def parse_secret_ref(raw: Any, path: str, default_key: str) -> SecretKeyRef | None:
    """``{name, key}`` of a Secret (key defaulted), None when absent; SpecError naming the field."""
    if raw is None:
        return None
    ref = as_obj(raw, path)
    name = read_str(ref, "name", path, "")
    if not name:
        raise SpecError(f"{path}.name", "is required")
    return SecretKeyRef(name, read_str(ref, "key", path, default_key) or default_key)


def _list(raw: Any, path: str, most: int) -> list[Mapping[str, Any]]:
    items = [] if raw is None else raw
    if not isinstance(items, list):
        raise SpecError(path, f"must be a list, got {type(items).__name__}")
    if len(items) > most:
        raise SpecError(path, f"at most {most} entries, got {len(items)}")
    return [as_obj(item, f"{path}[{i}]") for i, item in enumerate(items)]


def _env_var(item: Mapping[str, Any], path: str) -> dict[str, Any]:
    name = read_str(item, "name", path, "")
    if not re.fullmatch(ENV_NAME_PATTERN, name) or len(name) > MAX_ENV_NAME:
        raise SpecError(
            f"{path}.name", f"must be an environment variable name (letters, digits, _ - .), got {name!r}"
        )
    hint = reserved_env_hint(name)
    if hint:
        raise SpecError(f"{path}.name", f"{name} is reserved: {hint}")
    value = read_str(item, "value", path, "")
    out: dict[str, Any] = {"name": name}
    if value:
        out["value"] = value
    if item.get("valueFrom") is not None:
        source = as_obj(item["valueFrom"], f"{path}.valueFrom")
        given = [key for key in ENV_VALUE_SOURCES if source.get(key) is not None]
        if len(given) != 1:
            raise SpecError(f"{path}.valueFrom", f"must set exactly one of {', '.join(ENV_VALUE_SOURCES)}")
        if value:
            raise SpecError(f"{path}.valueFrom", "must not be set together with value")
        out["valueFrom"] = {
            given[0]: copy.deepcopy(dict(as_obj(source[given[0]], f"{path}.valueFrom.{given[0]}")))
        }
    return out


def parse_env(raw: Any, path: str = "spec.env") -> tuple[dict[str, Any], ...]:
    """``spec.env``: Kubernetes EnvVars, no reserved or repeated names; SpecError naming the entry."""
    env: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(_list(raw, path, MAX_ENV)):
        var = _env_var(item, f"{path}[{i}]")
        if var["name"] in seen:
            raise SpecError(
                f"{path}[{i}].name", f"{var['name']} is already set by {path}[{seen[var['name']]}]"
            )
        seen[var["name"]] = i
        env.append(var)
    return tuple(env)


def parse_env_from(raw: Any, path: str = "spec.envFrom") -> tuple[dict[str, Any], ...]:
    """``spec.envFrom``: each entry one ConfigMap or Secret (all its keys), with an optional prefix."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(_list(raw, path, MAX_ENV_FROM)):
        where = f"{path}[{i}]"
        given = [key for key in ENV_FROM_SOURCES if item.get(key) is not None]
        if len(given) != 1:
            raise SpecError(where, "must set exactly one of configMapRef and secretRef")
        ref = as_obj(item[given[0]], f"{where}.{given[0]}")
        name = read_str(ref, "name", f"{where}.{given[0]}", "")
        if not name:
            raise SpecError(f"{where}.{given[0]}.name", "is required")
        entry: dict[str, Any] = {}
        prefix = read_str(item, "prefix", where, "")
        if prefix:
            entry["prefix"] = prefix
        source: dict[str, Any] = {"name": name}
        if ref.get("optional") is not None:
            if not isinstance(ref["optional"], bool):
                raise SpecError(
                    f"{where}.{given[0]}.optional", f"must be true or false, got {ref['optional']!r}"
                )
            source["optional"] = ref["optional"]
        entry[given[0]] = source
        out.append(entry)
    return tuple(out)


def parse_pull_secrets(raw: Any, path: str = "spec.imagePullSecrets") -> tuple[str, ...]:
    """``spec.imagePullSecrets``: names of docker-registry Secrets, each once."""
    names: list[str] = []
    for i, item in enumerate(_list(raw, path, MAX_PULL_SECRETS)):
        name = read_str(item, "name", f"{path}[{i}]", "")
        if not name:
            raise SpecError(f"{path}[{i}].name", "is required")
        if name in names:
            raise SpecError(f"{path}[{i}].name", f"{name} is listed twice")
        names.append(name)
    return tuple(names)


def parse_pod_options(spec: Mapping[str, Any]) -> PodOptions:
    """The pod-level fields of an InferencePool ``spec`` (already an object)."""
    return PodOptions(
        env=parse_env(spec.get("env")),
        env_from=parse_env_from(spec.get("envFrom")),
        image_pull_secrets=parse_pull_secrets(spec.get("imagePullSecrets")),
    )
