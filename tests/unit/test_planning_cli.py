"""`baton plan`: arguments, exit codes, JSON, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from baton_operator.planning.cli import main

H100 = str(Path(__file__).resolve().parents[2] / "profiles" / "h100-llama3-8b.json")
CHAT = [
    "--profile",
    H100,
    "--isl",
    "lognormal:1000:0.5",
    "--osl",
    "200",
    "--ttft-ms",
    "500",
    "--itl-ms",
    "50",
]


def test_plan_prints_the_choice_and_the_pool(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CHAT, "--rate", "6", "--requests", "300"]) == 0
    out = capsys.readouterr().out
    for text in (
        "chosen:",
        "headroom: sustains up to",
        "goodput per GPU, disaggregated / colocated",
        "spec:",
    ):
        assert text in out


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CHAT, "--rate", "6", "--requests", "300", "--json", "--burstiness", "0.5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["feasible"] and doc["workload"]["burstiness"] == 0.5 and doc["workload"]["requests"] == 300
    assert doc["slo"] == {"ttft_ms": 500.0, "itl_ms": 50.0, "attainment": 0.9}
    assert doc["max_rate_rps"] >= 6 and "search_seconds" in doc


def test_nothing_fits_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CHAT, "--rate", "40", "--gpus", "2", "--requests", "100"]) == 1
    assert "infeasible: no deployment within 2 GPUs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kv-backend", "grpc"], "no kv_transfer figures for backend 'grpc'"),
        (["--prefix-cached", "1.5"], "prefix_cached must be in [0, 1)"),
        (["--attainment", "0"], "SLOs must be > 0 and attainment in (0, 1]"),
    ],
)
def test_bad_values_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CHAT, "--rate", "6", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_profile_names_the_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(Path(H100).read_text())
    doc["decode"][1]["step_seconds"] = "slow"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert main([*CHAT, "--rate", "6", "--profile", str(bad)]) == 2
    assert f"{bad}: decode[1].step_seconds: must be a number, got 'slow'" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--isl", "lots"), ("--rate", "-1"), ("--gpus", "two")])
def test_bad_arguments_are_usage_errors(flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as e:
        main([*CHAT, "--rate", "6", flag, value])
    assert e.value.code == 2


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch (or numpy) now fails
sys.modules["numpy"] = None
from baton_operator.planning.cli import main
code = main(sys.argv[1:])
assert "torch" not in [m for m, v in sys.modules.items() if v is not None], "torch was imported"
sys.exit(code)
"""


@pytest.mark.parametrize("entry", ["baton_operator.planning.cli", "baton_worker.cli"])
@pytest.mark.parametrize("args", [["--help"], [*CHAT, "--rate", "4", "--requests", "100", "--json"]])
def test_plan_runs_without_torch_or_numpy(entry: str, args: list[str]) -> None:
    # baton_worker.cli is the `baton` console script: `baton plan ...` goes through its dispatcher.
    argv = args if entry == "baton_operator.planning.cli" else ["plan", *args]
    code = NO_TORCH.replace("baton_operator.planning.cli", entry)
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ("usage: baton plan" in r.stdout) if args == ["--help"] else json.loads(r.stdout)["feasible"]
