"""The `predict` step: predictions, metrics, what the run records, and every kind of bad input."""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import data, mlflow_compat, registry, splits
from pipeline.config import CHALLENGER_URI, FEATURES, MODEL_NAME, PREDICTION, TARGET
from pipeline.errors import DataError, PipelineError
from pipeline.metrics import RunningErrors, regression_metrics
from pipeline.predict import ERROR, ReadAhead, format_report, main, predict, score

# One alias per flavor: the float (scikit-learn) model and the quantized (python_function) one.
SCORED_ALIASES = ["challenger", "quantized"]


def read_output(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def predict_runs() -> list[mlflow.entities.Run]:
    return MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()], "tags.step = 'predict'"
    )


@pytest.fixture(scope="module")
def held_out(california: data.Dataset) -> pd.DataFrame:
    """The default held-out split's first 57 rows, features and target, in a frame."""
    split = data.split(california, test_size=0.2, random_state=42)
    return split.X_test.head(57).assign(**{TARGET: split.y_test.head(57)})


def float_predictions(frame: pd.DataFrame) -> np.ndarray:
    """What the float model's scikit-learn estimator itself predicts, without pyfunc or CSV."""
    estimator = mlflow.sklearn.load_model(CHALLENGER_URI)
    return estimator.predict(frame[list(FEATURES)])


def test_running_errors_equal_regression_metrics() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(3.0, 1.2, size=1003)
    pred = y + rng.normal(0.1, 0.7, size=1003)
    errors = RunningErrors()
    for start, stop in ((0, 1), (1, 400), (400, 400), (400, 1003)):
        errors.add(y[start:stop], pred[start:stop])
    expected = regression_metrics(y, pred)
    assert errors.metrics() == pytest.approx(expected, rel=1e-12)
    assert set(errors.metrics()) == {"test_r2", "test_mse", "test_rmse", "test_mae"}


def test_running_errors_edge_cases() -> None:
    constant = RunningErrors()
    constant.add(np.full(5, 2.0), np.full(5, 2.0))
    assert constant.metrics()["test_r2"] == 1.0
    constant.add(np.full(5, 2.0), np.full(5, 2.5))
    assert constant.metrics()["test_r2"] == 0.0
    assert constant.metrics()["test_mae"] == pytest.approx(0.25)
    assert RunningErrors().metrics() == {}


@pytest.mark.parametrize("alias", SCORED_ALIASES)
def test_default_input_is_the_held_out_split(scoring: str, tmp_path: Path, alias: str) -> None:
    version = registry.version_by_alias(alias)
    output = tmp_path / "predictions.csv"
    result = predict(f"models:/{MODEL_NAME}@{alias}", output_path=output)

    assert result.version == str(version.version)
    assert result.n_rows == 4128
    assert result.output_path == str(output)
    assert f"run {version.run_id}" in result.input_source
    # The same rows as the run that logged the model evaluated: the same metrics, to rounding.
    logged = MlflowClient().get_run(version.run_id).data.metrics
    for key in ("test_r2", "test_mse", "test_rmse", "test_mae"):
        assert result.metrics[key] == pytest.approx(logged[key], rel=1e-9), key

    written = read_output(output)
    assert list(written.columns) == [PREDICTION, ERROR]
    assert len(written) == 4128
    np.testing.assert_array_equal(written[PREDICTION].head(10), result.sample[PREDICTION])
    split, _ = splits.load_split(version.run_id)
    np.testing.assert_allclose(written[ERROR], written[PREDICTION] - split.y_test.to_numpy(), rtol=1e-9, atol=1e-12)
    assert result.sample[TARGET].round(2).tolist()[:3] == [0.48, 0.46, 5.0]

    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["step"] == "predict"
    assert run.data.params["model_uri"] == f"models:/{MODEL_NAME}@{alias}"
    assert run.data.params["input"] == ""  # as given: the default, the held-out split
    assert run.data.params["input_source"] == result.input_source
    assert run.data.params["output_path"] == str(output)
    assert run.data.params["model_version"] == str(version.version)
    assert run.data.params["model_run_id"] == version.run_id
    assert run.data.metrics["n_rows"] == 4128
    assert run.data.metrics["rows_per_second"] > 0
    assert run.data.metrics["test_r2"] == pytest.approx(result.metrics["test_r2"])


