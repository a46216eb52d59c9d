"""`baton sandbox up|status|env|down` as a user runs them, on a separate state directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from baton_dev.sandbox import procs
from baton_dev.sandbox.cluster import load_state
from baton_dev.sandbox.layout import COMPONENTS, Layout

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def _baton(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "import sys; from baton_worker.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)


def test_up_is_idempotent_status_env_work_and_down_leaves_no_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {**os.environ, "BATON_SANDBOX_DIR": str(state_dir)}
    first = _baton("sandbox", "up", "--no-chart", env=env)
    assert first.returncode == 0, first.stderr
    try:
        assert "kubeconfig" in first.stdout and str(state_dir) in first.stdout
        state = load_state(Layout(state_dir))
        assert state is not None and [p.name for p in state.procs] == list(COMPONENTS)
        pids = [p for p in state.procs]
        assert all(procs.is_running(p) for p in pids)

        again = _baton("sandbox", "up", "--no-chart", env=env)
        assert again.returncode == 0, again.stderr
        assert "already up" in again.stdout
        state2 = load_state(Layout(state_dir))
        assert state2 is not None and [p.pid for p in state2.procs] == [p.pid for p in pids]

        st = _baton("sandbox", "status", env=env)
        assert st.returncode == 0, st.stdout + st.stderr
        for name in COMPONENTS:
            assert name in st.stdout
        assert "control plane RSS" in st.stdout

        exports = _baton("sandbox", "env", env=env)
        assert exports.returncode == 0, exports.stderr
        shell = f"{exports.stdout}\nkubectl get nodes -o name"
        nodes = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60, check=False)
        assert nodes.returncode == 0, nodes.stderr
        assert "node/h100-0" in nodes.stdout
        # The PATH from `env` puts the sandbox's kubectl first, not the machine's older one.
        which = subprocess.run(
            ["bash", "-c", f"{exports.stdout}\ncommand -v kubectl"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert which.stdout.strip() == state.binaries["kubectl"]
    finally:
        gone = _baton("sandbox", "down", env=env)
    assert gone.returncode == 0, gone.stderr
    assert not any(procs.is_running(p) for p in pids)
    assert not state_dir.exists()
    after = _baton("sandbox", "status", env=env)
    assert after.returncode == 3 and "not up" in after.stdout
