"""The CRD's pod-level fields: spec.model.secretRef, spec.env, spec.envFrom, spec.imagePullSecrets.

Kubernetes' EnvVar, EnvFromSource and LocalObjectReference are spelled out (a structural schema
may not preserve unknown fields), with CEL rules for what the API server would only refuse when
the operator applies the pods (one value source) and for the names the operator sets itself.
"""

from __future__ import annotations

from baton_operator.crd_types import S, array, boolean, obj, quantity, string
from baton_operator.spec_pod import (
    DEFAULT_MODEL_SECRET_KEY,
    ENV_NAME_PATTERN,
    ENV_VALUE_SOURCES,
    MAX_ENV,
    MAX_ENV_FROM,
    MAX_ENV_NAME,
    MAX_PULL_SECRETS,
    MODEL_TOKEN_ENV,
    RESERVED_ENV,
    RESERVED_ENV_PREFIX,
    RESERVED_PREFIX_HINT,
)


def model_secret_ref_schema() -> S:
    """``spec.model.secretRef``: the Secret key exposed as HF_TOKEN."""
    return obj(
        f"A Secret in the pool's namespace holding a Hugging Face access token, set as {MODEL_TOKEN_ENV} in "
        "every prefill, decode and router container: the workers download hf:// checkpoints with it "
        "(gated and private repositories), the router the tokenizer. The token never appears on a "
        "command line or in the pool's ConfigMap. Pods read it when they start: after rotating it, "
        "restart them (kubectl rollout restart). A missing Secret or key keeps the pods from starting "
        "(CreateContainerConfigError, reported in the Degraded condition).",
        {
            "name": string("The Secret's name.", minLength=1),
            "key": string("The key in the Secret.", default=DEFAULT_MODEL_SECRET_KEY, minLength=1),
        },
        required=["name"],
    )


def _key_ref(kind: str) -> S:
    return obj(
        f"A key of a {kind} in the pool's namespace.",
        {
            "name": string(f"The {kind}'s name.", minLength=1),
            "key": string("The key.", minLength=1),
            "optional": boolean(f"Start the container even when the {kind} or key does not exist."),
        },
        required=["name", "key"],
    )


def _value_from() -> S:
    return obj(
        "Where the value comes from, instead of value: exactly one source.",
        {
            "configMapKeyRef": _key_ref("ConfigMap"),
            "secretKeyRef": _key_ref("Secret"),
            "fieldRef": obj(
                "A field of the pod: metadata.name, metadata.namespace, metadata.uid, "
                "metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, "
                "spec.serviceAccountName, status.hostIP, status.hostIPs, status.podIP or status.podIPs.",
                {
                    "apiVersion": string("Version of the schema fieldPath is written in (v1)."),
                    "fieldPath": string("Path of the field.", minLength=1),
                },
                required=["fieldPath"],
            ),
            "resourceFieldRef": obj(
                "A resource of a container: limits.cpu, limits.memory, limits.ephemeral-storage, "
                "requests.cpu, requests.memory or requests.ephemeral-storage.",
                {
                    "containerName": string("The container (worker or router); default: this one."),
                    "resource": string("The resource.", minLength=1),
                    "divisor": quantity("Unit the value is expressed in (default 1)."),
                },
                required=["resource"],
            ),
        },
        rules=[
            {
                "rule": f"[{', '.join(f'has(self.{s})' for s in ENV_VALUE_SOURCES)}].exists_one(x, x)",
                "message": f"spec.env valueFrom must set exactly one of {', '.join(ENV_VALUE_SOURCES)}",
                "reason": "FieldValueInvalid",
            }
        ],
    )


