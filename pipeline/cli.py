"""What every step's command line shares: logging set-up, flags, and turning errors into one
clear line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from mlflow.exceptions import MlflowException

from pipeline import store
from pipeline.config import EXIT_ERROR
from pipeline.errors import PipelineError
from pipeline.params import Param

T = TypeVar("T")

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (as every other bad input is), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser(step: str, description: str, params: Sequence[Param]) -> argparse.ArgumentParser:
    """The command line of `python -m pipeline <step>`: one flag per parameter, in order.

    Each flag's destination is the step function's argument, so `step(**vars(args))` runs it.
    """
    parser = _Parser(prog=f"python -m pipeline {step}", description=description)
    for param in params:
        param.add_to(parser)
    return parser


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
