"""`baton up` planning: which processes with which command lines (no process is started)."""

from __future__ import annotations

import pytest
from baton_worker.local_stack import LOWEST_PORT, build_parser, free_port, plan, port_candidates


def _plan(*argv: str):  # type: ignore[no-untyped-def]
    return plan(build_parser().parse_args(list(argv)))


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_default_is_one_prefill_one_decode_and_the_router() -> None:
    children = _plan()
    assert [c.name for c in children] == ["prefill-0", "decode-0", "router"]
    prefill, decode, router = children
    assert _flag(prefill.cmd, "--role") == "prefill" and _flag(decode.cmd, "--role") == "decode"
    assert _flag(prefill.cmd, "--model") == "builtin://tiny" and _flag(prefill.cmd, "--device") == "cpu"
    assert (
        _flag(router.cmd, "--prefill") == prefill.address and _flag(router.cmd, "--decode") == decode.address
    )
    assert _flag(router.cmd, "--port") == "8000" and router.address == "127.0.0.1:8000"
    ports = {c.address for c in children[:2]} | {_flag(c.cmd, "--metrics-port") for c in children[:2]}
    assert len(ports) == 4  # every worker gets its own gRPC and metrics port


def test_counts_device_and_options_reach_the_processes() -> None:
    children = _plan(
        "--model",
        "/m",
        "--prefill",
        "2",
        "--decode",
        "3",
        "--port",
        "0",
        "--device",
        "cuda",
        "--max-batch-size",
        "8",
        "--local-prefill-max-tokens",
        "0",
        "--worker-arg=--kv-blocks=64",
    )
    names = [c.name for c in children]
    assert names == ["prefill-0", "prefill-1", "decode-0", "decode-1", "decode-2", "router"]
    router = children[-1]
    assert (
        len(_flag(router.cmd, "--decode").split(",")) == 3
        and len(_flag(router.cmd, "--prefill").split(",")) == 2
    )
    assert _flag(router.cmd, "--port") != "0" and _flag(router.cmd, "--local-prefill-max-tokens") == "0"
    assert all(_flag(c.cmd, "--device") == "cuda" and "--kv-blocks=64" in c.cmd for c in children[:-1])
    assert all(("--max-batch-size" in c.cmd) == c.name.startswith("decode") for c in children[:-1])


def test_colocated_baseline_has_no_prefill_pool() -> None:
    children = _plan("--colocated", "2")
    assert [c.name for c in children] == ["decode-0", "decode-1", "router"]
    assert "--prefill" not in children[-1].cmd


@pytest.mark.parametrize("argv", [("--decode", "0"), ("--prefill", "-1")])
def test_bad_counts_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="--decode|--prefill"):
        _plan(*argv)


def test_router_reads_the_model_source_from_the_pool_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from baton_worker.router.main import model_source_from_config

    good = tmp_path / "config.json"
    good.write_text('{"model": {"name": "llama", "source": "hf://org/model"}}')
    assert model_source_from_config(str(good)) == "hf://org/model"
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    for path in (None, "", str(tmp_path / "missing.json"), str(bad)):
        assert model_source_from_config(path) is None
    (tmp_path / "list.json").write_text("[1]")
    assert model_source_from_config(str(tmp_path / "list.json")) is None


@pytest.mark.parametrize(
    ("model", "served"),
    [
        ("builtin://tiny", "tiny"),
        ("hf://meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("/models/llama-3-8b/", "llama-3-8b"),
        ("file:///ckpt/qwen2-7b", "qwen2-7b"),
        ("pvc://models/llama-3-8b", "llama-3-8b"),
    ],
)
def test_served_name_is_short_and_reaches_workers_and_router(model: str, served: str) -> None:
    for child in _plan("--model", model):
        assert _flag(child.cmd, "--served-model-name") == served
        assert _flag(child.cmd, "--model") == model
    assert {_flag(c.cmd, "--served-model-name") for c in _plan("--served-model-name", "chat")} == {"chat"}


@pytest.mark.parametrize(("ephemeral_low", "expect_empty"), [(32768, False), (10050, True), (1024, True)])
def test_ports_for_the_children_lie_below_the_ephemeral_range(ephemeral_low: int, expect_empty: bool) -> None:
    import random

    ports = port_candidates(ephemeral_low, random.Random(0))
    assert (ports == []) is expect_empty
    assert all(LOWEST_PORT <= p < ephemeral_low for p in ports)
    assert len(set(ports)) == len(ports)


def test_free_port_is_bindable_and_outside_the_ephemeral_range() -> None:
    import socket
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    port = free_port()
    if low - LOWEST_PORT >= 64:
        assert LOWEST_PORT <= port < low
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