@pytest.mark.parametrize("alias", SCORED_ALIASES)
def test_chunked_csv_equals_the_models_own_predictions(
    scoring: str, tmp_path: Path, held_out: pd.DataFrame, alias: str
) -> None:
    uri = f"models:/{MODEL_NAME}@{alias}"
    source = tmp_path / "houses.csv"
    held_out.to_csv(source, index=False)
    predict(uri, str(source), tmp_path / "out.csv", chunksize=10)
    direct = mlflow.pyfunc.load_model(uri).predict(pd.read_csv(source)[list(FEATURES)])
    np.testing.assert_allclose(read_output(tmp_path / "out.csv")[PREDICTION], direct, rtol=1e-12, atol=1e-12)


def test_csv_without_target_streams_in_chunks(scoring: str, tmp_path: Path, held_out: pd.DataFrame) -> None:
    source = tmp_path / "houses.csv"
    # Whole numbers written without a decimal point, as many tools do, are read as integers.
    held_out[list(FEATURES)].to_csv(source, index=False, float_format=lambda v: f"{v:.17g}")
    assert pd.read_csv(source)["HouseAge"].dtype == "int64"
    output = tmp_path / "out" / "scored.csv"
    output.parent.mkdir()
    result = predict(CHALLENGER_URI, str(source), output, chunksize=10)

    written = read_output(output)
    assert list(written.columns) == [PREDICTION]
    np.testing.assert_allclose(written[PREDICTION], float_predictions(held_out), rtol=1e-12)
    assert result.n_rows == 57
    assert result.metrics == {}
    assert result.input_source == str(source.resolve())
    assert list(result.sample.columns) == [PREDICTION]
    assert len(result.sample) == 10
    run = MlflowClient().get_run(result.run_id)
    assert not any(key.startswith("test_") for key in run.data.metrics)
    assert run.data.params["input_source"] == str(source.resolve())
    lines = format_report(result).splitlines()
    assert "Model Performance:" not in lines
    assert lines[lines.index("Sample Predictions (first 10):") + 1] == f"Predicted: {written[PREDICTION][0]:.2f}"
    assert sorted(p.name for p in output.parent.iterdir()) == ["scored.csv"]


def test_csv_with_target_metrics_across_chunks(scoring: str, tmp_path: Path, held_out: pd.DataFrame) -> None:
    source = tmp_path / "houses.csv"
    # Columns in another order than the model's: they are matched by name.
    held_out[[TARGET, *reversed(FEATURES)]].to_csv(source, index=False)
    result = predict(CHALLENGER_URI, str(source), tmp_path / "out.csv", chunksize=8)

    expected = float_predictions(held_out)
    assert result.metrics == pytest.approx(regression_metrics(held_out[TARGET], expected), rel=1e-9)
    written = read_output(tmp_path / "out.csv")
    np.testing.assert_allclose(written[ERROR], expected - held_out[TARGET].to_numpy(), rtol=1e-9, atol=1e-12)
    assert list(result.sample.columns) == [TARGET, PREDICTION, ERROR]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


HEADER = ",".join(FEATURES)

ROW = "8.3252,41.0,6.98,1.02,322.0,2.55,37.88,-122.23"

ROWS = "\n".join([ROW] * 12)

