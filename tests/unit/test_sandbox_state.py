"""State file round trip, node readiness rule, and the one-line failure messages."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from baton_dev.sandbox import procs
from baton_dev.sandbox.cluster import State, _died, join, leave, load_state, node_schedulable, save_state
from baton_dev.sandbox.layout import Layout, Ports

PORTS = Ports(1, 2, 3, 4, 5, 6)


def test_state_round_trips_through_json() -> None:
    rec = procs.ProcRecord("etcd", 42, 1234, "/tmp/etcd.log")
    state = State(ports=PORTS, binaries={"etcd": "/bin/etcd"}, procs=[rec], extra=[rec], started_at=1.5)
    again = State.from_json(state.to_json())
    assert again == state


def test_node_schedulable_needs_ready_and_no_not_ready_taint() -> None:
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {}}
    assert node_schedulable(ready)
    tainted = {**ready, "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}}
    assert not node_schedulable(tainted)
    gpu_tainted = {**ready, "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}}
    assert node_schedulable(gpu_tainted)
    assert not node_schedulable({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})


def test_a_component_that_lost_its_port_says_which_port(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        log = tmp_path / "etcd.log"
        log.write_text(f"... listen tcp 127.0.0.1:{port}: bind: address already in use\n")
        ports = Ports(port, 2, 3, 4, 5, 6)
        err = _died(procs.ProcRecord("etcd", 1, 1, str(log)), ports)
    assert f"port {port}" in str(err) and "taken" in str(err) and "\n" not in str(err)


def test_a_component_that_died_shows_its_log_tail(tmp_path) -> None:
    log = tmp_path / "kwok.log"
    log.write_text("line\n" * 30 + "fatal: something broke\n")
    err = str(_died(procs.ProcRecord("kwok", 1, 1, str(log)), PORTS))
    assert err.startswith("kwok died") and err.endswith("fatal: something broke")


def test_start_and_stop_a_detached_process(tmp_path) -> None:
    rec = procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log")
    assert procs.is_running(rec) and procs.rss_bytes(rec.pid) > 0
    # A record whose start time does not match is never treated as that process.
    assert not procs.is_running(procs.ProcRecord("other", rec.pid, rec.start_ticks + 1, rec.log))
    assert procs.stop(rec, timeout_s=5)
    assert not procs.is_running(rec)
    assert subprocess.run(["kill", "-0", str(rec.pid)], capture_output=True).returncode != 0


def test_last_test_session_to_leave_an_auto_down_sandbox_stops_it(tmp_path) -> None:
    layout = Layout(tmp_path / "state")
    layout.state_dir.mkdir()
    save_state(layout, State(ports=PORTS, binaries={}))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other_rec = procs.ProcRecord("user", other.pid, procs.start_ticks(other.pid) or 0, "")
        state = load_state(layout)
        assert state is not None
        state.users.append(other_rec)
        save_state(layout, state)
        join(layout.state_dir, auto_down=True)
        assert not leave(layout.state_dir), "another live session still uses the sandbox"
    finally:
        other.kill()
        other.wait()
    join(layout.state_dir, auto_down=False)
    assert leave(layout.state_dir), "auto_down stays set once a session that started it joined"


def test_find_strays_matches_executable_name_and_state_path(tmp_path) -> None:
    marker = f"{tmp_path}/state/"
    code = "import time, sys; time.sleep(60)"
    ours = subprocess.Popen([sys.executable, "-c", code, f"--data-dir={marker}etcd"])
    other = subprocess.Popen([sys.executable, "-c", code, "--data-dir=/elsewhere/"])
    try:
        exe = Path(sys.executable).name
        found = procs.find_strays((exe,), marker)
        assert ours.pid in found and other.pid not in found
        assert procs.find_strays(("etcd",), marker) == []
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
