"""The whole pipeline: `mlflow run .`, determinism across runs, and concurrent pipelines and
trains on a store that does not exist yet."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import registry, store
from pipeline.config import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS_CHAMPION,
    ALIAS_QUANTIZED,
    EXPERIMENT_NAME,
    MODEL_NAME,
)
from pipeline.errors import PipelineError
from pipeline.main import run_pipeline
from tests.conftest import ROOT, Store, using

pytestmark = pytest.mark.integration

SAME_METRICS = ("test_r2", "test_mse", "test_rmse", "test_mae", "param_bytes", "model_size_bytes")


def _runs(filter_string: str = "") -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs([experiment.experiment_id], filter_string=filter_string, order_by=["start_time ASC"])


def _run_at_once(command: list[str], n: int, cwd: Path) -> None:
    """Starts `n` copies of `command` together; each must exit 0."""
    processes = [
        subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    failures = [err.strip().splitlines()[-5:] for p, (_, err) in zip(processes, outputs, strict=True) if p.returncode]
    assert [p.returncode for p in processes] == [0] * n, failures


def test_mlflow_run_default_entry_point_then_again_in_process(tracking_uri: str, python: str, tmp_path: Path) -> None:
    mlflow_cli = str(Path(python).with_name("mlflow"))
    result = subprocess.run(
        [mlflow_cli, "run", str(ROOT), "--env-manager", "local", "--experiment-name", EXPERIMENT_NAME],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = _runs("tags.step = 'main'")
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
    assert parent.data.tags["mlflow.runName"] == "pipeline"
    children = _runs(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [c.data.tags["mlflow.runName"] for c in children] == [
        "train · sklearn data · split 42",
        "quantize-int8",
        "promote",
    ]
    assert all(c.info.status == "FINISHED" for c in [parent, *children])
    first_champion = registry.version_by_alias(ALIAS_CHAMPION)
    assert first_champion.tags["quantization"] == "int8"

    second = run_pipeline()
    assert second.promote.changed
    assert registry.version_by_alias(ALIAS_CHAMPION).version == int(second.quantize.version)
    assert registry.version_by_alias(ALIAS_PREVIOUS_CHAMPION).version == first_champion.version
    first_reason = MlflowClient().get_run(children[2].info.run_id).data.tags["decision.reason"]
    second_reason = MlflowClient().get_run(second.promote.run_id).data.tags["decision.reason"]
    # Same parameters, same models, same decision: only the version numbers differ.
    assert first_reason.replace("v1", "vA").replace("v2", "vB") == second_reason.replace("v3", "vA").replace("v4", "vB")
    for step in ("train · sklearn data · split 42", "quantize-int8"):
        runs = _runs(f"tags.mlflow.runName = '{step}'")
        assert len(runs) == 2
        assert {k: runs[0].data.metrics[k] for k in SAME_METRICS} == {k: runs[1].data.metrics[k] for k in SAME_METRICS}


def test_four_concurrent_pipelines_lose_nothing(tracking_uri: str, python: str, tmp_path: Path) -> None:
    # They start on a path where no database exists yet: creating it is part of the race.
    store.sqlite_path(tracking_uri).unlink()
    _run_at_once([python, "-m", "pipeline", "main"], 4, tmp_path)
    runs = _runs()
    parents = [r for r in runs if r.data.tags.get("step") == "main"]
    assert len(parents) == 4, sorted((r.data.tags.get("mlflow.runName"), r.data.tags.get("step")) for r in runs)
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(c.data.tags["step"] for c in children) == ["promote", "quantize", "train"]
    assert all(r.info.status == "FINISHED" for r in runs)
    versions = MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 9))
    assert sum(1 for v in versions if v.tags.get("quantization") == "int8") == 4
    champion = registry.version_by_alias(ALIAS_CHAMPION)
    assert champion.tags["quantization"] == "int8"
    # Each promotion saw the one before it: the champion chain has no gaps.
    promotes = [r for r in runs if r.data.tags.get("step") == "promote"]
    assert sum(r.data.tags["decision"] == "promoted" for r in promotes) == 4
    assert registry.version_by_alias(ALIAS_PREVIOUS_CHAMPION) is not None


def test_six_trains_started_at_once_create_a_new_store_whole(python: str, tmp_path: Path) -> None:
    new = Store(tmp_path / "new-folder")  # neither the folder nor the database exists
    with using(new):
        _run_at_once([python, "-m", "pipeline", "train"], 6, tmp_path)
        runs = _runs()
        assert sorted(r.data.tags["step"] for r in runs) == ["train"] * 6
        assert all(r.info.status == "FINISHED" for r in runs)
        versions = MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")
        assert sorted(int(v.version) for v in versions) == list(range(1, 7))
        assert {v.run_id for v in versions} == {r.info.run_id for r in runs}
        challenger = registry.version_by_alias(ALIAS_CHALLENGER)
        assert challenger.run_id in {r.info.run_id for r in runs}

        # A later command works on the store they made.
        later = subprocess.run(
            [python, "-m", "pipeline", "quantize"], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert later.returncode == 0, later.stderr[-3000:]
        quantized = registry.version_by_alias(ALIAS_QUANTIZED)
        assert int(quantized.version) == 7
        assert quantized.tags["quantization"] == "int8"


def test_bad_bits_are_refused_before_anything_is_registered(tracking_uri: str) -> None:
    with pytest.raises(PipelineError, match="bits must be an integer from 2 to 8, got 9"):
        run_pipeline(bits=9)
    assert MlflowClient().search_model_versions() == []
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []
