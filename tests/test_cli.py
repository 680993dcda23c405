"""One command, `capsnet`, with the pipeline's CLIs as subcommands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.capsnet import SUBCOMMANDS, main, package_version
from tests.helpers import REPO


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.capsnet", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_version_and_overview():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"capsnet {package_version()}" != "capsnet unknown"
    overview = run("--help")
    assert overview.returncode == 0
    for name in ("train", "evaluate", "export", "verify", "weights", "bento", "check-gpu"):
        assert f"  {name} " in overview.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help_under_its_own_name(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0 and f"usage: capsnet {name}" in capsys.readouterr().out


def test_an_unknown_subcommand_is_one_clear_error():
    result = run("trian")
    assert result.returncode == 2 and "invalid choice: 'trian'" in result.stderr and "Traceback" not in result.stderr


def test_every_output_is_dash_o(capsys):
    for args in (["train", "--help"], ["evaluate", "--help"], ["export", "--help"], ["verify", "--help"],
                 ["weights", "pack", "--help"], ["weights", "unpack", "--help"]):
        with pytest.raises(SystemExit):
            main(args)
        assert "-o " in capsys.readouterr().out, args
