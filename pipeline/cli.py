"""What every step's command line shares: logging set-up, flags, and turning errors into one
clear line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException

from pipeline import store
from pipeline.config import EXIT_ERROR, EXPERIMENT_NAME
from pipeline.errors import PipelineError

T = TypeVar("T")

log = logging.getLogger(__name__)


def add_experiment_flag(parser: argparse.ArgumentParser) -> None:
    """Adds `--experiment-name`, used when the step starts its own run."""
    parser.add_argument(
        "--experiment-name",
        default=EXPERIMENT_NAME,
        help="experiment for runs started outside 'mlflow run' (default %(default)s)",
    )


def parse_bool(text: str) -> bool:
    """Parses an MLproject boolean parameter ("true"/"false", "1"/"0", "yes"/"no")."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def configure_logging() -> None:
    """Step messages at INFO on stderr; MLflow's and other libraries' chatter at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)


def run(step: Callable[[], T], report: Callable[[T], None], prepare_store: bool = True) -> int:
    """Runs a step, prints its report, and maps failures to exit codes.

    With `prepare_store`, the SQLite store of the tracking URI is created first, safely when many
    processes start at once (`store.ensure_database`); commands that pick their own store pass False.

    A `PipelineError` (bad input, a gate that said no) is one line on stderr, without a
    traceback; an MLflow error is reported the same way. Anything else is a bug and keeps
    its traceback.

    Returns:
        0 on success, the error's exit code otherwise.
    """
    configure_logging()
    try:
        if prepare_store:
            store.ensure_database()
        result = step()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except MlflowException as err:
        print(f"error: MLflow: {err.message}", file=sys.stderr)
        return EXIT_ERROR
    report(result)
    return 0
