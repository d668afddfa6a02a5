"""A tracking directory that opens anywhere: a SQLite store logged through a local tracking server.

Logged straight to a SQLite file, MLflow records every artifact by its absolute path, so the
directory breaks once it moves (another machine, a CI download). Logged through
`mlflow server --artifacts-destination DIR/artifacts`, every artifact is an `mlflow-artifacts:/`
URI relative to that folder: the directory `DIR` (`mlflow.db` + `artifacts/`) can move, and any
`mlflow server`/`mlflow ui` started over it serves the runs, plots and registered models again.

`python -m pipeline.store --dir DIR -- COMMAND ...` runs a command with `MLFLOW_TRACKING_URI`
pointing at such a server on 127.0.0.1, started for the command and stopped after it.

`ensure_database` creates a SQLite store safely when many processes start on it at once; every
step calls it before it touches the store (see `pipeline.cli.run`), and so does `local_server`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
# Set while `local_server` runs, for the steps logging through it: a client of the server
# cannot learn the directory behind it, and must never write its output there (pipeline.paths).
DIR_ENV = "HOUSING_MLOPS_STORE_DIR"
# Generous: the server imports MLflow twice (its CLI, then its uvicorn worker), slow on a busy machine.
START_TIMEOUT = 180.0
_LOG_TAIL_CHARS = 2000
# Next to the database: `mlflow.db` -> `mlflow.schema.lock`.
SCHEMA_LOCK_SUFFIX = ".schema.lock"


def backend_uri(root: Path) -> str:
    """The SQLite URI of the tracking directory `root`."""
    return sqlite_uri(Path(root).resolve() / DB_FILE)


def sqlite_uri(path: Path) -> str:
    """The `sqlite:` URI that opens the database file `path`, whatever characters it has."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string()


def sqlite_path(uri: str) -> Path | None:
    """The file a `sqlite:` tracking URI opens, or None for other stores and in-memory databases.

    Read as SQLAlchemy reads it, which is how MLflow opens it: percent-escapes decoded, the query
    (`?timeout=20`) left out, and a relative path (three slashes) taken from the working folder.
    """
    if not uri.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if not url.database or url.database == ":memory:" or url.query.get("uri"):
        return None
    return Path(url.database)


def ensure_database(uri: str | None = None) -> None:
    """Creates, or finishes creating, the SQLite store at `uri` before MLflow opens it, one
    process at a time.

    MLflow creates a store's tables in whichever process opens it first, without a lock (see
    `pipeline.mlflow_compat`, "Elsewhere"). Here one process does it under an exclusive lock on a
    file next to the database while the others wait. A new database is built under a temporary
    name and linked into place complete, so no process, and no kill, ever meets a half-made one.
    Other stores (a server, a folder) are left to MLflow.

    Args:
        uri: A tracking URI; by default the one MLflow uses in this process (`MLFLOW_TRACKING_URI`,
            else MLflow's default, `sqlite:///mlflow.db` in the working folder).

    Raises:
        PipelineError: The file is not a database, or its folder cannot hold one.
    """
    import mlflow
    from mlflow.utils.file_utils import ExclusiveFileLock

    uri = uri or mlflow.get_tracking_uri()
    path = sqlite_path(uri)
    if path is None or _schema_is_current(path):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # An flock: the kernel releases it when the process ends, however it ends, so a killed holder
        # never blocks the others.
        with ExclusiveFileLock(str(path.with_suffix(SCHEMA_LOCK_SUFFIX))):
            if not path.exists():
                _create(path, uri)
            elif not _schema_is_current(path):
                _initialize(uri, path)
    except OSError as err:
        raise PipelineError(f"cannot create the tracking database {path}: {err.strerror or err}") from None


