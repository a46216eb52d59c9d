"""spec.tls on the sandbox, with the operator under the chart's RBAC: it issues the pool's Secret
(owned by the pool), every pod template mounts it and passes --tls-dir, a certificate near its
expiry is renewed in place from the pool's CA (no rollout), a pool naming its own Secret gets no
operator-issued one, and the CRD refuses a lifetime under an hour.

kwok runs no containers: what the pods do with the files is tested with real processes
(tests/worker/test_tls_workers.py, tests/router/test_router_tls.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from baton_operator import tls
from baton_worker.pki import Pem, new_leaf, read_cert, signed_by
from operator_helpers import READY_TIMEOUT_S, apply, get, is_ready, tiny_pool
from polling import wait_until

pytestmark = pytest.mark.sandbox

WORKLOADS = (("statefulset", "p-prefill"), ("deployment", "p-decode"), ("deployment", "p-router"))


def _secret_data(sandbox, namespace: str, name: str) -> dict[str, bytes]:
    return tls.secret_bytes(get(sandbox, "secret", namespace, name) or {})


def _tls_volume(pod_spec: dict) -> dict:
    return next(v for v in pod_spec["volumes"] if v["name"] == "tls")


def test_operator_issues_mounts_and_renews_the_tls_secret(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("p", namespace, tls={"enabled": True}))
    wait_until(
        lambda: is_ready(sandbox, namespace, "p"), timeout=READY_TIMEOUT_S, what="pool p Ready", interval=0.25
    )
    secret = get(sandbox, "secret", namespace, "p-tls")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    uid = get(sandbox, "inferencepool", namespace, "p")["metadata"]["uid"]
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferencePool", uid, True)
    name = f"p.{namespace}.baton.internal"
    data = tls.secret_bytes(secret)
    pki = tls.read_pki(data, name)
    assert pki.problem == "" and pki.leaf is not None and pki.signer is not None
    for cert, days in ((pki.leaf, 30), (pki.signer, 120)):  # each starts 5 minutes before it was issued
        assert cert.not_after - cert.issued_at == dt.timedelta(days=days)

    generations = {}
    for kind, obj in WORKLOADS:
        live = get(sandbox, kind, namespace, obj)
        generations[obj] = live["metadata"]["generation"]
        pod = live["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"][-2:] == ["--tls-dir", "/etc/baton-tls"], obj
        assert {"name": "tls", "mountPath": "/etc/baton-tls", "readOnly": True} in container["volumeMounts"]
        assert _tls_volume(pod)["secret"] == {
            "secretName": "p-tls",
            "items": [{"key": k, "path": k} for k in ("ca.crt", "tls.crt", "tls.key")],
            "defaultMode": 0o440,
        }

    # The certificate is made old: issued 25 of its 30 days ago, by the pool's own CA.
    now = dt.datetime.now(dt.UTC)
    aged = new_leaf(
        name, Pem(pki.signer.pem, data["ca.key"]), now - dt.timedelta(days=25), now + dt.timedelta(days=5)
    )
    patch = {
        "data": {k: base64.b64encode(v).decode() for k, v in (("tls.crt", aged.cert), ("tls.key", aged.key))}
    }
    sandbox.kubectl("patch", "secret", "p-tls", "-n", namespace, "--type=merge", "-p", json.dumps(patch))

    def renewed_data() -> dict[str, bytes] | None:
        current = _secret_data(sandbox, namespace, "p-tls")
        return current if current["tls.crt"] not in (aged.cert, data["tls.crt"]) else None

    renewed = wait_until(renewed_data, timeout=60, what="the aged certificate renewed", interval=0.25)
    leaf = read_cert(renewed["tls.crt"])
    assert signed_by(leaf.pem, pki.signer.pem) and renewed["ca.crt"] == data["ca.crt"]  # the same CA
    assert abs(leaf.not_after - (now + dt.timedelta(days=30))) < dt.timedelta(minutes=5)
    assert tls.read_pki(renewed, name).problem == ""
    events = sandbox.kubectl_json("get", "events", "-n", namespace, "--field-selector", "reason=Certificate")
    messages = [e["message"] for e in events["items"]]
    assert any("issue" in m for m in messages) and any("renew" in m for m in messages), messages
    # Renewed in place: no pod template changed, so no rollout.
    for kind, obj in WORKLOADS:
        assert get(sandbox, kind, namespace, obj)["metadata"]["generation"] == generations[obj], obj


def test_operator_leaves_a_pool_s_own_secret_alone(sandbox, operator_process, namespace):
    apply(sandbox, tiny_pool("b", namespace, tls={"enabled": True, "secretName": "from-cert-manager"}))
    deploy = wait_until(
        lambda: get(sandbox, "deployment", namespace, "b-router"),
        timeout=60,
        what="router Deployment",
        interval=0.25,
    )
    assert _tls_volume(deploy["spec"]["template"]["spec"])["secret"]["secretName"] == "from-cert-manager"
    assert get(sandbox, "secret", namespace, "b-tls") is None
    assert get(sandbox, "secret", namespace, "from-cert-manager") is None  # not created either

    short = tiny_pool("c", namespace, tls={"enabled": True, "certificateLifetime": "30m"})
    proc = apply(sandbox, short, check=False)
    assert proc.returncode != 0 and "certificateLifetime must be at least 1h" in proc.stderr
