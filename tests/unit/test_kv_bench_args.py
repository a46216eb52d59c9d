"""Pure helpers of `baton bench kv`: the --ucx-tls list and the reason a sweep setting failed."""

from __future__ import annotations

import pytest
from baton_worker.bench.kv_sweep import parse_ucx_settings, why_failed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default", ["default"]),
        ("default;cuda_ipc,cuda_copy,tcp,self", ["default", "cuda_ipc,cuda_copy,tcp,self"]),
        (" tcp,self ; default ", ["tcp,self", "default"]),
        ("tcp,self;tcp,self", ["tcp,self"]),  # a repeat runs once
    ],
)
def test_ucx_settings(text: str, expected: list[str]) -> None:
    assert parse_ucx_settings(text) == expected


@pytest.mark.parametrize("text", ["", " ", "default;;tcp", "tcp, self", ";"])
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