# Each bad input and a piece of the one-line error it must get.
BAD_INPUTS = {
    "missing file": (None, "no such file"),
    "empty file": ("", "the file is empty"),
    "header only": (HEADER + "\n", "has a header but no data rows"),
    "missing column": (
        HEADER.replace(",Longitude", "") + "\n" + ROW.rsplit(",", 1)[0] + "\n",
        "missing column(s) Longitude",
    ),
    "extra column": (HEADER + ",Color\n" + ROW + ",1\n", "unexpected column(s) Color"),
    "misnamed column": (HEADER.replace("MedInc", "Medinc") + "\n" + ROW + "\n", "missing column(s) MedInc"),
    "non-numeric cell": (
        f"{HEADER}\n{ROWS}\n{ROW.replace('41.0', 'old')}\n",
        "column 'HouseAge', row 13: 'old' is not a number",
    ),
    "NaN": (
        f"{HEADER}\n{ROWS}\n{ROW.replace('322.0', 'NaN')}\n",
        "column 'Population', row 13: value is missing (NaN)",
    ),
    "inf": (f"{HEADER}\n{ROWS}\n{ROW.replace('2.55', 'inf')}\n", "column 'AveOccup', row 13: value is infinite"),
    "wrong delimiter": (HEADER.replace(",", ";") + "\n" + ROW.replace(",", ";") + "\n", "delimited by ';'"),
    "non-UTF-8 bytes": (f"{HEADER}\n{ROW}\n".encode() + b"\xff\xfe,1\n", "row 2 (line 3), byte 1: not valid UTF-8"),
}


