"""MLflow set-up shared by the steps; works under `mlflow run` and when called directly.

`mlflow run` creates the run before our code starts, in the experiment its own flags chose,
and hands it over in `MLFLOW_RUN_ID`; `mlflow.start_run()` then resumes that run. Called
directly, a step creates its own run in `california-housing`. Inside an active run (the
`main` pipeline) a step becomes a nested child run.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import RunStatus
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from pipeline import data as data_mod
from pipeline import store
from pipeline.config import (
    EXPERIMENT_NAME,
    MODEL_REQUIREMENTS,
    SKLEARN_SOURCE,
    SKLEARN_SOURCE_URL,
    SPLIT_ARTIFACT,
    TARGET,
)
from pipeline.errors import PipelineError
from pipeline.registry import retry_lost_race

log = logging.getLogger(__name__)


_GENERATED_RUN_NAME = re.compile(r"[a-z]+-[a-z]+-\d+")


def ensure_experiment(name: str = EXPERIMENT_NAME) -> str:
    """Makes `name` the active experiment, creating it if needed, and returns its id.

    Raises:
        PipelineError: The experiment stores artifacts behind a tracking server
            (`mlflow-artifacts:/`) but the tracking URI is a database file (mlflow#7819).
    """
    experiment = mlflow.set_experiment(name)
    # When another process creates the experiment at the same moment, MLflow 3.17's
    # set_experiment returns it without making it active, and runs (nested ones too) would go to
    # Default; activating it by id always activates it.
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    check_artifact_root(experiment.artifact_location, name)
    return experiment.experiment_id


def check_artifact_root(artifact_location: str, experiment_name: str) -> None:
    """Refuses, with the fix, to log to an experiment whose artifacts only a server can reach.

    An experiment created through `mlflow ui`/`mlflow server` gets an `mlflow-artifacts:/`
    root; logging to the same SQLite file without that server then fails deep inside MLflow
    with an unrelated-looking error (mlflow issue #7819).
    """
    uri = mlflow.get_tracking_uri()
    if artifact_location.startswith("mlflow-artifacts:") and not uri.startswith(("http://", "https://")):
        raise PipelineError(
            f"experiment {experiment_name!r} stores its artifacts at {artifact_location} (it was "
            f"created through 'mlflow server' or 'mlflow ui'; mlflow issue #7819), which only a "
            f"tracking server can reach, but the tracking URI is {uri}; nothing was logged. "
            f"{_server_fix(uri)}, or pass --experiment-name NEW to log to a new experiment of this file."
        )


def sqlite_database(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (relative to the working folder, as
    MLflow opens it, unless the URI has a fourth slash), or None for other stores."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _server_fix(uri: str) -> str:
    """How to log through a server over the database `uri`, as exact as the store allows."""
    # A tracking directory made by pipeline.store keeps its artifacts in artifacts/ beside the database.
    database = sqlite_database(uri)
    if database is not None and (database.parent / store.ARTIFACTS_DIR).is_dir():
        return (
            f"Log through a server over it: prefix your command with "
            f"'python -m pipeline.store --dir {database.parent} --'"
        )
    return (
        "Log through the server that created it: start 'mlflow server --backend-store-uri URI "
        "--artifacts-destination ITS_ARTIFACTS_FOLDER' and set MLFLOW_TRACKING_URI=http://127.0.0.1:5000"
    )


@contextmanager
def step_run(
    step: str,
    run_name: str,
    description: str,
    experiment_name: str = EXPERIMENT_NAME,
) -> Iterator[mlflow.ActiveRun]:
    """Runs a pipeline step inside an MLflow run and tags it.

    Args:
        step: The step's name, logged as tag `step`.
        run_name: Name shown in the MLflow UI.
        description: What this run is, shown in the UI (tag `mlflow.note.content`).
        experiment_name: Experiment for a run this function creates itself.

    Yields:
        The active run. It ends FAILED if the body raises, KILLED on SIGINT or SIGTERM.
    """
    if mlflow.active_run() is not None:
        context = mlflow.start_run(run_name=run_name, nested=True, description=description)
    elif os.environ.get("MLFLOW_RUN_ID"):
        context = mlflow.start_run(run_name=_cli_run_name(run_name), description=description)
    else:
        ensure_experiment(experiment_name)
        context = mlflow.start_run(run_name=run_name, description=description)
    with context as run:
        try:
            if os.environ.get("MLFLOW_RUN_ID") == run.info.run_id:
                _check_cli_experiment(run, experiment_name)
            tags = {"step": step}
            commit = git_commit()
            if commit:
                tags["git_commit"] = commit
            mlflow.set_tags(tags)
            yield run
        except KeyboardInterrupt:
            # SIGINT or SIGTERM (pipeline.cli): the run was stopped, it did not fail. Ended here,
            # before the `with` would end it as FAILED; an enclosing step run does the same.
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise


def _cli_run_name(step_name: str) -> str | None:
    """The name for a run `mlflow run` created: the step's, unless the user chose one.

    `mlflow run` names its run adjective-noun-NNN unless given `--run-name`; only the
    generated name is replaced.
    """
    run = MlflowClient().get_run(os.environ["MLFLOW_RUN_ID"])
    return step_name if _GENERATED_RUN_NAME.fullmatch(run.info.run_name or "") else None


def _check_cli_experiment(run: mlflow.ActiveRun, experiment_name: str) -> None:
    """Checks the experiment `mlflow run` chose: its artifact root, and that it is ours."""
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    check_artifact_root(experiment.artifact_location, experiment.name)
    if experiment.name != experiment_name:
        log.warning(
            "this run is in experiment %r, chosen by 'mlflow run'; pass "
            "'--experiment-name %s' to 'mlflow run' to keep runs together",
            experiment.name,
            experiment_name,
        )


def log_params(params: dict[str, Any]) -> None:
    """Logs the params the active run does not have yet.

    `mlflow run` logs an entry point's parameters itself, as the command line spelled them
    (`0.20`, `''`); MLflow refuses to log a key again with another spelling.
    """
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params({key: value for key, value in params.items() if key not in logged})


def git_commit() -> str | None:
    """The commit of the source tree this process runs from, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def model_requirements() -> list[str]:
    """Pinned pip requirements of a logged model: the versions installed here.

    Given explicitly, because MLflow's inference of them costs seconds per logged model.
    """
    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def log_dataset_inputs(split: data_mod.Split, dataset: data_mod.Dataset) -> None:
    """Logs the training and evaluation sets as run inputs, with a real source and digest."""
    for context, X, y in (
        ("training", split.X_train, split.y_train),
        ("evaluation", split.X_test, split.y_test),
    ):
        logged = mlflow_dataset(X.assign(**{y.name: y}), dataset.source, f"california-housing-{context}")
        # Concurrent pipelines log the same data set; MLflow inserts it once per experiment.
        retry_lost_race(partial(mlflow.log_input, logged, context=context), f"data set {logged.name!r}")


def mlflow_dataset(frame: pd.DataFrame, source: str, name: str) -> PandasDataset:
    """MLflow's data set for a validated frame (its target, if present, marked as such), with a
    real source and our digest.

    MLflow infers its schema once, on first use, by checking every cell; build it once and pass
    the same object to every call that logs or evaluates on it.
    """
    return mlflow.data.from_pandas(
        frame,
        source=dataset_source(source),
        targets=TARGET if TARGET in frame.columns else None,
        name=name,
        digest=data_mod.to_dataset(frame, source).digest,
    )


def dataset_source(source: str) -> DatasetSource:
    """MLflow's record of where data came from: scikit-learn's download URL, or the CSV file."""
    if source == SKLEARN_SOURCE:
        return HTTPDatasetSource(SKLEARN_SOURCE_URL)
    # MLflow registers its local-file source type twice and warns that a path is ambiguous;
    # both registrations are the same class, so the warning says nothing here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return resolve_dataset_source(Path(source).as_uri())


def log_split(split: data_mod.Split, dataset: data_mod.Dataset, test_size: float, random_state: int) -> None:
    """Records which rows trained and tested the model, so later steps reuse the same split."""
    record = {
        "source": dataset.source,
        "digest": dataset.digest,
        "n_rows": len(dataset.X),
        "test_size": test_size,
        "random_state": random_state,
        "train_index": split.train_index,
        "test_index": split.test_index,
    }
    log_split_record(record)


def log_split_record(record: dict[str, Any]) -> None:
    """Logs a split record (as `load_split` returns it) to the active run, e.g. to pass it on."""
    mlflow.log_dict(record, SPLIT_ARTIFACT)


def load_split(run_id: str) -> tuple[data_mod.Split, dict[str, Any]]:
    """Rebuilds the split a run recorded with `log_split`.

    Returns:
        The split and the record (source, digest, test_size, random_state, indices).

    Raises:
        PipelineError: The run recorded no split, or its data changed since.
    """
    record = load_split_record(run_id)
    return split_from_record(record, run_id), record


def load_split_record(run_id: str) -> dict[str, Any]:
    """The split record a run logged (`split.json`), without loading its data.

    Raises:
        PipelineError: The run recorded no split.
    """
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPLIT_ARTIFACT}")
    except Exception as err:  # MLflow raises several types for a missing artifact
        raise PipelineError(f"run {run_id} recorded no {SPLIT_ARTIFACT}: {err}") from None


def split_from_record(record: dict[str, Any], run_id: str) -> data_mod.Split:
    """Loads the data a split record names and rebuilds the split from its row labels.

    Raises:
        PipelineError: The data changed since run `run_id` recorded the split.
    """
    dataset = data_mod.load(record["source"])
    if dataset.digest != record["digest"]:
        raise PipelineError(
            f"the data at {record['source']} changed since run {run_id} recorded its split "
            f"(digest {dataset.digest}, recorded {record['digest']})"
        )
    return data_mod.split_by_index(dataset, record["train_index"], record["test_index"])


def model_file_bytes(model_info: ModelInfo, filename: str) -> int:
    """Size of one file of a logged model (the serialized weights), as stored.

    Args:
        model_info: The logged model.
        filename: The file's path inside the model: `model.skops`, `artifacts/params.json`.

    Raises:
        PipelineError: The logged model has no such file.
    """
    folder, _, name = filename.rpartition("/")
    for artifact in MlflowClient().list_logged_model_artifacts(model_info.model_id, folder or None):
        if artifact.path.rsplit("/", 1)[-1] == name:
            return int(artifact.file_size)
    raise PipelineError(f"logged model {model_info.model_uri} has no file {filename!r}")
