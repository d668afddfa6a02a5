"""`predict --engine spark`: the same predictions, refusals and run record as the pandas engine, computed by Spark.

One Spark session in local[2] (the `spark` fixture) serves every test in this process; the
command line is started as a subprocess only where it is the thing tested.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import data
from pipeline.config import FEATURES, PREDICTION, TARGET
from pipeline.errors import DataError, PipelineError
from pipeline.predict import ERROR, predict

pytestmark = pytest.mark.integration

ROWS = 600


def predict_run_ids() -> set[str]:
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_id for run in client.search_runs(experiments, "tags.step = 'predict'")}


def spark_predict(alias: str, source: Path, output: Path):
    return predict(
        model_uri=f"models:/california-housing@{alias}",
        input_path=str(source),
        output_path=output,
        engine="spark",
        spark_master="local[2]",
    )


@pytest.fixture(scope="module")
def rows(california: data.Dataset) -> pd.DataFrame:
    """The first 600 rows of the real data set, features and target."""
    return california.X.head(ROWS).assign(**{TARGET: california.y.head(ROWS)}).reset_index(drop=True)


@pytest.fixture(scope="module")
def inputs(rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same rows as a CSV file, a Parquet file (columns in another order), and folders of two files each.

    In each folder the file that comes first by name is the smaller one, so Spark (which reads
    a folder's files largest first) writes the rows in another order than the names give.
    """
    root = tmp_path_factory.mktemp("spark-inputs")
    features = rows[list(FEATURES)]
    made = {"csv file": root / "rows.csv", "parquet file": root / "rows.parquet"}
    rows.to_csv(made["csv file"], index=False)
    rows[[TARGET, *reversed(FEATURES)]].to_parquet(made["parquet file"], index=False)
    for kind, write in (("csv folder", "to_csv"), ("parquet folder", "to_parquet")):
        folder = root / kind.replace(" ", "-")
        folder.mkdir()
        suffix = kind.split()[0]
        getattr(features.iloc[:200], write)(folder / f"a.{suffix}", index=False)
        getattr(features.iloc[200:], write)(folder / f"b.{suffix}", index=False)
        made[kind] = folder
    features.to_csv(root / "features.csv", index=False)
    made["features csv"] = root / "features.csv"
    return made


def input_columns_of(source: Path) -> list[str]:
    """The columns of an input file, or of the first file of a folder."""
    first = min(source.iterdir()) if source.is_dir() else source
    return list(pd.read_parquet(first).columns if first.suffix == ".parquet" else pd.read_csv(first, nrows=0).columns)


# Both flavors, both formats, a file and a folder, with and without the target, in four runs.
CASES = [
    ("challenger", "csv file", True),
    ("challenger", "parquet folder", False),
    ("quantized", "parquet file", True),
    ("quantized", "csv folder", False),
]


@pytest.mark.parametrize(("alias", "kind", "with_target"), CASES)
def test_predictions_and_run_equal_the_pandas_engine(
    spark,
    scoring: str,
    inputs: dict[str, Path],
    rows: pd.DataFrame,
    tmp_path: Path,
    alias: str,
    kind: str,
    with_target: bool,
) -> None:
    reference = predict(
        model_uri=f"models:/california-housing@{alias}",
        input_path=str(inputs["csv file" if with_target else "features csv"]),
        output_path=tmp_path / "pandas.csv",
    )
    expected = (rows if with_target else rows[list(FEATURES)]).assign(**pd.read_csv(tmp_path / "pandas.csv"))

    result = spark_predict(alias, inputs[kind], tmp_path / "out.parquet")

    written = pd.read_parquet(tmp_path / "out.parquet")
    input_columns = input_columns_of(inputs[kind])
    assert list(written.columns) == [*input_columns, PREDICTION, *([ERROR] if with_target else [])]
    assert len(written) == ROWS
    if "folder" in kind:  # Spark reads a folder's files in its own order
        written = written.sort_values(list(FEATURES), ignore_index=True)
        expected = expected.sort_values(list(FEATURES), ignore_index=True)
    pd.testing.assert_frame_equal(written[input_columns], expected[input_columns])
    np.testing.assert_allclose(written[PREDICTION], expected[PREDICTION], rtol=0, atol=1e-9)
    if with_target:
        np.testing.assert_allclose(written[ERROR], expected[ERROR], rtol=0, atol=1e-9)
    assert sorted(os.listdir(tmp_path)) == ["out.parquet", "pandas.csv"]  # no temporary folder left

    run = MlflowClient().get_run(result.run_id)
    assert (
        run.data.params["model_version"] == reference.version == result.version == {"challenger": "1"}.get(alias, "2")
    )
    assert run.data.params["engine"] == "spark"
    assert run.data.params["input_source"] == str(inputs[kind].resolve())
    assert run.data.metrics["n_rows"] == result.n_rows == ROWS
    assert run.data.metrics["rows_per_second"] > 0
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    assert metrics == result.metrics
    if with_target:
        assert set(metrics) == {"test_r2", "test_mse", "test_rmse", "test_mae"}
        assert metrics == pytest.approx(reference.metrics, rel=1e-9)
        assert 0.3 < metrics["test_r2"] < 0.9
    else:
        assert metrics == {} == reference.metrics


