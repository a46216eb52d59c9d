"""What every baton pod shares (pure): security contexts, volumes, environment, pull secrets.

The builders (builders.py) assemble worker and router pod templates from these pieces. Empty
lists are left out, as the API server leaves them out of what it stores: a no-op resync compares
the desired template with the live one field by field.
"""

from __future__ import annotations

import copy
from typing import Any

from baton_worker.router.auth import API_KEY_ENV

from baton_operator.names import config_map_name, model_cache_claim_name, selector_labels
from baton_operator.spec import Pool
from baton_operator.spec_pod import MODEL_TOKEN_ENV
from baton_operator.tls import tls_volume

CONFIG_MOUNT = "/etc/baton"
CONFIG_FILE = "config.json"
SHM_SIZE = "16Gi"
# The images' non-root user (images/*.Containerfile).
RUN_AS = 65532
# Pods meet the Pod Security Standard "restricted": non-root, seccomp RuntimeDefault, no
# privilege escalation, every capability dropped, a read-only root filesystem (writable:
# /tmp, the model cache, /dev/shm). RDMA pools add IPC_LOCK (registering memory with a NIC pins
# pages), which "restricted" forbids: their namespace needs "baseline".
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container_security(add: tuple[str, ...] = ()) -> dict[str, Any]:
    """A container's securityContext: read-only root, no escalation, only the ``add`` capabilities."""
    caps: dict[str, Any] = {"drop": ["ALL"]}
    if add:
        caps["add"] = list(add)
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": caps}


def model_cache_volume(pool: Pool, shared: bool) -> dict[str, Any]:
    """The ``model-cache`` volume: the pool's claim when ``shared`` and ``spec.model.cache`` is on,
    else an emptyDir (filled again by every new pod)."""
    if shared and pool.spec.model.cache.enabled:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": model_cache_claim_name(pool)}}
    return {"name": "model-cache", "emptyDir": {}}


def volumes(
    pool: Pool, shm: bool = True, shared_cache: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts of the pool config and model (and /dev/shm for workers, when ``shm``),
    and the TLS Secret when ``spec.tls`` is on. ``shared_cache``: the model cache is the pool's
    claim when it has one (workers; the router only fetches a tokenizer and keeps its emptyDir)."""
    vols: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(pool)}},
        model_cache_volume(pool, shared_cache),
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "model-cache", "mountPath": "/var/cache/baton"},
        # HOME: caches of the Python libraries; the root filesystem is read-only.
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shm:
        vols.insert(0, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
        mounts.insert(0, {"name": "dshm", "mountPath": "/dev/shm"})
    tls = tls_volume(pool)
    if tls is not None:
        vols.append(tls[0])
        mounts.append(tls[1])
    source = pool.spec.model.source
    if source.startswith("pvc://"):
        claim = source[len("pvc://") :].split("/", 1)[0]
        vols.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": f"/models/{claim}", "readOnly": True})
    return vols, mounts


def _secret_env(name: str, secret: tuple[str, str]) -> dict[str, Any]:
    # From the Secret in the environment, never on the command line (visible to `ps`).
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret[0], "key": secret[1]}}}


def container_env(pool: Pool, role: str) -> list[dict[str, Any]]:
    """The ``env`` of a baton container of ``role`` (prefill, decode, router).

    The operator's own variables come first, then the credentials, then ``spec.env``: a user's
    value may refer to the operator's with $(POD_NAME). spec.env cannot repeat a name set here
    (spec_pod.RESERVED_ENV), and ``envFrom`` never overrides ``env`` in Kubernetes.
    """

    def field_ref(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    spec = pool.spec
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", **field_ref("metadata.name")},
        {"name": "POD_NAMESPACE", **field_ref("metadata.namespace")},
        {"name": "POD_IP", **field_ref("status.podIP")},
        {"name": "BATON_POOL", "value": pool.name},
        {"name": "BATON_ROLE", "value": role},
        {"name": "BATON_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
        # The workers' UCX settings (the router moves no KV). The worker applies its own UCX
        # defaults only to variables left unset, so these win.
        *({"name": k, "value": v} for k, v in (spec.kv_transfer.ucx if role != "router" else ())),
    ]
    if spec.model.secret is not None:
        # Workers download hf:// checkpoints; the router loads the same source's tokenizer.
        env.append(_secret_env(MODEL_TOKEN_ENV, spec.model.secret))
    if role == "router" and spec.router.api_key_secret is not None:
        env.append(_secret_env(API_KEY_ENV, spec.router.api_key_secret))
    env += [copy.deepcopy(var) for var in spec.pod.env]
    return env


def container_extras(pool: Pool) -> dict[str, Any]:
    """Fields every baton container gets from the spec beyond ``env``: ``envFrom``, when set."""
    env_from = [copy.deepcopy(source) for source in pool.spec.pod.env_from]
    return {"envFrom": env_from} if env_from else {}


def pod_extras(pool: Pool) -> dict[str, Any]:
    """Fields every baton pod spec gets from the spec: ``imagePullSecrets``, when set."""
    names = pool.spec.pod.image_pull_secrets
    return {"imagePullSecrets": [{"name": name} for name in names]} if names else {}


def probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    """An HTTP GET probe of ``path`` on the named ``port``."""
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def liveness(port: str) -> dict[str, Any]:
    """A TCP liveness probe of the named ``port``: the process answers (a long load is no restart)."""
    return {"tcpSocket": {"port": port}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6}


def spread(pool: Pool, role: str) -> list[dict[str, Any]]:
    """Spread a role's pods over nodes, when the scheduler can."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(pool, role)},
        }
    ]
