"""`housing-mlops-container`: what the Docker image runs, usable anywhere the package is installed.

    housing-mlops-container [run [pipeline flags]]     train → quantize → promote, then predict
    housing-mlops-container serve [--host H --port P]  serve the champion (`mlflow models serve`)
                                                       on 127.0.0.1:8080 ($HOUSING_MLOPS_SERVE_HOST)

Everything is logged through a local tracking server over the tracking directory
(`--tracking-dir`, or `$HOUSING_MLOPS_TRACKING_DIR`, default `./tracking`), so the directory
opens anywhere afterwards (see pipeline/store.py). `serve` runs the pipeline first when the
directory has no champion yet, so a fresh container serves without any set-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import links, mlflow_compat, store
from pipeline.config import ALIAS_CHAMPION, MODEL_NAME

log = logging.getLogger(__name__)

TRACKING_DIR_ENV = "HOUSING_MLOPS_TRACKING_DIR"
DEFAULT_TRACKING_DIR = "tracking"
PREDICTIONS_FILE = "predictions.csv"
SERVE_HOST_ENV = "HOUSING_MLOPS_SERVE_HOST"
# This machine only; the image sets 0.0.0.0 (through SERVE_HOST_ENV), where `docker run -p`
# decides what the host exposes.
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8080


@contextmanager
def tracking_uri(uri: str) -> Iterator[str]:
    """Points this process, and the steps it runs, at `uri` while the block runs."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    with store.environ("MLFLOW_TRACKING_URI", uri):
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(previous)


@contextmanager
def tracking_through_server(tracking_dir: Path) -> Iterator[str]:
    """Points this process at a local tracking server over `tracking_dir` while the block runs.

    Pipeline steps run inside it, so skops is imported first, before `tracking_uri` imports
    MLflow (see `pipeline.mlflow_compat.import_skops_first`).
    """
    mlflow_compat.import_skops_first()
    with store.local_server(tracking_dir) as url, tracking_uri(url):
        yield url


def _pipeline(argv: list[str]) -> int:
    """`python -m pipeline <argv>` in this process (a new process would import MLflow again)."""
    from pipeline.__main__ import main as pipeline_main

    return pipeline_main(argv)


def run(tracking_dir: Path, pipeline_args: list[str]) -> Path:
    """Runs the whole pipeline into `tracking_dir` (`pipeline_args`: flags for `python -m pipeline main`,
    e.g. `--bits 4`), then predicts the champion's held-out rows; returns the predictions CSV.

    Raises:
        CommandError: A step failed (its own error is already printed); carries its exit code
            (3: the promotion gate said no).
    """
    output = Path(tracking_dir) / PREDICTIONS_FILE
    with tracking_through_server(tracking_dir):
        for argv in (["main", *pipeline_args], ["predict", "--output", str(output)]):
            code = _pipeline(argv)
            if code != 0:
                raise store.CommandError(["python -m pipeline", *argv], code)
    return output


def champion_files(tracking_dir: Path) -> tuple[str, Path] | None:
    """The champion's version and the folder of its model files, or None when there is none.

    Read from the database and the artifacts folder directly: serving needs no tracking server.
    """
    if not (Path(tracking_dir) / store.DB_FILE).exists():
        return None
    from mlflow.tracking import MlflowClient

    from pipeline import registry

    uri = store.backend_uri(tracking_dir)
    store.ensure_database(uri)
    with tracking_uri(uri):
        version = registry.version_by_alias(ALIAS_CHAMPION)
        if version is None:
            return None
        location = MlflowClient().get_model_version_download_uri(version.name, version.version)
    return str(version.version), store.local_artifact_path(tracking_dir, location)


def prepare_champion(tracking_dir: Path) -> tuple[str, Path]:
    """The champion's version and model folder, running the pipeline first if there is none.

    Raises:
        PipelineError: The pipeline ran but set no champion (its gate rejected every candidate).
    """
    from pipeline.errors import PipelineError, RejectedError

    champion = champion_files(tracking_dir)
    if champion is None:
        log.info("%s has no champion yet: running the pipeline first", tracking_dir)
        with tracking_through_server(tracking_dir):
            code = _pipeline(["main"])
        champion = champion_files(tracking_dir)
        if champion is None:
            error = RejectedError if code == RejectedError.exit_code else PipelineError
            raise error(f"the pipeline set no champion in {tracking_dir} (exit code {code}); nothing to serve")
    return champion


def serve(tracking_dir: Path, host: str = SERVE_HOST, port: int = SERVE_PORT) -> int:
    """Replaces this process with `mlflow models serve` of the champion (GET /ping, POST /invocations).

    Returns:
        Only when serving could not start: the error's exit code.
    """
    from pipeline import cli

    # The tracking directory's store is the one used, prepared by its local server.
    return cli.run(
        lambda: prepare_champion(tracking_dir),
        report=lambda prepared: _exec_server(*prepared, host, port),
        prepare_store=False,
    )


def _exec_server(version: str, model_path: Path, host: str, port: int) -> None:
    print(f"Serving {MODEL_NAME} version {version} (alias {ALIAS_CHAMPION}) on http://{host}:{port}", flush=True)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", str(model_path)]
    command += ["--env-manager", "local", "--host", host, "--port", str(port)]  # this environment's packages
    os.execve(command[0], command, mlflow_compat.scoring_server_env(os.environ))


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `housing-mlops-container`."""
    parser = argparse.ArgumentParser(
        prog="housing-mlops-container",
        description="What the Docker image runs: the pipeline and predict (run, the default) or serving the champion.",
    )
    parser.add_argument(
        "--tracking-dir",
        type=Path,
        default=Path(os.environ.get(TRACKING_DIR_ENV, DEFAULT_TRACKING_DIR)),
        help=f"tracking directory: mlflow.db + artifacts/ (default ${TRACKING_DIR_ENV} or %(default)s)",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser(
        "run",
        help="train → quantize → promote, then predict the held-out rows; "
        "flags after 'run' go to 'python -m pipeline main' (run --bits 4)",
    )
    serve_parser = commands.add_parser("serve", help="serve the champion (runs the pipeline first if there is none)")
    serve_parser.add_argument(
        "--host",
        default=os.environ.get(SERVE_HOST_ENV, SERVE_HOST),
        help=f"address to listen on (default ${SERVE_HOST_ENV} or {SERVE_HOST})",
    )
    serve_parser.add_argument("--port", type=int, default=SERVE_PORT, help="port to listen on (default %(default)s)")
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The container's own flags, and the flags `run` passes on to `python -m pipeline main`.

    Exits with argparse's usage error (code 2) on flags no command takes.
    """
    parser = build_parser()
    # Unknown flags are main's (argparse's REMAINDER would not take one that comes first).
    args, pipeline_args = parser.parse_known_args(argv)
    if pipeline_args and args.command not in (None, "run"):
        parser.error(f"unrecognized arguments: {' '.join(pipeline_args)}")
    return args, pipeline_args


def main(argv: list[str] | None = None) -> int:
    """Runs the container's command; returns the exit code."""
    args, pipeline_args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        return serve(args.tracking_dir, args.host, args.port)
    from pipeline import cli

    return cli.run(
        lambda: run(args.tracking_dir, pipeline_args),
        report=lambda output: print(
            f"Predictions: {output}\nTracking directory: {args.tracking_dir} (open the UI on it with: "
            f"{links.directory_ui_command(args.tracking_dir)})"
        ),
        prepare_store=False,
    )


if __name__ == "__main__":
    sys.exit(main())
