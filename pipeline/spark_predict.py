"""`predict --engine spark`: batch scoring on Spark with the registered model, through `mlflow.pyfunc.spark_udf`.

The same step as the pandas engine (`pipeline.predict`), for inputs that outgrow one machine:
the alias is pinned to one version, the input (a CSV or Parquet file, or a folder of them) is
validated by Spark with the pandas engine's rules before anything is written, the rows are
scored by `spark_udf` and written as Parquet into a temporary folder next to the output, the
metrics are computed by Spark from what was written, the run is logged, and only then is the
folder renamed into place. A failure leaves neither an output folder, a temporary one nor a run.

Rows are numbered as the pandas engine numbers them: the 1-based data row of the file it is in
(the header is not counted). Spark's own row ids (`monotonically_increasing_id`) are not row
numbers: they jump between partitions, and a folder's files are read in order of size, not
name. A bad row is therefore named by its file and its rank among that file's rows: the
partitions of one file are its byte ranges in order, so ranking ids within a file gives the
row's place in it. Across a folder, "first" means in the order of file names.

Paths are local (or a folder every Spark worker mounts at the same place): the output is
checked by `pipeline.paths` and renamed with `os.replace`. pyspark is imported here only.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pyarrow.csv as pa_csv

from pipeline import data, paths, registry
from pipeline.config import FEATURES, PREDICTION, TARGET
from pipeline.errors import DataError, PipelineError
from pipeline.metrics import error_metrics
from pipeline.params import OUTPUT, SPARK_ENV_MANAGER, SPARK_OUTPUT
from pipeline.predict import ERROR, SAMPLE_ROWS, PredictResult, _inputs, log_run

if TYPE_CHECKING:
    from pyspark import SparkContext
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

INSTALL_PYSPARK = "pip install 'housing-mlops[spark]'"
INSTALL_JAVA = "apt-get install openjdk-17-jre-headless (Spark needs Java 17 or 21)"
# Columns added to the input while it is validated: the file of each row, a row id, malformed CSV lines.
_FILE = "_file"
_ID = "_id"
_CORRUPT = "_corrupt_record"
# Files Spark skips in a folder (its own markers, hidden files).
_SKIPPED_PREFIXES = ("_", ".")
# The problems a cell can have, in the order the pandas engine looks for them (`data.validate_frame`).
_NON_NUMERIC = "non_numeric"
_MISSING = "missing"
_INFINITE = "infinite"


@dataclass(frozen=True)
class SparkInput:
    """An input as Spark reads it: its columns (text for CSV), then `_file`, `_id` and for CSV
    `_corrupt_record`; the input's own columns in order; the absolute path given, for the run."""

    frame: DataFrame
    columns: list[str]
    source: str


