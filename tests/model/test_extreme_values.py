"""Data: finite values that train or quantize cannot compute with are refused before anything is logged.

Each case is a real CSV, the California Housing data with one cell or one column changed, given
to the command line: exit code 2, one line naming the file, the column and the data row, and
no new run, no new version, no moved alias. Values either step can compute with still train.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import data, registry
from pipeline import main as main_step
from pipeline import quantize as quantize_step
from pipeline import train as train_step
from pipeline.config import ALIAS_CHALLENGER, ALIAS_QUANTIZED, MODEL_NAME, TARGET
from pipeline.quantize import check_storable
from tests.conftest import Store


def out_of_scale(ignored: int) -> str:
    return (
        "the column is so far out of scale with the others that least squares (LinearRegression, singular values "
        f"under 1e-06 of the largest count as zero) would ignore {ignored} of the 8 features; correct the value or "
        "rescale the column"
    )


SQUARED_ERROR = "the model's squared error on this row overflows float64, so its MSE and R² would be infinite"


@dataclass(frozen=True)
class Rows:
    """The real data as a frame with the target, and data rows (1-based) of the default split."""

    frame: pd.DataFrame
    train: list[int]
    test: list[int]

    def largest(self, column: str) -> int:
        """The training row with the column's largest value (all values here are positive)."""
        return int(self.frame.loc[[row - 1 for row in self.train], column].idxmax()) + 1


@pytest.fixture(scope="module")
def rows(california: data.Dataset) -> Rows:
    split = data.split(california, test_size=0.2, random_state=42)
    frame = california.X.assign(**{TARGET: california.y})
    return Rows(frame, [i + 1 for i in split.train_index], [i + 1 for i in split.test_index])


