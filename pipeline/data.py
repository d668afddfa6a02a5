"""Load, validate and split the California Housing data (no MLflow here).

Every check names what is wrong: the file, the column and the 1-based data row (the line in
the file is one more, for the header). Nothing is dropped, clipped or coerced silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import fetch_california_housing, get_data_home
from sklearn.model_selection import train_test_split

from pipeline.config import FEATURES, MIN_ROWS, SKLEARN_SOURCE, TARGET
from pipeline.errors import DataError

# What a file may carry besides the features: the target is required to train, optional to
# score, and never anything else.
TARGET_REQUIRED = "required"
TARGET_OPTIONAL = "optional"


@dataclass(frozen=True)
class Dataset:
    """Features, target and where they came from.

    Attributes:
        X: The 8 feature columns, float64, in `config.FEATURES` order.
        y: The target, or None when the input carried none.
        source: `config.SKLEARN_SOURCE` or the absolute path of a CSV file.
    """

    X: pd.DataFrame
    y: pd.Series | None
    source: str

    @property
    def digest(self) -> str:
        """A content hash of features and target, to tell whether data changed."""
        frame = self.X if self.y is None else self.X.assign(**{TARGET: self.y})
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """A train/test split of a `Dataset`, by row label."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series

    @property
    def train_index(self) -> list[int]:
        """Row labels of the training rows, as `split.json` records them."""
        return [int(i) for i in self.X_train.index]

    @property
    def test_index(self) -> list[int]:
        """Row labels of the held-out rows, as `split.json` records them."""
        return [int(i) for i in self.X_test.index]


def load_california() -> Dataset:
    """Loads scikit-learn's California Housing data (downloads it once, then cached).

    Raises:
        DataError: It is neither cached nor downloadable; the message says where it looked.
    """
    try:
        bunch = fetch_california_housing(as_frame=True)
    except OSError as err:  # URLError and socket errors are OSErrors
        raise DataError(
            f"cannot load the California Housing data set: not cached in {get_data_home()} and the "
            f"download failed ({err}); connect to the internet once, or set SCIKIT_LEARN_DATA to a "
            "folder holding scikit-learn's cal_housing_py3.pkz"
        ) from None
    frame = bunch.frame
    return Dataset(X=frame[list(FEATURES)].astype("float64"), y=frame[TARGET], source=SKLEARN_SOURCE)


def load(data: str | None, target: str = TARGET_REQUIRED) -> Dataset:
    """Loads the default data set, or a user's CSV when `data` names one.

    Args:
        data: Path of a CSV file, or None/"" for scikit-learn's California Housing.
        target: `TARGET_REQUIRED` or `TARGET_OPTIONAL`: whether the file must carry MedHouseVal.

    Raises:
        DataError: The file is missing or unusable; the message says where and why.
    """
    if not data or data == SKLEARN_SOURCE:
        return load_california()
    frames = list(read_csv_chunks(data, target=target))
    frame = pd.concat(frames) if len(frames) > 1 else frames[0]
    return to_dataset(frame, source=str(Path(data).resolve()))


def to_dataset(frame: pd.DataFrame, source: str) -> Dataset:
    """Wraps a validated frame (features, optional target) as a `Dataset`."""
    y = frame[TARGET] if TARGET in frame.columns else None
    return Dataset(X=frame[list(FEATURES)], y=y, source=source)