def predict(
    model_uri: str,
    input_path: str | None,
    output_path: str | Path,
    experiment_name: str,
    master: str,
    env_manager: str,
) -> PredictResult:
    """Scores a CSV or Parquet file or folder on Spark into a Parquet folder; see `pipeline.predict.predict`.

    Raises:
        PipelineError: No input given, pyspark or Java missing, an output that exists and is not
            an earlier Parquet output, or one the output guard refuses (`pipeline.paths`).
        DataError: The input cannot be used: the message names the file, column, first bad row
            and how many cells are bad.
    """
    SPARK_ENV_MANAGER.check(env_manager)
    if not input_path:
        raise PipelineError("--engine spark needs --input: a CSV or Parquet file, or a folder of them")
    output = Path(SPARK_OUTPUT if output_path == OUTPUT.default else output_path).resolve()
    _check_output(output, input_path, model_uri)
    version, load_uri = registry.pin(model_uri)
    try:
        folder = tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as err:
        raise PipelineError(f"cannot write to output folder {output.parent}: {err.strerror}") from None
    # Removed only once the session has stopped: a write job interrupted on the Python side can
    # still be running in the JVM, and would write into the folder again after an earlier delete.
    try:
        with spark_session(master) as spark:
            # As the pandas engine counts: rows read, validated, scored and written, not starting or loading.
            started = time.perf_counter()
            batch = read_input(spark, input_path)
            validate(batch)
            written = Path(folder) / "parquet"
            loading = time.perf_counter()
            udf = mlflow.pyfunc.spark_udf(spark, load_uri, result_type="double", env_manager=env_manager)
            started += time.perf_counter() - loading
            _write(scored(batch, udf), written, batch.source)
            n_rows, metrics = summarize(spark.read.parquet(str(written)), TARGET in batch.columns)
            sample = spark.read.parquet(str(written)).limit(SAMPLE_ROWS).toPandas()
            shown = [column for column in (TARGET, PREDICTION, ERROR) if column in sample.columns]
            result = PredictResult(
                model_uri=model_uri,
                version=str(version.version) if version else None,
                input_source=batch.source,
                output_path=str(output),
                n_rows=n_rows,
                rows_per_second=n_rows / max(time.perf_counter() - started, 1e-9),
                metrics=metrics,
                sample=sample[shown],
            )
            given = {"model_uri": model_uri, "input": input_path, "output": str(output_path), "engine": "spark"}
            given |= {"spark_master": master, "spark_env_manager": env_manager}
            model_run_id = version.run_id if version else mlflow.models.get_model_info(load_uri).run_id
            resolved = {"model_run_id": model_run_id or "", "spark_version": spark.version}
            publish = functools.partial(_publish, written, output, Path(folder))
            result = log_run(result, given, resolved, experiment_name, publish, " on Spark,")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log.info("scored %d rows at %.0f rows/s on Spark into %s", n_rows, result.rows_per_second, output)
    return result


def _check_output(output: Path, input_path: str, model_uri: str) -> None:
    """Refuses an output folder the step must not write: see `paths.check_output`, and anything
    already there but an earlier Parquet output (a folder Spark marked `_SUCCESS`)."""
    if not output.parent.is_dir():
        raise PipelineError(f"output folder {output.parent} does not exist")
    paths.check_output(output, _inputs(input_path, model_uri))
    if output.exists() and not (output.is_dir() and (output / "_SUCCESS").is_file()):
        raise PipelineError(
            f"output {output} already exists and is not an earlier Parquet output of predict; "
            "nothing was written, choose another name"
        )