def with_cells(column: str, value: float, *data_rows: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        changed = frame.copy()
        changed.loc[[row - 1 for row in data_rows], column] = value
        return changed

    return change


def scaled(column: str, factor: float) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda frame: frame.assign(**{column: frame[column] * factor})


def one_cell(column: str, value: float, side: str, why: str, index: int = 0) -> tuple:
    """A case that changes one cell of a training ("train") or held-out ("test") row."""

    def row(r: Rows) -> int:
        return getattr(r, side)[index]

    return (lambda r: with_cells(column, value, row(r)), column, row, f"{value:g}", why)


# Each case: how the data changes, then the column, the data row, the cell as printed and the
# reason the refusal names.
CASES = {
    "one Population cell 1e308 (the issue's case)": one_cell("Population", 1e308, "train", out_of_scale(7)),
    "one Population cell 1e10": one_cell("Population", 1e10, "train", out_of_scale(7)),
    "one Latitude cell -1e308": one_cell("Latitude", -1e308, "train", out_of_scale(7), index=1),
    "AveRooms in millionths": (
        lambda r: scaled("AveRooms", 1e6),
        "AveRooms",
        lambda r: r.largest("AveRooms"),
        "1.41909e+08",
        out_of_scale(3),
    ),
    "two Population cells 1e308": (
        lambda r: with_cells("Population", 1e308, *r.train[:2]),
        "Population",
        lambda r: r.train[0],
        "1e+308",
        "the column's sum over the training rows overflows float64, so least squares cannot centre it",
    ),
    "one training MedHouseVal 1e200": one_cell(TARGET, 1e200, "train", SQUARED_ERROR),
    "one held-out MedHouseVal 1e200": one_cell(TARGET, 1e200, "test", SQUARED_ERROR),
    "one held-out Population 1e200": one_cell("Population", 1e200, "test", SQUARED_ERROR),
}
# Values train computes with, but the quantized model cannot store: main refuses them up front.
QUANTIZE_CASES = {
    "MedHouseVal times 1e39": (
        lambda r: scaled(TARGET, 1e39),
        TARGET,
        lambda r: r.largest(TARGET),
        "5.00001e+39",
        "the column's mean over the training rows (2.07195e+39) is beyond float32 (±3.4e+38), in which the "
        "quantized model stores its intercept",
    ),
    "every column times 1e39": (
        lambda r: lambda frame: frame * 1e39,
        "MedInc",
        lambda r: r.largest("MedInc"),
        "1.50001e+40",
        "the column's mean over the training rows (3.88075e+39) is beyond float32 (±3.4e+38), in which the "
        "quantized model stores its feature mean",
    ),
}


def write(rows: Rows, change: Callable[[Rows], Callable], path: Path) -> Path:
    change(rows)(rows.frame).to_csv(path, index=False)
    return path


def store_state() -> tuple[int, list[str], dict[str, str]]:
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    versions = client.search_model_versions()
    # search_model_versions leaves out the aliases; the registered model has them.
    aliases = dict(client.get_registered_model(MODEL_NAME).aliases) if versions else {}
    return len(runs), sorted(str(v.version) for v in versions), aliases


def refused_line(csv: Path, rows: Rows, case: tuple) -> str:
    _, column, row, cell, why = case
    return f"error: {csv.resolve()}: column {column!r}, row {row(rows)}: {cell}: {why}"


# train refuses what it cannot compute with; main also what quantize cannot store, before training.
REFUSALS = [(name, step) for name in CASES for step in ("train", "main")] + [(name, "main") for name in QUANTIZE_CASES]


@pytest.mark.parametrize(("name", "step"), REFUSALS)
def test_values_no_step_can_compute_with_are_refused_up_front(
    trained_store: Store,
    clone_store,
    rows: Rows,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    step: str,
) -> None:
    clone_store(trained_store)
    case = CASES.get(name) or QUANTIZE_CASES[name]
    csv = write(rows, case[0], tmp_path / "extreme.csv")
    before = store_state()
    assert before[1:] == (["1"], {ALIAS_CHALLENGER: 1})
    module = train_step if step == "train" else main_step
    assert module.main(["--data", str(csv)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [refused_line(csv, rows, case)]
    assert store_state() == before


def test_values_train_can_compute_with_still_fit(rows: Rows, tmp_path: Path) -> None:
    # The largest Population is 35,682; a hundred thousand is still in scale.
    csv = write(rows, lambda r: with_cells("Population", 1e5, r.train[0]), tmp_path / "large.csv")
    assert train_step.prepare(str(csv)).metrics["test_r2"] == pytest.approx(0.5758, abs=1e-4)
    # A target in units of 1e30 fits, and its quantized intercept still fits in float32.
    csv = write(rows, lambda r: scaled(TARGET, 1e30), tmp_path / "scaled.csv")
    fitted = train_step.prepare(str(csv))
    assert fitted.metrics["test_r2"] == pytest.approx(0.5758, abs=1e-4)
    check_storable(fitted.split, str(csv))


def test_quantize_names_the_column(
    tracking_uri: str, rows: Rows, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train alone registers a model on MedHouseVal × 1e39; quantize then refuses it before its run."""
    case = QUANTIZE_CASES["MedHouseVal times 1e39"]
    csv = write(rows, case[0], tmp_path / "scaled.csv")
    assert train_step.main(["--data", str(csv)]) == 0
    capsys.readouterr()
    before = store_state()
    assert registry.version_by_alias(ALIAS_CHALLENGER) is not None
    assert quantize_step.main([]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [refused_line(csv, rows, case)]
    assert store_state() == before
    assert registry.version_by_alias(ALIAS_QUANTIZED) is None


@pytest.mark.integration
@pytest.mark.parametrize("name", [*CASES, *QUANTIZE_CASES])
def test_cli_prints_one_line_and_registers_nothing(
    trained_store: Store, clone_store, rows: Rows, python: str, tmp_path: Path, name: str
) -> None:
    """`python -m pipeline main` as users start it: numpy's overflow warnings add no lines."""
    clone_store(trained_store)
    case = CASES.get(name) or QUANTIZE_CASES[name]
    csv = write(rows, case[0], tmp_path / "extreme.csv")
    before = store_state()
    result = subprocess.run(
        [python, "-m", "pipeline", "main", "--data", str(csv)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [refused_line(csv, rows, case)]
    assert store_state() == before