def require_database(uri: str | None = None) -> None:
    """Refuses a SQLite store that does not exist yet, before MLflow would create it on opening it.

    Raises:
        PipelineError: The file is missing; the message says where it looked. Nothing is created.
    """
    import mlflow

    from pipeline.config import MODEL_NAME

    uri = uri or mlflow.get_tracking_uri()
    path = sqlite_path(uri)
    if path is None or path.exists():
        return
    raise PipelineError(
        f"the tracking store {uri} holds no model {MODEL_NAME!r}: there is no {path.resolve()}; "
        "nothing was created. Run the pipeline first (python -m pipeline main), here or with "
        "MLFLOW_TRACKING_URI set to the store to use"
    )


def _schema_is_current(path: Path) -> bool:
    """Whether `path` is a database whose schema is the one this MLflow writes (read-only check)."""
    if not path.is_file():
        return False
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as database:
            revisions = database.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError:  # empty, half-made, locked by a writer, or not a database
        return False
    return revisions == [(_get_latest_schema_revision(),)]


def _create(path: Path, uri: str) -> None:
    """Builds a new store beside `path` and links it into place once complete."""
    # Only the holder of the lock writes it, so one found here was left by a killed creator.
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    try:
        _initialize(sqlite_uri(temporary.resolve()), temporary)
        if not _publish(temporary, path):
            # Created meanwhile by a process that takes no lock (the `mlflow` command itself).
            _initialize(uri, path)
    finally:
        temporary.unlink(missing_ok=True)


def _publish(temporary: Path, path: Path) -> bool:
    """Puts the finished database at `path` unless a file appeared there; False if one did."""
    try:
        os.link(temporary, path)  # never replaces an existing file
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if path.exists():
            return False
        os.replace(temporary, path)
    return True


def _initialize(uri: str, path: Path) -> None:
    """What MLflow does on opening a store, creating or completing its tables, done here once.

    A store whose tables are all there but whose schema is older is left as it is: MLflow then
    says to run `mlflow db upgrade`.
    """
    from mlflow.store.db.utils import _all_tables_exist, _initialize_tables, create_sqlalchemy_engine_with_retry
    from sqlalchemy.exc import DatabaseError

    engine = create_sqlalchemy_engine_with_retry(uri)
    try:
        if not _all_tables_exist(engine):
            log.info("creating the MLflow tables of %s", path)
            _initialize_tables(engine)
    except DatabaseError as err:
        # Not a database at all, or one half-migrated by processes that took no lock.
        raise PipelineError(
            f"{path} is not a complete MLflow tracking database and could not be completed ({err.orig})"
        ) from None
    finally:
        engine.dispose()


def local_artifact_path(root: Path, artifact_uri: str) -> Path:
    """Where an artifact of the tracking directory `root` lies on disk.

    The server maps `mlflow-artifacts:/<path>` to `<artifacts-destination>/<path>`, and our
    artifacts destination is `root/artifacts`, wherever `root` is now.

    Raises:
        PipelineError: The URI is not an `mlflow-artifacts:` one, or nothing is at its place.
    """
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme != "mlflow-artifacts":
        raise PipelineError(f"{artifact_uri} was not logged through a tracking server over {root}")
    path = Path(root).resolve() / ARTIFACTS_DIR / parsed.path.lstrip("/")
    if not path.exists():
        raise PipelineError(f"{artifact_uri} should be at {path}, which does not exist")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen, timeout: float, log_file: Path | None = None) -> None:
    """Polls `url` until it answers 200, the process exits, or `timeout` seconds pass.

    Raises:
        PipelineError: The process exited or did not answer in time; the message ends with the
            tail of its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PipelineError(
                f"{' '.join(map(str, process.args))} exited with code {process.returncode}{_tail(log_file)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise PipelineError(f"{url} did not answer within {timeout:.0f} s{_tail(log_file)}")


def _tail(log_file: Path | None) -> str:
    if log_file is None or not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").strip()
    return f"; its log ends with: {text[-_LOG_TAIL_CHARS:]}" if text else ""


@contextmanager
def local_server(root: Path, port: int | None = None, timeout: float = START_TIMEOUT) -> Iterator[str]:
    """Runs a tracking server over the directory `root` (created if missing) on 127.0.0.1 while the block runs.

    The server creates `root/mlflow.db` if needed; experiments it creates store artifacts under
    `root/artifacts` as `mlflow-artifacts:/` URIs, which is what makes the directory movable.
    Yields the server's URL, as `proxy_server` does.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # The server would create the database as MLflow does, racing any other server started on it.
    ensure_database(backend_uri(root))
    with proxy_server(backend_uri(root), root / ARTIFACTS_DIR, port, timeout) as url, environ(DIR_ENV, str(root)):
        yield url


@contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    """Sets the environment variable `name` while the block runs; then puts back what was there."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextmanager
def proxy_server(
    backend_store_uri: str, artifacts: Path, port: int | None = None, timeout: float = START_TIMEOUT
) -> Iterator[str]:
    """Runs `mlflow server` over `backend_store_uri` on 127.0.0.1 (`port`: a free one by default),
    artifacts proxied to `artifacts`, while the block runs.

    Yields:
        The server's URL, `http://127.0.0.1:<port>`, to use as the tracking URI.

    Raises:
        PipelineError: The server did not start within `timeout` seconds.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    # Artifacts proxied: clients upload and download them through the server (`mlflow-artifacts:/`
    # URIs) and need no access to the folder `artifacts`.
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri]
    command += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Background jobs (GenAI scorers, trace archival) are not used here and slow the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(prefix="mlflow-server-") as tmp:
        log_file = Path(tmp) / "server.log"
        with log_file.open("wb") as out:
            # Its own session, so stopping it also stops the uvicorn worker it starts.
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            log.info("starting a tracking server at %s, artifacts in %s", url, artifacts)
            wait_until_up(f"{url}/health", process, timeout, log_file)
            yield url
        finally:
            stop(process)


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Stops a process started in its own session, and everything it started."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


class CommandError(PipelineError):
    """A command this module ran exited non-zero; exits with that command's code."""

    def __init__(self, command: list[str], exit_code: int) -> None:
        super().__init__(f"'{' '.join(command)}' exited with code {exit_code}")
        self.exit_code = exit_code


def run_command(command: list[str], tracking_uri: str) -> None:
    """Runs a command with `MLFLOW_TRACKING_URI` set, its output going straight to ours.

    A SIGTERM or SIGINT to this process (pipeline.cli) is passed on to the command, which is
    waited for: it ends its runs through the server before the server stops. The command runs in
    its own session, so a Ctrl-C in a terminal reaches it once, from here, not twice.

    Raises:
        CommandError: The command exited non-zero (its own error is already on stderr).
    """
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    with subprocess.Popen(command, env=env, start_new_session=True) as process:
        try:
            code = process.wait()
        except KeyboardInterrupt as err:
            process.send_signal(getattr(err, "signum", signal.SIGINT))
            process.wait()
            raise
    if code != 0:
        raise CommandError(command, code)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m pipeline.store`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.store",
        description="Run COMMAND with MLFLOW_TRACKING_URI pointing at a local tracking server over DIR, "
        "so everything it logs lands in DIR (mlflow.db + artifacts/) and the directory can move.",
    )
    parser.add_argument("--dir", required=True, type=Path, help="the tracking directory (created if missing)")
    parser.add_argument("--port", type=int, default=None, help="port of the server (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a command against a local tracking server; returns 0, or the command's exit code."""
    from pipeline import cli

    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (usage: python -m pipeline.store --dir DIR -- COMMAND ...)")

    def step() -> None:
        with local_server(args.dir, args.port) as url:
            run_command(command, url)

    # The store used is DIR's, which local_server prepares; not the one MLFLOW_TRACKING_URI names.
    return cli.run(step, report=lambda _: None, prepare_store=False)


if __name__ == "__main__":
    sys.exit(main())
