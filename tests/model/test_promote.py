"""The promotion gate in the real registry: rejection, rollback, aliases, and the promotion lease."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import lease, registry, store
from pipeline.config import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_PREVIOUS_CHAMPION, MODEL_NAME
from pipeline.errors import PipelineError, RejectedError
from pipeline.lease import HOLDER_TAG, LEASE_NAME, promotion_lease
from pipeline.promote import promote, rollback


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


def test_each_decision_records_the_champion_it_judged_and_leaves_no_lease(trained_store, clone_store) -> None:
    clone_store(trained_store)
    first = promote([ALIAS_CHALLENGER])
    second_version = _second_version()
    second = promote([ALIAS_CHALLENGER])
    client = MlflowClient()
    tags = [client.get_run(r.run_id).data.tags for r in (first, second)]
    assert [t["promotion.judged_against"] for t in tags] == ["none", "v1"]
    assert tags[0]["promotion.lease_holder"] != tags[1]["promotion.lease_holder"]
    assert (second.champion, second.previous) == (second_version, "1")
    # The lease exists only while a promotion runs; no lock file is left beside the database.
    assert [m.name for m in client.search_registered_models()] == [MODEL_NAME]
    assert not list(Path(store.sqlite_path(mlflow.get_tracking_uri())).parent.glob("*.lock"))


def test_a_holder_that_lost_the_lease_is_stopped_and_leaves_the_new_holders_lease(tracking_uri: str) -> None:
    client = MlflowClient()
    with promotion_lease() as held:
        # What a take-over does to a holder stopped longer than the lease's TTL.
        client.delete_registered_model(LEASE_NAME)
        client.create_registered_model(LEASE_NAME, tags={HOLDER_TAG: "elsewhere:1:abc"})
        with pytest.raises(PipelineError, match=r"lost the promotion lease .* \(now held by elsewhere:1:abc\)"):
            held.check_held()
    assert client.get_registered_model(LEASE_NAME).tags[HOLDER_TAG] == "elsewhere:1:abc"


def test_a_waiter_leaves_a_live_takers_marker_and_gives_up_at_its_deadline(tracking_uri: str) -> None:
    # A dead holder's lease (TTL 1 s) that another waiter has just begun to take over.
    client = MlflowClient()
    dead = "gone:1:000000000000"
    client.create_registered_model(LEASE_NAME, tags={HOLDER_TAG: dead, lease.HEARTBEAT_TAG: "0", lease.TTL_TAG: "1"})
    marker = lease.TAKEOVER_PREFIX + dead.replace(":", "-")
    client.create_registered_model(marker, tags={HOLDER_TAG: "taker:2:000000000000"})
    # The marker counts as its maker's for 2 * TTL after we first see it, which is after the
    # deadline: the waiter sleeps between passes and gives up then, leaving lease and marker alone.
    with pytest.raises(PipelineError, match=rf"held by {dead} for more than 2 s"), promotion_lease(ttl=1, wait=1.5):
        pass
    assert client.get_registered_model(LEASE_NAME).tags[HOLDER_TAG] == dead
    assert client.get_registered_model(marker).tags[HOLDER_TAG] == "taker:2:000000000000"


def test_a_registry_gone_at_release_leaves_the_blocks_own_error(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(ValueError, match="the block's own error"), promotion_lease():
        # Nothing listens on port 9: the release cannot reach the registry.
        mlflow.set_tracking_uri("http://127.0.0.1:9")
        raise ValueError("the block's own error")
    assert "could not release the promotion lease" in caplog.text