@pytest.mark.parametrize("kind", ["symlink loop", "broken symlink"])
def test_an_input_that_is_a_bad_symlink_is_one_line(
    scoring: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # predict reads on a thread; a symlink loop was once resolved on the main thread first (a RuntimeError).
    source = tmp_path / "batch.csv"
    source.symlink_to(source if kind == "symlink loop" else tmp_path / "gone.csv")
    expected = "is a symlink loop" if kind == "symlink loop" else f"is a symlink to {tmp_path / 'gone.csv'}"

    code = main(["--input", str(source), "--output", str(tmp_path / "out.csv")])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: {source}: {expected}" + ("" if kind == "symlink loop" else ", which does not exist")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.csv"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_one_line_exit_2_no_output(
    scoring: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    content, expected = BAD_INPUTS[case]
    source = tmp_path / "batch.csv"
    if content is not None:
        write(source, content)
    output = tmp_path / "out.csv"
    runs_before = len(predict_runs())

    # chunksize 5: the late bad rows are found after earlier chunks were already scored.
    code = main(["--input", str(source), "--output", str(output), "--chunksize", "5"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [err[-1]] and err[-1].startswith(f"error: {source}: ")
    assert expected in err[-1]
    assert [p.name for p in tmp_path.iterdir()] == ([] if content is None else ["batch.csv"])
    assert len(predict_runs()) == runs_before


def test_failure_keeps_the_previous_output(scoring: str, tmp_path: Path) -> None:
    output = write(tmp_path / "out.csv", "prediction\n1.0\n")
    source = write(tmp_path / "batch.csv", f"{HEADER}\n{ROWS}\n{ROW.replace('37.88', '')}\n")
    with pytest.raises(DataError, match="column 'Latitude', row 13: value is missing"):
        predict(input_path=str(source), output_path=output, chunksize=4)
    assert output.read_text() == "prediction\n1.0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.csv", "out.csv"]


@pytest.mark.parametrize(
    ("model_uri", "expected"),
    [
        (f"models:/{MODEL_NAME}@nope", f"registered model '{MODEL_NAME}' has no alias 'nope'"),
        (f"models:/{MODEL_NAME}/99", f"registered model '{MODEL_NAME}' has no version 99"),
    ],
)
def test_unknown_alias_or_version(scoring: str, tmp_path: Path, model_uri: str, expected: str) -> None:
    with pytest.raises(PipelineError, match=expected):
        predict(model_uri, output_path=tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []


def test_missing_champion_names_the_command(trained: str, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as err:
        predict(output_path=tmp_path / "out.csv")
    assert str(err.value) == (
        f"registered model '{MODEL_NAME}' has no alias 'champion'; run 'python -m pipeline promote "
        "(or the whole pipeline: mlflow run .)' to set it"
    )


def test_a_store_without_the_model_says_so_and_where(tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as err:
        predict(output_path=tmp_path / "out.csv")
    assert str(err.value) == (
        f"the tracking store {tracking_uri} holds no model '{MODEL_NAME}'; run the pipeline first "
        "(python -m pipeline main), or set MLFLOW_TRACKING_URI to the store that holds it"
    )


def test_progress_bar_when_asked(
    scoring: str, tmp_path: Path, held_out: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "houses.csv"
    held_out.to_csv(source, index=False)
    predict(input_path=str(source), output_path=tmp_path / "out.csv", chunksize=20, progress=True)
    lines = capsys.readouterr().err.split("\r")
    assert lines[0] == ""
    # tqdm's bar: the first line has the estimate from the file's size, the last the count.
    assert re.fullmatch(r"predict: +0%\|.+\| 0\.00/\d+\.0 .*", lines[1])
    assert re.fullmatch(r"predict: 100%\|.+\| 57\.0/57\.0 \[.* rows/s\]\n", lines[-1])
    predict(input_path=str(source), output_path=tmp_path / "out.csv")  # stderr is no terminal here
    assert "\r" not in capsys.readouterr().err


def test_write_errors_are_reported(scoring: str, tmp_path: Path, held_out: pd.DataFrame) -> None:
    model = mlflow.pyfunc.load_model(CHALLENGER_URI)
    with pytest.raises(PipelineError, match=r"cannot write predictions in .*/gone: .*No such file"):
        score(model, [held_out], str(tmp_path / "gone" / "out.csv"), "held-out rows")


def test_output_folder_must_exist(scoring: str, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"output folder .*nowhere does not exist"):
        predict(output_path=tmp_path / "nowhere" / "out.csv")


def test_output_folder_that_cannot_be_written_is_named(scoring: str) -> None:
    # /proc takes no new files, not even from root.
    with pytest.raises(PipelineError, match=r"cannot write to output folder /proc: "):
        predict(output_path="/proc/predictions.csv")


# Finite features so extreme that the model's weighted sum overflows float64.
OVERFLOW_ROW = ROW.replace("8.3252", "1.7e308").replace("1.02", "1.7e308")


@pytest.mark.parametrize("alias", SCORED_ALIASES)
def test_overflowing_predictions_are_refused(
    scoring: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], alias: str
) -> None:
    # Rows 7 and 13 (in two chunks of 5): the first is named, both are counted.
    lines = [ROW] * 15
    lines[6] = lines[12] = OVERFLOW_ROW
    source = write(tmp_path / "batch.csv", HEADER + "\n" + "\n".join(lines) + "\n")
    output = tmp_path / "out.csv"
    runs_before = len(predict_runs())

    uri = f"models:/{MODEL_NAME}@{alias}"
    code = main(["--model-uri", uri, "--input", str(source), "--output", str(output), "--chunksize", "5"])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert re.fullmatch(
        rf"error: {re.escape(str(source))}: row 7: the model's prediction is (-?inf|nan) \(2 such row\(s\)\); "
        "features this extreme overflow the model",
        err[0],
    ), err[0]
    assert [p.name for p in tmp_path.iterdir()] == ["batch.csv"]
    assert len(predict_runs()) == runs_before


def test_monitor_refuses_overflowing_predictions(scoring: str, tmp_path: Path, held_out: pd.DataFrame) -> None:
    from pipeline.monitor import monitor

    batch = held_out[list(FEATURES)].reset_index(drop=True)
    batch.loc[40, ["MedInc", "AveBedrms"]] = 1.7e308
    source = tmp_path / "batch.csv"
    batch.to_csv(source, index=False)
    runs_before = len(MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]))
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(source))}: row 41: the model's prediction is .* \(1 such row"
    ):
        monitor(str(source), min_batch=10)
    assert (
        len(MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])) == runs_before
    )


