"""Worker memory requests from the model's size (pure), and the user's resources winning."""

from __future__ import annotations

import pytest
from baton_operator import builders
from baton_operator.memory import (
    BUILTIN_MODELS,
    GIB,
    MIB,
    WORKER_KV_TOKENS,
    ModelSize,
    model_size,
    quantity,
    worker_memory_bytes,
    worker_memory_request,
)
from baton_operator.spec import parse_pool

TINY = BUILTIN_MODELS["tiny"]


def make_pool(model, **spec):
    body = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"model": model, **spec}}
    return parse_pool(body, "img")


@pytest.mark.parametrize(
    ("n_bytes", "want"),
    [
        (1, "64Mi"),
        (64 * MIB, "64Mi"),
        (64 * MIB + 1, "128Mi"),
        (GIB, "1Gi"),  # what the API server writes for 1024Mi
        (GIB + 1, "1088Mi"),
        (1100 * MIB, "1152Mi"),
        (160 * GIB, "160Gi"),
        (1024 * GIB, "1Ti"),
        (1536 * GIB, "1536Gi"),
    ],
)
def test_quantity_is_rounded_up_and_canonical(n_bytes, want):
    assert quantity(n_bytes) == want


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ("builtin://tiny", TINY),
        ("builtin://tiny-mistral", BUILTIN_MODELS["tiny-mistral"]),
        ("builtin://nonesuch", None),
        ("hf://meta-llama/Llama-3.1-8B-Instruct", None),
        ("pvc://models/llama", None),
        ("file:///models/llama", None),
    ],
)
def test_model_size_is_known_for_builtins_only(source, want):
    assert model_size(source) == want


@pytest.mark.parametrize(
    ("size", "dtype", "device", "tp", "want"),
    [
        # CPU: weights + the KV pool (8192 tokens) + 1 GiB of runtime.
        (TINY, "float32", "cpu", 1, TINY.parameters * 4 + WORKER_KV_TOKENS * 2 * 4 * 8 * 32 * 4 + GIB),
        (TINY, "bfloat16", "cpu", 1, TINY.parameters * 2 + WORKER_KV_TOKENS * 2 * 4 * 8 * 32 * 2 + GIB),
        # GPUs: every rank reads the whole checkpoint on the host and holds a 4 GiB runtime; KV is on the GPU.
        (TINY, "bfloat16", "cuda", 1, TINY.parameters * 2 + 4 * GIB),
        (TINY, "bfloat16", "cuda", 4, 4 * (TINY.parameters * 2 + 4 * GIB)),
        (ModelSize(8_030_261_248, 32, 8, 128), "bfloat16", "cuda", 2, 2 * (16_060_522_496 + 4 * GIB)),
        # Unknown checkpoints: the documented defaults.
        (None, "bfloat16", "cuda", 1, 20 * GIB),
        (None, "float32", "cuda", 8, 160 * GIB),
        (None, "bfloat16", "cpu", 1, 4 * GIB),
    ],
)
def test_worker_memory_bytes(size, dtype, device, tp, want):
    assert worker_memory_bytes(size, dtype, device, tp) == want


@pytest.mark.parametrize(
    ("model", "roles", "want"),
    [
        # examples/inferencepool-cpu.yaml
        (
            {"source": "builtin://tiny", "dtype": "float32"},
            {"prefill": {"device": "cpu"}, "decode": {"device": "cpu"}},
            ("1152Mi", "1152Mi"),
        ),
        # examples/inferencepool.yaml's shape: an 8B checkpoint the operator cannot size.
        (
            {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            {"prefill": {"tensorParallelSize": 8}, "decode": {"tensorParallelSize": 1}},
            ("160Gi", "20Gi"),
        ),
        ({"source": "builtin://tiny"}, {}, ("4160Mi", "4160Mi")),
        (
            {"source": "builtin://tiny"},
            {
                "prefill": {"resources": {"requests": {"memory": "2Gi"}}},
                "decode": {"resources": {"limits": {"memory": "3Gi"}}},
            },
            (None, None),
        ),
        (
            {"source": "pvc://weights/m"},
            {"decode": {"resources": {"requests": {"cpu": "4"}}}},
            ("20Gi", "20Gi"),
        ),
    ],
)
def test_worker_memory_request(model, roles, want):
    pool = make_pool(model, **roles)
    got = tuple(worker_memory_request(pool, pool.spec.role(r)) for r in ("prefill", "decode"))
    assert got == want


def resources(pool, role):
    build = builders.build_prefill_statefulset if role == "prefill" else builders.build_decode_deployment
    return build(pool)["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_the_request_has_no_limit_and_the_users_values_win():
    pool = make_pool(
        {"source": "builtin://tiny"},
        prefill={"resources": {"requests": {"memory": "2Gi", "cpu": "4"}}},
        decode={"resources": {"limits": {"memory": "3Gi"}}},
    )
    assert resources(pool, "prefill") == {
        "requests": {"memory": "2Gi", "cpu": "4", "nvidia.com/gpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    # A limit alone: no computed request above it (Kubernetes makes the limit the pod's request).
    assert resources(pool, "decode") == {
        "requests": {"nvidia.com/gpu": "1"},
        "limits": {"memory": "3Gi", "nvidia.com/gpu": "1"},
    }
    plain = make_pool({"source": "builtin://tiny"})
    assert resources(plain, "decode")["requests"]["memory"] == "4160Mi"
    assert "memory" not in resources(plain, "decode")["limits"]


def test_the_router_keeps_its_fixed_resources():
    pool = make_pool({"source": "hf://org/m"})
    router = builders.build_router_deployment(pool)["spec"]["template"]["spec"]["containers"][0]
    assert router["resources"] == builders.ROUTER_RESOURCES


def test_kv_tokens_match_the_workers_defaults_on_the_operators_command_line():
    from baton_worker.server.main import parse_options

    pool = make_pool({"source": "builtin://tiny"})
    opts = parse_options(builders.worker_command(pool, pool.spec.decode)[2:])
    assert opts.kv_blocks * opts.block_size == WORKER_KV_TOKENS


def test_builtin_sizes_match_the_workers_builtin_models():
    from baton_worker.engine.builtin import BUILTINS, build_tokenizer

    assert set(BUILTIN_MODELS) == set(BUILTINS)
    for name, spec in BUILTINS.items():
        vocab = len(build_tokenizer(spec.vocab_target))
        hidden, inter, heads, kv = (
            spec.hidden_size,
            spec.intermediate_size,
            spec.num_attention_heads,
            spec.num_key_value_heads,
        )
        head_dim = hidden // heads
        attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
        if spec.architecture == "qwen2":
            attention += heads * head_dim + 2 * kv * head_dim  # q, k, v biases
        layer = attention + 3 * hidden * inter + 2 * hidden  # + MLP + two norms
        parameters = 2 * vocab * hidden + spec.num_hidden_layers * layer + hidden  # untied head, final norm
        assert BUILTIN_MODELS[name] == ModelSize(parameters, spec.num_hidden_layers, kv, head_dim), name
