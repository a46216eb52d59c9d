"""Typed view of an InferencePool: parse the object's dict once, with the CRD's defaults.

The API server applies the CRD's defaults and validation before the operator sees an object, but
the operator must never crash on a malformed or older object, so parsing re-applies the same
defaults and raises :class:`SpecError` naming the field when something is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from baton_operator.spec_base import SpecError, as_obj, read_bool, read_int, read_num, read_str
from baton_operator.spec_cache import ModelCacheSpec, parse_model_cache
from baton_operator.spec_network import NetworkPolicySpec, parse_network_policy
from baton_operator.spec_pod import (
    DEFAULT_MODEL_SECRET_KEY,
    PodOptions,
    SecretKeyRef,
    parse_pod_options,
    parse_secret_ref,
)
from baton_operator.spec_slo import SloSpec, parse_slo
from baton_operator.spec_tls import TlsSpec, parse_tls

GROUP = "baton.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferencePool"
PLURAL = "inferencepools"

# GPU Feature Discovery's `nvidia.com/gpu.product` value for each `gpu.type`.
GPU_PRODUCTS: dict[str, str] = {
    "H100": "NVIDIA-H100-80GB-HBM3",
    "H200": "NVIDIA-H200",
    "A100": "NVIDIA-A100-SXM4-80GB",
    "A100-40GB": "NVIDIA-A100-SXM4-40GB",
    "L40S": "NVIDIA-L40S",
    "L4": "NVIDIA-L4",
    "A10G": "NVIDIA-A10G",
    "B200": "NVIDIA-B200",
}
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# What a role's workers compute on: cuda (GPUs of gpu.type) or cpu (no GPU at all).
DEVICES = ("cuda", "cpu")
DTYPES = ("bfloat16", "float16", "float32")
KV_BACKENDS = ("auto", "nixl", "grpc")
UCX_VAR_PATTERN = "^UCX_[A-Z0-9_]+$"  # spec.kvTransfer.ucx keys
MAX_UCX_VARS = 32
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
AUTOSCALING_MODES = ("builtin", "keda")
ROLES = ("prefill", "decode")
MAX_POOL_NAME = 40  # children are named <pool>-prefill etc.; pod names must stay under 63 chars


@dataclass(frozen=True)
class RoleAutoscaling:
    """`spec.<role>.autoscaling`, validated; windows are whole seconds, as in the CRD."""

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 8
    target_queue_depth: float = 4.0
    scale_up_stabilization_seconds: int = 0
    scale_down_stabilization_seconds: int = 300
    tolerance: float = 0.1
    max_scale_step: int = 4


@dataclass(frozen=True)
class RoleSpec:
    role: str
    replicas: int
    tensor_parallel_size: int
    max_batch_size: int
    gpu_type: str
    device: str = "cuda"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    autoscaling: RoleAutoscaling = field(default_factory=RoleAutoscaling)

    @property
    def gpu_product(self) -> str:
        return GPU_PRODUCTS[self.gpu_type]

    @property
    def uses_gpus(self) -> bool:
        return self.device == "cuda"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    dtype: str = "bfloat16"
    max_model_len: int = 8192
    # spec.model.secretRef: the Secret key exposed as HF_TOKEN; None: no credentials.
    secret: SecretKeyRef | None = None
    cache: ModelCacheSpec = field(default_factory=ModelCacheSpec)  # spec.model.cache (spec_cache.py)


@dataclass(frozen=True)
class RouterSpec:
    replicas: int = 1
    service_type: str = "ClusterIP"
    port: int = 8000
    # spec.router.auth.apiKeySecretRef as (Secret name, key); None: no authentication.
    api_key_secret: SecretKeyRef | None = None


@dataclass(frozen=True)
class KvTransferSpec:
    backend: str = "auto"
    rdma_resource: str = ""
    ucx: tuple[tuple[str, str], ...] = ()  # spec.kvTransfer.ucx, sorted by name


@dataclass(frozen=True)
class PrefixCachingSpec:
    """spec.prefixCaching. Workers get --no-prefix-caching only when it is off, so pools keeping
    the defaults keep their pod templates (no rollout on upgrade)."""

    enabled: bool = True
    routing_weight: float = 1.0  # spec.prefixCaching.routingWeight: the router's --prefix-weight

    def router_args(self) -> list[str]:
        """The router's flags; none for the defaults, so such pools keep their pod template."""
        weight = self.routing_weight if self.enabled else 0.0
        return [] if weight == 1.0 else ["--prefix-weight", f"{weight:g}"]