def test_an_earlier_output_is_replaced(spark, scoring: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    output.mkdir()
    pd.DataFrame({PREDICTION: [1.0]}).to_parquet(output / "part-00000-earlier.parquet")
    (output / "_SUCCESS").touch()
    spark_predict("quantized", inputs["features csv"], output)
    assert len(pd.read_parquet(output)) == ROWS
    assert not (output / "part-00000-earlier.parquet").exists()
    assert os.listdir(tmp_path) == ["out.parquet"]


def test_an_earlier_output_survives_a_failed_rename_of_the_new_one(
    spark, scoring: str, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out.parquet"
    output.mkdir()
    pd.DataFrame({PREDICTION: [1.0]}).to_parquet(output / "part-00000-earlier.parquet")
    (output / "_SUCCESS").touch()
    replace = os.replace

    def failing_replace(source, target):
        # Fault injection: the rename of the new output into place fails, after the earlier one was moved aside.
        if Path(target) == output and Path(source).name == "parquet":
            raise OSError(28, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left on device"):
        spark_predict("quantized", inputs["features csv"], output)
    assert pd.read_parquet(output)[PREDICTION].tolist() == [1.0]
    assert sorted(os.listdir(output)) == ["_SUCCESS", "part-00000-earlier.parquet"]
    assert os.listdir(tmp_path) == ["out.parquet"]


def _csv(rows: pd.DataFrame, path: Path, change=None) -> Path:
    frame = rows.head(50).astype(object)
    if change:
        frame = change(frame)
    frame.to_csv(path, index=False)
    return path


def _set(column: str, positions: list[int], value: object):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[positions, column] = value
        return frame

    return change


# Bad inputs that both engines refuse, with the same line.
SAME_AS_PANDAS = {
    "missing column": lambda f: f.drop(columns=["Latitude"]),
    "extra column": lambda f: f.assign(Notes="x"),
    "non-numeric": _set("MedInc", [6, 19], "abc"),
    "empty cells": _set("HouseAge", [2, 8, 30], None),
    "nan text": _set("AveOccup", [40], "nan"),
    "infinite": _set("AveRooms", [11, 12], "inf"),
    "bad target": _set(TARGET, [4], "n/a"),
}


def _refused(call, tmp_path: Path, output: Path) -> str:
    """Runs `call`, which must be refused with a DataError and leave no output, temporary folder or run."""
    before = predict_run_ids()
    with pytest.raises(DataError) as refused:
        call()
    assert not output.exists()
    assert not [name for name in os.listdir(output.parent) if name.startswith(f".{output.name}.")]
    assert predict_run_ids() == before
    return str(refused.value)


@pytest.mark.parametrize("case", SAME_AS_PANDAS)
def test_bad_input_is_refused_with_the_pandas_engines_line(
    spark, scoring: str, rows: pd.DataFrame, tmp_path: Path, case: str
) -> None:
    source = _csv(rows, tmp_path / "bad.csv", SAME_AS_PANDAS[case])
    with pytest.raises(DataError) as pandas_engine:
        predict(input_path=str(source), output_path=tmp_path / "out.csv")
    message = _refused(
        lambda: spark_predict("quantized", source, tmp_path / "out.parquet"), tmp_path, tmp_path / "out.parquet"
    )
    assert message == str(pandas_engine.value)
    assert message.startswith(f"{source}: ")


def test_spark_only_refusals_name_file_row_and_count(spark, scoring: str, rows: pd.DataFrame, tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    cases = []
    # A line with one field too many, which Spark would otherwise cut silently.
    long_line = tmp_path / "long.csv"
    text = rows.head(20).to_csv(index=False).splitlines()
    text[4] += ",7"
    long_line.write_text("\n".join(text) + "\n")
    cases.append(
        (long_line, f"{long_line}: row 4 has 10 field(s), the header 9 (1 such row(s)); not a well-formed CSV file")
    )
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(FEATURES) + "\n")
    cases.append((header_only, f"{header_only.resolve()}: the input has no data rows"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases.append((empty, f"{empty}: the file is empty (expected a header and data rows)"))
    parquet = tmp_path / "nan.parquet"
    rows.head(30).assign(Population=lambda f: f.Population.where(f.index != 7)).to_parquet(parquet, index=False)
    cases.append((parquet, f"{parquet}: column 'Population', row 8: value is missing (NaN) (1 such cell(s))"))
    text_column = tmp_path / "text.parquet"
    rows.head(30).astype({"Longitude": str}).assign(
        Longitude=lambda f: f.Longitude.where(f.index != 3, "west")
    ).to_parquet(text_column, index=False)
    cases.append((text_column, f"{text_column}: column 'Longitude', row 4: 'west' is not a number (1 such cell(s))"))
    # In a folder, the first file by name that has a bad row is named, with the row in that file,
    # though Spark reads the larger file first.
    folder = tmp_path / "folder"
    folder.mkdir()
    rows.head(10).to_csv(folder / "a.csv", index=False)
    _csv(rows, folder / "b.csv", _set("Latitude", [4, 40], "inf"))
    _csv(rows, folder / "c.csv", _set("Latitude", [1], "inf"))
    cases.append((folder, f"{folder / 'b.csv'}: column 'Latitude', row 5: value is infinite (3 such cell(s))"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    rows.head(5).to_csv(mixed / "a.csv", index=False)
    rows.head(5).to_parquet(mixed / "b.parquet", index=False)
    cases.append((mixed, f"{mixed}: expected .csv or .parquet files, found .csv, .parquet"))
    missing = tmp_path / "nothing.csv"
    cases.append((missing, f"{missing}: no such file or folder"))
    for source, expected in cases:
        assert _refused(lambda source=source: spark_predict("challenger", source, output), tmp_path, output) == expected


def test_files_the_pandas_engine_cannot_read_get_its_line(
    spark, scoring: str, rows: pd.DataFrame, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    one_line = tmp_path / "one-line.csv"
    one_line.write_text(",".join(FEATURES) + "," + "1" * (2 << 20))
    output = tmp_path / "out.parquet"
    for source in (fifo, one_line):
        with pytest.raises(DataError) as pandas_engine:
            predict(input_path=str(source), output_path=tmp_path / "out.csv")
        refused = _refused(lambda source=source: spark_predict("challenger", source, output), tmp_path, output)
        assert refused == str(pandas_engine.value)


def test_a_bad_byte_after_the_header_is_not_blamed_on_the_header(
    spark, scoring: str, rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = tmp_path / "bad-byte.csv"
    source.write_bytes(rows.head(20).to_csv(index=False).encode().replace(b"\n", b"\n\xff\xfe", 1))
    output = tmp_path / "out.parquet"
    refused = _refused(lambda: spark_predict("challenger", source, output), tmp_path, output)
    assert "header" not in refused and refused.startswith(f"{source}: ")


def test_rows_are_numbered_across_partitions_of_one_file(
    spark, scoring: str, rows: pd.DataFrame, tmp_path: Path
) -> None:
    source = tmp_path / "many-partitions.csv"
    frame = pd.concat([rows] * 4, ignore_index=True).astype(object)
    frame.loc[[1499, 2000], "MedInc"] = None
    frame.to_csv(source, index=False)
    with pytest.raises(DataError) as pandas_engine:
        predict(input_path=str(source), output_path=tmp_path / "out.csv")
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "8192")  # about 25 partitions, not 1
    try:
        assert spark.read.csv(str(source), header=True).rdd.getNumPartitions() > 10
        message = _refused(
            lambda: spark_predict("quantized", source, tmp_path / "out.parquet"), tmp_path, tmp_path / "out.parquet"
        )
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    assert (
        message
        == str(pandas_engine.value)
        == f"{source}: column 'MedInc', row 1500: value is missing (NaN) (2 such cell(s))"
    )


def test_a_prediction_that_overflows_is_refused_after_scoring_leaving_nothing(
    spark, scoring: str, rows: pd.DataFrame, tmp_path: Path
) -> None:
    """Finite features so large that the model's sum overflows: the models refuse them inside Spark's task."""

    def huge(frame: pd.DataFrame) -> pd.DataFrame:  # as tests/test_predict.py's OVERFLOW_ROW
        return _set("AveBedrms", [3], "1.7e308")(_set("MedInc", [3], "1.7e308")(frame))

    source = _csv(rows, tmp_path / "huge.csv", huge)
    output = tmp_path / "out.parquet"
    message = _refused(lambda: spark_predict("challenger", source, output), tmp_path, output)
    assert message == f"{source}: a prediction overflows float64: features this extreme overflow the model"


def test_output_guard_and_existing_folders(scoring: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    """Refused before Spark starts: the input as output, a folder that is not an earlier output, no input."""
    with pytest.raises(PipelineError, match=r"is the input"):
        spark_predict("quantized", inputs["csv file"], inputs["csv file"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(PipelineError, match=r"already exists and is not an earlier Parquet output"):
        spark_predict("quantized", inputs["csv file"], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(PipelineError, match=r"--engine spark needs --input"):
        predict(engine="spark", output_path=tmp_path / "x.parquet")
    with pytest.raises(PipelineError, match=r"--spark-env-manager must be one of local, virtualenv, uv, got 'conda'"):
        predict(engine="spark", input_path=str(inputs["csv file"]), spark_env_manager="conda")


def _command_line(python: str, master: str, source: Path, output: Path, temp: Path) -> subprocess.CompletedProcess:
    """`predict --engine spark` as a user runs it, with `temp` as its TMPDIR; Java missing skips (fails in CI)."""
    command = [python, "-m", "pipeline", "predict", "--engine", "spark", "--spark-master", master]
    result = subprocess.run(
        [*command, "--input", str(source), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    if "JAVA_GATEWAY_EXITED" in result.stderr:
        from tests.conftest import engine_missing

        engine_missing("Spark (Java)", "apt-get install -y openjdk-17-jre-headless")
    return result


def test_command_line_refuses_bad_input_in_one_line(
    scoring: str, rows: pd.DataFrame, tmp_path: Path, python: str
) -> None:
    source = _csv(rows, tmp_path / "bad.csv", _set("MedInc", [2], ""))
    temp = tmp_path / "temp"
    temp.mkdir()
    result = _command_line(python, "local[1]", source, tmp_path / "out.parquet", temp)
    expected = f"error: {source}: column 'MedInc', row 3: value is missing (NaN) (1 such cell(s))"
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [expected])
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "temp"]
    # Spark started and stopped cleanly: its log is not left behind.
    assert list(temp.glob("housing-mlops-spark-*.log")) == []


def test_command_line_names_the_kept_spark_log_when_the_master_is_refused(
    scoring: str, inputs: dict[str, Path], tmp_path: Path, python: str
) -> None:
    result = _command_line(python, "local[two]", inputs["csv file"], tmp_path / "out.parquet", tmp_path)
    (spark_log,) = tmp_path.glob("housing-mlops-spark-*.log")
    expected = (
        "error: Spark could not start on local[two] (org.apache.spark.SparkException: "
        f"Could not parse Master URL: 'local[two]'; its log: {spark_log})"
    )
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [expected])
    assert os.listdir(tmp_path) == [spark_log.name]


def test_command_line_without_java_says_what_to_install(
    scoring: str, inputs: dict[str, Path], tmp_path: Path, python: str
) -> None:
    pytest.importorskip("pyspark")
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java")}
    result = subprocess.run(
        [
            python,
            "-m",
            "pipeline",
            "predict",
            "--engine",
            "spark",
            "--input",
            str(inputs["csv file"]),
            "--output",
            str(tmp_path / "out.parquet"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert line.startswith("error: Spark could not start (JAVA_GATEWAY_EXITED: ")
    assert line.endswith("is Java installed? apt-get install openjdk-17-jre-headless (Spark needs Java 17 or 21)")
    assert not (tmp_path / "out.parquet").exists()