@contextlib.contextmanager
def spark_session(master: str) -> Iterator[SparkSession]:
    """The active Spark session, or a new one on `master` that is stopped after the block.

    Raises:
        PipelineError: pyspark is not installed, or Spark (its Java) cannot start.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise PipelineError(f"--engine spark needs pyspark: {INSTALL_PYSPARK}") from None
    _quiet_pyspark_warnings()
    active = SparkSession.getActiveSession()
    spark = active or start_session(master)
    try:
        yield spark
    except KeyboardInterrupt:
        # A job interrupted in py4j goes on in the JVM unless cancelled.
        spark.sparkContext.cancelAllJobs()
        raise
    finally:
        if active is None:
            spark.stop()
            _spark_log().unlink(missing_ok=True)


def start_session(master: str) -> SparkSession:
    """A new Spark session on `master`; Spark's own log goes to a file, so a step's error stays one line.

    Raises:
        PipelineError: Spark (its Java) cannot start; the message ends with the last line Spark logged.
    """
    from py4j.protocol import Py4JJavaError
    from pyspark import SparkConf, SparkContext
    from pyspark.errors import PySparkRuntimeError
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    _quiet_pyspark_warnings()
    # Spark's Python workers run `python3` from PATH unless told otherwise; with env_manager
    # local they need this interpreter's packages, also when the environment is not activated.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = (
        SparkConf(loadDefaults=False)
        .setMaster(master)
        .setAppName("housing-mlops predict")
        .set("spark.ui.enabled", "false")
        .set("spark.ui.showConsoleProgress", "false")
        .set("spark.log.level", "ERROR")
        # The validation pass counts and sorts a few rows; Spark's default of 200 shuffle partitions is for clusters.
        .set("spark.sql.shuffle.partitions", "8")
    )
    # The JVM prints its start-up banner and warnings before any log level applies; they, and
    # its later log lines, go to this file (pyspark's documented hook for its stderr).
    spark_log = _spark_log()
    with spark_log.open("ab") as handle:
        try:
            gateway = launch_gateway(conf, popen_kwargs={"stderr": handle})
        except PySparkRuntimeError as err:
            last = next(reversed(spark_log.read_text(errors="replace").strip().splitlines()), "nothing logged")
            raise PipelineError(
                f"Spark could not start ({err.getCondition()}: {last}; its log: {spark_log}); "
                f"is Java installed? {INSTALL_JAVA}"
            ) from None
    # SparkContext replaces the SIGINT handler with its own and never puts it back: the one
    # `pipeline.cli` installed must stay, so that Ctrl-C still ends the run as KILLED.
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    context = None
    try:
        context = SparkContext(conf=conf, gateway=gateway)
        log.debug("Spark %s on %s; its log: %s", context.version, master, spark_log)
        return SparkSession.builder.getOrCreate()
    except Py4JJavaError as err:
        # Read while the JVM is up: the error's text comes from it.
        cause = err.java_exception.toString()
        _shut_down(gateway, context)
        raise PipelineError(f"Spark could not start on {master} ({cause}; its log: {spark_log})") from None
    except BaseException:
        _shut_down(gateway, context)
        raise
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)


def _spark_log() -> Path:
    """The file the JVM of this process writes its output to; kept when Spark fails, for the error line."""
    return Path(tempfile.gettempdir()) / f"housing-mlops-spark-{os.getpid()}.log"


def _shut_down(gateway: object, context: SparkContext | None) -> None:
    """Ends a JVM whose session did not start: pyspark would keep it until Python exits."""
    from pyspark import SparkContext

    if context is not None:
        context.stop()
    gateway.shutdown()
    # The JVM exits when its stdin closes (pyspark's `launch_gateway` gives it a pipe for that).
    gateway.proc.stdin.close()
    gateway.proc.wait()
    SparkContext._gateway = SparkContext._jvm = None


def _quiet_pyspark_warnings() -> None:
    # pyspark 4.3 warns on every pandas conversion that it "does not yet fully support pandas >= 3.0.0";
    # the conversions this step makes (doubles only) are covered by the tests against the pandas engine.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    warnings.filterwarnings("ignore", message="The copy keyword is deprecated", module="pyspark")


def read_input(spark: SparkSession, input_path: str) -> SparkInput:
    """The input as a Spark frame, its header checked as the pandas engine checks it (`data.check_columns`).

    Raises:
        DataError: No such file or folder, no CSV or Parquet file in it, both kinds, or a bad header.
    """
    from pyspark.sql import functions as sf
    from pyspark.sql.types import StringType, StructField, StructType

    path = Path(input_path)
    source = str(path.resolve())
    files = _data_files(path)
    empty = next((file for file in files if file.stat().st_size == 0), None)
    if empty is not None:
        raise DataError(f"{empty}: the file is empty (expected a header and data rows)")
    kinds = {file.suffix.lower() for file in files}
    if kinds == {".parquet"}:
        for file in files:
            data.check_columns(_parquet_columns(file), str(file), data.TARGET_OPTIONAL)
        frame = spark.read.parquet(*map(str, files))
        columns = frame.columns
    elif kinds == {".csv"}:
        columns = _csv_header(files[0])
        for file in files:
            header = _csv_header(file)
            data.check_columns(header, str(file), data.TARGET_OPTIONAL)
            if header != columns:
                raise DataError(f"{file}: its header {','.join(header)} differs from {files[0]}'s {','.join(columns)}")
        # Every column as text, so that a cell that is not a number is seen, not read as null;
        # a line with another number of fields than the header is kept whole in _corrupt_record.
        schema = StructType([StructField(name, StringType()) for name in (*columns, _CORRUPT)])
        frame = spark.read.csv(
            [str(file) for file in files],
            schema=schema,
            header=True,
            mode="PERMISSIVE",
            columnNameOfCorruptRecord=_CORRUPT,
        )
    else:
        raise DataError(f"{path}: expected .csv or .parquet files, found {', '.join(sorted(kinds)) or 'none'}")
    frame = frame.withColumn(_FILE, sf.col("_metadata.file_path")).withColumn(_ID, sf.monotonically_increasing_id())
    return SparkInput(frame, columns, source)


def _data_files(path: Path) -> list[Path]:
    """The data files of the input: the file itself, or a folder's files (recursively) in name order."""
    if not path.is_dir():
        if not path.exists() and not path.is_symlink():
            raise DataError(f"{path}: no such file or folder")
        data.open_regular_file(path).close()  # says what the path is instead: a FIFO, unreadable, a device
        return [path.resolve()]
    files = sorted(
        file.resolve()
        for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(_SKIPPED_PREFIXES) for part in file.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"{path}: the folder holds no data files")
    return files


