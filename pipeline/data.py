"""Load, validate and split the California Housing data (no MLflow here).

Every check names what is wrong: the file, the column and the 1-based data row (the line in
the file is one more, for the header). Nothing is dropped, clipped or coerced silently.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import math
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from pipeline.config import FEATURES, MIN_ROWS, SKLEARN_SOURCE, TARGET
from pipeline.errors import DataError
from pipeline.params import RANDOM_STATE, TEST_SIZE

# What a file may carry besides the features: the target is required to train, optional to
# score, and never anything else.
TARGET_REQUIRED = "required"
TARGET_OPTIONAL = "optional"
# pyarrow parses blocks of this size; no row of this data comes near it, so a longer line is
# refused instead of read (it would take time and memory out of proportion).
BLOCK_BYTES = 1 << 20
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Column names a message lists at most.
_LISTED = 10


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

    @functools.cached_property
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
    # scikit-learn is imported where it is used: predict reads CSVs without it.
    from sklearn.datasets import fetch_california_housing, get_data_home

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
    (frame,) = read_csv_chunks(data, target=target)  # without a chunksize: the whole file, one frame
    return to_dataset(frame, source=str(Path(data).resolve()))


def to_dataset(frame: pd.DataFrame, source: str) -> Dataset:
    """Wraps a validated frame (features, optional target) as a `Dataset`."""
    y = frame[TARGET] if TARGET in frame.columns else None
    return Dataset(X=frame[list(FEATURES)], y=y, source=source)


def read_csv_chunks(
    path: str | Path, target: str = TARGET_REQUIRED, chunksize: int | None = None
) -> Iterator[pd.DataFrame]:
    """Reads and validates a CSV file: whole, or in chunks of `chunksize` rows.

    pyarrow's streaming CSV reader parses the file in blocks of 1 MiB, so a chunked read holds
    a few blocks whatever the file's size, and a row longer than a block is refused rather
    than read. The columns come out float64, in `config.FEATURES` order (then MedHouseVal),
    with a running row index.

    Raises:
        DataError: On the first problem in the file: missing, unreadable or not a regular file,
            empty, no data rows, wrong delimiter, bad encoding, missing/extra/duplicated/unnamed
            columns, a row with another number of fields than the header, a line over 1 MiB,
            non-numeric, NaN or infinite cells. The message names the file's row or line.
    """
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"chunksize must be a positive number of rows, got {chunksize}")
    path = Path(path)
    rows = 0
    with open_regular_file(path) as handle:
        try:
            reader = pa_csv.open_csv(
                handle,
                read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES, use_threads=True),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys((*FEATURES, TARGET), pa.float64())),
            )
            check_columns(reader.schema.names, str(path), target)
            for table in _tables(reader, chunksize):
                chunk = table.select(_expected_columns(reader.schema.names)).to_pandas()
                chunk.index = pd.RangeIndex(rows, rows + len(chunk))
                validate_frame(chunk, str(path))
                yield chunk
                rows += len(chunk)
        except (pa.ArrowInvalid, UnicodeDecodeError) as err:
            if "straddl" in str(err):  # a row longer than a block
                raise DataError(f"{path}: {describe_long_row(path)}") from None
            # pyarrow names neither the row nor the line of a problem, and refuses what pandas
            # reads (blank lines of spaces, a number quoted over two lines, True/False cells).
            # pandas reads the file again in order: it names the row or line at fault, or reads
            # on from `rows`.
            yield from _read_with_pandas(path, target, chunksize, skip=rows)
            return
    if rows == 0:
        raise DataError(f"{path}: the file has a header but no data rows")


def open_regular_file(path: Path) -> BinaryIO:
    """The file opened for reading, or a DataError that says what the path is instead.

    Opened without blocking (a FIFO would wait for a writer), then checked by its own type.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise DataError(f"{path}: {_describe_open_error(path, err)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(f"{path}: {_FILE_TYPES.get(stat.S_IFMT(mode), 'is a socket or a device, not a regular file')}")
    return os.fdopen(fd, "rb")


_FILE_TYPES = {stat.S_IFDIR: "is a folder, not a file", stat.S_IFIFO: "is a FIFO, not a regular file"}


def _describe_open_error(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "is a symlink loop"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ENOENT and path.is_symlink():
        return f"is a symlink to {os.readlink(path)}, which does not exist"
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    return f"cannot be opened: {err.strerror}"


def _tables(reader: pa_csv.CSVStreamingReader, chunksize: int | None) -> Iterator[pa.Table]:
    """The reader's record batches regrouped into tables of `chunksize` rows (the last fewer), or one table."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        pending.append(batch)
        held += batch.num_rows
        while chunksize and held >= chunksize:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunksize)
            rest = table.slice(chunksize)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def _read_with_pandas(path: Path, target: str, chunksize: int | None, skip: int) -> Iterator[pd.DataFrame]:
    """`read_csv_chunks` by `pandas.read_csv`, in order, from the data row after `skip` on."""
    try:
        check_columns(_header(path), str(path), target)
        # pandas takes the first field of every row as a row label when the first data row has
        # one field more than the header. Without a header, that row is a parser error.
        pd.read_csv(path, header=None, nrows=2, dtype=str, encoding="utf-8")
        with warnings.catch_warnings():
            # Columns of mixed types are named, with their row, by validate_frame.
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            reader = pd.read_csv(path, chunksize=chunksize, encoding="utf-8") if chunksize else None
            # The chunked reader keeps the file open: closed when the caller stops or a chunk is refused.
            with contextlib.closing(reader) if reader else contextlib.nullcontext():
                chunks = reader or [pd.read_csv(path, encoding="utf-8")]
                rows = 0
                for chunk in chunks:
                    rows += len(chunk)
                    if rows > skip:
                        validate_frame(chunk, str(path))
                        yield (
                            chunk[_expected_columns(chunk.columns)]
                            .astype("float64")
                            .iloc[max(skip - chunk.index[0], 0) :]
                        )
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: {_describe_encoding_error(path)} ({err.reason})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (expected a header and data rows)") from None
    except (pd.errors.ParserError, csv.Error) as err:
        raise DataError(f"{path}: not a well-formed CSV file: {err}") from None
    if rows == 0:
        raise DataError(f"{path}: the file has a header but no data rows")


def _header(path: Path) -> list[str]:
    """The first line that is not blank, as CSV fields: the names pandas would rename (MedInc.1, Unnamed: 9).

    Raises:
        DataError: The line is longer than a block.
        pandas.errors.EmptyDataError: The file holds only blank lines.
    """
    with path.open(encoding="utf-8-sig", newline="") as text:
        while line := text.readline(BLOCK_BYTES):
            if len(line) == BLOCK_BYTES:
                raise DataError(f"{path}: {describe_long_row(path)}")
            if line.strip():
                return next(csv.reader([line]))
    raise pd.errors.EmptyDataError


def describe_long_row(path: Path) -> str:
    """Which line is longer than a block, found in bounded memory; else the quote that runs on."""
    line, length = 1, 0
    with path.open("rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            start = 0
            for end in _LINE_END.finditer(block):
                if length + end.start() - start > BLOCK_BYTES:
                    break
                line, length, start = line + 1, 0, end.end()
            length += len(block) - start
            if length > BLOCK_BYTES:
                return f"line {line} is longer than {BLOCK_BYTES >> 20} MiB, too long for a row of this data"
    return f"a quoted value runs over more than {BLOCK_BYTES >> 20} MiB of lines (a quote that is not closed?)"


def check_columns(columns: list[str], origin: str, target: str = TARGET_REQUIRED) -> None:
    """Checks a header's column names: each named, once, the features, and the target when required.

    Raises:
        DataError: Naming the origin and the columns at fault.
    """
    if len(columns) == 1:
        for sep in (";", "\t", "|"):
            if sep in columns[0]:
                raise DataError(
                    f"{origin}: the header is one column {columns[0][:60]!r}: the file looks "
                    f"delimited by {sep!r}, expected ','"
                )
    unnamed = [position for position, name in enumerate(columns, start=1) if not name.strip()]
    if unnamed:
        hint = " (a trailing comma?)" if unnamed[0] == len(columns) else ""
        raise DataError(
            f"{origin}: an empty column name at position {unnamed[0]} of {len(columns)} in the header{hint}"
        )
    repeated = [
        f"column {_shown(name)} appears {'twice' if count == 2 else f'{count:,} times'}"
        for name, count in Counter(columns).items()
        if count > 1
    ]
    if repeated:
        raise DataError(f"{origin}: {_listed(repeated, '; ')}")
    missing = [c for c in FEATURES if c not in columns]
    if target == TARGET_REQUIRED and TARGET not in columns:
        missing.append(TARGET)
    allowed = set(FEATURES) | {TARGET}
    extra = [_shown(c, quote=False) for c in columns if c not in allowed]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {_listed(extra, ', ')}")
        raise DataError(f"{origin}: {'; '.join(parts)} (expected {', '.join((*FEATURES, TARGET))})")


def _shown(name: str, quote: bool = True) -> str:
    """A column name as messages show it: quoted or not, and cut at 60 characters."""
    cut = name if len(name) <= 60 else name[:57] + "..."
    return repr(cut) if quote else cut


def _listed(items: list[str], separator: str) -> str:
    """The first few items joined, and how many more there are: a message stays one readable line."""
    more = f" and {len(items) - _LISTED:,} more" if len(items) > _LISTED else ""
    return separator.join(items[:_LISTED]) + more


def validate_frame(frame: pd.DataFrame, origin: str) -> None:
    """Checks the cell values of a frame read from `origin`, whose columns `check_columns` accepted.

    Row numbers in messages are the frame's index + 1 (the data row in the file).

    Raises:
        DataError: Naming the origin, column and row of the first problem.
    """
    for column in _expected_columns(frame.columns):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            values = _numbers(values, f"{origin}: column {column!r}")
        problem = _first_non_finite(values.to_numpy(dtype="float64"))
        if problem is not None:
            position, what, count = problem
            row = int(frame.index[position]) + 1
            raise DataError(f"{origin}: column {column!r}, row {row}: value is {what} ({count} such cell(s))")


def _numbers(values: pd.Series, where: str) -> pd.Series:
    """A column pandas did not read as numbers, as numbers; NaN where a cell was empty.

    Raises:
        DataError: `where`, the row of the first cell that is not a number, the cell and the count.
    """
    numeric = pd.to_numeric(values, errors="coerce")
    # pandas reads True/False cells as booleans (a whole column of them, or pieces of a column it
    # parsed apart), which would pass as 1/0.
    boolean = values.map(lambda cell: isinstance(cell, bool | np.bool_)).to_numpy(dtype=bool)
    bad = values[(numeric.isna() & values.notna()).to_numpy() | boolean]
    if len(bad):
        raise DataError(
            f"{where}, row {int(bad.index[0]) + 1}: {str(bad.iloc[0])!r} is not a number ({len(bad)} such cell(s))"
        )
    return numeric


def _first_non_finite(array: np.ndarray) -> tuple[int, str, int] | None:
    """Where the first NaN is (else the first infinity), what it is and how many there are; None if all are finite."""
    if np.isfinite(array).all():
        return None
    for what, mask in (("missing (NaN)", np.isnan(array)), ("infinite", np.isinf(array))):
        if mask.any():
            return int(np.argmax(mask)), what, int(mask.sum())
    return None


def split(dataset: Dataset, test_size: float, random_state: int) -> Split:
    """Splits a data set at random, reproducibly, like `sklearn.model_selection.train_test_split`.

    Raises:
        PipelineError: `test_size` or `random_state` out of range.
        DataError: Too few rows, or a `test_size` that leaves one side empty.
    """
    TEST_SIZE.check(test_size)
    RANDOM_STATE.check(random_state)
    if dataset.y is None:
        raise DataError(f"{dataset.source}: no {TARGET} column to train on")
    n_rows = len(dataset.X)
    if n_rows < MIN_ROWS:
        raise DataError(
            f"{dataset.source}: {n_rows} data row(s) are too few to split into training and "
            f"test sets (need at least {MIN_ROWS})"
        )
    # The sizes train_test_split gives (ceil for the test set), checked before it refuses an
    # empty side with a traceback.
    n_test = math.ceil(test_size * n_rows)
    n_train = n_rows - n_test
    if n_train <= len(FEATURES) or n_test < 2:
        raise DataError(
            f"{dataset.source}: test_size={test_size} on {n_rows} rows leaves {n_train} "
            f"training and {n_test} test rows: too few on one side"
        )
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(
        dataset.X, dataset.y, test_size=test_size, random_state=random_state
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


def _expected_columns(columns: Iterable[str]) -> list[str]:
    return [*FEATURES, TARGET] if TARGET in columns else list(FEATURES)


def _describe_encoding_error(path: Path) -> str:
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                row = f"row {line_number - 1} (line {line_number})" if line_number > 1 else "the header"
                return f"{row}, byte {err.start + 1}: not valid UTF-8 text"
    return "not valid UTF-8 text"
