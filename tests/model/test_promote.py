"""The promotion gate: policy (pure), rejection, rollback, and aliases in the real registry."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.tracking import MlflowClient

from pipeline import registry
from pipeline.config import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_PREVIOUS_CHAMPION, MODEL_NAME
from pipeline.errors import PipelineError, RejectedError
from pipeline.promote import Candidate, choose, promote, rollback
from tests.conftest import Store, using


def candidate(label: str, r2: float, quantized: bool = False, failures: tuple[str, ...] = ()) -> Candidate:
    tags = [ModelVersionTag("quantization", "int8")] if quantized else []
    version = ModelVersion(MODEL_NAME, 2 if quantized else 1, 0, tags=tags)
    return Candidate(label, version, {"test_r2": r2}, failures)


def test_quantized_wins_within_tolerance() -> None:
    winner, reason = choose([candidate("float", 0.5758), candidate("int8", 0.5752, quantized=True)], 0.001)
    assert winner.label == "int8"
    assert "is within 0.001 test R² of float" in reason and "gap 0.000600" in reason


def test_quantized_that_scores_higher_is_said_to() -> None:
    winner, reason = choose([candidate("float", 0.575788), candidate("int8", 0.576001, quantized=True)], 0.001)
    assert winner.label == "int8"
    assert "scores 0.000213 test R² above float" in reason


def test_float_wins_when_quantized_trails_beyond_tolerance() -> None:
    winner, reason = choose([candidate("float", 0.5758), candidate("int4", 0.5700, quantized=True)], 0.001)
    assert winner.label == "float"
    assert "trails it by 0.005800 > 0.001" in reason


def test_a_better_quantized_model_wins_outright() -> None:
    winner, _ = choose([candidate("float", 0.50, failures=("low",)), candidate("int8", 0.58, quantized=True)], 0.001)
    assert winner.label == "int8"


def test_nothing_passes() -> None:
    winner, reason = choose([candidate("float", 0.1, failures=("test R² 0.1 < 0.57 (minimum)",))], 0.001)
    assert winner is None
    assert reason.startswith("no candidate passed the gate") and "0.57 (minimum)" in reason


def test_ties_go_to_the_first_candidate() -> None:
    winner, _ = choose([candidate("a", 0.5), candidate("b", 0.5)], 0.001)
    assert winner.label == "a"


def _second_version() -> str:
    """Registers the challenger's logged model again: a second, identical float version."""
    first = registry.version_by_alias(ALIAS_CHALLENGER)
    return str(registry.register(first.source, ALIAS_CHALLENGER, tags={"run_id": first.run_id}).version)


def test_gate_rejection_leaves_champion_untouched(trained_store, clone_store) -> None:
    clone_store(trained_store)
    with pytest.raises(RejectedError) as err:
        promote([ALIAS_CHALLENGER], min_r2=0.99)
    assert err.value.exit_code == 3
    assert "test R² 0.575788 < 0.990000 (minimum)" in str(err.value)
    assert registry.version_by_alias(ALIAS_CHAMPION) is None

    first = promote([ALIAS_CHALLENGER])
    assert (first.champion, first.changed, first.previous) == ("1", True, None)

    _second_version()
    with pytest.raises(RejectedError):
        promote([ALIAS_CHALLENGER], min_r2=0.99)
    assert str(registry.version_by_alias(ALIAS_CHAMPION).version) == "1"
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("california-housing").experiment_id],
        filter_string="tags.step = 'promote'",
        order_by=["start_time DESC"],
    )
    assert runs[0].data.tags["decision"] == "rejected"
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["champion_test_r2"] == pytest.approx(0.575788, abs=5e-6)


def test_promotion_keeps_previous_and_rollback_restores_it(trained_store, clone_store) -> None:
    clone_store(trained_store)
    with pytest.raises(PipelineError, match="nothing to roll back to"):
        rollback()
    promote([ALIAS_CHALLENGER])
    second = _second_version()
    result = promote([ALIAS_CHALLENGER])
    assert (result.champion, result.previous, result.changed) == (second, "1", True)
    version = MlflowClient().get_model_version(MODEL_NAME, second)
    assert version.tags["promotion.run_id"] == result.run_id
    assert "best test R² 0.575788" in version.tags["promotion.reason"]

    again = promote([ALIAS_CHALLENGER])
    assert not again.changed and again.reason.endswith("it already is the champion")

    back = rollback()
    assert (back.champion, back.previous) == ("1", second)
    assert str(registry.version_by_alias(ALIAS_CHAMPION).version) == "1"
    assert str(registry.version_by_alias(ALIAS_PREVIOUS_CHAMPION).version) == second


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


def test_the_lock_sits_beside_a_database_named_by_a_relative_uri(
    trained_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `sqlite:///relative/mlflow.db` is relative to the working folder, as MLflow opens it.
    (tmp_path / "relative").mkdir()
    shutil.copy(trained_store.root / "mlflow.db", tmp_path / "relative" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    with using(Store(Path("relative"))) as uri:
        assert uri == "sqlite:///relative/mlflow.db"
        assert promote([ALIAS_CHALLENGER]).changed
    assert (tmp_path / "relative" / "mlflow.promote.lock").is_file()
