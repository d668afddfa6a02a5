"""What every step's command line shares: logging set-up, flags, and turning errors into one
clear line and an exit code."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn, TypeVar

from pipeline import store
from pipeline.config import EXIT_ERROR
from pipeline.errors import PipelineError, interruption
from pipeline.mlflow_compat import check_tracking_server, quiet_artifact_progress, quiet_mlflow
from pipeline.params import VERBOSE, Param

T = TypeVar("T")

log = logging.getLogger(__name__)


# Parameters of every step, added to each command line here: the step functions do not take them.
COMMON_PARAMS = (VERBOSE,)
_verbose = False  # `--verbose` of the command line parsed last in this process


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (as every other bad input is), exit code 2,
    and `--verbose` taken out of the parsed arguments (it sets the logging of `run`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        global _verbose
        parsed, rest = super().parse_known_args(args, namespace)
        _verbose = vars(parsed).pop(VERBOSE.argument, False)
        return parsed, rest


def build_parser(step: str, description: str, params: Sequence[Param]) -> argparse.ArgumentParser:
    """The command line of `python -m pipeline <step>`: one flag per parameter, in order.

    Each flag's destination is the step function's argument, so `step(**vars(args))` runs it.
    """
    parser = _Parser(prog=f"python -m pipeline {step}", description=description)
    for param in (*params, *COMMON_PARAMS):
        param.add_to(parser)
    return parser


def verbose_requested() -> bool:
    """Whether the command line parsed last in this process asked for `--verbose`."""
    return _verbose


def _not_the_stop(record: logging.LogRecord) -> bool:
    """Drops a library's log of the stop it was interrupted by (py4j logs the traceback of the
    `Interrupted` it saw mid-call): the stop is reported once, by `run`'s own line."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def configure_logging(verbose: bool | None = None) -> None:
    """Warnings and errors only on stderr, unless `--verbose` asked for the INFO lines of the
    steps and of MLflow (its messages about registering models too); MLflow's download bars and
    its "View run" links off (a link to a temporary server outlives the server)."""
    verbose = verbose_requested() if verbose is None else verbose
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if _not_the_stop not in handler.filters:
            handler.addFilter(_not_the_stop)
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("pipeline").setLevel(level)
    quiet_mlflow(verbose)
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


# Code in which a signal is put off for a moment (its calls take milliseconds): interrupted inside
# SQLAlchemy, a write to a SQLite store can keep its lock on a connection nobody closes, and the
# open runs could then not be ended as KILLED.
_DEFERRED_IN = ("sqlalchemy.",)
_RETRY_SECONDS = 0.05
_dropped: list[Interrupted] = []  # stops Python dropped in a finalizer and not raised since


def _inside(frame: FrameType | None, packages: tuple[str, ...]) -> bool:
    """Whether any frame of the stack from `frame` outwards runs code of `packages`."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(packages):
            return True
        frame = frame.f_back
    return False


def _send_again(signum: int) -> None:
    if signal.getsignal(signum) is _raise_interrupted:  # still ours: the step has not ended meanwhile
        os.kill(os.getpid(), signum)


def _send_later(signum: int) -> None:
    retry = threading.Timer(_RETRY_SECONDS, _send_again, (signum,))
    retry.daemon = True
    retry.start()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    if _inside(frame, _DEFERRED_IN):
        _send_later(signum)
        return
    # Only the first signal interrupts: a second one (a repeated Ctrl-C, `mlflow run` passing its
    # own interrupt on as SIGTERM) would break off the clean-up the first one started.
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    _dropped.clear()
    raise Interrupted(signum)


def _deliver_again(unraisable: Any, previous_hook: Callable[[Any], None]) -> None:
    """`sys.unraisablehook`: Python drops what a finalizer (a `__del__`, a weakref callback) raises,
    so a stop raised while one ran is sent again, to land in the code that runs next, and kept
    in `_dropped` in case the step ends before it lands."""
    stop = unraisable.exc_value
    if not isinstance(stop, Interrupted):
        previous_hook(unraisable)
        return
    _dropped.append(stop)
    signal.signal(stop.signum, _raise_interrupted)
    _send_later(stop.signum)


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
    unraisable_hook = sys.unraisablehook
    if previous:
        _dropped.clear()
        sys.unraisablehook = functools.partial(_deliver_again, previous_hook=unraisable_hook)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        sys.unraisablehook = unraisable_hook
        # The clean-up is done: whatever ran `run` in this process (pytest, the container, a
        # notebook) can be stopped again as before.
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def prepare_tracking_store(reads_models: bool = False) -> None:
    """Creates the SQLite store of the tracking URI, safely when many processes start at once
    (`store.ensure_database`), or checks that its tracking server answers (`check_tracking_server`).

    With `reads_models`, a SQLite store that does not exist is refused instead, creating nothing:
    a new store holds no model.
    """
    if reads_models:
        store.require_database()
    store.ensure_database()
    check_tracking_server()


def _from_mlflow(err: Exception) -> bool:
    """Whether `err` is one of MLflow's own errors (MLflow is imported only by steps that use it)."""
    exceptions = sys.modules.get("mlflow.exceptions")
    return exceptions is not None and isinstance(err, exceptions.MlflowException)


def run(
    step: Callable[[], T], report: Callable[[T], None], prepare_store: bool = True, reads_models: bool = False
) -> int:
    """Runs a step, prints its report, and maps failures to exit codes.

    With `prepare_store`, the tracking store is prepared first (`prepare_tracking_store`, with
    `reads_models`); commands that pick their own store, or prepare it themselves, pass False
    (and `reads_models` then does nothing).

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
                prepare_tracking_store(reads_models)
            result = step()
            if _dropped and outermost:  # the step ended before the stop, sent again, landed
                raise _dropped.pop()
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except (KeyboardInterrupt, Exception) as err:
            # A stop can arrive wrapped in what the code it interrupted raised instead: MLflow's
            # own errors, or Python's RuntimeError around a class being created.
            stop = interruption(err)
            if stop is None:
                if not _from_mlflow(err):
                    raise
                print(f"error: MLflow: {err.message}", file=sys.stderr)
                return EXIT_ERROR
            if not outermost:
                raise
            name, code = (stop.signal_name, stop.exit_code) if isinstance(stop, Interrupted) else ("SIGINT", 130)
            print(f"error: stopped by {name}; its open runs ended as KILLED", file=sys.stderr)
            return code
    report(result)
    return 0