def _parquet_columns(file: Path) -> list[str]:
    """The column names of a Parquet file, from its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(file).names
    except pa.ArrowException as err:
        raise DataError(f"{file}: not a readable Parquet file ({err})") from None


def _csv_header(file: Path) -> list[str]:
    """The first line of a CSV file, as fields; read as bytes, so only the header is decoded here,
    and bounded as the pandas engine bounds a line.

    Raises:
        DataError: Not a regular readable file, a first line over 1 MiB, or a header that is not UTF-8.
    """
    with data.open_regular_file(file) as raw:
        line = raw.readline(data.BLOCK_BYTES)
    if len(line) == data.BLOCK_BYTES:
        raise DataError(f"{file}: {data.describe_long_row(file)}")
    try:
        return next(csv.reader([line.decode("utf-8-sig")]), [])
    except UnicodeDecodeError:
        raise DataError(f"{file}: the header is not valid UTF-8 text") from None


def _cell_problems(batch: SparkInput, column: str) -> dict[str, Column]:
    """For each problem a cell of `column` can have, a condition true where it has it."""
    from pyspark.sql import functions as sf
    from pyspark.sql.types import BooleanType, NumericType

    kind = batch.frame.schema[column].dataType
    value = sf.col(column)
    missing_text = sf.lit(False)
    if isinstance(kind, NumericType):
        number = value.cast("double")
        non_numeric = sf.lit(False)
    elif isinstance(kind, BooleanType):  # would pass as 1/0
        number = sf.lit(None).cast("double")
        non_numeric = value.isNotNull()
    else:
        # The texts the pandas engine's parser (pyarrow's CSV reader, its defaults) reads as missing.
        missing_text = value.isin(pa_csv.ConvertOptions().null_values)
        # try_cast: a cell that is not a number becomes null instead of failing the job (ANSI mode).
        number = sf.when(~missing_text, value.try_cast("double"))
        non_numeric = value.isNotNull() & ~missing_text & number.isNull()
    return {
        _NON_NUMERIC: non_numeric,
        _MISSING: value.isNull() | missing_text | sf.isnan(number),
        _INFINITE: number.isin(float("inf"), float("-inf")),
    }


def validate(batch: SparkInput) -> None:
    """Checks every cell in one pass over the input, as the pandas engine does (`data.validate_frame`).

    Raises:
        DataError: One line: the file, the column, the first bad row (as `_row_number` counts
            it), and how many such cells the whole input has.
    """
    from pyspark.sql import functions as sf

    checks = {}
    if _CORRUPT in batch.frame.columns:
        checks[(_CORRUPT, "fields")] = sf.col(_CORRUPT).isNotNull()
    # The pandas engine's order: the features, then the target.
    for column in (name for name in (*FEATURES, TARGET) if name in batch.columns):
        for problem, condition in _cell_problems(batch, column).items():
            checks[(column, problem)] = condition
    counted = batch.frame.agg(
        sf.count(sf.lit(1)).alias("rows"),
        *(sf.count_if(condition).alias(f"c{index}") for index, condition in enumerate(checks.values())),
    ).first()
    if counted["rows"] == 0:
        raise DataError(f"{batch.source}: the input has no data rows")
    for index, ((column, problem), condition) in enumerate(checks.items()):
        count = counted[f"c{index}"]
        if count:
            raise DataError(_describe(batch, column, problem, condition, count))


def _describe(batch: SparkInput, column: str, problem: str, condition: Column, count: int) -> str:
    """The message for `count` cells of `column` with `problem`, naming the first one's file and row."""
    # Every column, as in `validate`: with fewer, Spark parses only those, and a line with more fields than
    # the header is no longer seen as one.
    first = batch.frame.filter(condition).orderBy(_FILE, _ID).first()
    file = _local_path(first[_FILE])
    row = _row_number(batch, first[_FILE], first[_ID])
    if column == _CORRUPT:
        fields = len(next(csv.reader([first[_CORRUPT]]), []))
        return (
            f"{file}: row {row} has {fields} field(s), the header {len(batch.columns)} "
            f"({count} such row(s)); not a well-formed CSV file"
        )
    if problem == _NON_NUMERIC:
        return f"{file}: column {column!r}, row {row}: {str(first[column])!r} is not a number ({count} such cell(s))"
    described = "missing (NaN)" if problem == _MISSING else "infinite"
    return f"{file}: column {column!r}, row {row}: value is {described} ({count} such cell(s))"


