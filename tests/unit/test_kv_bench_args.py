"""Pure helpers of `baton bench kv`: the --ucx-tls list and the reason a sweep setting failed."""

from __future__ import annotations

import pytest
from baton_dev.bench.kv_sweep import parse_ucx_settings, ucx_env, why_failed
from baton_worker.kv import nixl_agent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default", ["default"]),
        ("default;cuda_ipc,cuda_copy,tcp,self", ["default", "cuda_ipc,cuda_copy,tcp,self"]),
        (" tcp,self ; default ", ["tcp,self", "default"]),
        ("tcp,self;tcp,self", ["tcp,self"]),  # a repeat runs once
        (
            "default+UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto;default",
            ["default+UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto", "default"],
        ),
    ],
)
def test_ucx_settings(text: str, expected: list[str]) -> None:
    assert parse_ucx_settings(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "default;;tcp",
        "tcp, self",
        ";",
        "default+",
        "default+UCX_X",
        "default+UCX_X=",
        "default+PATH=/x",  # only UCX variables
        "+UCX_X=1",
        "UCX_TLS=tcp",
    ],
)
def test_bad_ucx_settings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--ucx-tls"):
        parse_ucx_settings(text)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (
            "a\n[1] UCX  ERROR   no active messages transport\nTraceback\n  x\nRuntimeError: gone\n",
            "RuntimeError: gone",
        ),
        (
            "[1] UCX  ERROR   no active messages transport\nplain last line\n",
            "[1] UCX  ERROR   no active messages transport",
        ),
        ("only this\n", "only this"),
        ("", "exit code 3"),
    ],
)
def test_why_a_setting_failed(stderr: str, expected: str) -> None:
    assert why_failed(stderr, 3) == expected


@pytest.mark.parametrize(
    ("setting", "env"),
    [
        ("default", {}),
        ("cuda_ipc,cuda_copy,tcp,self", {"UCX_TLS": "cuda_ipc,cuda_copy,tcp,self"}),
        ("default+UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto", {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "auto"}),
        (
            "tcp,self+UCX_RNDV_THRESH=8192+UCX_RNDV_SCHEME=get_zcopy",
            {"UCX_TLS": "tcp,self", "UCX_RNDV_THRESH": "8192", "UCX_RNDV_SCHEME": "get_zcopy"},
        ),
    ],
)
def test_ucx_env_of_a_setting(setting: str, env: dict[str, str]) -> None:
    assert ucx_env(setting) == env


def test_gpu_defaults_turn_cuda_ipc_get_on_and_never_override_the_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decode pulls with READ (a UCX get): on GPUs without NVLink UCX leaves cuda_ipc's get off and
    emulates it over tcp unless this is set. A value the user set wins. UCX logs to stderr."""
    env: dict[str, str] = {}
    monkeypatch.setattr(nixl_agent.os, "environ", env)  # this test's own environment, nothing leaks
    got = nixl_agent.apply_ucx_defaults(cuda=True)
    assert got == {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "on", "UCX_LOG_FILE": "stderr"} == env
    env.clear()
    env.update(UCX_CUDA_IPC_ENABLE_GET_ZCOPY="auto", UCX_LOG_FILE="/var/log/ucx.log")
    assert nixl_agent.apply_ucx_defaults(cuda=True) == {}
    assert env == {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "auto", "UCX_LOG_FILE": "/var/log/ucx.log"}
    env.clear()
    assert nixl_agent.apply_ucx_defaults(cuda=False) == {"UCX_LOG_FILE": "stderr"}  # host memory
    assert "UCX_CUDA_IPC_ENABLE_GET_ZCOPY" not in env
