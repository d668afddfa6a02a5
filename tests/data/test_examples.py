"""Data tests of `python -m pipeline.examples`, and that every input file a documented command
uses is made by that command before the command appears."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import fetch_california_housing
from sklearn.model_selection import train_test_split

from pipeline import data, examples
from pipeline.config import EXIT_ERROR, FEATURES, TARGET
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

MAKE = "python -m pipeline.examples"

BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)

# Where a command reads a file: the steps' input flags, `mlflow run -P`, and curl's @file.
INPUT = re.compile(r"(?:--(?:data|input|batch|reference)\s+|-P (?:data|input|batch|reference)=|@)([\w./$-]+\.csv)")

NAMES = {"my_houses.csv", "new_houses.csv", "nodrift.csv", "shift.csv", "north.csv", "small.csv"}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("examples") / "examples"
    assert examples.main(["--dir", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def held_out() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pipeline's default split, made here with scikit-learn directly, not through the module."""
    frame = fetch_california_housing(as_frame=True).frame
    train, test = train_test_split(frame, test_size=0.2, random_state=42)
    return train, test


def read(made: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(made / name)


def rows_within(frame: pd.DataFrame, pool: pd.DataFrame) -> bool:
    merged = frame.merge(pool.drop_duplicates(), on=list(frame.columns), how="left", indicator=True)
    return bool((merged["_merge"] == "both").all())


def test_makes_every_file_with_its_columns_and_rows(made: Path) -> None:
    assert {p.name for p in made.iterdir()} == NAMES
    with_target = [*FEATURES, TARGET]
    shapes = {name: (list(read(made, name).columns), len(read(made, name))) for name in NAMES}
    assert shapes == {
        "my_houses.csv": (with_target, 5000),
        "new_houses.csv": (list(FEATURES), 500),
        "nodrift.csv": (with_target, 500),
        "shift.csv": (with_target, 1000),
        "north.csv": (with_target, 1476),
        "small.csv": (with_target, 100),
    }


def test_batches_are_held_out_rows(made: Path, held_out: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = held_out
    assert rows_within(read(made, "nodrift.csv"), test)
    assert not rows_within(read(made, "nodrift.csv"), train)
    assert read(made, "new_houses.csv").equals(read(made, "nodrift.csv")[list(FEATURES)])
    assert read(made, "small.csv").to_numpy().tolist() == test.head(100)[[*FEATURES, TARGET]].to_numpy().tolist()
    north = read(made, "north.csv")
    assert (north["Latitude"] > 37).all() and rows_within(north, test)


def test_shift_raises_medinc_by_a_quarter_sigma(made: Path, held_out: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = held_out
    shift = read(made, "shift.csv")
    others = [c for c in shift.columns if c != "MedInc"]
    matched = shift.merge(test.drop_duplicates(subset=others), on=others, suffixes=("", "_orig"))
    assert len(matched) == len(shift)
    sigma = train["MedInc"].std(ddof=0)
    assert (matched["MedInc"] - matched["MedInc_orig"]).to_numpy() == pytest.approx(0.25 * sigma, abs=1e-9)


def test_the_pipeline_accepts_them(made: Path) -> None:
    """Training files carry the target; the rest load as rows to score."""
    assert len(data.load(str(made / "my_houses.csv")).X) == 5000
    scored = data.load(str(made / "new_houses.csv"), target=data.TARGET_OPTIONAL)
    assert scored.y is None and len(scored.X) == 500


def test_rerun_keeps_identical_files_and_refuses_changed_ones(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "examples"
    assert examples.main(["--dir", str(folder)]) == 0
    assert examples.main(["--dir", str(folder)]) == 0
    assert all((folder / n).read_bytes() == (made / n).read_bytes() for n in NAMES)
    (folder / "my_houses.csv").write_text("MedInc\n1\n")  # the user's own file
    (folder / "small.csv").unlink()
    capsys.readouterr()
    assert examples.main(["--dir", str(folder)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {folder / 'my_houses.csv'} exists and differs")
    assert (folder / "my_houses.csv").read_text() == "MedInc\n1\n"
    assert not (folder / "small.csv").exists()  # nothing written at all


def commands(page: Path) -> list[str]:
    """The lines of a page's bash blocks, in order."""
    return [line for block in BASH_BLOCK.findall(page.read_text()) for line in block.splitlines()]


def test_input_parser_finds_the_inputs() -> None:
    lines = [
        "python -m pipeline train --data examples/my_houses.csv   # comment",
        "mlflow run . -e monitor -P batch=examples/shift.csv",
        "curl -s $URL -H 'Content-Type: text/csv' --data-binary @examples/new_houses.csv",
        "python -m pipeline predict --output scored.csv",
    ]
    assert [m for line in lines for m in INPUT.findall(line)] == [
        "examples/my_houses.csv",
        "examples/shift.csv",
        "examples/new_houses.csv",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_input_a_command_reads_is_made_before_it(page: Path) -> None:
    lines = commands(page)
    made_at = next((i for i, line in enumerate(lines) if line.startswith(MAKE)), None)
    for i, line in enumerate(lines):
        for path in INPUT.findall(line):
            assert path.startswith(f"{examples.DEFAULT_DIR}/") and Path(path).name in NAMES, f"{page.name}: {line}"
            assert made_at is not None and made_at < i, f"{page.name}: {path} is used before '{MAKE}'"


def test_readme_uses_the_example_inputs() -> None:
    used = {Path(p).name for line in commands(ROOT / "README.md") for p in INPUT.findall(line)}
    assert {"my_houses.csv", "new_houses.csv", "shift.csv"} <= used
