"""What every step's command line shares: logging set-up, flags, and turning errors into one
clear line and an exit code."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn, TypeVar

from mlflow.exceptions import MlflowException

from pipeline import store
from pipeline.config import EXIT_ERROR
from pipeline.errors import PipelineError
from pipeline.mlflow_compat import check_tracking_server, quiet_artifact_progress
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
    """Step messages at INFO on stderr; other libraries' log lines at WARNING, MLflow's download bars off."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    quiet_artifact_progress()


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived. A KeyboardInterrupt, so code that cleans up after Ctrl-C cleans
    up after `kill`, `docker stop` and a CI cancel too; the exit code is 128 + the signal's number.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.signal_name)


# Signals that stop a step cleanly: open runs end as KILLED and temp files are removed on the way out.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_depth = 0  # `run` calls in progress in this process; the outermost one handles the signals


def _raise_interrupted(signum: int, frame: object) -> None:
    # Only the first signal interrupts: a second one (a repeated Ctrl-C, `mlflow run` passing its
    # own interrupt on as SIGTERM) would break off the clean-up the first one started.
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turns SIGTERM and SIGINT into `Interrupted` while the block runs, in the outermost `run`
    of the main thread; a signal the parent process told us to ignore stays ignored."""
    global _depth
    previous = {}
    if _depth == 0 and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _raise_interrupted)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        # The clean-up is done: whatever ran `run` in this process (pytest, the container, a
        # notebook) can be stopped again as before.
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(step: Callable[[], T], report: Callable[[T], None], prepare_store: bool = True) -> int:
    """Runs a step, prints its report, and maps failures to exit codes.

    With `prepare_store`, the SQLite store of the tracking URI is created first, safely when many
    processes start at once (`store.ensure_database`), and a tracking server must answer at once
    (`check_tracking_server`); commands that pick their own store pass False.

    A `PipelineError` (bad input, a gate that said no) is one line on stderr, without a
    traceback; an MLflow error is reported the same way. SIGTERM and SIGINT stop the step: its
    open runs end as KILLED (`tracking.step_run`), its temp files are removed, and the
    outermost `run` prints one line and returns 143 or 130. Anything else is a bug and keeps
    its traceback.

    Returns:
        0 on success, the error's exit code otherwise.
    """
    configure_logging()
    outermost = _depth == 0
    with _signals_interrupt():
        try:
            if prepare_store:
                store.ensure_database()
                check_tracking_server()
            result = step()
        except KeyboardInterrupt as err:
            if not outermost:
                raise
            name, code = (err.signal_name, err.exit_code) if isinstance(err, Interrupted) else ("SIGINT", 130)
            print(f"error: stopped by {name}; its open runs ended as KILLED", file=sys.stderr)
            return code
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except MlflowException as err:
            print(f"error: MLflow: {err.message}", file=sys.stderr)
            return EXIT_ERROR
    report(result)
    return 0
