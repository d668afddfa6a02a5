"""The README's command that makes the example inputs, run as documented."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pipeline import examples
from pipeline.mlflow_compat import scoring_server_env
from tests.conftest import ROOT

MAKE = "python -m pipeline.examples"

BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


NAMES = {"my_houses.csv", "new_houses.csv", "nodrift.csv", "shift.csv", "north.csv", "small.csv"}


def commands(page: Path) -> list[str]:
    """The lines of a page's bash blocks, in order."""
    return [line for block in BASH_BLOCK.findall(page.read_text()) for line in block.splitlines()]


@pytest.mark.integration
def test_the_readme_command_makes_them(tmp_path: Path) -> None:
    """The command as the README shows it, in a fresh folder, with this interpreter's environment."""
    shown = [line for line in commands(ROOT / "README.md") if line.startswith(MAKE)]
    assert shown == [MAKE]
    env = scoring_server_env(os.environ)  # this interpreter's `python` first on PATH
    done = subprocess.run(["bash", "-c", shown[0]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / examples.DEFAULT_DIR).iterdir()} == NAMES
    assert len(done.stdout.splitlines()) == len(NAMES)
