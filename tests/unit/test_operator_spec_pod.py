"""spec.model.secretRef, spec.env, spec.envFrom, spec.imagePullSecrets: parsed, normalized, refused by field."""

from __future__ import annotations

import pytest
from baton_operator.spec import SpecError, parse_pool
from baton_operator.spec_pod import (
    PodOptions,
    SecretKeyRef,
    parse_env,
    parse_env_from,
    parse_pull_secrets,
    parse_secret_ref,
    reserved_env_hint,
)

SECRET = {"secretKeyRef": {"name": "s", "key": "k"}}


def pool_spec(**spec):
    body = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"model": {"source": "hf://org/m"}, **spec}}
    return parse_pool(body, "img").spec


@pytest.mark.parametrize(
    ("raw", "default_key", "want"),
    [
        (None, "HF_TOKEN", None),
        ({"name": "hf"}, "HF_TOKEN", ("hf", "HF_TOKEN")),
        ({"name": "hf", "key": "token"}, "HF_TOKEN", ("hf", "token")),
        ({"name": "hf", "key": ""}, "api-key", ("hf", "api-key")),  # "" is the default, as in the CRD
    ],
)
def test_secret_ref_defaults_its_key(raw, default_key, want):
    ref = parse_secret_ref(raw, "spec.model.secretRef", default_key)
    assert ref == want
    if want is not None:
        assert isinstance(ref, SecretKeyRef) and (ref.name, ref.key) == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (None, ()),
        ([], ()),
        ([{"name": "A", "value": "1"}], ({"name": "A", "value": "1"},)),
        # The API server stores an empty value as no value: the desired template must match it.
        ([{"name": "EMPTY", "value": ""}], ({"name": "EMPTY"},)),
        ([{"name": "S", "valueFrom": SECRET}], ({"name": "S", "valueFrom": SECRET},)),
        ([{"name": "S", "value": "", "valueFrom": SECRET}], ({"name": "S", "valueFrom": SECRET},)),
        (
            [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            ({"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},),
        ),
        (
            [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
            ({"name": "B", "value": "2"}, {"name": "A", "value": "1"}),
        ),
        ([{"name": "my.setting-x", "value": "1"}], ({"name": "my.setting-x", "value": "1"},)),
    ],
)
def test_env_is_kept_in_order_and_normalized(raw, want):
    assert parse_env(raw) == want


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"A": "1"}, "spec.env", "must be a list"),
        (["A=1"], "spec.env[0]", "must be an object"),
        ([{"value": "1"}], "spec.env[0].name", "environment variable name"),
        ([{"name": "1ABC"}], "spec.env[0].name", "environment variable name"),
        ([{"name": "A B"}], "spec.env[0].name", "environment variable name"),
        ([{"name": "A", "value": 1}], "spec.env[0].value", "must be a string"),
        ([{"name": "HF_TOKEN", "value": "x"}], "spec.env[0].name", "spec.model.secretRef"),
        ([{"name": "BATON_API_KEY", "value": "x"}], "spec.env[0].name", "spec.router.auth.apiKeySecretRef"),
        ([{"name": "A"}, {"name": "POD_IP", "value": "x"}], "spec.env[1].name", "set by the operator"),
        ([{"name": "BATON_ROLE", "value": "x"}], "spec.env[0].name", "set by the operator"),
        ([{"name": "UCX_TLS", "value": "tcp"}], "spec.env[0].name", "spec.kvTransfer.ucx"),
        ([{"name": "A"}, {"name": "A"}], "spec.env[1].name", "already set by spec.env[0]"),
        ([{"name": "A", "value": "1", "valueFrom": SECRET}], "spec.env[0].valueFrom", "not be set together"),
        ([{"name": "A", "valueFrom": {}}], "spec.env[0].valueFrom", "exactly one of"),
        (
            [{"name": "A", "valueFrom": {**SECRET, "fieldRef": {"fieldPath": "x"}}}],
            "spec.env[0].valueFrom",
            "exactly one",
        ),
        (
            [{"name": "A", "valueFrom": {"secretKeyRef": "s/k"}}],
            "spec.env[0].valueFrom.secretKeyRef",
            "object",
        ),
        ([{"name": f"V{i}"} for i in range(129)], "spec.env", "at most 128"),
    ],
)
def test_bad_env_names_the_entry(raw, field, words):
    with pytest.raises(SpecError) as err:
        parse_env(raw)
    assert err.value.field == field
    assert words in err.value.message


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("HF_TOKEN", "spec.model.secretRef"),
        ("BATON_API_KEY", "spec.router.auth.apiKeySecretRef"),
        ("POD_NAMESPACE", "set by the operator"),
        ("BATON_POOL", "set by the operator"),
        ("UCX_NET_DEVICES", "spec.kvTransfer.ucx"),
        ("HF_HOME", None),
        ("HF_TOKEN_PATH", None),
        ("BATON_KV_READ_LANES", None),
        ("ucx_tls", None),
    ],
)
def test_reserved_env_hint(name, hint):
    got = reserved_env_hint(name)
    assert (got is None) if hint is None else (hint in got)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (None, ()),
        ([{"configMapRef": {"name": "c"}}], ({"configMapRef": {"name": "c"}},)),
        ([{"secretRef": {"name": "s", "optional": True}}], ({"secretRef": {"name": "s", "optional": True}},)),
        ([{"prefix": "APP_", "secretRef": {"name": "s"}}], ({"prefix": "APP_", "secretRef": {"name": "s"}},)),
        ([{"prefix": "", "configMapRef": {"name": "c"}}], ({"configMapRef": {"name": "c"}},)),
    ],
)
def test_env_from(raw, want):
    assert parse_env_from(raw) == want


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("c", "spec.envFrom"),
        ([{}], "spec.envFrom[0]"),
        ([{"configMapRef": {"name": "c"}, "secretRef": {"name": "s"}}], "spec.envFrom[0]"),
        ([{"secretRef": {}}], "spec.envFrom[0].secretRef.name"),
        ([{"secretRef": {"name": "s", "optional": "yes"}}], "spec.envFrom[0].secretRef.optional"),
        ([{"prefix": 1, "configMapRef": {"name": "c"}}], "spec.envFrom[0].prefix"),
        ([{"configMapRef": {"name": "c"}}] * 33, "spec.envFrom"),
    ],
)
def test_bad_env_from_names_the_entry(raw, field):
    with pytest.raises(SpecError) as err:
        parse_env_from(raw)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("raw", "want", "field"),
    [
        (None, (), None),
        ([{"name": "regcred"}, {"name": "mirror"}], ("regcred", "mirror"), None),
        ([{"name": ""}], None, "spec.imagePullSecrets[0].name"),
        ([{}], None, "spec.imagePullSecrets[0].name"),
        (["regcred"], None, "spec.imagePullSecrets[0]"),
        ([{"name": "a"}, {"name": "a"}], None, "spec.imagePullSecrets[1].name"),
    ],
)
def test_pull_secrets(raw, want, field):
    if field is None:
        assert parse_pull_secrets(raw) == want
        return
    with pytest.raises(SpecError) as err:
        parse_pull_secrets(raw)
    assert err.value.field == field


def test_the_pool_spec_carries_them():
    spec = pool_spec(
        model={"source": "hf://org/m", "secretRef": {"name": "hf"}},
        env=[{"name": "HF_HUB_OFFLINE", "value": "1"}],
        envFrom=[{"configMapRef": {"name": "proxy"}}],
        imagePullSecrets=[{"name": "regcred"}],
    )
    assert spec.model.secret == ("hf", "HF_TOKEN")
    assert spec.pod == PodOptions(
        env=({"name": "HF_HUB_OFFLINE", "value": "1"},),
        env_from=({"configMapRef": {"name": "proxy"}},),
        image_pull_secrets=("regcred",),
    )
    plain = pool_spec()
    assert plain.model.secret is None and plain.pod == PodOptions()


def test_parsed_env_is_a_copy_of_the_object():
    raw = [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    (var,) = parse_env(raw)
    raw[0]["valueFrom"]["secretKeyRef"]["name"] = "changed"
    assert var["valueFrom"]["secretKeyRef"]["name"] == "s"
