"""spec.tls, pure: parsing, the Secret's checks, the issue/renew/rotate decisions on a fake clock
(a year of a pool's life: the rotations never hand out a certificate a pod may not trust yet, nor
drop a CA a pod's certificate still needs), the Secret manifest and what the pods get."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from baton_operator import tls
from baton_operator.api import ApiError
from baton_operator.builders import build_children
from baton_operator.spec import Pool, SpecError, parse_pool
from baton_operator.spec_tls import parse_duration
from baton_operator.tls_reconcile import ensure_tls_secret, next_data
from baton_worker.pki import issue_pool, new_leaf, read_cert

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def make_pool(tls_spec: dict[str, Any] | None = None, name: str = "p") -> Pool:
    spec: dict[str, Any] = {"model": {"source": "builtin://tiny"}}
    if tls_spec is not None:
        spec["tls"] = tls_spec
    return parse_pool({"metadata": {"name": name, "namespace": "ns", "uid": "uid-1"}, "spec": spec}, "img")


ON = make_pool({"enabled": True})


def test_tls_is_off_by_default_with_a_30_day_lifetime() -> None:
    t = make_pool().spec.tls
    assert (t.enabled, t.lifetime_s, t.secret_name, t.operator_issued) == (False, 30 * 86400, "", False)
    assert ON.spec.tls.operator_issued
    assert not make_pool({"enabled": True, "secretName": "mine"}).spec.tls.operator_issued


@pytest.mark.parametrize(
    ("text", "seconds"), [("720h", 2592000), ("1h30m", 5400), ("90m", 5400), ("1.5h", 5400), ("3600s", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"certificateLifetime": "30d"}, "spec.tls.certificateLifetime", "a duration such as 720h"),
        ({"certificateLifetime": "59m"}, "spec.tls.certificateLifetime", "at least 1h"),
        ({"secretName": "Not_A_Name"}, "spec.tls.secretName", "DNS subdomain"),
        ({"enabled": "yes"}, "spec.tls.enabled", "true or false"),
    ],
)
def test_bad_tls_specs_name_the_field(raw: dict, field: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        make_pool(raw)
    assert err.value.field == field


def secret_of(data: dict[str, bytes]) -> dict[str, Any]:
    return tls.build_tls_secret(ON, data)


def test_read_pki_names_what_is_wrong() -> None:
    name = tls.identity(ON)
    assert name == "p.ns.baton.internal"
    ca, leaf = issue_pool(name, 30 * DAY, 120 * DAY, T0)
    good = {"ca.crt": ca.cert, "ca.key": ca.key, "tls.crt": leaf.cert, "tls.key": leaf.key}
    pki = tls.read_pki(tls.secret_bytes(secret_of(good)), name)
    assert pki.problem == "" and pki.signer == pki.leaf_ca and pki.leaf is not None
    other_ca, other_leaf = issue_pool("q.ns.baton.internal", 30 * DAY, 120 * DAY, T0)
    for data, problem in (
        ({k: v for k, v in good.items() if k != "ca.key"}, "no ca.key in the Secret"),
        ({**good, "ca.key": other_ca.key}, "ca.key is the key of no CA in ca.crt"),
        ({**good, "ca.crt": other_ca.cert, "ca.key": other_ca.key}, "tls.crt was signed by no CA"),
        ({**good, "tls.key": other_leaf.key}, "tls.key is not the key of tls.crt"),
        ({**good, "tls.crt": b"junk"}, "not a PEM certificate"),
    ):
        assert problem in tls.read_pki(data, name).problem
    renamed = new_leaf("q.ns.baton.internal", ca, T0, T0 + DAY)
    assert (
        "does not name p.ns.baton.internal" in tls.read_pki({**good, "tls.crt": renamed.cert}, name).problem
    )
    assert tls.plan(tls.read_pki({**good, "tls.key": other_leaf.key}, name), 30 * DAY, T0).action == "issue"


def test_plan_of_a_fresh_secret() -> None:
    assert tls.plan(None, 30 * DAY, T0).action == "issue"
    pki = tls.read_pki(next_data(tls.TlsPlan("issue", ""), None, {}, ON, T0), tls.identity(ON))
    assert tls.plan(pki, 30 * DAY, T0).action == "keep"
    assert tls.plan(pki, 30 * DAY, T0 + 20 * DAY - HOUR).action == "keep"
    assert tls.plan(pki, 30 * DAY, T0 + 20 * DAY).action == "renew"  # 2/3 of 30 days
    assert tls.plan(pki, 3 * DAY, T0 + 2 * DAY).action == "renew"  # a shorter lifetime counts at once
    assert tls.plan(pki, 30 * DAY, T0 + 80 * DAY).action == "new-ca"  # 2/3 of the CA's 120 days
    assert tls.plan(pki, 30 * DAY, T0 + 121 * DAY).action == "issue"  # the CA expired


def test_a_certificate_from_an_old_ca_moves_early_when_it_is_about_to_expire() -> None:
    name = tls.identity(ON)
    old_ca, leaf = issue_pool(name, 30 * DAY, 120 * DAY, T0)
    moment = T0 + 30 * DAY - 2 * MINUTE  # the new CA was added just now, the certificate ends soon
    new_ca = issue_pool(name, 30 * DAY, 120 * DAY, moment)[0]
    data = {
        "ca.crt": old_ca.cert + new_ca.cert,
        "ca.key": new_ca.key,
        "tls.crt": leaf.cert,
        "tls.key": leaf.key,
    }
    pki = tls.read_pki(data, name)
    assert tls.plan(pki, 30 * DAY, moment - 4 * MINUTE).action == "keep"  # waiting for the pods
    assert tls.plan(pki, 30 * DAY, moment).action == "move"


_READ: dict[tuple[bytes, ...], tls.PoolPki] = {}


def read(data: dict[str, bytes]) -> tls.PoolPki:
    """read_pki, memoized (the simulation below reads the same Secret thousands of times)."""
    key = tuple(data[k] for k in sorted(data))
    if key not in _READ:
        _READ[key] = tls.read_pki(data, tls.identity(ON))
    return _READ[key]


def step(data: dict[str, bytes], now: dt.datetime) -> tuple[str, dict[str, bytes]]:
    pki = read(data) if data else None
    p = tls.plan(pki, 30 * DAY, now)
    return p.action, (data if p.action == "keep" else next_data(p, pki, data, ON, now))


def test_a_year_of_rotations_keeps_every_pod_able_to_talk() -> None:
    """Every 10 minutes for a year: the certificate is always valid and from a CA in ca.crt; it
    only ever comes from a CA that has been in ca.crt for the propagation time; a CA leaves ca.crt
    only after no certificate from it has been out for that long (a pod whose kubelet is that far
    behind still works); the certificate is replaced around 2/3 of its lifetime."""
    settle = tls.propagation(30 * DAY)
    assert settle == dt.timedelta(minutes=5)
    data: dict[str, bytes] = {}
    in_bundle_since: dict[bytes, dt.datetime] = {}
    leaf_from: dict[bytes, dt.datetime] = {}  # CA -> when the last certificate from it was replaced
    actions: list[str] = []
    now = T0
    while now < T0 + 365 * DAY:
        action, new = step(data, now)
        if action != "keep":
            actions.append(action)
        if data and new["tls.crt"] != data["tls.crt"]:
            old_ca = read(data).leaf_ca
            assert old_ca is not None
            leaf_from[old_ca.pem] = now
            age = now - read_cert(data["tls.crt"]).issued_at
            assert age <= 20 * DAY + 10 * dt.timedelta(minutes=1), age
        data = new
        pki = read(data)
        assert pki.problem == "" and pki.leaf is not None and pki.leaf_ca is not None
        assert pki.leaf.not_before <= now < pki.leaf.not_after
        for ca in pki.cas:
            in_bundle_since.setdefault(ca.pem, now)
        if action in ("move", "renew") and len(pki.cas) > 1:
            assert now - in_bundle_since[pki.leaf_ca.pem] >= settle
        for ca_pem in list(in_bundle_since):
            if ca_pem not in {c.pem for c in pki.cas}:
                assert now - leaf_from[ca_pem] >= settle
                del in_bundle_since[ca_pem]
        now += dt.timedelta(minutes=10)
    assert actions[0] == "issue" and "issue" not in actions[1:]
    assert {"renew", "new-ca", "move", "prune"} <= set(actions)
    cycle = actions[actions.index("new-ca") : actions.index("prune") + 1]
    assert cycle == ["new-ca", "move", "prune"]


def test_secret_manifest_and_ownership() -> None:
    ca, leaf = issue_pool(tls.identity(ON), 30 * DAY, 120 * DAY, T0)
    data = {"ca.crt": ca.cert, "ca.key": ca.key, "tls.crt": leaf.cert, "tls.key": leaf.key}
    s = tls.build_tls_secret(ON, data)
    assert (s["kind"], s["type"], s["metadata"]["name"]) == ("Secret", "kubernetes.io/tls", "p-tls")
    assert s["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "baton-operator"
    assert s["metadata"]["annotations"] == {"baton.dev/tls-identity": "p.ns.baton.internal"}
    (ref,) = s["metadata"]["ownerReferences"]
    assert (ref["uid"], ref["controller"]) == ("uid-1", True)
    assert tls.secret_bytes(s) == data
    assert tls.foreign_owner(None, ON) == "" and tls.foreign_owner(s, ON) == ""
    assert "not owned by this pool" in tls.foreign_owner({"metadata": {"name": "p-tls"}}, ON)


def pod_specs(pool: Pool) -> dict[str, dict[str, Any]]:
    return {
        c["metadata"]["name"]: c["spec"]["template"]["spec"]
        for c in build_children(pool)
        if c["kind"] in ("StatefulSet", "Deployment")
    }


def test_pods_mount_the_secret_and_get_the_flag() -> None:
    for name, pod in pod_specs(ON).items():
        (container,) = pod["containers"]
        assert container["command"][-2:] == ["--tls-dir", "/etc/baton-tls"], name
        assert {"name": "tls", "mountPath": "/etc/baton-tls", "readOnly": True} in container["volumeMounts"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"] == {
            "secretName": "p-tls",
            "items": [{"key": k, "path": k} for k in ("ca.crt", "tls.crt", "tls.key")],  # never ca.key
            "defaultMode": 0o440,
        }
    byo = pod_specs(make_pool({"enabled": True, "secretName": "from-cert-manager"}))
    for pod in byo.values():
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "from-cert-manager"


def test_pools_without_tls_keep_their_pod_templates() -> None:
    assert pod_specs(make_pool()) == pod_specs(make_pool({"enabled": False}))
    for pod in pod_specs(make_pool()).values():
        assert "--tls-dir" not in pod["containers"][0]["command"]
        assert all(v["name"] != "tls" for v in pod["volumes"])


class FakeApi:
    """The calls ensure_tls_secret makes: get, apply, post_event."""

    def __init__(self, live: dict[str, Any] | None = None, get_error: int = 0) -> None:
        self.live, self.get_error = live, get_error
        self.applied: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        assert (kind.kind, namespace, name) == ("Secret", "ns", "p-tls")
        if self.get_error:
            raise ApiError(self.get_error, "GET", "/api/v1/namespaces/ns/secrets/p-tls", "forbidden")
        return self.live

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        self.live = manifest
        return manifest

    def post_event(self, body: Any, event_type: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


def test_ensure_tls_secret_issues_then_leaves_it_alone() -> None:
    api = FakeApi()
    assert ensure_tls_secret(api, ON, {}, T0) == ("issue", "")  # type: ignore[arg-type]
    assert len(api.applied) == 1 and api.events == [("Certificate", "Secret p-tls: issue: no Secret yet")]
    assert ensure_tls_secret(api, ON, {}, T0 + HOUR) == ("", "")  # type: ignore[arg-type]
    assert len(api.applied) == 1  # a no-op reconcile writes nothing
    action, error = ensure_tls_secret(api, ON, {}, T0 + 21 * DAY)  # type: ignore[arg-type]
    assert (action, error, len(api.applied)) == ("renew", "", 2)
    before = tls.secret_bytes(api.applied[0])
    after = tls.secret_bytes(api.applied[1])
    assert after["ca.crt"] == before["ca.crt"] and after["tls.crt"] != before["tls.crt"]


def test_ensure_tls_secret_refuses_or_skips() -> None:
    foreign = FakeApi({"metadata": {"name": "p-tls"}, "data": {}})
    action, error = ensure_tls_secret(foreign, ON, {}, T0)  # type: ignore[arg-type]
    assert action == "" and "not owned by this pool" in error and foreign.applied == []
    denied = FakeApi(get_error=403)
    assert ensure_tls_secret(denied, ON, {}, T0) == ("", "reading Secret/p-tls: forbidden")  # type: ignore[arg-type]
    untouched = FakeApi(get_error=500)  # would raise if called
    byo = make_pool({"enabled": True, "secretName": "mine"})
    assert ensure_tls_secret(untouched, byo, {}, T0) == ("", "")  # type: ignore[arg-type]
    assert ensure_tls_secret(untouched, make_pool(), {}, T0) == ("", "")  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        ensure_tls_secret(untouched, ON, {}, T0)  # type: ignore[arg-type]  # transient: retried