@dataclass(frozen=True)
class PoolAutoscaling:
    mode: str = "builtin"
    metrics_url: str = ""
    interval_seconds: int = 5
    prometheus_url: str = ""
    prometheus_query: str = ""


@dataclass(frozen=True)
class AutoscalingSpec:
    """What the autoscaler reads of a spec: ``spec.autoscaling``, every role's ``autoscaling``
    (enabled or not) and the router's service port (the default metrics source)."""

    pool: PoolAutoscaling
    roles: dict[str, RoleAutoscaling]
    router_port: int
    slo: SloSpec | None = None  # spec.autoscaling.slo (spec_slo.py)


@dataclass(frozen=True)
class PoolSpec:
    model: ModelSpec
    image: str
    prefill: RoleSpec
    decode: RoleSpec
    router: RouterSpec
    kv_transfer: KvTransferSpec
    autoscaling: PoolAutoscaling
    pod: PodOptions = field(default_factory=PodOptions)  # spec.env, envFrom, imagePullSecrets
    network_policy: NetworkPolicySpec = field(default_factory=NetworkPolicySpec)
    prefix_caching: PrefixCachingSpec = field(default_factory=PrefixCachingSpec)
    tls: TlsSpec = field(default_factory=TlsSpec)  # spec.tls (spec_tls.py)

    def role(self, name: str) -> RoleSpec:
        return self.prefill if name == "prefill" else self.decode


