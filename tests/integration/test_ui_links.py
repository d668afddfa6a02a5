"""Integration: what a user meets after `python -m pipeline main` (issue #14).

The summary's links open this pipeline's runs and champion in the model-training view of a live
`mlflow ui`, started with the command the summary printed; the experiment is tagged as a
model-training one and holds the saved comparison view; a step is quiet unless `--verbose`;
`predict` without a store says so and creates nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import links, store, tracking
from pipeline.config import EXPERIMENT_NAME, MODEL_NAME
from tests.conftest import UiPipeline

pytestmark = pytest.mark.integration

PRINTED_LINK = re.compile(r"^  (?P<label>[^:]+):\s+(?P<url>http://\S+)$", re.MULTILINE)
TRAIN_RUN = "train · sklearn data · split 42"


def printed_links(stdout: str) -> dict[str, str]:
    return {match["label"]: match["url"] for match in PRINTED_LINK.finditer(stdout)}


def route(url: str) -> tuple[str, list[tuple[str, str]]]:
    """The UI page a link opens (the part after `#`) and its query, in order."""
    fragment = urllib.parse.urlsplit(url).fragment
    path, _, query = fragment.partition("?")
    return path, urllib.parse.parse_qsl(query)


def api(base: str, endpoint: str, **query: str) -> dict:
    """A GET of the REST API as the UI's pages call it; fails unless the answer is 200."""
    url = f"{base}/ajax-api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        return json.load(response)


def experiment_of(pipeline: UiPipeline):
    client = MlflowClient(store.backend_uri(pipeline.root))
    return client, client.get_experiment_by_name(EXPERIMENT_NAME)


def test_every_printed_link_opens_the_model_training_view_of_the_local_ui(ui_pipeline: UiPipeline) -> None:
    found = printed_links(ui_pipeline.stdout)
    assert list(found) == ["float vs quantized run", "champion, version 2", "every model run"]
    for url in found.values():
        assert url.startswith(f"{links.LOCAL_UI}/#/")
        assert route(url)[1][-1] == ("workflowType", "machine_learning")
    command = f"mlflow ui --backend-store-uri sqlite:///{ui_pipeline.root}/mlflow.db --port 5000"
    assert f"MLflow UI (start it first: {command}):" in ui_pipeline.stdout


def test_compare_link_opens_this_pipelines_float_and_quantized_runs(ui_pipeline: UiPipeline, ui_server: str) -> None:
    path, query = route(printed_links(ui_pipeline.stdout)["float vs quantized run"])
    assert path == "/compare-runs"
    # The compare page reads its runs from the first query parameter only.
    assert query[0][0] == "runs"
    run_ids, experiment_ids = json.loads(query[0][1]), json.loads(dict(query)["experiments"])
    with urllib.request.urlopen(f"{ui_server}/", timeout=30) as page:
        assert page.status == 200 and b'<div id="root"' in page.read()
    client, experiment = experiment_of(ui_pipeline)
    assert experiment_ids == [experiment.experiment_id]
    api(ui_server, "experiments/get", experiment_id=experiment.experiment_id)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.step = 'main'")
    runs = [api(ui_server, "runs/get", run_id=run_id)["run"] for run_id in run_ids]
    tags = [{tag["key"]: tag["value"] for tag in run["data"]["tags"]} for run in runs]
    assert [t["mlflow.parentRunId"] for t in tags] == [parent.info.run_id] * 2
    assert [t["mlflow.runName"] for t in tags] == [TRAIN_RUN, "quantize-int8"]


def test_champion_link_opens_the_champion_version(ui_pipeline: UiPipeline, ui_server: str) -> None:
    path, _ = route(printed_links(ui_pipeline.stdout)["champion, version 2"])
    assert path == f"/models/{MODEL_NAME}/versions/2"
    model = api(ui_server, "registered-models/get", name=MODEL_NAME)["registered_model"]
    aliases = {alias["alias"]: alias["version"] for alias in model["aliases"]}
    assert aliases["champion"] == "2"
    version = api(ui_server, "model-versions/get", name=MODEL_NAME, version="2")["model_version"]
    assert {tag["key"]: tag["value"] for tag in version["tags"]}["quantization"] == "int8"


