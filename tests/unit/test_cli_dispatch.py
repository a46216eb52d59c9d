"""The `baton` dispatcher: every command names an importable module, and the development tools
say how to get them where they are not installed (the images)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from baton_worker import cli


@pytest.mark.parametrize("module", sorted({m for m, _ in [*cli.COMMANDS.values(), *cli.BENCHES.values()]}))
def test_every_command_names_a_module_that_exists(module: str) -> None:
    assert importlib.util.find_spec(module) is not None, module


@pytest.mark.parametrize(
    ("argv", "dev"),
    [
        (["sandbox", "status"], True),
        (["bench", "kv"], True),
        (["profile"], True),
        (["plan", "--help"], False),
    ],
)
def test_what_runs_in_production_lives_outside_the_dev_package(argv: list[str], dev: bool) -> None:
    table = cli.BENCHES if argv[0] == "bench" else cli.COMMANDS
    module = table[argv[1] if argv[0] == "bench" else argv[0]][0]
    assert module.startswith(cli.DEV_PACKAGE + ".") is dev


def test_a_dev_command_without_the_dev_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == cli.DEV_PACKAGE or m.startswith(cli.DEV_PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, cli.DEV_PACKAGE, None)  # as if not installed
    assert cli.main(["sandbox", "status"]) == 2
    err = capsys.readouterr().err
    assert "development tools" in err and "make install" in err
    assert cli.main(["bench", "serve", "--help"]) == 2
