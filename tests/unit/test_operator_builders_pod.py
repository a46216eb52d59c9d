"""Model credentials, env, envFrom and pull secrets on every baton pod; pure builders, no cluster."""

from __future__ import annotations

import pytest
from baton_operator import builders
from baton_operator.spec import parse_pool
from baton_operator.spec_pod import reserved_env_hint

BUILDS = {
    "prefill": builders.build_prefill_statefulset,
    "decode": builders.build_decode_deployment,
    "router": builders.build_router_deployment,
}
USER_ENV = [
    {"name": "HF_HUB_OFFLINE", "value": "1"},
    {"name": "MY_POD", "value": "$(POD_NAME)-x"},
    {"name": "PROXY", "valueFrom": {"configMapKeyRef": {"name": "net", "key": "proxy"}}},
]


def make_pool(**spec):
    body = {
        "metadata": {"name": "demo", "namespace": "ml", "uid": "u"},
        "spec": {"model": {"name": "m", "source": "hf://org/m"}, **spec},
    }
    return parse_pool(body, "example.org/baton-worker:test")


def pod_spec(pool, role):
    return BUILDS[role](pool)["spec"]["template"]["spec"]


def container(pool, role):
    (c,) = pod_spec(pool, role)["containers"]
    return c


def env_of(pool, role):
    return {e["name"]: e for e in container(pool, role)["env"]}


@pytest.mark.parametrize("role", list(BUILDS))
def test_model_secret_is_hf_token_in_every_container(role):
    pool = make_pool(model={"source": "hf://org/gated", "secretRef": {"name": "hf-creds"}})
    assert env_of(pool, role)["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-creds", "key": "HF_TOKEN"}},
    }
    assert not any("hf-creds" in arg for arg in container(pool, role)["command"])
    custom = make_pool(model={"source": "hf://org/gated", "secretRef": {"name": "hf-creds", "key": "token"}})
    assert env_of(custom, role)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert "HF_TOKEN" not in env_of(make_pool(), role)


def test_the_token_stays_out_of_the_config_map():
    pool = make_pool(model={"source": "hf://org/gated", "secretRef": {"name": "hf-creds"}})
    assert "hf-creds" not in str(builders.build_config_map(pool))


@pytest.mark.parametrize("role", list(BUILDS))
def test_user_env_follows_the_operators_in_order(role):
    pool = make_pool(env=USER_ENV)
    names = [e["name"] for e in container(pool, role)["env"]]
    # After the operator's variables, so $(POD_NAME) in a user value expands.
    assert names[-3:] == ["HF_HUB_OFFLINE", "MY_POD", "PROXY"]
    assert names.index("POD_NAME") < names.index("MY_POD")
    assert container(pool, role)["env"][-3:] == USER_ENV


@pytest.mark.parametrize("role", list(BUILDS))
def test_env_from_and_pull_secrets_on_every_pod(role):
    env_from = [{"prefix": "APP_", "configMapRef": {"name": "settings"}}, {"secretRef": {"name": "creds"}}]
    pool = make_pool(envFrom=env_from, imagePullSecrets=[{"name": "regcred"}, {"name": "mirror"}])
    assert container(pool, role)["envFrom"] == env_from
    assert pod_spec(pool, role)["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


@pytest.mark.parametrize("role", list(BUILDS))
def test_unset_lists_are_left_out_as_the_api_server_leaves_them(role):
    pool = make_pool()
    assert "envFrom" not in container(pool, role)
    assert "imagePullSecrets" not in pod_spec(pool, role)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"model": {"source": "hf://o/m", "secretRef": {"name": "hf"}}},
        {"router": {"auth": {"apiKeySecretRef": {"name": "keys"}}}},
        {"kvTransfer": {"ucx": {"UCX_TLS": "tcp", "UCX_NET_DEVICES": "mlx5_0:1"}}},
    ],
)
def test_every_variable_the_operator_sets_is_reserved(spec):
    # spec.env can never silently override (or be overridden by) one of the operator's variables.
    pool = make_pool(**spec)
    for role in BUILDS:
        for var in container(pool, role)["env"]:
            assert reserved_env_hint(var["name"]), (role, var["name"])


def test_user_env_never_shadows_the_routers_api_key():
    pool = make_pool(router={"auth": {"apiKeySecretRef": {"name": "keys"}}}, env=USER_ENV)
    names = [e["name"] for e in container(pool, "router")["env"]]
    assert len(names) == len(set(names)) and "BATON_API_KEY" in names


def test_changing_env_changes_the_pod_templates_only():
    a, b = make_pool(), make_pool(env=[{"name": "NCCL_DEBUG", "value": "INFO"}])
    assert builders.build_config_map(a) == builders.build_config_map(b)
    for build in BUILDS.values():
        assert build(a)["spec"]["template"] != build(b)["spec"]["template"]


def test_builders_do_not_share_the_specs_dicts():
    pool = make_pool(env=USER_ENV, envFrom=[{"secretRef": {"name": "creds"}}])
    c = container(pool, "decode")
    c["env"][-1]["valueFrom"]["configMapKeyRef"]["name"] = "mutated"
    c["envFrom"][0]["secretRef"]["name"] = "mutated"
    again = container(pool, "decode")
    assert again["env"][-1]["valueFrom"]["configMapKeyRef"]["name"] == "net"
    assert again["envFrom"][0]["secretRef"]["name"] == "creds"