def test_runs_link_loads_the_saved_view_with_the_compared_metrics(ui_pipeline: UiPipeline, ui_server: str) -> None:
    client, experiment = experiment_of(ui_pipeline)
    path, query = route(printed_links(ui_pipeline.stdout)["every model run"])
    assert path == f"/experiments/{experiment.experiment_id}/runs"
    # A search parameter in the link would make the UI ignore the saved view.
    assert dict(query) == {"viewStateShareKey": links.COMPARISON_VIEW, "workflowType": "machine_learning"}
    shown = api(ui_server, "experiments/get", experiment_id=experiment.experiment_id)["experiment"]
    tags = {tag["key"]: tag["value"] for tag in shown["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags[f"mlflow.sharedViewState.{links.COMPARISON_VIEW}"])
    assert view["selectedColumns"][:2] == ["metrics.`test_r2`", "metrics.`r2_delta`"]
    assert view["orderByKey"] != "attributes.start_time"  # sorted by start time, the UI folds child runs away
    listed = client.search_runs([experiment.experiment_id], view["searchFilter"])
    assert sorted(run.info.run_name for run in listed) == ["quantize-int8", TRAIN_RUN]
    quantized = next(run for run in listed if run.info.run_name == "quantize-int8")
    assert set(links.COMPARED_METRICS) <= set(quantized.data.metrics)
    # The difference the UI shows to 4 significant digits, where both R² read 0.576.
    assert quantized.data.metrics["r2_delta"] == pytest.approx(0.000214, abs=1e-6)


def test_an_experiment_made_before_gets_the_kind_tag_on_its_next_run(tracking_uri: str) -> None:
    client = MlflowClient()
    experiment_id = client.create_experiment(EXPERIMENT_NAME)
    assert "mlflow.experimentKind" not in client.get_experiment(experiment_id).tags
    assert tracking.ensure_experiment() == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(tags[f"mlflow.sharedViewState.{links.COMPARISON_VIEW}"]) == json.loads(links.comparison_view())


def test_the_summary_is_quiet_and_says_the_decision_in_one_sentence(ui_pipeline: UiPipeline) -> None:
    assert ui_pipeline.stderr == ""
    assert (
        "champion is now california-housing v2: quantized v2 (int8) scores 0.000214 higher test R² than "
        "challenger v1, and is smaller and cheaper to serve\n" in ui_pipeline.stdout
    )
    serve = "mlflow models serve -m models:/california-housing@champion --env-manager local -h 127.0.0.1 -p 5001"
    assert f"serve it: {serve}\n" in (ui_pipeline.stdout)


def test_verbose_shows_the_lines_the_default_leaves_out(tmp_path: Path) -> None:
    # The whole pipeline said nothing on stderr (test above); train alone, verbose, says what it did.
    env = {
        key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--verbose"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert any(" INFO mlflow." in line for line in lines)
    assert any(" INFO pipeline.registry: registered california-housing version 1" in line for line in lines)
    assert "Successfully registered model 'california-housing'." in lines


@pytest.mark.parametrize("where", ["default", "named"])
def test_predict_without_a_store_says_so_and_creates_nothing(tmp_path: Path, where: str) -> None:
    env = {
        key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    }
    database = tmp_path / "mlflow.db"
    if where == "named":
        database = tmp_path / "elsewhere" / "store.db"
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{database}"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: the tracking store sqlite:///{database} holds no model 'california-housing': there is no "
        f"{database}; nothing was created. Run the pipeline first (python -m pipeline main), here or with "
        "MLFLOW_TRACKING_URI set to the store to use"
    ]
    assert list(tmp_path.iterdir()) == []


def test_hints_after_a_temporary_server_name_its_directory(container_run) -> None:
    """The container logs through a server it stops: no link to it, and hints that work without it."""
    assert "View run" not in container_run.stdout
    root = container_run.root.resolve()
    ui = (
        f"mlflow ui --backend-store-uri sqlite:///{root}/mlflow.db --artifacts-destination {root}/artifacts --port 5000"
    )
    assert f"MLflow UI (start it first: {ui}):" in container_run.stdout
    assert f"serve it: python -m pipeline.store --dir {root} -- mlflow models serve -m" in container_run.stdout
    assert f"(open the UI on it with: {ui})" in container_run.stdout