def read_csv_chunks(
    path: str | Path, target: str = TARGET_REQUIRED, chunksize: int | None = None
) -> Iterator[pd.DataFrame]:
    """Reads and validates a CSV file, chunk by chunk when `chunksize` is given.

    Chunks keep a running row index, so errors in later chunks name the file's real row.

    Raises:
        DataError: On the first problem found: missing or empty file, no data rows, wrong
            delimiter, bad encoding, missing/extra columns, non-numeric, NaN or infinite cells.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected a header and data rows)")
    try:
        reader = pd.read_csv(path, chunksize=chunksize or None, encoding="utf-8")
        chunks = reader if chunksize else [reader]
        seen_rows = False
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            validate_frame(chunk, origin=str(path), target=target)
            seen_rows = True
            # Whole-number columns read as int64; every step and model signature takes float64.
            yield chunk[_expected_columns(chunk)].astype("float64")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: {_describe_encoding_error(path)} ({err.reason})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (expected a header and data rows)") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a well-formed CSV file: {err}") from None
    if not seen_rows:
        raise DataError(f"{path}: the file has a header but no data rows")


def validate_frame(frame: pd.DataFrame, origin: str, target: str = TARGET_REQUIRED) -> None:
    """Checks columns and cell values of a frame read from `origin`.

    Row numbers in messages are the frame's index + 1 (the data row in the file).

    Raises:
        DataError: Naming the origin, column and row of the first problem.
    """
    columns = [str(c) for c in frame.columns]
    if len(columns) == 1:
        for sep in (";", "\t", "|"):
            if sep in columns[0]:
                raise DataError(
                    f"{origin}: the header is one column {columns[0][:60]!r}: the file looks "
                    f"delimited by {sep!r}, expected ','"
                )
    missing = [c for c in FEATURES if c not in columns]
    if target == TARGET_REQUIRED and TARGET not in columns:
        missing.append(TARGET)
    allowed = set(FEATURES) | {TARGET}
    extra = [c for c in columns if c not in allowed]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {', '.join(extra)}")
        raise DataError(f"{origin}: {'; '.join(parts)} (expected {', '.join((*FEATURES, TARGET))})")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise DataError(f"{origin}: column(s) {', '.join(duplicated)} appear more than once")
    for column in _expected_columns(frame):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            numeric = pd.to_numeric(values, errors="coerce")
            # pandas reads a column of only True/False cells as booleans, which would pass as 1/0.
            bad = values if pd.api.types.is_bool_dtype(values) else values[numeric.isna() & values.notna()]
            if len(bad):
                label = bad.index[0]
                raise DataError(
                    f"{origin}: column {column!r}, row {int(label) + 1}: {str(bad.iloc[0])!r} "
                    f"is not a number ({len(bad)} such cell(s))"
                )
            values = numeric
        array = values.to_numpy(dtype="float64")
        for problem, mask in (("missing (NaN)", np.isnan(array)), ("infinite", np.isinf(array))):
            if mask.any():
                row = int(frame.index[int(np.argmax(mask))]) + 1
                raise DataError(
                    f"{origin}: column {column!r}, row {row}: value is {problem} ({int(mask.sum())} such cell(s))"
                )


def split(dataset: Dataset, test_size: float, random_state: int) -> Split:
    """Splits a data set at random, reproducibly, like `sklearn.model_selection.train_test_split`.

    Raises:
        DataError: Too few rows, a `test_size` that leaves one side empty, or a `random_state`
            numpy cannot seed with.
    """
    if not 0 <= random_state < 2**32:
        raise DataError(f"random_state must be between 0 and 2**32 - 1, got {random_state}")
    if dataset.y is None:
        raise DataError(f"{dataset.source}: no {TARGET} column to train on")
    n_rows = len(dataset.X)
    if not 0.0 < test_size < 1.0:
        raise DataError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    if n_rows < MIN_ROWS:
        raise DataError(
            f"{dataset.source}: {n_rows} data row(s) are too few to split into training and "
            f"test sets (need at least {MIN_ROWS})"
        )
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.X, dataset.y, test_size=test_size, random_state=random_state
    )
    if len(X_train) <= len(FEATURES) or len(X_test) < 2:
        raise DataError(
            f"{dataset.source}: test_size={test_size} on {n_rows} rows leaves {len(X_train)} "
            f"training and {len(X_test)} test rows: too few on one side"
        )
    return Split(X_train, X_test, y_train, y_test)


def split_by_index(dataset: Dataset, train_index: list[int], test_index: list[int]) -> Split:
    """Rebuilds a recorded split from its row labels."""
    return Split(
        dataset.X.loc[train_index],
        dataset.X.loc[test_index],
        dataset.y.loc[train_index],
        dataset.y.loc[test_index],
    )


def _expected_columns(frame: pd.DataFrame) -> list[str]:
    return [*FEATURES, TARGET] if TARGET in frame.columns else list(FEATURES)


def _describe_encoding_error(path: Path) -> str:
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                row = f"row {line_number - 1} (line {line_number})" if line_number > 1 else "the header"
                return f"{row}, byte {err.start + 1}: not valid UTF-8 text"
    return "not valid UTF-8 text"
