"""Write constraints.txt: the exact version of every third-party distribution that
`make install` puts in the virtual environment and `make images` puts in the images.

    .venv/bin/python tools/lock.py            # pin what this environment has installed
    .venv/bin/python tools/lock.py --upgrade  # resolve the newest versions pyproject allows

Resolution is pip's own (``pip install --dry-run --report``) of ``.[worker,dev]`` for the Python
running this script. One lock keeps a fresh clone, CI and the images on the versions the tests
ran with, and keeps the images' dependency layers cached across clones.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
HEADER = """\
# Exact versions of baton's third-party dependencies (the worker and dev extras), for Python {py}
# on Linux. `make install` installs with these constraints and `make images` pins the images to
# the same versions. Regenerate with `.venv/bin/python tools/lock.py --upgrade`, then run make test.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> str:
    """``name==version`` of each distribution in this environment except baton itself."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=json", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "".join(f"{d['name']}=={d['version']}\n" for d in json.loads(out))


def resolve(upgrade: bool) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        argv += [f"--report={report}"]
        if not upgrade:
            pins = Path(tmp) / "installed.txt"
            pins.write_text(installed())
            argv += [f"--constraint={pins}"]
        subprocess.run([*argv, f"{ROOT}[worker,dev]"], check=True)
        items = json.loads(report.read_text())["install"]
    pinned = {(canonical(i["metadata"]["name"]), i["metadata"]["version"]) for i in items}
    return sorted(p for p in pinned if p[0] != "baton")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--upgrade", action="store_true", help="newest versions instead of the installed ones"
    )
    args = parser.parse_args()
    pins = resolve(args.upgrade)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    LOCK.write_text(HEADER.format(py=py) + "".join(f"{n}=={v}\n" for n, v in pins))
    print(f"{LOCK.relative_to(ROOT)}: {len(pins)} distributions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
