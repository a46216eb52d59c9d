"""What each consumer fetches of a checkpoint: the router never weights, the worker what it loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from baton_worker.sources import WEIGHT_PATTERNS, checkpoint_dir, checkpoint_files

# Listings as the Hub shows them (paths relative to the repository root).
LLAMA3 = [
    ".gitattributes",
    "LICENSE",
    "README.md",
    "USE_POLICY.md",
    "config.json",
    "generation_config.json",
    "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors",
    "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors",
    "model.safetensors.index.json",
    "original/consolidated.00.pth",
    "original/params.json",
    "original/tokenizer.model",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
]
GPT2 = [
    ".gitattributes",
    "64-8bits.tflite",
    "README.md",
    "config.json",
    "flax_model.msgpack",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "onnx/decoder_model.onnx",
    "pytorch_model.bin",
    "rust_model.ot",
    "tf_model.h5",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
]
MISTRAL_SP = [
    ".gitattributes",
    "README.md",
    "config.json",
    "consolidated.safetensors",
    "generation_config.json",
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
    "model.safetensors.index.json",
    "params.json",
    "pytorch_model-00001-of-00003.bin",
    "pytorch_model.bin.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer.model.v3",
    "tokenizer_config.json",
]
QWEN2_GGUF = [
    "LICENSE",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "qwen2-0_5b-instruct-q4_0.gguf",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
]
BERT_STYLE = ["added_tokens.json", "config.json", "model.pt", "spiece.model", "vocab.txt"]


@pytest.mark.parametrize(
    ("listing", "router", "worker_extra"),
    [
        (
            LLAMA3,
            [
                "config.json",
                "generation_config.json",
                "original/tokenizer.model",  # "*.model" reaches subdirectories: 2 MB, no weights
                "special_tokens_map.json",
                "tokenizer.json",
                "tokenizer_config.json",
            ],
            [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)] + ["model.safetensors.index.json"],
        ),
        (
            GPT2,
            ["config.json", "generation_config.json", "merges.txt", "tokenizer.json"]
            + ["tokenizer_config.json", "vocab.json"],
            ["model.safetensors"],
        ),
        (
            MISTRAL_SP,
            ["config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json"]
            + ["tokenizer.model", "tokenizer_config.json"],
            ["consolidated.safetensors"]
            + [f"model-0000{i}-of-00003.safetensors" for i in range(1, 4)]
            + ["model.safetensors.index.json"],
        ),
        (
            QWEN2_GGUF,
            ["chat_template.jinja", "config.json", "generation_config.json", "merges.txt"]
            + ["tokenizer.json", "tokenizer_config.json", "vocab.json"],
            ["model.safetensors"],
        ),
        (BERT_STYLE, ["added_tokens.json", "config.json", "spiece.model", "vocab.txt"], []),
    ],
    ids=["llama3", "gpt2", "mistral-sentencepiece", "qwen2-gguf", "sentencepiece-vocab-txt"],
)
def test_router_fetches_tokenizer_and_config_and_the_worker_adds_its_weights(
    listing: list[str], router: list[str], worker_extra: list[str]
) -> None:
    got_router = checkpoint_files("router").select(listing)
    assert sorted(got_router) == sorted(router)
    assert not [f for f in got_router if any(fnmatchcase(f, p) for p in WEIGHT_PATTERNS)]
    assert sorted(checkpoint_files("worker").select(listing)) == sorted(router + worker_extra)


def test_selection_is_the_rule_snapshot_download_applies() -> None:
    from huggingface_hub.utils import filter_repo_objects

    for consumer in ("router", "worker"):
        files = checkpoint_files(consumer)
        for listing in (LLAMA3, GPT2, MISTRAL_SP, QWEN2_GGUF, BERT_STYLE):
            hub = filter_repo_objects(listing, allow_patterns=files.allow, ignore_patterns=files.ignore)
            assert files.select(listing) == list(hub), (consumer, listing)


def test_unknown_consumer() -> None:
    with pytest.raises(ValueError, match="consumer"):
        checkpoint_files("bench")  # type: ignore[arg-type]


def test_the_router_asks_the_hub_for_no_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert checkpoint_dir("hf://meta-llama/Meta-Llama-3-8B", "router") == tmp_path
    assert checkpoint_dir("hf://meta-llama/Meta-Llama-3-8B", "worker") == tmp_path
    (repo, router), (_, worker) = calls
    assert repo == "meta-llama/Meta-Llama-3-8B"
    # No allowed pattern is, or would select, a weight file.
    for pattern in router["allow_patterns"]:
        assert pattern not in WEIGHT_PATTERNS
        for weight in ("model.safetensors", "pytorch_model.bin", "x.pt", "x.pth", "x.gguf"):
            assert not fnmatchcase(weight, pattern), pattern
    assert set(WEIGHT_PATTERNS) <= set(router["ignore_patterns"])
    assert {"tokenizer.json", "config.json"} <= set(router["allow_patterns"])
    assert "*.safetensors" in worker["allow_patterns"]
    # No token or cache argument: huggingface_hub reads HF_TOKEN and HF_HOME itself.
    assert "token" not in router and "cache_dir" not in router


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("file:///models/x", "/models/x"),
        ("/models/x", "/models/x"),
        ("pvc://weights/llama/8b", "/pvc/weights/llama/8b"),
    ],
)
def test_path_sources(monkeypatch: pytest.MonkeyPatch, source: str, expect: str) -> None:
    monkeypatch.setenv("BATON_PVC_ROOT", "/pvc")
    assert checkpoint_dir(source, "router") == checkpoint_dir(source, "worker") == Path(expect)


@pytest.mark.parametrize("source", ["pvc:///x", "s3://bucket/model"])
def test_bad_sources(source: str) -> None:
    with pytest.raises(ValueError, match="model.source"):
        checkpoint_dir(source, "router")


@pytest.mark.slow
def test_router_tokenizer_from_a_directory_imports_no_engine(tmp_path: Path) -> None:
    # A checkpoint directory with tokenizer and config only: the router must not need weights.
    from baton_worker.engine.builtin import ensure_builtin

    built = ensure_builtin("tiny")
    ckpt = tmp_path / "claim" / "tiny"
    ckpt.mkdir(parents=True)
    for name in checkpoint_files("router").select(p.name for p in built.iterdir()):
        (ckpt / name).write_bytes((built / name).read_bytes())
    # A plain directory and a pvc:// source (which once went through the engine's loader).
    code = (
        "import json, sys\n"
        "import baton_worker.text as t\n"
        "torch_on_import = 'torch' in sys.modules\n"
        f"tok = t.load_tokenizer({str(ckpt)!r})\n"
        "assert t.load_tokenizer('pvc://claim/tiny').vocab_size == tok.vocab_size\n"
        "print(json.dumps({'torch_on_import': torch_on_import, 'len': tok.max_model_len,\n"
        "    'engine': sorted(m for m in sys.modules if m.startswith('baton_worker.engine'))}))\n"
    )
    env = {**os.environ, "BATON_PVC_ROOT": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=env
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"torch_on_import": False, "len": 2048, "engine": []}
    # transformers' AutoTokenizer itself imports torch when it is installed (its config module),
    # so torch may still load with the tokenizer; the engine and the weights never do.
