"""MLflow set-up shared by the steps; works under `mlflow run` and when called directly.

`mlflow run` creates the run before our code starts, in the experiment its own flags chose,
and hands it over in `MLFLOW_RUN_ID`; `mlflow.start_run()` then resumes that run. Called
directly, a step creates its own run in `california-housing`. Inside an active run (the
`main` pipeline) a step becomes a nested child run.

Split records are in `pipeline.splits`, data set inputs in `pipeline.datasets`, what logged
models share in `pipeline.models`, and the work-arounds for MLflow's quirks in
`pipeline.mlflow_compat`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Experiment, RunStatus
from mlflow.tracking import MlflowClient

from pipeline import links, mlflow_compat
from pipeline.config import EXPERIMENT_NAME
from pipeline.errors import interruption

log = logging.getLogger(__name__)


def ensure_experiment(name: str = EXPERIMENT_NAME) -> str:
    """Makes `name` the active experiment, creating it if needed, and returns its id.

    Raises:
        PipelineError: The experiment stores artifacts behind a tracking server
            (`mlflow-artifacts:/`) but the tracking URI is a database file (mlflow#7819).
    """
    experiment = mlflow_compat.activate_experiment(name)
    mlflow_compat.check_artifact_root(experiment.artifact_location, name)
    mark_model_training(experiment)
    return experiment.experiment_id


def mark_model_training(experiment: Experiment) -> None:
    """Tags the experiment as a model-training one and saves the UI's comparison view in it
    (`pipeline.links`); an experiment made before these tags existed gets them on its next run."""
    tags = {
        links.EXPERIMENT_KIND_TAG: links.EXPERIMENT_KIND,
        links.SHARED_VIEW_TAG_PREFIX + links.COMPARISON_VIEW: links.comparison_view(),
    }
    client = MlflowClient()
    for key, value in tags.items():
        if experiment.tags.get(key) != value:
            # Steps starting together on a new experiment all set the same tags.
            mlflow_compat.retry_lost_race(
                lambda key=key, value=value: client.set_experiment_tag(experiment.experiment_id, key, value),
                f"experiment tag {key}",
            )


@contextmanager
def step_run(
    step: str,
    run_name: str,
    description: str,
    experiment_name: str = EXPERIMENT_NAME,
) -> Iterator[mlflow.ActiveRun]:
    """Runs a pipeline step inside an MLflow run named `run_name`, tagged `step` (and `git_commit`),
    `description` its note in the UI; a run this function creates itself goes to `experiment_name`.

    Yields:
        The active run. It ends FAILED if the body raises, KILLED on SIGINT or SIGTERM.
    """
    if mlflow.active_run() is not None:
        context = mlflow.start_run(run_name=run_name, nested=True, description=description)
    elif os.environ.get("MLFLOW_RUN_ID"):
        name = mlflow_compat.cli_run_name(os.environ["MLFLOW_RUN_ID"], run_name)
        context = mlflow.start_run(run_name=name, description=description)
    else:
        ensure_experiment(experiment_name)
        context = mlflow.start_run(run_name=run_name, description=description)
    with context as run, killed_on_interrupt():
        if os.environ.get("MLFLOW_RUN_ID") == run.info.run_id:
            _check_cli_experiment(run, experiment_name)
        tags = {"step": step}
        commit = git_commit()
        if commit:
            tags["git_commit"] = commit
        mlflow.set_tags(tags)
        yield run


@contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """Ends the active run as KILLED when SIGINT or SIGTERM (pipeline.cli) stops the block.

    Use it inside `with mlflow.start_run(...)`: the run was stopped, it did not fail, and it is
    ended before that `with` would end it as FAILED; an enclosing run does the same.
    """
    try:
        yield
    except BaseException as err:
        if interruption(err) is None:
            raise
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise


def _check_cli_experiment(run: mlflow.ActiveRun, experiment_name: str) -> None:
    """Checks the experiment `mlflow run` chose: its artifact root, and that it is ours."""
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    mlflow_compat.check_artifact_root(experiment.artifact_location, experiment.name)
    mark_model_training(experiment)
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
