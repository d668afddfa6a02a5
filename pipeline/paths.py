"""Where a step may write: never over the tracking store, its artifacts or the step's own input.

A step's output path is compared with the files it must never replace as files, not as
strings: an existing output is matched by device and inode (a symlink or a hard link to the
database is the database), a new one by the real path of its folder. Protected are the SQLite
database of the tracking and registry URIs with its `-journal`, `-wal` and `-shm` files, every
local artifact root (each experiment's, the store's default `./mlruns`, and `DIR/artifacts` of a
`pipeline.store` tracking directory), and the step's inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import ViewType
from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import is_local_uri

from pipeline import store
from pipeline.errors import PipelineError

# What SQLite keeps beside a database while it writes; a stray file there corrupts the database.
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
# MLflow's server passes its artifact root to code it runs in this variable (mlflow 3.17,
# tracking/_tracking_service/utils.py); otherwise a local store puts new experiments in ./mlruns.
_SERVER_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"


@dataclass(frozen=True)
class Protected:
    """A file, or a folder and everything under it, that no step may write to."""

    path: Path
    what: str
    folder: bool = False


def check_output(output: str | Path, inputs: Iterable[tuple[str, str | Path]] = ()) -> None:
    """Refuses `output` (the path as the user gave it) when it is, or lies under, something a step
    must never overwrite: the store's files or the step's `inputs`, (description, path) pairs such
    as ("the input", "x.csv").

    Raises:
        PipelineError: Naming the output as given and what it would overwrite, or that it is not a
            regular file.
    """
    target = Path(os.path.realpath(output))
    identity = _identity(Path(output))
    if target.exists() and not target.is_file() and not target.is_dir():
        # A device or a FIFO would be replaced by a regular file (as root, even /dev/null).
        raise PipelineError(
            f"output {output} is not a regular file (a device or a FIFO); nothing was written, choose another file"
        )
    # Device and inode of every existing folder above the output: a folder reached through a
    # bind mount or another name is still the same folder.
    folders = {_identity(parent) for parent in target.parents} - {None}
    for item in (*(Protected(Path(path), what, Path(path).is_dir()) for what, path in inputs), *protected_paths()):
        real = Path(os.path.realpath(item.path))
        if item.folder:
            hit = target == real or real in target.parents or _identity(real) in folders
        else:
            hit = target == real or (identity is not None and identity == _identity(real))
        if hit:
            place = "lies under" if item.folder and target != real else "is"
            raise PipelineError(
                f"output {output} {place} {item.what} {item.path}; nothing was written, choose another file"
            )


def protected_paths() -> Iterator[Protected]:
    """The tracking store's files and artifact roots, as far as this process can see them."""
    local_store = False
    for uri in dict.fromkeys((mlflow.get_tracking_uri(), mlflow.get_registry_uri())):
        database = store.sqlite_path(uri)
        if database is not None:
            local_store = True
            yield from _database_files(database)
        elif is_local_uri(uri):
            local_store = True
            yield Protected(Path(local_file_uri_to_path(uri)), "the tracking store", folder=True)
    store_dir = os.environ.get(store.DIR_ENV)
    if store_dir:
        yield from _database_files(Path(store_dir) / store.DB_FILE)
        yield Protected(Path(store_dir) / store.ARTIFACTS_DIR, "the artifact root", folder=True)
    if local_store:
        default_root = os.environ.get(_SERVER_ARTIFACT_ROOT_ENV, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        if is_local_uri(default_root):
            yield Protected(Path(local_file_uri_to_path(default_root)), "the artifact root", folder=True)
    for location in _experiment_roots():
        yield Protected(location, "the artifact root", folder=True)


def _database_files(database: Path) -> Iterator[Protected]:
    yield Protected(database, "the tracking database")
    for suffix in SQLITE_SIDE_FILES:
        yield Protected(database.with_name(database.name + suffix), "a file of the tracking database")
    # Replaced by a new file, a lock held on the old one would no longer keep others out.
    yield Protected(database.with_suffix(store.SCHEMA_LOCK_SUFFIX), "a lock file of the tracking database")


def _experiment_roots() -> Iterator[Path]:
    """Local artifact roots of every experiment in the store, deleted ones too.

    A SQLite store that does not exist yet is not created to ask: it has no experiments.
    """
    database = store.sqlite_path(mlflow.get_tracking_uri())
    if database is not None and not database.exists():
        return
    for experiment in mlflow.search_experiments(view_type=ViewType.ALL):  # every page, not the first 1,000
        location = experiment.artifact_location
        if location and is_local_uri(location):
            yield Path(local_file_uri_to_path(location))


def _identity(path: Path) -> tuple[int, int] | None:
    """Device and inode of the file at `path` (symlinks followed), None when nothing is there."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino
