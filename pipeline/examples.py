"""`python -m pipeline.examples [--dir examples]`: writes the example inputs the README's commands use.

They are cut from scikit-learn's California Housing data and the pipeline's default split
(test_size 0.2, random_state 42), with fixed seeds, so every machine makes the same files and
the README's figures can be reproduced from them. They are made, not committed: the data set
is scikit-learn's to distribute, and a command keeps them in step with the code.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import data
from pipeline.config import TARGET
from pipeline.errors import DataError
from pipeline.params import RANDOM_STATE, TEST_SIZE

DEFAULT_DIR = "examples"
# A shift a drift check must catch: a quarter of MedInc's training standard deviation.
SHIFT_SIGMAS = 0.25


@dataclass(frozen=True)
class Example:
    """One file to write: its name, its rows and what the README uses it for."""

    name: str
    frame: pd.DataFrame
    purpose: str


def build(dataset: data.Dataset) -> list[Example]:
    """Cuts the example files from the data set (pure: no files are touched)."""
    whole = dataset.X.assign(**{TARGET: dataset.y})
    split = data.split(dataset, TEST_SIZE.default, RANDOM_STATE.default)
    held_out = split.X_test.assign(**{TARGET: split.y_test})
    nodrift = held_out.sample(500, random_state=1)
    shift = held_out.sample(1000, random_state=2)
    shift["MedInc"] += SHIFT_SIGMAS * split.X_train["MedInc"].std(ddof=0)
    return [
        Example("my_houses.csv", whole.sample(5000, random_state=0), "your own training data: train --data"),
        Example(
            "new_houses.csv",
            nodrift.drop(columns=TARGET),
            "rows to score, features only: predict --input, monitor --batch, serving",
        ),
        Example("nodrift.csv", nodrift, "a monitoring batch that has not drifted"),
        Example("shift.csv", shift, f"a monitoring batch with MedInc raised by {SHIFT_SIGMAS} sigma"),
        Example("north.csv", held_out[held_out["Latitude"] > 37], "a monitoring batch from one region (north of 37N)"),
        Example("small.csv", held_out.head(100), "a batch below monitor's min_batch of 200"),
    ]


def write(examples: list[Example], folder: Path) -> list[Path]:
    """Writes the files into `folder`; a file already there is kept if it is the same.

    Raises:
        DataError: A file of that name holds something else (it is the user's, or from other
            code): nothing is written, so nothing of theirs is overwritten.
    """
    texts = {folder / example.name: example.frame.to_csv(index=False) for example in examples}
    for path, text in texts.items():
        if path.exists() and (not path.is_file() or path.read_text() != text):
            raise DataError(
                f"{path} exists and differs from the example this command makes; nothing was written "
                f"(move it away, or pass --dir to write the examples elsewhere)"
            )
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in texts.items():
        if not path.exists():
            path.write_text(text)
    return list(texts)


def main(argv: list[str] | None = None) -> int:
    """Writes the examples; prints one line per file. Exit code 2 when a file is in the way."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.examples", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=DEFAULT_DIR, help="folder to write them to (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        examples = build(data.load_california())
        paths = write(examples, Path(args.dir))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    for example, path in zip(examples, paths, strict=True):
        print(f"{path}  {len(example.frame):>5,} rows  {example.purpose}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