def _row_number(batch: SparkInput, file: str, row_id: int) -> int:
    """The 1-based data row of the row with id `row_id` in `file`: one more than the rows of that file before it.

    Ids grow within a partition and from one partition to the next, and a file's partitions are its
    byte ranges in order, so the rows before it in the file are those of the file with a smaller id.
    """
    from pyspark.sql import functions as sf

    return batch.frame.filter((sf.col(_FILE) == file) & (sf.col(_ID) < row_id)).count() + 1


def _local_path(uri: str) -> str:
    """A file URI as Spark reports it (`file:///...`), as the path the user knows."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    return local_file_uri_to_path(uri) if uri.startswith("file:") else uri


def scored(batch: SparkInput, udf: Column) -> DataFrame:
    """The input's columns as numbers, then `prediction`, and `error` when the target is there."""
    from pyspark.sql import functions as sf

    numbers = batch.frame.select(*(sf.col(column).cast("double").alias(column) for column in batch.columns))
    frame = numbers.withColumn(PREDICTION, udf(*(sf.col(name) for name in FEATURES)))
    if TARGET in batch.columns:
        frame = frame.withColumn(ERROR, sf.col(PREDICTION) - sf.col(TARGET))
    return frame


def _write(frame: DataFrame, folder: Path, origin: str) -> None:
    """Writes the scored rows as Parquet into `folder`.

    Raises:
        DataError: A prediction overflows float64 (the models refuse them; see `served_model`).
    """
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        frame.write.parquet(str(folder))
    except (PySparkException, Py4JJavaError) as err:
        if "overflows float64" not in str(err):
            raise
        raise DataError(f"{origin}: a prediction overflows float64: features this extreme overflow the model") from None


def summarize(frame: DataFrame, has_target: bool) -> tuple[int, dict[str, float]]:
    """Rows, and the test_* metrics when the target is there, computed by Spark from the written rows."""
    from pyspark.sql import functions as sf

    if not has_target:
        return frame.count(), {}
    sums = frame.agg(
        sf.count(sf.lit(1)).alias("n"),
        sf.sum(sf.col(ERROR) * sf.col(ERROR)).alias("sse"),
        sf.sum(sf.abs(sf.col(ERROR))).alias("sae"),
        sf.var_pop(TARGET).alias("var"),
    ).first()
    n = sums["n"]
    return n, error_metrics(n, sums["sse"] or 0.0, sums["sae"] or 0.0, (sums["var"] or 0.0) * n)


def _publish(written: Path, output: Path, folder: Path) -> None:
    """Renames the written folder into place; an earlier output there is moved into `folder` first,
    and back if the new one cannot take its place (or a signal lands in between)."""
    if not output.exists():
        os.replace(written, output)
        return
    replaced = folder / "replaced"
    os.replace(output, replaced)
    try:
        os.replace(written, output)
    except BaseException:
        os.replace(replaced, output)
        raise
