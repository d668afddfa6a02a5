"""Work-arounds for MLflow 3.17.2 (and skops 0.16.0), in one place, so an upgrade can drop them one by one.

Each says what MLflow does (the file and function in MLflow 3.17.2, under `mlflow/`), the
upstream issue where there is one, and what to check before deleting it. Callers call the
named function; nothing else in `pipeline/` works around MLflow, except the code listed under
"Elsewhere", which must stay with its caller.

Here:
- `import_skops_first`: import order only (skops 0.16.0, no MLflow bug). skops resolves its
  trusted types against every loaded module; importing it before MLflow's modules makes each
  step start sooner. Delete when a step's start-up time with and without it is the same.
- `activate_experiment`: `tracking/fluent.py` `set_experiment(name)` returns early, without
  making the experiment active, when `create_experiment` raises RESOURCE_ALREADY_EXISTS
  (another process created it at the same moment; set_experiment is not safe for
  concurrency: mlflow#10334, mlflow#12259). Delete when that branch activates it too.
- `check_artifact_root`: an experiment created through `mlflow server`/`mlflow ui` has an
  `mlflow-artifacts:/` root, which a client logging straight to the database cannot reach; it
  fails deep inside artifact logging with an unrelated-looking error (mlflow#7819). Delete when
  MLflow refuses it itself, with a message naming the cause.
- `cli_run_name`: `mlflow run` creates its run before our code starts and names it with
  `utils/name_utils.py` `_generate_random_name` (adjective-noun-NNN) unless given `--run-name`,
  and records nothing that tells the two apart; only a name of that shape is replaced.
- `retry_lost_race`: the SQLAlchemy stores write check-then-insert without a lock:
  `store/model_registry/sqlalchemy_store.py` `set_registered_model_alias` (`session.merge`:
  SELECT by key, then INSERT) and `store/tracking/sqlalchemy_store.py` `_log_inputs_impl`
  (looks up the data set, then inserts it); two processes doing the same write at once make
  one fail with `UNIQUE constraint failed`. No upstream issue found. Delete when both write
  with an upsert.
- `file_dataset_source`: `data/artifact_dataset_sources.py` `register_artifact_dataset_sources`
  makes a LocalArtifactDatasetSource for each scheme of the local artifact repository (`` and
  `file`); both accept a file URI, so resolving one warns that it "can be interpreted in
  multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource" (mlflow#9702). Delete
  when resolving a file URI no longer warns.
- `check_tracking_server`: the REST client retries an unreachable server
  `MLFLOW_HTTP_REQUEST_MAX_RETRIES` (7) times with backoff factor 2, minutes of silence before
  an error; one GET of the server's `/health` with a short timeout fails fast instead.
  (`pipeline.store.local_server` polls the same endpoint while its server starts: MLflow's
  liveness check, used as intended, not a work-around.)
- `scoring_server_env`: `pyfunc/scoring_server/__init__.py` `get_cmd` starts the command
  `uvicorn` found on PATH, not the interpreter's own, so `mlflow models serve` fails from a
  virtual environment that is not activated. Delete when it runs `sys.executable -m uvicorn`.
- `load_pyfunc`: `pyfunc/__init__.py` `load_model` checks the model's requirements with
  `utils/requirements_utils.py` `_check_requirement_satisfied`, which first maps the modules of
  every installed distribution (`_init_modules_to_packages_map`, `packages_distributions()`, a
  scan of all their RECORD files) only to name a module to import for a package without
  metadata; such a package is not in that map either, so an empty map gives the same warnings.
  No upstream issue found. Delete when loading a model no longer scans every distribution.
- `unchecked_predict`: `pyfunc/__init__.py` `PyFuncModel._predict` enforces the signature on
  every call (`_validate_prediction_input`, `_enforce_schema`: a copy and a check per column).
  For a frame of exactly the signature's double columns, in its order, that returns the same
  frame, so the flavor's predict (`PyFuncModel._model_impl`, a stable developer API) is called
  directly. Delete when checking a conforming frame costs next to nothing.
- `quiet_artifact_progress`: `utils/file_utils.py` `ArtifactProgressBar` draws a tqdm bar on
  stderr for every artifact download whenever tqdm is installed (this project installs it for
  `predict`'s own bar), terminal or not, so a step's one-line error came after several bar
  lines. Its documented switch `MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR` turns them off unless
  the user set it. Delete when MLflow draws them only on a terminal.
- `quiet_mlflow`, `registry_messages`: MLflow logs at INFO through its own handler
  (`utils/logging_utils.py` `_configure_mlflow_loggers`, level from `MLFLOW_LOGGING_LEVEL`),
  and `tracking/_model_registry/fluent.py` `_register_model` prints "Successfully registered
  model", "Created version" with `eprint`, which no level governs; only switching MLflow's
  logging stream off (`disable_logging`) silences them, and that stream carries its warnings
  too, so it is off only while a version is registered. `_log_url` of
  `tracking/_tracking_service/client.py` writes "View run ... at" links to stdout when a run
  ends on a server (`MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT` turns them off): for
  `pipeline.store`'s temporary server they name a server that is gone when they are read; the
  steps print links that outlive it (`pipeline.links`). Delete when `eprint` follows the level.

Elsewhere (the code stays with its caller):
- `pipeline.store.ensure_database` locks with `utils/file_utils.py` `ExclusiveFileLock`, an
  internal MLflow helper: an `fcntl.flock` the kernel releases however its holder ends. Check
  on an upgrade that it still is one (`test_processes_started_at_once_on_the_default_store_create_it_whole`).
- `pipeline.store.ensure_database`: `SqlAlchemyStore.__init__` of `store/tracking/` and
  `store/model_registry/sqlalchemy_store.py` creates and migrates a new store's tables with
  `store/db/utils.py` `_initialize_tables`, without a lock (MLflow's `_safe_initialize_tables`,
  which takes one, serves only its jobs and workspace stores), so processes starting together
  on one new SQLite file fail (`table _alembic_tmp_experiments already exists`, `duplicate
  column name`) and can leave it half-migrated. Delete when SqlAlchemyStore initializes under a lock (check:
  six processes opening one new file with MLflow alone all succeed, as tests/integration/test_store.py
  `test_processes_started_at_once_on_the_default_store_create_it_whole` does with it).
- `pipeline.lease`: the registry has no compare-and-set for an alias, so two promotions could
  both read champion vN and both move it; promote holds a lease in the registry itself (a
  registered model created atomically) while it reads, decides and moves, on any store.
- `pipeline.train.CheckedSklearnFlavor`: `sklearn/__init__.py` `save_model` always writes
  `mlflow.sklearn` as the python_function loader, with no option to name another; the flavor
  saves as it does, then points the MLmodel's loader at `served_model.py`.
- `pipeline.tracking.log_params`: `mlflow run` logs an entry point's parameters as the command
  line spelled them (`0.20`, `''`), and MLflow refuses to log a key again with another value;
  only the keys the run lacks are logged.
- `pipeline.links` and `pipeline.tracking.mark_model_training`: the UI (3.17.2) chooses its
  GenAI or model-training view from the URL's `workflowType=machine_learning` (not from the
  experiment), and reads a saved runs-table view from the experiment tag
  `mlflow.sharedViewState.<key>` named by `viewStateShareKey` in the URL; both are the UI's
  internal formats (its "Share" button writes the tag). Check on an upgrade: the printed links
  open the model-training view and the saved view (tests/integration/test_ui_links.py).
- `pipeline.lease._create`: `create_registered_model` on a name that exists re-reads the
  clashing model (`store/model_registry/sqlalchemy_store.py`), so a lease deleted in between
  surfaces as RESOURCE_DOES_NOT_EXIST; both mean "someone else created it".
- No code: after SIGINT, `mlflow run` marks its run FAILED over the KILLED our step set:
  `projects/__init__.py` `_maybe_set_run_terminated` passes the status string to
  `entities/run_status.py` `RunStatus.is_terminated`, which compares numbers, so it always
  overwrites. tests/integration/test_signals.py `test_mlflow_run_stopped_mid_pipeline` asserts FAILED for
  the SIGINT case; an MLflow that fixes this makes that assertion fail, and KILLED is right.

MLflow is imported inside the functions: `import_skops_first` must run before it loads.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline import store
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.entities import Experiment
    from mlflow.pyfunc import PyFuncModel

log = logging.getLogger(__name__)

T = TypeVar("T")

# `mlflow run`'s generated run names: adjective-noun-NNN.
GENERATED_RUN_NAME = re.compile(r"[a-z]+-[a-z]+-\d+")
# Seconds to wait for a tracking server before saying it is unreachable.
SERVER_TIMEOUT = 5.0


def import_skops_first() -> None:
    """Imports skops (MLflow's safe format for scikit-learn models) before MLflow is loaded.

    Called first by the steps that always load or log a scikit-learn model
    (`pipeline.__main__.SKLEARN_STEPS`); scoring the quantized champion needs neither.
    """
    import skops.io  # noqa: F401


def activate_experiment(name: str) -> Experiment:
    """Makes experiment `name` the active one, creating it if needed, also when another process
    creates it at the same moment."""
    import mlflow

    experiment = mlflow.set_experiment(name)
    # The racing case returns the experiment without activating it; activating by id always does.
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment


def check_artifact_root(artifact_location: str, experiment_name: str) -> None:
    """Refuses, with the fix, to log to an experiment whose artifacts only a server can reach.

    Raises:
        PipelineError: The experiment stores artifacts behind a tracking server
            (`mlflow-artifacts:/`) but the tracking URI is a database file (mlflow#7819).
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    if artifact_location.startswith("mlflow-artifacts:") and not uri.startswith(("http://", "https://")):
        raise PipelineError(
            f"experiment {experiment_name!r} stores its artifacts at {artifact_location} (it was "
            f"created through 'mlflow server' or 'mlflow ui'; mlflow issue #7819), which only a "
            f"tracking server can reach, but the tracking URI is {uri}; nothing was logged. "
            f"{_server_fix(uri)}, or pass --experiment-name NEW to log to a new experiment of this file."
        )


def _server_fix(uri: str) -> str:
    """How to log through a server over the database `uri`, as exact as the store allows."""
    # A tracking directory made by pipeline.store keeps its artifacts in artifacts/ beside the database.
    database = store.sqlite_path(uri)
    if database is not None and (database.parent / store.ARTIFACTS_DIR).is_dir():
        return (
            f"Log through a server over it: prefix your command with "
            f"'python -m pipeline.store --dir {database.parent} --'"
        )
    return (
        "Log through the server that created it: start 'mlflow server --backend-store-uri URI "
        "--artifacts-destination ITS_ARTIFACTS_FOLDER' and set MLFLOW_TRACKING_URI=http://127.0.0.1:5000"
    )


def cli_run_name(run_id: str, step_name: str) -> str | None:
    """The name for the run `mlflow run` created: the step's, unless the user chose one."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(run_id)
    return step_name if GENERATED_RUN_NAME.fullmatch(run.info.run_name or "") else None


# How a unique key's clash reads in MLflow's error: SQLite's words, then PostgreSQL's.
UNIQUE_KEY_CLASHES = ("UNIQUE constraint failed", "duplicate key value violates unique constraint")


def retry_lost_race(call: Callable[[], T], what: str, attempts: int = 5) -> T:
    """Runs an idempotent MLflow write again when it failed on a unique key because another process
    did the same write at the same moment; the next attempt finds the row and succeeds."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts):
        try:
            return call()
        except MlflowException as err:
            if not any(clash in str(err) for clash in UNIQUE_KEY_CLASHES):
                raise
            log.info("%s was written by another process at the same time; retrying", what)
            time.sleep(0.05 * attempt)
    return call()


def file_dataset_source(path: str) -> DatasetSource:
    """MLflow's data set source for a local file, without its warning that the path is ambiguous."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return resolve_dataset_source(Path(path).as_uri())


def check_tracking_server(timeout: float = SERVER_TIMEOUT) -> None:
    """Fails fast, naming the URI, when the tracking server does not answer.

    Only HTTP(S) tracking URIs are probed; a database or a folder needs no server.

    Raises:
        PipelineError: Nothing answers at the tracking URI within `timeout` seconds.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # something answers; MLflow's own calls report what it says
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PipelineError(
            f"tracking server {uri} is unreachable ({reason}); start it or set MLFLOW_TRACKING_URI"
        ) from None


def scoring_server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with this interpreter's scripts first on PATH, where `mlflow models serve`
    looks for `uvicorn`, also when the environment is not activated."""
    return {**environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"}


def load_pyfunc(model_uri: str) -> PyFuncModel:
    """`mlflow.pyfunc.load_model`, its requirements check done without mapping every installed module."""
    import mlflow
    from mlflow.utils import requirements_utils

    mapped = requirements_utils._MODULES_TO_PACKAGES is not None
    if not mapped:
        requirements_utils._MODULES_TO_PACKAGES = {}
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        if not mapped:  # logging a model later in this process infers its requirements from the full map
            requirements_utils._MODULES_TO_PACKAGES = None


def unchecked_predict(model: PyFuncModel, columns: Sequence[str]) -> Callable[[pd.DataFrame], Any]:
    """The model's predict for frames of exactly `columns`, float64, in that order: the flavor's own
    when the signature takes those columns as doubles (or has no input schema), else `model.predict`."""
    from mlflow.types.schema import DataType

    metadata = model.metadata
    schema = metadata.get_input_schema()
    conforming = schema is None or (
        not schema.is_tensor_spec()
        and schema.input_names() == list(columns)
        and all(kind == DataType.double for kind in schema.input_types())
    )
    if (
        not conforming
        or metadata.get_params_schema() is not None
        or metadata._is_signature_from_type_hint()
        or metadata._is_type_hint_from_example()
    ):
        return model.predict
    return getattr(model._model_impl, metadata.flavors["python_function"].get("predict_fn", "predict"))


def quiet_artifact_progress() -> None:
    """Turns MLflow's artifact-download progress bars off, unless the user chose otherwise."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_mlflow(verbose: bool) -> None:
    """MLflow's log lines at WARNING unless `verbose`; its "View run" links off unless the user chose.

    Set on the logger for an MLflow already imported, and in `MLFLOW_LOGGING_LEVEL` for one
    imported later (predict imports it after its input is being read), which resets the level.
    """
    level = "INFO" if verbose else "WARNING"
    os.environ["MLFLOW_LOGGING_LEVEL"] = level
    logging.getLogger("mlflow").setLevel(level)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@contextmanager
def registry_messages() -> Iterator[None]:
    """MLflow's printed registration messages, only when its INFO lines are shown."""
    from mlflow.utils import logging_utils

    if logging.getLogger("mlflow").isEnabledFor(logging.INFO) or not logging_utils.MLFLOW_LOGGING_STREAM.enabled:
        yield
        return
    logging_utils.disable_logging()
    try:
        yield
    finally:
        logging_utils.enable_logging()
