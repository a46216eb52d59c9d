"""`baton bench autoscale --json` end to end on the sandbox (the CLI users run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from baton_dev.sandbox.handle import Sandbox

pytestmark = pytest.mark.sandbox


def test_autoscaling_bench_cli_reports_reaction(sandbox: Sandbox) -> None:
    baton = Path(sys.executable).with_name("baton")
    proc = subprocess.run(
        [str(baton), "bench", "autoscale", "--json", "--runs", "3", "--interval", "3", "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        env=sandbox.env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["runs"] == 3 and len(doc["samples"]) == 3
    # A spike lands at a random point of a 3 s cycle: two intervals cover detection and the writes.
    assert 0 < doc["reaction_s"]["p50"] <= 6.0, doc["reaction_s"]
    for sample in doc["samples"]:
        # The spike was seen by a scrape of the queue endpoint (not the no-scrape fallback of 0),
        # and by the next scrape or the one after (a loaded machine may delay one).
        assert 0 < sample["detect_s"] <= 2 * 3, sample
    assert "reference_models" not in doc and "speedup_p50_vs" not in doc  # nothing modelled
