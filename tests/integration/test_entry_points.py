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
    assert run_.data.tags["mlflow.runName"] == "train · sklearn data · split 42"
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


def test_every_step_runs_under_mlflow_run(pipeline_store, clone_store, california, python: str, tmp_path: Path) -> None:
    """quantize, promote, predict and monitor as `mlflow run . -e STEP` starts them.

    `mlflow run` logs each entry point's parameters itself, as spelled on its command line,
    before the step starts; the steps must not log those keys again with other values.
    """
    clone_store(pipeline_store)
    mlflow_cli = str(Path(python).with_name("mlflow"))
    batch = california.X.head(500).astype({"HouseAge": "int64"})  # whole numbers, as users' files have
    batch.to_csv(tmp_path / "batch.csv", index=False)
    steps = {
        "quantize": ["-P", "bits=6"],
        "promote": [],
        # String parameters: `mlflow run` starts the command in the project folder, so absolute.
        "predict": ["-P", f"input={tmp_path / 'batch.csv'}", "-P", f"output={tmp_path / 'out.csv'}"],
        "monitor": ["-P", "batch=batch.csv"],
    }
    for step, params in steps.items():
        command = [mlflow_cli, "run", str(ROOT), "-e", step, "--env-manager", "local"]
        result = run([*command, "--experiment-name", EXPERIMENT_NAME, *params], cwd=tmp_path)
        assert result.returncode == 0, f"{step}: {result.stderr[-3000:]}"
    client = MlflowClient()
    runs = {
        r.data.tags["mlflow.project.entryPoint"]: r
        for r in client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id], "tags.`mlflow.project.entryPoint` != ''"
        )
    }
    assert {step: runs[step].info.status for step in steps} == dict.fromkeys(steps, "FINISHED")
    assert runs["quantize"].data.params["bits"] == "6"
    assert runs["predict"].data.params["input"] == str(tmp_path / "batch.csv")
    assert runs["predict"].data.params["output_path"] == str(tmp_path / "out.csv")
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 501
    # The first 500 rows are one corner of the state (the Bay Area): far from the training rows.
    assert runs["monitor"].data.metrics["drift_detected"] == 1.0
