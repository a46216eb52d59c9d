"""Evaluation and benchmark tools pointed at `baton up`, as users run them.

- EleutherAI's lm-eval, `local-completions`, on a multiple-choice task defined here with local
  data: it scores every choice with echo + logprobs, and its loglikelihoods equal those of lm-eval's
  own `hf` backend on the same checkpoint directory. `local-chat-completions` runs a generation
  task to the end.
- NVIDIA's aiperf (`aiperf profile`, in a virtual environment of its own: its pins clash with
  baton's) sends streaming chat requests: none fails, and the token counts it reads from the
  streamed usage equal what the server generated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_helpers import local_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

MODEL = "builtin://tiny"
QUESTIONS = [
    ("Which pool prefills prompts?", ["the prefill pool", "the decode pool", "the router"], 0),
    ("What moves from prefill to decode?", ["the weights", "the KV cache", "the tokenizer"], 1),
    ("What does the router speak?", ["the OpenAI API", "SMTP", "FTP", "gopher"], 0),
    ("How are decode pods run?", ["as a Deployment", "as a DaemonSet", "as a CronJob"], 0),
    ("What scales each role?", ["queue depth", "the moon", "disk size"], 0),
    ("Where do prefill pods run?", ["on H100 nodes", "on A100 nodes", "nowhere"], 0),
]
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    from baton_worker.engine.builtin import ensure_builtin

    return ensure_builtin("tiny")


@pytest.fixture(scope="module")
def server() -> str:
    with local_stack() as url:
        yield url


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multiple-choice task and a generation task over local JSON lines (no download)."""
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    data = d / "baton_qa.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS)
    )
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (d / "baton_mc.yaml").write_text(
        "task: baton_mc\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (d / "baton_gen.yaml").write_text(
        "task: baton_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{choices[answer]}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    return d


def lm_eval(out: Path, task_dir: Path, task: str, *model_args: str) -> list[dict]:
    """Run lm-eval's CLI; return its logged samples of ``task``."""
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        *model_args,
        "--tasks",
        task,
        "--include_path",
        str(task_dir),
        "--output_path",
        str(out),
        "--log_samples",
        "--batch_size",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"no samples written under {out}: {proc.stdout[-2000:]}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


def logliks(samples: list[dict]) -> dict[tuple[int, int], tuple[float, bool]]:
    """(doc, choice) -> (loglikelihood, is_greedy) from multiple-choice samples."""
    out = {}
    for s in samples:
        for i, resp in enumerate(s["resps"]):
            ll, greedy = resp[0]
            out[(s["doc_id"], i)] = (float(ll), bool(greedy))
    return out


def test_lm_eval_local_completions_scores_like_its_hf_backend(server, checkpoint, tasks, tmp_path) -> None:  # type: ignore[no-untyped-def]
    served = lm_eval(
        tmp_path / "served",
        tasks,
        "baton_mc",
        "--model",
        "local-completions",
        "--model_args",
        f"model={MODEL},base_url={server}/completions,tokenizer_backend=huggingface,tokenizer={checkpoint},"
        "num_concurrent=1,max_retries=1,tokenized_requests=True",
    )
    reference = lm_eval(
        tmp_path / "hf",
        tasks,
        "baton_mc",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={checkpoint},dtype=float32",
        "--device",
        "cpu",
    )
    got, want = logliks(served), logliks(reference)
    assert set(got) == set(want) and len(got) == sum(len(c) for _, c, _ in QUESTIONS)
    for key, (ll, greedy) in want.items():
        # A sum of a few token logprobs, each within 1e-4 of transformers' own.
        assert abs(got[key][0] - ll) < 1e-3, (key, got[key], ll)
        assert got[key][1] == greedy, key
    assert [s["acc"] for s in served] == [s["acc"] for s in reference]


def test_lm_eval_local_chat_completions_runs_a_generation_task(server, tasks, tmp_path) -> None:  # type: ignore[no-untyped-def]
    samples = lm_eval(
        tmp_path / "chat",
        tasks,
        "baton_gen",
        "--model",
        "local-chat-completions",
        "--model_args",
        f"model={MODEL},base_url={server}/chat/completions,num_concurrent=1,max_retries=1",
        "--apply_chat_template",
    )
    assert len(samples) == len(QUESTIONS)
    assert all(isinstance(s["resps"][0][0], str) for s in samples)


AIPERF_VERSION = "0.13.0"


@pytest.fixture(scope="module")
def aiperf() -> Path:
    """aiperf in a virtual environment of its own, kept in the cache between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    venv = Path(base) / "baton" / "tools" / f"aiperf-{AIPERF_VERSION}"
    exe = venv / "bin" / "aiperf"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"aiperf=={AIPERF_VERSION}"],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


def test_aiperf_streaming_chat_has_no_error_and_counts_tokens_like_the_server(
    server, checkpoint, aiperf, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import httpx

    before = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=10).text
    out = tmp_path / "aiperf"
    cmd = [
        str(aiperf),
        "profile",
        "--model",
        MODEL,
        "--url",
        server.removesuffix("/v1"),
        "--endpoint-type",
        "chat",
        "--streaming",
        "--request-count",
        "24",
        "--concurrency",
        "4",
        "--tokenizer",
        str(checkpoint),
        "--prompt-input-tokens-mean",
        "32",
        "--prompt-output-tokens-mean",
        "16",
        "--extra-inputs",
        '{"ignore_eos": true}',
        # Counted from the server's usage (the last streamed chunk): re-tokenizing the text of
        # a random model's output does not give back the tokens it generated.
        "--use-server-token-count",
        "--output-artifact-dir",
        str(out),
        "--ui-type",
        "none",
    ]
    # Not offline: aiperf's offline mode looks a tokenizer up in the hub cache only, never a path.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    logs = "\n".join(p.read_text()[-3000:] for p in out.rglob("*.log"))
    assert proc.returncode == 0, (proc.stdout[-3000:], logs)
    (summary,) = out.rglob("profile_export_aiperf.json")
    data = json.loads(summary.read_text())
    assert data["request_count"]["avg"] == 24 and data["is_complete"] and not data["was_cancelled"]
    assert data["error_summary"] == [], data["error_summary"]
    after = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=10).text
    served = _counter(after, "baton_generation_tokens_total") - _counter(
        before, "baton_generation_tokens_total"
    )
    counted = data["total_osl"]["avg"]
    assert abs(served - counted) < 1e-6, (served, counted)


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
