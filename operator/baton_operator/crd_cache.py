"""The CRD's ``spec.model.cache`` schema: the model cache claim the worker pods share."""

from __future__ import annotations

from baton_operator.crd_types import S, boolean, obj, quantity, string
from baton_operator.spec_cache import ACCESS_MODES, SIZE_PATTERN, STORAGE_CLASS_PATTERN


def model_cache_schema() -> S:
    """``spec.model.cache``: a PersistentVolumeClaim at /var/cache/baton of every worker pod."""
    size = quantity(
        "Size of the claim, e.g. 100Gi: room for the checkpoint (about 2 bytes per parameter in "
        "bfloat16: 16 GB for an 8B model) and its tokenizer files. Required when enabled. A claim "
        "grows only where its StorageClass allows volume expansion, and never shrinks."
    )
    size["pattern"] = SIZE_PATTERN
    size["maxLength"] = 64  # bounds the CEL rule's estimated cost
    # x-kubernetes-int-or-string: an integer is bytes, a string a quantity; zero holds no model.
    size["x-kubernetes-validations"] = [
        {
            "rule": "type(self) == int ? self > 0 : "
            "!self.matches('^[0.]+([KMGTPE]i|[kMGTPE]|[eE][+]?[0-9]+)?$')",
            "message": "spec.model.cache.size must be greater than zero",
            "reason": "FieldValueInvalid",
        }
    ]
    return obj(
        "A model cache that survives pod restarts: a PersistentVolumeClaim <pool>-model-cache, owned "
        "by the pool, that every prefill and decode pod mounts at /var/cache/baton instead of an "
        "emptyDir. The first worker downloads (hf://) or builds (builtin://) the model into it while "
        "the others wait on a lock, and later pods and restarts load it from there. The router keeps "
        "its own emptyDir (it fetches only tokenizer files). The condition ModelCacheReady says whether "
        "the claim is Bound; worker pods cannot be scheduled until it is. The cache is filled once: "
        "to fetch a newer revision of an hf:// model, turn the cache off (the operator deletes the "
        "claim) and on again. Changing storageClassName or accessMode of an existing claim is refused "
        "by Kubernetes; turn the cache off and on to replace it.",
        {
            "enabled": boolean(
                "Keep the model cache on the claim; off, each worker pod fills its own emptyDir.",
                default=False,
            ),
            "size": size,
            "storageClassName": string(
                "StorageClass of the claim; unset: the cluster's default class; empty string: no class "
                "(bind a pre-made PersistentVolume). With accessMode ReadWriteMany the class must provide "
                "shared file storage (NFS, CephFS, EFS, Filestore, Azure Files...).",
                pattern=STORAGE_CLASS_PATTERN,
                maxLength=253,
            ),
            "accessMode": string(
                "ReadWriteMany (default): every worker pod on any node mounts the claim. ReadWriteOnce "
                "only works when all prefill and decode pods run on one node (a block volume attaches "
                "to a single node; pods elsewhere would wait forever for it).",
                default="ReadWriteMany",
                enum=list(ACCESS_MODES),
            ),
        },
        rules=[
            {
                "rule": "!has(self.enabled) || !self.enabled || has(self.size)",
                "message": "spec.model.cache.size is required when spec.model.cache.enabled is true",
                "fieldPath": ".size",
                "reason": "FieldValueRequired",
            }
        ],
    )
