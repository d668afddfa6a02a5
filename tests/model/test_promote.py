"""The promotion gate in the real registry: rejection, rollback, aliases, and the lock beside the store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import registry
from pipeline.config import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_PREVIOUS_CHAMPION, MODEL_NAME
from pipeline.errors import PipelineError, RejectedError
from pipeline.promote import promote, rollback
from tests.conftest import Store, using


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
