"""Errors the pipeline reports to users as one clear line and a non-zero exit code."""

from pipeline.config import EXIT_ERROR, EXIT_REJECTED


class PipelineError(Exception):
    """A problem a user can fix; the message names it. Exits with code 2."""

    exit_code = EXIT_ERROR


class DataError(PipelineError):
    """Input data that cannot be used: the message names the file, column and row."""


class RejectedError(PipelineError):
    """A gate said no (promotion or drift). Exits with code 3 so cron and CI fail visibly."""

    exit_code = EXIT_REJECTED


def interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The SIGINT/SIGTERM (a KeyboardInterrupt, see `pipeline.cli`) behind `err`, if any.

    Some of MLflow's code turns any exception it catches into one of its own, so the interrupt
    can arrive as the cause or context of an `MlflowException`.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
