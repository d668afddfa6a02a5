"""Load, validate and split the California Housing data (no MLflow here).

Every check names what is wrong: the file, the column and the 1-based data row (the line in
the file is one more, for the header). Nothing is dropped, clipped or coerced silently.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from sklearn.datasets import fetch_california_housing, get_data_home
from sklearn.model_selection import train_test_split

from pipeline.config import FEATURES, MIN_ROWS, SKLEARN_SOURCE, TARGET
from pipeline.errors import DataError
from pipeline.params import RANDOM_STATE, TEST_SIZE

# What a file may carry besides the features: the target is required to train, optional to
# score, and never anything else.
TARGET_REQUIRED = "required"
TARGET_OPTIONAL = "optional"
_MAX_READ_THREADS = 4
# Blocks are sized from the first lines' length; this keeps one long first line from making
# every block huge.
_MAX_BLOCK_BYTES = 64 << 20
_LINE_SAMPLE_BYTES = 1 << 16


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
    """Reads and validates a CSV file: whole, or in chunks of about `chunksize` rows.

    A whole file is read by one `pandas.read_csv`. Chunks are parsed on a few threads, a few
    blocks ahead of the caller, and come out in the file's order with a running row index.
    Either way the columns are float64, in `config.FEATURES` order (then MedHouseVal), and a
    chunked read holds only a few chunks in memory whatever the file's size.

    Raises:
        DataError: On the first problem in the file: missing or empty file, no data rows, wrong
            delimiter, bad encoding, missing/extra columns, a row with more fields than the
            header, non-numeric, NaN or infinite cells. The message names the file's row.
    """
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"chunksize must be a positive number of rows, got {chunksize}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected a header and data rows)")
    if chunksize is None:
        yield from _read_in_order(path, target)
        return
    rows = 0
    try:
        for chunk in _read_blocks(path, target, chunksize):
            yield chunk
            rows += len(chunk)
    except (_UnsplittableError, ValueError, DataError):  # pandas' parser and encoding errors are ValueErrors
        # A block is parsed apart from the rows before it, so it cannot tell which row of the file
        # is at fault. Reading the file again in order raises the error that names it, or reads
        # on from where the blocks stopped, in a file they cannot split.
        for chunk in _read_in_order(path, target, chunksize):
            if chunk.index[-1] >= rows:
                yield chunk.iloc[max(rows - chunk.index[0], 0) :]


class _UnsplittableError(Exception):
    """`_read_blocks` cannot split this file into blocks of lines; `_read_in_order` reads it."""


def _read_in_order(path: Path, target: str, chunksize: int | None = None) -> Iterator[pd.DataFrame]:
    """`read_csv_chunks`, one chunk after the other on the calling thread."""
    try:
        _read_header(path, str(path), target)
        # pandas takes the first field of every row as a row label when the first data row has
        # one field more than the header. Without a header, that row is a parser error.
        pd.read_csv(path, header=None, nrows=2, dtype=str, encoding="utf-8")
        if chunksize:
            chunks = pd.read_csv(path, chunksize=chunksize, encoding="utf-8")
        else:
            with warnings.catch_warnings():
                # Columns of mixed types are named, with their row, by validate_frame.
                warnings.simplefilter("ignore", pd.errors.DtypeWarning)
                chunks = [pd.read_csv(path, encoding="utf-8")]
        seen_rows = False
        for chunk in chunks:
            if len(chunk) == 0:
                continue
            seen_rows = True
            yield _checked(chunk, str(path), target)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: {_describe_encoding_error(path)} ({err.reason})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (expected a header and data rows)") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: not a well-formed CSV file: {err}") from None
    if not seen_rows:
        raise DataError(f"{path}: the file has a header but no data rows")


def _read_header(source: Path | io.BytesIO, origin: str, target: str) -> pd.Index:
    """The columns a CSV's header names, checked by `validate_frame`."""
    columns = pd.read_csv(source, nrows=0, encoding="utf-8").columns
    validate_frame(pd.DataFrame(columns=columns, dtype="float64"), origin, target)
    return columns


def _checked(chunk: pd.DataFrame, origin: str, target: str) -> pd.DataFrame:
    """A validated chunk, its columns in `_expected_columns` order and float64.

    Raises:
        DataError: As `validate_frame`.
    """
    validate_frame(chunk, origin, target)
    # Whole-number columns read as int64; every step and model signature takes float64.
    return chunk[_expected_columns(chunk)].astype("float64")