@dataclass(frozen=True)
class Pool:
    """Identity of an InferencePool object plus its parsed spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: PoolSpec


ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "prefill": {"replicas": 1, "tensorParallelSize": 1, "maxBatchSize": 1, "gpu": "H100", "device": "cuda"},
    "decode": {"replicas": 1, "tensorParallelSize": 1, "maxBatchSize": 64, "gpu": "A100", "device": "cuda"},
}


def _ucx_env(raw: Any, path: str) -> tuple[tuple[str, str], ...]:
    env = as_obj(raw, path)
    if len(env) > MAX_UCX_VARS:
        raise SpecError(path, f"at most {MAX_UCX_VARS} variables, got {len(env)}")
    for key, value in env.items():
        if not isinstance(key, str) or not re.fullmatch(UCX_VAR_PATTERN, key):
            raise SpecError(path, f"{key!r} is not a UCX environment variable name (UCX_[A-Z0-9_]+)")
        if not isinstance(value, str) or not value:
            raise SpecError(f"{path}.{key}", f"must be a non-empty string, got {value!r}")
    return tuple(sorted(env.items()))


def _role_autoscaling(raw: Any, path: str) -> RoleAutoscaling:
    obj = as_obj(raw, path)
    result = RoleAutoscaling(
        enabled=read_bool(obj, "enabled", path, False),
        min_replicas=read_int(obj, "minReplicas", path, 1, minimum=0),
        max_replicas=read_int(obj, "maxReplicas", path, 8, minimum=1),
        target_queue_depth=read_num(obj, "targetQueueDepth", path, 4.0),
        scale_up_stabilization_seconds=read_int(obj, "scaleUpStabilizationSeconds", path, 0, minimum=0),
        scale_down_stabilization_seconds=read_int(obj, "scaleDownStabilizationSeconds", path, 300, minimum=0),
        tolerance=read_num(obj, "tolerance", path, 0.1),
        max_scale_step=read_int(obj, "maxScaleStep", path, 4, minimum=1),
    )
    if result.min_replicas > result.max_replicas:
        # The field to fix and the wording of the CRD's CEL rule for the same condition.
        raise SpecError(
            f"{path}.minReplicas",
            f"must be <= {path}.maxReplicas ({result.min_replicas} > {result.max_replicas})",
        )
    if not result.target_queue_depth > 0:
        raise SpecError(f"{path}.targetQueueDepth", f"must be > 0, got {result.target_queue_depth:g}")
    if not result.tolerance < 1:
        # At 1 or more an empty queue is "within tolerance" of any count: no scale-down, ever.
        raise SpecError(f"{path}.tolerance", f"must be < 1, got {result.tolerance:g}")
    return result


def _router_port(spec: Mapping[str, Any]) -> int:
    router = as_obj(spec.get("router"), "spec.router")
    service = as_obj(router.get("service"), "spec.router.service")
    port = read_int(service, "port", "spec.router.service", 8000, minimum=1)
    if port > 65535:
        raise SpecError("spec.router.service.port", f"must be <= 65535, got {port}")
    return port


def parse_autoscaling(raw: Any) -> AutoscalingSpec:
    """Parse the autoscaling fields of an InferencePool ``spec``, applying the CRD's defaults.

    The only parser of these fields: :func:`parse_spec` calls it too, so the operator and the
    autoscaler accept and refuse the same specs. Fields the autoscaler does not read (the model,
    GPUs...) are not looked at. Raises SpecError naming the offending field.
    """
    spec = as_obj(raw, "spec")
    auto = as_obj(spec.get("autoscaling"), "spec.autoscaling")
    prom = as_obj(auto.get("prometheus"), "spec.autoscaling.prometheus")
    pool = PoolAutoscaling(
        mode=read_str(auto, "mode", "spec.autoscaling", "builtin", AUTOSCALING_MODES),
        metrics_url=read_str(auto, "metricsUrl", "spec.autoscaling", ""),
        interval_seconds=read_int(auto, "intervalSeconds", "spec.autoscaling", 5, minimum=1),
        prometheus_url=read_str(prom, "url", "spec.autoscaling.prometheus", ""),
        prometheus_query=read_str(prom, "query", "spec.autoscaling.prometheus", ""),
    )
    roles = {
        role: _role_autoscaling(
            as_obj(spec.get(role), f"spec.{role}").get("autoscaling"), f"spec.{role}.autoscaling"
        )
        for role in ROLES
    }
    slo = parse_slo(
        spec,
        mode=pool.mode,
        enabled={r: a.enabled for r, a in roles.items()},
        min_replicas={r: a.min_replicas for r, a in roles.items()},
        role_defaults=ROLE_DEFAULTS,
    )
    return AutoscalingSpec(pool=pool, roles=roles, router_port=_router_port(spec), slo=slo)


def _role(raw: Any, role: str, autoscaling: RoleAutoscaling) -> RoleSpec:
    path = f"spec.{role}"
    obj = as_obj(raw, path)
    defaults = ROLE_DEFAULTS[role]
    tp = read_int(obj, "tensorParallelSize", path, defaults["tensorParallelSize"])
    if tp not in TENSOR_PARALLEL_SIZES:
        raise SpecError(f"{path}.tensorParallelSize", f"must be 1, 2, 4 or 8; got {tp}")
    gpu = as_obj(obj.get("gpu"), f"{path}.gpu")
    gpu_type = read_str(gpu, "type", f"{path}.gpu", defaults["gpu"], tuple(GPU_PRODUCTS))
    device = read_str(obj, "device", path, defaults["device"], DEVICES)
    if device == "cpu" and tp != 1:
        # The same wording as the CRD's CEL rule.
        raise SpecError(
            f"{path}.tensorParallelSize",
            f"must be 1 when device is cpu, got {tp}: tensor parallelism runs on GPUs",
        )
    if device == "cpu" and obj.get("gpu") is not None:
        raise SpecError(f"{path}.gpu", "must not be set when device is cpu: a CPU pod requests no GPU")
    node_selector = dict(as_obj(obj.get("nodeSelector"), f"{path}.nodeSelector"))
    for key, value in node_selector.items():
        if not isinstance(value, str):
            raise SpecError(f"{path}.nodeSelector.{key}", "must be a string")
    tolerations = obj.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise SpecError(f"{path}.tolerations", "must be a list of objects")
    return RoleSpec(
        role=role,
        replicas=read_int(obj, "replicas", path, defaults["replicas"], minimum=0),
        tensor_parallel_size=tp,
        max_batch_size=read_int(obj, "maxBatchSize", path, defaults["maxBatchSize"], minimum=1),
        gpu_type=gpu_type,
        device=device,
        node_selector=node_selector,
        tolerations=[dict(t) for t in tolerations],
        affinity=dict(as_obj(obj.get("affinity"), f"{path}.affinity")),
        resources=dict(as_obj(obj.get("resources"), f"{path}.resources")),
        autoscaling=autoscaling,
    )


def _api_key_secret(raw: Any) -> SecretKeyRef | None:
    auth = as_obj(raw, "spec.router.auth")
    return parse_secret_ref(auth.get("apiKeySecretRef"), "spec.router.auth.apiKeySecretRef", "api-key")


def parse_spec(raw: Any, pool_name: str, default_image: str) -> PoolSpec:
    """Parse ``spec`` of an InferencePool, applying the CRD's defaults.

    Raises SpecError naming the offending field; never returns a half-parsed spec.
    """
    spec = as_obj(raw, "spec")
    if "model" not in spec:
        raise SpecError("spec.model", "is required")
    model = as_obj(spec["model"], "spec.model")
    source = read_str(model, "source", "spec.model", "")
    if not source:
        raise SpecError("spec.model.source", "is required (hf://, pvc://, file:// or builtin://)")
    if not source.startswith(("hf://", "pvc://", "file://", "builtin://")):
        raise SpecError(
            "spec.model.source", f"must start with hf://, pvc://, file:// or builtin://; got {source!r}"
        )
    router = as_obj(spec.get("router"), "spec.router")
    service = as_obj(router.get("service"), "spec.router.service")
    kv = as_obj(spec.get("kvTransfer"), "spec.kvTransfer")
    auto = parse_autoscaling(spec)
    return PoolSpec(
        model=ModelSpec(
            name=read_str(model, "name", "spec.model", "") or pool_name,
            source=source,
            dtype=read_str(model, "dtype", "spec.model", "bfloat16", DTYPES),
            max_model_len=read_int(model, "maxModelLen", "spec.model", 8192, minimum=1),
            secret=parse_secret_ref(model.get("secretRef"), "spec.model.secretRef", DEFAULT_MODEL_SECRET_KEY),
            cache=parse_model_cache(model),
        ),
        image=read_str(spec, "image", "spec", "") or default_image,
        prefill=_role(spec.get("prefill"), "prefill", auto.roles["prefill"]),
        decode=_role(spec.get("decode"), "decode", auto.roles["decode"]),
        router=RouterSpec(
            replicas=read_int(router, "replicas", "spec.router", 1, minimum=0),
            service_type=read_str(service, "type", "spec.router.service", "ClusterIP", SERVICE_TYPES),
            port=auto.router_port,
            api_key_secret=_api_key_secret(router.get("auth")),
        ),
        kv_transfer=KvTransferSpec(
            backend=read_str(kv, "backend", "spec.kvTransfer", "auto", KV_BACKENDS),
            rdma_resource=read_str(kv, "rdmaResource", "spec.kvTransfer", ""),
            ucx=_ucx_env(kv.get("ucx"), "spec.kvTransfer.ucx"),
        ),
        autoscaling=auto.pool,
        pod=parse_pod_options(spec),
        prefix_caching=_prefix_caching(spec.get("prefixCaching")),
        network_policy=parse_network_policy(spec),
        tls=parse_tls(spec),
    )


def _prefix_caching(raw: Any) -> PrefixCachingSpec:
    obj = as_obj(raw, "spec.prefixCaching")
    return PrefixCachingSpec(
        enabled=read_bool(obj, "enabled", "spec.prefixCaching", True),
        routing_weight=read_num(obj, "routingWeight", "spec.prefixCaching", 1.0),
    )


def parse_pool(body: Mapping[str, Any], default_image: str) -> Pool:
    """Parse a whole InferencePool object (metadata + spec). Raises SpecError on bad input."""
    meta = as_obj(body.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "is required")
    if len(name) > MAX_POOL_NAME:
        raise SpecError("metadata.name", f"must be at most {MAX_POOL_NAME} characters, got {len(name)}")
    return Pool(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        spec=parse_spec(body.get("spec"), name, default_image),
    )
