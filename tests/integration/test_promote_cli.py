"""`python -m pipeline promote` rejecting a candidate: exit code 3."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline import registry
from pipeline.config import ALIAS_CHAMPION


@pytest.mark.integration
def test_cli_rejection_exits_3(trained_store, clone_store, python: str, tmp_path: Path) -> None:
    clone_store(trained_store)
    result = subprocess.run(
        [python, "-m", "pipeline", "promote", "--candidates", "challenger", "--min-r2", "0.99"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: promotion rejected, champion unchanged:")
    assert registry.version_by_alias(ALIAS_CHAMPION) is None
