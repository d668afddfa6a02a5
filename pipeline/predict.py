"""The `predict` step: batch scoring of a CSV, or of the held-out split, with a registered model.

The CSV is read, validated and scored in chunks, so memory stays bounded whatever its size.
Predictions go to a temporary file next to the output, renamed into place only when every row
was scored and the run was logged: a failure leaves neither a partial output file nor a run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from tqdm import tqdm

from pipeline import cli, data
from pipeline.config import FEATURES, PREDICTION, TARGET
from pipeline.errors import PipelineError
from pipeline.metrics import RunningErrors
from pipeline.params import (
    CHUNKSIZE,
    ENGINE,
    ENGINE_SPARK,
    EXPERIMENT_NAME,
    INPUT,
    MODEL_URI,
    OUTPUT,
    SPARK_ENV_MANAGER,
    SPARK_MASTER,
)

# MLflow, and the modules of this package that import it, are imported in the functions that use
# them: predict starts reading its input first, and parsing the first rows on a thread overlaps
# MLflow's import, the longest part of the start.
if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

PARAMS = (MODEL_URI, INPUT, OUTPUT, CHUNKSIZE, ENGINE, SPARK_MASTER, SPARK_ENV_MANAGER, EXPERIMENT_NAME)
SAMPLE_ROWS = 10
# Prediction minus MedHouseVal, written when the input carries the target.
ERROR = "error"
_LINE_SAMPLE_BYTES = 1 << 16
# How far reading may run ahead of scoring: at the start, while MLflow is imported and the model
# loaded, the first rows are parsed; a bound on rows (and on chunks, for tiny chunk sizes) bounds memory.
READ_AHEAD_ROWS = 1_000_000
_READ_AHEAD_CHUNKS = 64
# Plain numbers, no quotes; shortest text that reads back to the same float64.
_CSV_OPTIONS = pa_csv.WriteOptions(quoting_style="none", quoting_header="none", batch_size=1 << 16)


@dataclass(frozen=True)
class PredictResult:
    """What a predict run produced.

    Attributes:
        model_uri: The URI as given (`models:/california-housing@champion`).
        version: The registered version it resolved to, None for URIs outside the registry.
        input_source: The CSV's absolute path, or the held-out split and the run that recorded it.
        output_path: Absolute path of the written predictions.
        n_rows: Rows scored.
        rows_per_second: Rows read, validated, scored and written per second.
        metrics: `test_r2`, `test_mse`, `test_rmse`, `test_mae` when the input carries
            MedHouseVal, else empty.
        sample: The first rows: `prediction`, plus `MedHouseVal` and `error` when present.
        run_id: The MLflow run that recorded it, once logged (`log_run`).
    """

    model_uri: str
    version: str | None
    input_source: str
    output_path: str
    n_rows: int
    rows_per_second: float
    metrics: dict[str, float]
    sample: pd.DataFrame = field(repr=False)
    run_id: str = ""


def progress_bar(total_estimate: int | None, show: bool) -> tqdm:
    """A progress bar of rows on stderr (tqdm's), drawn only when `show`."""
    return tqdm(total=total_estimate, desc="predict", unit=" rows", unit_scale=True, mininterval=0.5, disable=not show)


def estimate_rows(path: Path) -> int | None:
    """Rough row count of a CSV from its size and the length of the lines in its first 64 KiB."""
    with path.open("rb") as handle:
        sample = handle.read(_LINE_SAMPLE_BYTES)
    lines = sample.count(b"\n")
    return max(int(path.stat().st_size * lines / len(sample)) - 1, 1) if lines >= 2 else None


def predict(
    model_uri: str = MODEL_URI.default,
    input_path: str | None = INPUT.default,
    output_path: str | Path = OUTPUT.default,
    chunksize: int = CHUNKSIZE.default,
    experiment_name: str = EXPERIMENT_NAME.default,
    progress: bool | None = None,
    engine: str = ENGINE.default,
    spark_master: str = SPARK_MASTER.default,
    spark_env_manager: str = SPARK_ENV_MANAGER.default,
) -> PredictResult:
    """Scores a CSV, or the model's held-out split, and writes one prediction per row.

    The model is loaded as a pyfunc from the version the URI resolves to, so the float and
    the quantized model are scored the same way and the run records exactly which version
    answered. Nothing is logged until every row is scored: a bad row anywhere in the file
    leaves no run and no output.

    Args:
        model_uri: `models:/name@alias`, `models:/name/N`, or any URI `mlflow.pyfunc` loads.
        input_path: CSV with the 8 feature columns and optionally MedHouseVal; None or "" for
            the held-out split recorded by the run that logged the model (`split.json`).
        output_path: Where to write the predictions (columns `prediction`, and `error` =
            prediction − MedHouseVal when the input carries it).
        chunksize: How many rows are read and scored at a time.
        experiment_name: Experiment for a run started outside `mlflow run`.
        progress: Draw a progress bar on stderr; None draws it only when stderr is a terminal.
        engine: `pandas` scores here, in chunks; `spark` hands the whole step to `pipeline.spark_predict`.
        spark_master: The Spark master URL (`spark` only).
        spark_env_manager: How Spark's workers get the model's packages (`spark` only).

    Returns:
        The run, the resolved version, rows, throughput, metrics and the first rows.

    Raises:
        PipelineError: Unknown alias or version, unusable output path, an output that would
            replace the tracking database, an artifact, the input or the held-out split's data
            (`pipeline.paths`), or a model without a recorded split when no input is given.
        DataError: The input cannot be used; the message names file, column and row.
    """
    CHUNKSIZE.check(chunksize)
    ENGINE.check(engine)
    if engine == ENGINE_SPARK:
        from pipeline import spark_predict  # pyspark, an optional extra, is loaded only for this engine

        cli.prepare_tracking_store(reads_models=True)
        return spark_predict.predict(
            model_uri, input_path, output_path, experiment_name, spark_master, spark_env_manager
        )
    # Reading starts before anything else; its first error is raised when its rows are first asked for.
    batch = open_csv(input_path, chunksize) if input_path else None
    try:
        from pipeline import mlflow_compat, paths, registry

        cli.prepare_tracking_store(reads_models=True)
        output = _checked_output(output_path, input_path, model_uri)
        version, load_uri = registry.pin(model_uri)
        if batch is not None:
            batch = batch.started()  # a bad header fails before the model loads
        model = mlflow_compat.load_pyfunc(load_uri)
        batch = batch or held_out_split(version.run_id if version else model.metadata.run_id, model_uri)
        if batch.data_file:
            paths.check_output(output_path, [("the data of the held-out split", batch.data_file)])
        show = sys.stderr.isatty() if progress is None else progress
        with _temporary_file(output) as temporary:
            started = time.perf_counter() - batch.seconds_read()
            with progress_bar(batch.total_rows, show) as bar:
                n_rows, errors, sample = score(model, batch.chunks, temporary, batch.source, bar)
            rows_per_second = n_rows / max(time.perf_counter() - started, 1e-9)
            result = PredictResult(
                model_uri=model_uri,
                version=str(version.version) if version else None,
                input_source=batch.source,
                output_path=str(output),
                n_rows=n_rows,
                rows_per_second=rows_per_second,
                metrics=errors.metrics(),
                sample=sample,
            )
            # As given (`mlflow run` has already logged these as spelled), then as resolved.
            given = {"model_uri": model_uri, "input": input_path or "", "output": str(output_path)}
            resolved = {"model_run_id": model.metadata.run_id or "", "chunksize": chunksize}
            result = log_run(result, given, resolved, experiment_name, lambda: _publish(temporary, output))
    finally:
        if batch is not None:
            batch.close()  # a failure anywhere closes the input and stops its read-ahead thread now
    log.info("scored %d rows at %.0f rows/s into %s", n_rows, rows_per_second, output)
    return result


def _checked_output(output_path: str | Path, input_path: str | None, model_uri: str) -> Path:
    """The output's absolute path, once it is known to be a new or replaceable file in an existing folder.

    Raises:
        PipelineError: A folder, a missing folder, or a file predict must not replace (`pipeline.paths`).
    """
    from pipeline import paths

    output = Path(output_path).resolve()
    if output.is_dir():
        raise PipelineError(f"output {output} is a folder; give a file name")
    if not output.parent.is_dir():
        raise PipelineError(f"output folder {output.parent} does not exist")
    paths.check_output(output_path, _inputs(input_path, model_uri))
    return output


@contextlib.contextmanager
def _temporary_file(output: Path) -> Iterator[str]:
    """A new file beside `output`, removed when the block ends unless it was renamed into place.

    Raises:
        PipelineError: The output folder cannot be written.
    """
    try:
        handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as err:
        raise PipelineError(f"cannot write to output folder {output.parent}: {err.strerror}") from None
    try:
        os.close(handle)
        yield temporary
    finally:
        Path(temporary).unlink(missing_ok=True)


def log_run(
    result: PredictResult,
    given: dict[str, str],
    resolved: dict[str, Any],
    experiment_name: str,
    publish: Callable[[], None],
    engine: str = "",
) -> PredictResult:
    """Logs a predict run (either engine) and, inside it, puts the predictions in place with `publish`:
    a failure to publish fails the run. `given` are the parameters as spelled (`mlflow run` has
    already logged them so), `resolved` what they resolved to besides the model's version.

    Returns:
        `result` with the run's id.
    """
    version = f"version {result.version}" if result.version else "no registered version"
    description = (
        f"Scored {result.n_rows} rows of {result.input_source} with {result.model_uri} ({version}){engine} "
        f"into {result.output_path}."
    )
    import mlflow

    from pipeline import tracking

    with tracking.step_run("predict", "predict", description, experiment_name) as run:
        tracking.log_params(given)
        mlflow.log_params(
            {
                "model_version": result.version or "",
                **resolved,
                "input_source": result.input_source,
                "output_path": result.output_path,
            }
        )
        mlflow.log_metrics({"n_rows": result.n_rows, "rows_per_second": result.rows_per_second, **result.metrics})
        publish()
    return replace(result, run_id=run.info.run_id)


def _inputs(input_path: str | None, model_uri: str) -> list[tuple[str, str]]:
    """What predict reads from files, for the output guard: the CSV, and a model given as a folder."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    inputs = [("the input", input_path)] if input_path else []
    if is_local_uri(model_uri) and Path(local_file_uri_to_path(model_uri)).exists():
        inputs.append(("the model", local_file_uri_to_path(model_uri)))
    return inputs


@dataclass(frozen=True)
class Batch:
    """Rows to score, as validated chunks.

    Attributes:
        chunks: Frames with the feature columns and, when present, MedHouseVal.
        source: Where they come from, as recorded in the run.
        total_rows: The row count, or an estimate, for the progress bar.
        data_file: The CSV the held-out split was cut from, which the output must not replace.
        reader: The reader of a file behind `chunks`; None for rows in memory.
    """

    chunks: Iterable[pd.DataFrame]
    source: str
    total_rows: int | None
    data_file: str | None = None
    reader: ReadAhead | None = None

    def started(self) -> Batch:
        """This batch once the first chunk of its file is read (raising its error, if any), with the
        file's estimated row count."""
        self.reader.first()
        path = Path(self.source).resolve()  # now known to be a readable file
        return replace(self, source=str(path), total_rows=estimate_rows(path))

    def seconds_read(self) -> float:
        """Time spent reading so far (`ReadAhead.seconds`), counted in the throughput."""
        return self.reader.seconds if self.reader is not None else 0.0

    def close(self) -> None:
        """Closes the input file and stops the read-ahead thread, whether or not every row was read."""
        if self.reader is not None:
            self.reader.close()


class ReadAhead:
    """Chunks read on a thread, up to `depth` of them ahead of the caller.

    pyarrow parses without holding the GIL, so reading overlaps whatever the caller does
    meanwhile: importing MLflow and loading the model at the start, then scoring and writing.
    A reading error is raised where its chunk would have been.
    """

    def __init__(self, chunks: Generator[pd.DataFrame, None, None], depth: int) -> None:
        self.seconds = 0.0  # spent reading so far
        self._chunks = chunks
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-csv")
        self._ahead = deque(self._pool.submit(self._next) for _ in range(depth))

    def _next(self) -> pd.DataFrame | None:
        # Wall time: reading that overlapped the start counts in full, waits for the GIL included.
        started = time.perf_counter()
        try:
            return next(self._chunks, None)
        finally:
            self.seconds += time.perf_counter() - started

    def first(self) -> None:
        """Waits for the first chunk; raises its reading error, if any."""
        self._ahead[0].result()

    def __iter__(self) -> Iterator[pd.DataFrame]:
        while (chunk := self._ahead.popleft().result()) is not None:
            self._ahead.append(self._pool.submit(self._next))
            yield chunk

    def close(self) -> None:
        """Stops reading: chunks not started are dropped, the one being read is waited for (a
        generator running on the thread cannot be closed)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._chunks.close()


def open_csv(input_path: str, chunksize: int) -> Batch:
    """Starts reading a CSV for scoring, on a thread, about `READ_AHEAD_ROWS` rows ahead (at least
    one chunk). Nothing here raises: errors in the file are raised where its rows are asked for
    (`Batch.started`, or the chunks).
    """
    path = Path(input_path)
    chunks = data.read_csv_chunks(path, target=data.TARGET_OPTIONAL, chunksize=chunksize)
    reader = ReadAhead(chunks, depth=min(max(READ_AHEAD_ROWS // chunksize, 1), _READ_AHEAD_CHUNKS))
    return Batch(reader, str(path.absolute()), None, reader=reader)


def held_out_split(run_id: str | None, model_uri: str) -> Batch:
    """The rows the run that logged the model held out, with their targets (its `split.json`).

    Raises:
        PipelineError: The model was not logged by a run, or the run recorded no split.
    """
    if not run_id:
        raise PipelineError(f"{model_uri} was not logged by a run, so it has no held-out split; pass --input")
    from pipeline import splits

    split, record = splits.load_split(run_id)
    frame = split.X_test.assign(**{TARGET: split.y_test})
    source = record["source"]
    data_file = source if Path(source).is_file() else None  # not scikit-learn's download
    return Batch([frame], f"held-out split of run {run_id} ({len(frame)} rows of {source})", len(frame), data_file)


def score(
    model: mlflow.pyfunc.PyFuncModel,
    chunks: Iterable[pd.DataFrame],
    path: str,
    origin: str,
    progress: tqdm | None = None,
) -> tuple[int, RunningErrors, pd.DataFrame]:
    """Scores validated chunks and writes their predictions as CSV to the file at `path`.

    `origin` (where the chunks come from) is named in errors.

    Returns:
        Rows scored, the accumulated errors (empty without targets), and the first rows.

    Raises:
        PipelineError: The file cannot be written.
        DataError: A prediction is not finite; every chunk is read to count such rows.
    """
    from pipeline.scoring import NonFinitePredictions, predictor, raw_predictions

    predict = predictor(model)
    errors = RunningErrors()
    unusable = NonFinitePredictions()
    samples = []
    n_rows = 0
    writer = None
    try:
        for chunk in chunks:
            pred = raw_predictions(predict, chunk[list(FEATURES)])
            unusable.add(pred, chunk.index)
            if unusable.count:
                continue  # the file is refused; the rest is read only to count such rows
            columns = shown = {PREDICTION: pred}
            if TARGET in chunk.columns:
                y = chunk[TARGET].to_numpy(dtype="float64")
                errors.add(y, pred)
                columns = {PREDICTION: pred, ERROR: pred - y}
                shown = {TARGET: y, **columns}
            table = pa.table(columns)
            with _writing(path):
                writer = writer or pa_csv.CSVWriter(path, table.schema, write_options=_CSV_OPTIONS)
                writer.write_table(table)
            if n_rows < SAMPLE_ROWS:
                samples.append(pd.DataFrame({name: values[: SAMPLE_ROWS - n_rows] for name, values in shown.items()}))
            n_rows += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
        if writer is not None:
            with _writing(path):
                writer.close()
            writer = None
        unusable.check(origin)
    finally:
        if writer is not None:  # after a failure: the file is removed, and its close cannot hide the error
            with contextlib.suppress(OSError, pa.ArrowException):
                writer.close()
    if progress is not None:
        progress.total = n_rows  # the count, no longer an estimate
    return n_rows, errors, pd.concat(samples, ignore_index=True)


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    """Names the output's folder when the block cannot write the CSV at `path` (a full disk, a folder gone).

    Raises:
        PipelineError: On an OSError or pyarrow error in the block.
    """
    try:
        yield
    except (OSError, pa.ArrowException) as err:
        raise PipelineError(f"cannot write predictions in {Path(path).parent}: {err}") from err


def _publish(temporary: str, output: Path) -> None:
    """Renames the finished file into place, with the permissions a new file would get."""
    # mkstemp creates files readable by their owner only.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, output)


def format_report(result: PredictResult) -> str:
    """The summary users of the original scripts expect: metrics, then the first rows."""
    resolved = f"version {result.version}" if result.version else "not a registered version"
    lines = [
        f"Model: {result.model_uri} ({resolved})",
        f"Input: {result.input_source}",
        f"Scored {result.n_rows:,} rows at {result.rows_per_second:,.0f} rows/s",
        "",
    ]
    if result.metrics:
        lines += [
            "Model Performance:",
            f"R² Score: {result.metrics['test_r2']:.4f}",
            f"Mean Squared Error: {result.metrics['test_mse']:.4f}",
            f"Root Mean Squared Error: {result.metrics['test_rmse']:.4f}",
            f"Mean Absolute Error: {result.metrics['test_mae']:.4f}",
            "",
        ]
    lines.append(f"Sample Predictions (first {len(result.sample)}):")
    for row in result.sample.itertuples(index=False):
        row = row._asdict()
        if TARGET in row:
            lines.append(f"True: {row[TARGET]:.2f} | Predicted: {row[PREDICTION]:.2f} | Diff: {abs(row[ERROR]):.2f}")
        else:
            lines.append(f"Predicted: {row[PREDICTION]:.2f}")
    lines += ["", f"Predictions written to {result.output_path} (run {result.run_id})"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m pipeline predict`."""
    return cli.build_parser("predict", __doc__, PARAMS)


def main(argv: list[str] | None = None) -> int:
    """Runs the step from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return cli.run(
        lambda: predict(**vars(args)),
        report=lambda result: print(format_report(result)),
        prepare_store=False,  # predict prepares it once its input is being read
    )