def _reserved_rules() -> list[S]:
    rules = []
    for names, hint in RESERVED_ENV:
        listed = ", ".join(f"'{n}'" for n in names)
        said = names[0] + " is" if len(names) == 1 else ", ".join(names) + " are"
        rules.append(
            {
                "rule": f"!(self.name in [{listed}])",
                "message": f"{said} reserved in spec.env: {hint}",
                "fieldPath": ".name",
                "reason": "FieldValueForbidden",
            }
        )
    rules.append(
        {
            "rule": f"!self.name.startsWith('{RESERVED_ENV_PREFIX}')",
            "message": f"{RESERVED_ENV_PREFIX} variables are reserved in spec.env: {RESERVED_PREFIX_HINT}",
            "fieldPath": ".name",
            "reason": "FieldValueForbidden",
        }
    )
    return rules


def env_schema() -> S:
    """``spec.env``: EnvVars for every baton container, the operator's own names refused."""
    reserved = [n for names, _ in RESERVED_ENV for n in names]
    var = obj(
        "An environment variable (Kubernetes EnvVar).",
        {
            "name": string(
                "The variable's name.", minLength=1, maxLength=MAX_ENV_NAME, pattern=ENV_NAME_PATTERN
            ),
            "value": string(
                "The value. $(NAME) expands a variable defined before it: the operator's own (POD_NAME, "
                "POD_NAMESPACE, POD_IP, BATON_POOL, BATON_ROLE) or an earlier entry."
            ),
            "valueFrom": _value_from(),
        },
        required=["name"],
        rules=[
            *_reserved_rules(),
            {
                "rule": "!has(self.valueFrom) || !has(self.value) || self.value == ''",
                "message": "spec.env: an entry sets value or valueFrom, not both",
                "fieldPath": ".valueFrom",
                "reason": "FieldValueInvalid",
            },
        ],
    )
    return {
        **array(
            "Environment variables of every prefill, decode and router container, after the operator's "
            "own; e.g. HF_HUB_OFFLINE=1, HTTPS_PROXY, NCCL_DEBUG. Changing them rolls the pods. Names the "
            f"operator sets are refused: {', '.join(reserved)} and {RESERVED_ENV_PREFIX}* (the token: "
            "spec.model.secretRef; API keys: spec.router.auth.apiKeySecretRef; UCX: spec.kvTransfer.ucx).",
            var,
            maxItems=MAX_ENV,
        ),
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    }


def _ref(kind: str) -> S:
    return obj(
        f"The {kind} (in the pool's namespace); each of its keys becomes a variable.",
        {
            "name": string(f"The {kind}'s name.", minLength=1),
            "optional": boolean(f"Start the container even when the {kind} does not exist."),
        },
        required=["name"],
    )


def env_from_schema() -> S:
    """``spec.envFrom``: whole ConfigMaps and Secrets as environment variables."""
    source = obj(
        "A ConfigMap or a Secret whose keys become environment variables (Kubernetes EnvFromSource).",
        {
            "prefix": string("Prepended to every key of the source, e.g. APP_."),
            "configMapRef": _ref("ConfigMap"),
            "secretRef": _ref("Secret"),
        },
        rules=[
            {
                "rule": "has(self.configMapRef) != has(self.secretRef)",
                "message": "spec.envFrom: each entry sets exactly one of configMapRef and secretRef",
                "reason": "FieldValueInvalid",
            }
        ],
    )
    return array(
        "ConfigMaps and Secrets whose keys become environment variables of every prefill, decode and router "
        "container. Kubernetes gives env precedence over envFrom, so a key named like one of the operator's "
        "variables is ignored. Pods read the values when they start: after changing them, restart the pods.",
        source,
        maxItems=MAX_ENV_FROM,
    )


def image_pull_secrets_schema() -> S:
    """``spec.imagePullSecrets``: registry credentials of every pod."""
    return {
        **array(
            "Secrets (type kubernetes.io/dockerconfigjson, in the pool's namespace) the kubelet uses to pull "
            "spec.image for every prefill, decode and router pod, e.g. for a private registry.",
            obj(
                "A Secret in the pool's namespace.",
                {"name": string("The Secret's name.", minLength=1)},
                required=["name"],
            ),
            maxItems=MAX_PULL_SECRETS,
        ),
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
    }
