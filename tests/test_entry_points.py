"""Integration: the entry points as users start them, `mlflow run` and `python -m pipeline`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import registry
from pipeline.config import ALIAS_CHALLENGER, EXPERIMENT_NAME, FEATURES
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_mlflow_run_train_lands_in_the_experiment(tracking_uri: str, python: str, tmp_path: Path) -> None:
    mlflow_cli = str(Path(python).with_name("mlflow"))
    result = run(
        [mlflow_cli, "run", str(ROOT), "-e", "train", "--env-manager", "local", "--experiment-name", EXPERIMENT_NAME],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version = registry.version_by_alias(ALIAS_CHALLENGER)
    run_ = MlflowClient().get_run(version.run_id)
    assert MlflowClient().get_experiment(run_.info.experiment_id).name == EXPERIMENT_NAME
    assert run_.data.tags["mlflow.runName"] == "train"
    assert run_.data.tags["mlflow.project.entryPoint"] == "train"
    assert run_.data.metrics["test_r2"] == pytest.approx(0.575788, abs=5e-6)


def test_cli_train_and_bad_csv(tracking_uri: str, python: str, tmp_path: Path) -> None:
    result = run([python, "-m", "pipeline", "train", "--test-size", "0.2", "--random-state", "42"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test R² 0.5758, test MSE 0.5559" in result.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(FEATURES) + "\n" + ",".join(["1"] * 8) + "\n")
    result = run([python, "-m", "pipeline", "train", "--data", str(bad)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}: missing column(s) MedHouseVal (expected {', '.join((*FEATURES, 'MedHouseVal'))})"
    )
    assert [str(v.version) for v in MlflowClient().search_model_versions()] == ["1"]
