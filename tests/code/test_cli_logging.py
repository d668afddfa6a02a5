"""Code tests of the CLI's logging: a library's log of the stop it was interrupted by is dropped."""

from __future__ import annotations

import logging
import signal
import sys

from pipeline import cli


def _record(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        return logging.LogRecord(
            "root", logging.ERROR, __file__, 1, "KeyboardInterrupt while sending command.", None, sys.exc_info()
        )


def test_a_logged_interruption_is_dropped_and_other_errors_kept() -> None:
    # py4j logs, with its traceback, the Interrupted a SIGTERM raised inside one of its calls.
    assert not cli._not_the_stop(_record(cli.Interrupted(signal.SIGTERM)))
    assert not cli._not_the_stop(_record(KeyboardInterrupt()))
    assert cli._not_the_stop(_record(ValueError("a real error")))
    assert cli._not_the_stop(logging.LogRecord("x", logging.WARNING, __file__, 1, "no traceback", None, None))