def _read_blocks(path: Path, target: str, chunksize: int) -> Iterator[pd.DataFrame]:
    """`read_csv_chunks` in blocks of whole lines, parsed on a pool of threads.

    pandas' C parser releases the GIL, so blocks parse in parallel, as in pandas' own
    `read_csv` of a whole file. Each block is parsed with the header line in front of it and
    checked like a chunk of `_read_in_order`, so its rows read as they do there.

    Raises:
        _UnsplittableError: The header is not one line ending in LF, or no block held a row.
        ValueError: pandas' parser or encoding errors.
        DataError: As `validate_frame`, with row numbers counted from the block's start.
    """
    origin = str(path)
    with path.open("rb") as handle:
        header = handle.readline(_MAX_BLOCK_BYTES).removeprefix(codecs.BOM_UTF8)
        while header and not header.strip(b" \t\r\n"):  # pandas skips blank lines before the header
            header = handle.readline(_MAX_BLOCK_BYTES)
        # The header goes in front of every block, so it must be one line: pandas also ends a
        # line at a bare CR, where readline does not.
        if not header.endswith(b"\n") or b"\r" in header.rstrip(b"\r\n"):
            raise _UnsplittableError
        columns = _read_header(io.BytesIO(header), origin, target)
        # Then a row of zeros, one per header field, dropped after parsing: pandas takes the
        # first field of every row as a row label when the first row has one field more than
        # the header. After a row that fits, a longer row is a parser error in any block.
        ahead = header + b",".join([b"0"] * len(columns)) + b"\n"
        block_bytes = min(int(chunksize * (mean_line_bytes(handle) or _LINE_SAMPLE_BYTES)), _MAX_BLOCK_BYTES)
        workers = _read_threads()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="read-csv")
        pending: deque[Future[pd.DataFrame]] = deque()
        rows = 0
        try:
            while True:
                block = handle.read(block_bytes)
                if block:
                    lines = b"".join((ahead, block, handle.readline()))
                    pending.append(pool.submit(_read_block, lines, origin, target))
                if not pending:
                    break
                # A few blocks parse ahead of the caller, enough to keep every thread busy, but
                # only from the second chunk on: the first is read alone, so a caller that stops
                # after it (or loads a model before going on) has not paid for more.
                if len(pending) > 2 * workers or not block or rows == 0:
                    chunk = pending.popleft().result()
                    if len(chunk):
                        chunk.index = pd.RangeIndex(rows, rows + len(chunk))
                        rows += len(chunk)
                        yield chunk
        finally:
            pool.shutdown(cancel_futures=True)
    if rows == 0:
        raise _UnsplittableError


def _read_threads() -> int:
    """Threads to parse blocks on: pandas' `mode.max_threads` when set, else one per usable CPU, at most 4.

    Beyond about 3 threads the caller's scoring and writing is the slower side, and each
    thread adds two blocks to the memory held.
    """
    chosen = pd.get_option("mode.max_threads")
    if chosen is not None:
        return max(int(chosen), 1)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(usable, _MAX_READ_THREADS)


def _read_block(lines: bytes, origin: str, target: str) -> pd.DataFrame:
    """One block (the header line, the row of zeros, whole rows) as `_read_in_order` reads a chunk."""
    chunk = pd.read_csv(io.BytesIO(lines), encoding="utf-8", low_memory=False).iloc[1:]
    return _checked(chunk, origin, target) if len(chunk) else chunk


def mean_line_bytes(handle: BinaryIO) -> float | None:
    """The mean length of the lines in the next 64 KiB, leaving the position unchanged.

    Returns:
        Bytes per line, or None when the sample holds fewer than 2 line ends (too few to tell).
    """
    start = handle.tell()
    sample = handle.read(_LINE_SAMPLE_BYTES)
    handle.seek(start)
    lines = sample.count(b"\n")
    return len(sample) / lines if lines >= 2 else None


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
            # pandas reads True/False cells as booleans (a whole column of them, or pieces of a
            # column it parsed apart), which would pass as 1/0.
            boolean = values.map(lambda cell: isinstance(cell, bool | np.bool_)).to_numpy(dtype=bool)
            bad = values[(numeric.isna() & values.notna()).to_numpy() | boolean]
            if len(bad):
                label = bad.index[0]
                raise DataError(
                    f"{origin}: column {column!r}, row {int(label) + 1}: {str(bad.iloc[0])!r} "
                    f"is not a number ({len(bad)} such cell(s))"
                )
            values = numeric
        array = values.to_numpy(dtype="float64")
        if np.isfinite(array).all():
            continue
        for problem, mask in (("missing (NaN)", np.isnan(array)), ("infinite", np.isinf(array))):
            if mask.any():
                row = int(frame.index[int(np.argmax(mask))]) + 1
                raise DataError(
                    f"{origin}: column {column!r}, row {row}: value is {problem} ({int(mask.sum())} such cell(s))"
                )


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
