"""Background processes of the sandbox: start detached, identify safely, stop, measure.

A process is recorded as (pid, start time from /proc); a recorded pid is only ever signalled
when its start time still matches, so a pid reused by an unrelated process is never killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcRecord:
    """A process the sandbox started."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "start_ticks": self.start_ticks, "log": self.log}

    @staticmethod
    def from_json(d: dict[str, object]) -> ProcRecord:
        return ProcRecord(str(d["name"]), int(d["pid"]), int(d["start_ticks"]), str(d["log"]))  # type: ignore[arg-type]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (bound to port 0, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/pid/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_running(rec: ProcRecord) -> bool:
    """Whether the recorded process is still the same live (non-zombie) process."""
    return start_ticks(rec.pid) == rec.start_ticks


def start(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> ProcRecord:
    """Start ``argv`` detached (own session, survives the CLI), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    ticks = start_ticks(proc.pid)
    if ticks is None:
        proc.wait(timeout=5)
        raise RuntimeError(f"{name} exited at once (code {proc.returncode}): {tail(log)}")
    # Keep no Popen: the child is reparented when this CLI exits; a zombie never lingers.
    proc.returncode = 0
    return ProcRecord(name=name, pid=proc.pid, start_ticks=ticks, log=str(log))


def stop(rec: ProcRecord, timeout_s: float = 10.0) -> bool:
    """SIGTERM the recorded process (its whole session), SIGKILL after ``timeout_s``.

    Returns True when it is gone. Never signals a pid whose start time no longer matches.
    """
    if not is_running(rec):
        return True
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            # start_new_session made the child a session and group leader: its group is its pid.
            os.killpg(rec.pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(rec.pid)
            if not is_running(rec):
                # It may have turned zombie just after the reap above: reap it now, or a
                # child of this process lingers as a zombie (kill -0 still finds it).
                _reap(rec.pid)
                return True
            time.sleep(0.05)
    return not is_running(rec)


def _reap(pid: int) -> None:
    # A child of this very process (started in the same CLI run) must be waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tail(path: Path | str, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def find_strays(names: tuple[str, ...], path_fragment: str) -> list[int]:
    """Pids of processes whose executable is one of ``names`` (or `baton operator`) and whose
    command line mentions ``path_fragment`` (a state directory): sandbox processes that no
    state file records any more."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0]:
            continue
        exe = Path(argv[0].decode(errors="replace")).name
        # `baton` is a Python entry point: its argv is [python, .../baton, operator, ...].
        script = [Path(a.decode(errors="replace")).name for a in argv[:2]]
        ours = exe in names or ("baton" in script and b"operator" in argv[1:3])
        if ours and any(path_fragment.encode() in a for a in argv[1:]):
            found.append(int(entry.name))
    return found
