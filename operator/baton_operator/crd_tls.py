"""The CRD's ``spec.tls``: mutual TLS on the pool's gRPC (router <-> workers, worker <-> worker)."""

from __future__ import annotations

from baton_operator.crd_types import S, boolean, obj, string
from baton_operator.spec_tls import DEFAULT_LIFETIME, DURATION_PATTERN, MAX_SECRET_NAME, SECRET_NAME_PATTERN


def tls_schema() -> S:
    """``spec.tls``: off by default; the operator's own CA and certificate, or the user's Secret."""
    return obj(
        "Mutual TLS on the pool's gRPC: the router's calls to the workers and the decode workers' KV "
        "metadata and PullKv calls to the prefill workers are encrypted, and a worker serves only "
        "clients presenting a certificate of the pool's CA. Every pod mounts the Secret at "
        "/etc/baton-tls and reloads it when the kubelet updates it. Not covered: the NIXL/UCX bytes "
        "of the KV transfer (fenced by the NetworkPolicies, not encrypted), the router's HTTP API, "
        "the metrics ports. Turning it on or off rolls every pod of the pool, and old and new pods "
        "cannot talk to each other meanwhile.",
        {
            "enabled": boolean("Mutual TLS between the pool's pods.", default=False),
            "certificateLifetime": string(
                "Lifetime of the certificate the operator issues (a duration: 720h, 90m; at least 1h). "
                "It is renewed at 2/3 of it, in place, without restarting a pod; the pool's CA lives "
                "four times as long and is rotated the same way (old and new CA trusted side by side "
                "until every pod has the new certificate). Ignored with secretName.",
                default=DEFAULT_LIFETIME,
                pattern=DURATION_PATTERN,
            ),
            "secretName": string(
                "A Secret of the pool's namespace to use instead of the one the operator issues "
                "(<pool>-tls): keys ca.crt, tls.crt, tls.key (cert-manager writes these), a certificate "
                "for client and server auth whose first DNS name every pod of the pool shares, and a CA "
                "dedicated to the pool (a worker accepts any client certificate that CA signed). The "
                "operator neither reads nor writes it.",
                minLength=1,
                maxLength=MAX_SECRET_NAME,
                pattern=SECRET_NAME_PATTERN,
            ),
        },
        rules=[
            {
                "rule": "!has(self.certificateLifetime) || duration(self.certificateLifetime) >= duration('1h')",
                "message": "spec.tls.certificateLifetime must be at least 1h",
                "fieldPath": ".certificateLifetime",
                "reason": "FieldValueInvalid",
            }
        ],
    )
