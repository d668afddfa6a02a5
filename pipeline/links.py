"""Links into the MLflow UI for the runs and models a step made, and the command that starts the UI.

What the links rely on was read in MLflow 3.17.2's UI build (`mlflow/server/js/build/static/js`):
- `workflowType=machine_learning` in a page's query opens the UI's model-training view (Runs,
  Models, Model registry) instead of its GenAI view; the UI then remembers it in the browser.
- `#/compare-runs?runs=[ids]&experiments=[ids]` is the run comparison page, and
  `#/models/<name>/versions/<n>` a model version's page.
- `viewStateShareKey=<key>` on the runs page loads the view (filter, order, columns) saved in the
  experiment's tag `mlflow.sharedViewState.<key>`, as the UI's own "Share" button saves one. It
  is the only way a link can choose the table's columns; any search parameter in the same link
  makes the UI ignore the saved view, so the link carries none.

A store the UI must be started on (a SQLite file, or the directory of a temporary server that
`python -m pipeline.store` or the container started and stopped) gets links to
http://127.0.0.1:5000, where the printed `mlflow ui` command serves it.
"""

from __future__ import annotations

import json
import os
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from pipeline import store

WORKFLOW_QUERY = "workflowType=machine_learning"
UI_PORT = 5000
LOCAL_UI = f"http://127.0.0.1:{UI_PORT}"
SERVE_PORT = 5001
# MLflow's experiment tag for the kind the UI shows an experiment as (model training, not GenAI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
COMPARISON_VIEW = "model-comparison"
# The figures a float and a quantized run are compared by; the deltas are the quantized model's
# minus the float one's, which the UI shows to 4 significant digits where the absolutes read alike.
COMPARED_METRICS = ("test_r2", "r2_delta", "test_mse", "mse_delta", "test_mae", "param_bytes", "model_size_bytes")


@dataclass(frozen=True)
class UiLocation:
    """Where the UI of a store is, and the command that starts it (None: it is already served)."""

    base: str
    command: str | None


def without_password(uri: str) -> str:
    """`uri` as it may be printed: a password in it (`postgresql://user:secret@host/db`,
    `http://user:secret@host`) becomes `***`, so summaries and CI logs never carry it."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def ui_command(backend_uri: str, artifacts: Path | None = None) -> str:
    """`mlflow ui` over a store, as the README writes it, with every path absolute."""
    words = ["mlflow", "ui", "--backend-store-uri", without_password(backend_uri)]
    if artifacts is not None:
        words += ["--artifacts-destination", str(artifacts)]
    words += ["--port", str(UI_PORT)]
    return shlex.join(words)


def directory_ui_command(root: Path) -> str:
    """`mlflow ui` over a tracking directory made through a local server (`pipeline.store`)."""
    root = Path(root).resolve()
    return ui_command(store.backend_uri(root), root / store.ARTIFACTS_DIR)


def locate(tracking_uri: str) -> UiLocation:
    """The UI of the store at `tracking_uri`, for the process that logged to it."""
    directory = os.environ.get(store.DIR_ENV)
    if directory and tracking_uri.startswith(("http://", "https://")):
        # A server over a tracking directory, stopped with the command that started it.
        return UiLocation(LOCAL_UI, directory_ui_command(Path(directory)))
    if tracking_uri.startswith(("http://", "https://")):
        return UiLocation(without_password(tracking_uri).rstrip("/"), None)
    return UiLocation(LOCAL_UI, ui_command(_printable(tracking_uri)))


def _printable(tracking_uri: str) -> str:
    """The store's URI as printed in a command: a SQLite file by its absolute path (the command
    works from any folder), any other URI without its password."""
    database = store.sqlite_path(tracking_uri)
    return store.sqlite_uri(database.resolve()) if database is not None else without_password(tracking_uri)


def _page(base: str, route: str, query: dict[str, str] | None = None) -> str:
    # The compare page reads its runs only from the first query parameter.
    words = [f"{key}={urllib.parse.quote(value, safe='')}" for key, value in (query or {}).items()]
    return f"{base}/#/{route}?{'&'.join([*words, WORKFLOW_QUERY])}"


def runs_page(base: str, experiment_id: str, view: str | None = COMPARISON_VIEW) -> str:
    """The experiment's runs table, in the saved comparison view."""
    return _page(base, f"experiments/{experiment_id}/runs", {"viewStateShareKey": view} if view else None)


def compare_page(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's side-by-side comparison of runs."""
    query = {"runs": json.dumps(run_ids, separators=(",", ":")), "experiments": json.dumps([experiment_id])}
    return _page(base, "compare-runs", query)


def model_version_page(base: str, name: str, version: str) -> str:
    """A registered model version's page: its aliases, tags, source run."""
    return _page(base, f"models/{urllib.parse.quote(name, safe='')}/versions/{version}")


def comparison_view() -> str:
    """The saved runs-table view: every run that logged a model, best test R² first, unfolded, with the
    compared metrics as columns (the value of tag `mlflow.sharedViewState.model-comparison`)."""
    columns = [f"metrics.`{key}`" for key in COMPARED_METRICS]
    return json.dumps(
        {
            "searchFilter": "metrics.param_bytes > 0",
            # Sorted by anything but the start time, the UI lists child runs flat instead of
            # folded under their parent run: best test R² first.
            "orderByKey": "metrics.`test_r2`",
            "orderByAsc": False,
            "selectedColumns": columns,
            "columnOrder": columns,
            # Wide enough for every digit MLflow logged.
            "columnWidths": dict.fromkeys(columns, 160),
        }
    )


def serve_hint(tracking_uri: str, model_uri: str) -> str:
    """The `mlflow models serve` command for `model_uri` that works as printed, in this folder."""
    # Port 5001: the UI's links use 5000.
    command = f"mlflow models serve -m {model_uri} --env-manager local -h 127.0.0.1 -p {SERVE_PORT}"
    directory = os.environ.get(store.DIR_ENV)
    if directory and tracking_uri.startswith(("http://", "https://")):
        # The server that logged the run is gone; one over the same directory serves the models again.
        return f"python -m pipeline.store --dir {shlex.quote(str(Path(directory).resolve()))} -- {command}"
    database = store.sqlite_path(tracking_uri)
    # MLflow's default store, ./mlflow.db, which `mlflow models serve` opens too (`mlflow run`
    # names it in MLFLOW_TRACKING_URI for its entry point: the same file).
    if "MLFLOW_TRACKING_URI" not in os.environ or (
        database is not None and database.resolve() == Path(store.DB_FILE).resolve()
    ):
        return command
    return f"MLFLOW_TRACKING_URI={shlex.quote(_printable(tracking_uri))} {command}"