@contextlib.contextmanager
def mlflow_warnings(logger: str) -> Iterator[list[str]]:
    """The messages MLflow's `logger` logs in the block (MLflow's loggers do not propagate to pytest's)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(logger).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(logger).removeHandler(handler)


def test_model_loads_with_mlflows_requirement_warnings_without_scanning_every_package(
    scoring: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.utils import requirements_utils

    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@quantized", dst_path=str(tmp_path)))
    (model_dir / "requirements.txt").write_text("mlflow\nnumpy==0.0.1\nnot-a-housing-package==1.0\n")
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    with mlflow_warnings(requirements_utils.__name__) as expected:
        mlflow.pyfunc.load_model(str(model_dir))
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)

    def scan() -> None:
        raise AssertionError("every installed distribution was scanned")

    monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions", scan)
    with mlflow_warnings(requirements_utils.__name__) as warned:
        model = mlflow_compat.load_pyfunc(str(model_dir))
    assert len(expected) == 1 and "numpy==0.0.1" in expected[0] and "not-a-housing-package==1.0" in expected[0]
    assert warned == expected
    assert requirements_utils._MODULES_TO_PACKAGES is None  # a model logged later infers its requirements in full
    assert model.metadata.model_uuid == mlflow.models.Model.load(str(model_dir)).model_uuid


def test_conforming_frames_skip_mlflows_signature_check_with_the_same_predictions(
    scoring: str, held_out: pd.DataFrame
) -> None:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    X = held_out[list(FEATURES)]
    for alias in SCORED_ALIASES:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{alias}")
        unchecked = mlflow_compat.unchecked_predict(model, FEATURES)
        assert unchecked.__self__ is model._model_impl
        np.testing.assert_array_equal(unchecked(X), model.predict(X))
    # Where MLflow's check would reorder or convert the columns, it stays.
    for columns in ([ColSpec("double", name) for name in reversed(FEATURES)], [ColSpec("long", n) for n in FEATURES]):
        model.metadata.signature = ModelSignature(inputs=Schema(columns))
        assert mlflow_compat.unchecked_predict(model, FEATURES) == model.predict


def test_importing_predict_leaves_mlflow_to_be_imported_while_the_input_is_read() -> None:
    """predict starts reading before MLflow is imported; an import of it at the top of predict.py
    (or of a module predict imports first) would take that overlap away without failing anything else."""
    code = "import sys, pipeline.predict; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def counted_chunks(n_chunks: int, fail_at: int | None, pulled: list[int], closed: list[bool]) -> Iterator[int]:
    try:
        for index in range(n_chunks):
            pulled.append(index)
            if index == fail_at:
                raise DataError(f"chunk {index} is bad")
            yield index
    finally:
        closed.append(True)


def test_read_ahead_stays_within_its_depth_and_stops_when_closed() -> None:
    pulled: list[int] = []
    closed: list[bool] = []
    reader = ReadAhead(counted_chunks(100, None, pulled, closed), depth=3)
    reader.first()
    chunks = iter(reader)
    assert [next(chunks) for _ in range(5)] == [0, 1, 2, 3, 4]
    reader._ahead[-1].result()  # the reader has caught up: the depth, and no further
    assert len(pulled) == 5 + 3
    reader.close()
    assert closed == [True]
    assert len(pulled) == 8
    assert reader.seconds > 0


def test_closing_the_read_ahead_reads_at_most_the_chunk_in_progress() -> None:
    pulled: list[int] = []
    closed: list[bool] = []

    def slow_chunks() -> Iterator[int]:
        for chunk in counted_chunks(100, None, pulled, closed):
            time.sleep(0.05)
            yield chunk

    reader = ReadAhead(slow_chunks(), depth=20)
    reader.first()
    reader.close()
    assert len(pulled) <= 2  # the first, and the one being read when close was called
    assert closed == [True]


def test_read_ahead_raises_a_reading_error_where_its_chunk_would_be() -> None:
    pulled: list[int] = []
    closed: list[bool] = []
    reader = ReadAhead(counted_chunks(100, 4, pulled, closed), depth=10)
    got = []
    with pytest.raises(DataError, match="chunk 4 is bad"):
        got.extend(reader)
    assert got == [0, 1, 2, 3]
    reader.close()
    assert closed == [True]
    assert pulled == [0, 1, 2, 3, 4]  # nothing is read after the error
