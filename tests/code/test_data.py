"""Data loading and validation: every kind of bad CSV, on small files (the real data set: tests/data)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import data
from pipeline.config import FEATURES, TARGET
from pipeline.errors import DataError


def test_digest_changes_with_one_value(synthetic_frame: pd.DataFrame) -> None:
    original = data.to_dataset(synthetic_frame, "x")
    changed = synthetic_frame.copy()
    changed.iloc[5, 3] += 1e-9
    assert original.digest == data.to_dataset(synthetic_frame.copy(), "x").digest
    assert original.digest != data.to_dataset(changed, "x").digest


def test_good_csv_loads_with_columns_in_any_order(tmp_path: Path, synthetic_frame: pd.DataFrame) -> None:
    path = tmp_path / "good.csv"
    synthetic_frame[list(reversed(synthetic_frame.columns))].to_csv(path, index=False)
    dataset = data.load(str(path))
    assert list(dataset.X.columns) == list(FEATURES)
    np.testing.assert_array_equal(dataset.X.to_numpy(), synthetic_frame[list(FEATURES)].to_numpy())
    assert dataset.source == str(path.resolve())


def _write(tmp_path: Path, text: str | bytes, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


HEADER = ",".join((*FEATURES, TARGET))

ROW = ",".join(["1.5"] * 9)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "the file is empty"),
        (HEADER + "\n", "header but no data rows"),
        (HEADER.replace("HouseAge", "Age") + "\n" + ROW + "\n", "missing column(s) HouseAge; unexpected column(s) Age"),
        (HEADER + ",Extra\n" + ROW + ",1\n", "unexpected column(s) Extra"),
        (",".join(FEATURES) + "\n" + ",".join(["1"] * 8) + "\n", "missing column(s) MedHouseVal"),
        (
            HEADER + "\n" + ROW + "\n" + ROW.replace("1.5", "abc", 1) + "\n",
            "column 'MedInc', row 2: 'abc' is not a number",
        ),
        (
            HEADER + "\n" + ROW + "\n" + ROW + "\n" + ",".join(["1.5"] * 3 + [""] + ["1.5"] * 5) + "\n",
            "column 'AveBedrms', row 3: value is missing",
        ),
        (
            HEADER + "\n" + ",".join(["1.5"] * 4 + ["inf"] + ["1.5"] * 4) + "\n",
            "column 'Population', row 1: value is infinite",
        ),
        (HEADER.replace(",", ";") + "\n" + ROW.replace(",", ";") + "\n", "delimited by ';'"),
        (HEADER.replace(",", ";") + "\n" + ROW.replace(",", ";").replace(".", ",") + "\n", "delimited by ';'"),
        (
            (HEADER + "\n" + ROW + "\n").encode() + b"1.5,\xff\xfe,1,1,1,1,1,1,1\n",
            "row 2 (line 3), byte 5: not valid UTF-8",
        ),
        (
            HEADER + "\n" + ",".join(["1.5", "True"] + ["1.5"] * 7) + "\n" + ",".join(["1.5", "False"] + ["1.5"] * 7),
            "column 'HouseAge', row 1: 'True' is not a number (2 such cell(s))",
        ),
        # pandas would take the first field of every row as a row label and drop it (R's
        # write.csv without a header cell for its row names writes such files).
        (HEADER + "\n" + "1," + ROW + "\n2," + ROW + "\n", "Expected 9 fields in line 2, saw 10"),
    ],
    ids=[
        "empty",
        "header-only",
        "misnamed",
        "extra",
        "no-target",
        "non-numeric",
        "nan",
        "inf",
        "semicolon",
        "semicolon-decimal-comma",
        "latin1",
        "booleans",
        "extra-field",
    ],
)
def test_bad_csv_is_rejected_naming_file_column_and_row(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(DataError) as err:
        data.load(str(path))
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        data.load(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        (ROW.replace("1.5", "x", 1), "column 'MedInc', row 26: 'x' is not a number"),
        (ROW.replace("1.5", "nan", 1), "column 'MedInc', row 26: value is missing"),
        ("7," + ROW, "Expected 9 fields in line 27, saw 10"),
        ("1.5,\udcff" + ROW[7:], "row 26 (line 27), byte 5: not valid UTF-8"),
    ],
    ids=["non-numeric", "nan", "extra-field", "latin1"],
)
def test_chunks_report_the_files_row_not_the_blocks(tmp_path: Path, bad_row: str, expected: str) -> None:
    # In chunks of 4 rows, the error still names the file's row, not the chunk's.
    text = HEADER + "\n" + "\n".join([ROW] * 25 + [bad_row] + [ROW] * 5) + "\n"
    path = _write(tmp_path, text.encode("utf-8", "surrogateescape"))
    chunks = data.read_csv_chunks(path, chunksize=4)
    with pytest.raises(DataError) as err:
        list(chunks)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_booleans_in_a_column_pandas_parsed_in_pieces_are_refused(tmp_path: Path) -> None:
    # pandas parses a whole file 65,536 rows at a time: whole numbers, then True, make a column
    # of Python ints and bools, which would pass as 1/0.
    path = _write(tmp_path, HEADER + "\n" + "1,1,1,1,1,1,1,1,1\n" * 65_536 + "True,1,1,1,1,1,1,1,1\n")
    expected = "column 'MedInc', row 65537: 'True' is not a number (1 such cell(s))"
    with pytest.raises(DataError, match=re.escape(expected)):
        data.load(str(path))
    with pytest.raises(DataError, match=re.escape(expected)):
        list(data.read_csv_chunks(path, chunksize=50_000))


def test_rows_with_an_extra_field_from_a_block_start_on_are_refused(tmp_path: Path) -> None:
    # Wherever a chunk starts, the extra first field must not be taken as a row label.
    rows = [ROW] * 12 + [f"{i}," + ROW for i in range(12)]
    path = _write(tmp_path, HEADER + "\n" + "\n".join(rows) + "\n")
    for chunksize in (1, 3, 4, 12):
        with pytest.raises(DataError, match="Expected 9 fields in line 14, saw 10"):
            list(data.read_csv_chunks(path, chunksize=chunksize))


@pytest.mark.parametrize(
    ("header_end", "end"),
    [("\r\n", "\r\n"), ("\r", "\r"), ("\r", "\n")],
    ids=["crlf", "cr", "cr-after-header"],
)
def test_chunks_read_like_the_whole_file(
    tmp_path: Path, synthetic_frame: pd.DataFrame, header_end: str, end: str
) -> None:
    # What pandas tolerates in a whole file, it tolerates across blocks: a byte-order mark,
    # blank lines before the header and between rows, CRLF or bare CR ends (which do not split
    # into blocks of lines), a quoted number spanning two lines, whole numbers, any column order.
    frame = synthetic_frame[list(reversed(synthetic_frame.columns))].copy()
    frame["HouseAge"] = frame["HouseAge"].round()
    header, *lines = frame.to_csv(index=False, lineterminator=end).splitlines(keepends=True)
    lines[30:30] = [end, "  " + end]
    # A quoted number over two lines, padded so that a block boundary falls inside it.
    lines[50] = '"' + " " * 2000 + lines[50].replace(",", end + '",', 1)
    text = "\ufeff" + end + " " + end + header.rstrip() + header_end + "".join(lines)
    path = _write(tmp_path, text.encode(), name="good.csv")
    whole = pd.concat(list(data.read_csv_chunks(path)))
    for chunksize in (1, 7, 1000):
        chunks = list(data.read_csv_chunks(path, chunksize=chunksize))
        pd.testing.assert_frame_equal(pd.concat(chunks), whole, check_exact=True)
    assert len(chunks) == 1
    assert len(whole) == 200
    assert list(whole.columns) == [*FEATURES, TARGET]
    assert (whole.dtypes == "float64").all()
    expected = synthetic_frame[[*FEATURES, TARGET]].assign(HouseAge=frame["HouseAge"])
    np.testing.assert_array_equal(whole.to_numpy(), expected.to_numpy())


def test_whole_numbers_are_read_as_float64(tmp_path: Path) -> None:
    # A column of whole numbers reads as int64; the models' signatures take float64.
    path = _write(tmp_path, HEADER + "\n" + "\n".join(",".join(["2"] * 9) for _ in range(3)) + "\n")
    dataset = data.load(str(path))
    assert set(dataset.X.dtypes) == {np.dtype("float64")}
    assert dataset.y.dtype == np.dtype("float64")


MIB = 1 << 20


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (HEADER + "\n" + ROW + "\n" + "1," * (2 * MIB) + "\n" + ROW + "\n", "line 3 is longer than 1 MiB"),
        (HEADER + "\n" + ROW + "\n" + "1" * (3 * MIB) + "," + ROW[4:] + "\n", "line 3 is longer than 1 MiB"),
        (HEADER + "\r" + ROW + "\r" + ROW + "\r" + "1," * (2 * MIB), "line 4 is longer than 1 MiB"),
        ("MedInc," * (MIB // 2) + "\n" + ROW + "\n", "line 1 is longer than 1 MiB"),
        ("1" * (3 * MIB), "line 1 is longer than 1 MiB"),
        (
            HEADER + "\n" + ROW + "\n" + '"1\n' + (ROW + "\n") * (MIB // 10),
            "a quoted value runs over more than 1 MiB of lines (a quote that is not closed?)",
        ),
    ],
    ids=["many-fields", "one-long-cell", "cr-line-ends", "long-header", "no-line-end", "unclosed-quote"],
)
def test_a_line_longer_than_a_block_is_refused_not_read(tmp_path: Path, content: str, expected: str) -> None:
    # A 50 MB line made every step run for minutes at gigabytes: pyarrow reads 1 MiB blocks,
    # and a row of this data is under 200 bytes, so a line that fills a block is refused.
    path = _write(tmp_path, content)
    for read in (lambda: data.load(str(path)), lambda: list(data.read_csv_chunks(path, chunksize=50_000))):
        with pytest.raises(DataError) as err:
            read()
        assert str(err.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (HEADER + ",MedInc", "column 'MedInc' appears twice"),
        (HEADER + ",MedInc,MedInc,Latitude", "column 'MedInc' appears 3 times; column 'Latitude' appears twice"),
        (HEADER + ",", "an empty column name at position 10 of 10 in the header (a trailing comma?)"),
        ("MedInc,,HouseAge", "an empty column name at position 2 of 3 in the header"),
        # Many names: counted in one pass (the old check took minutes), and listed with a limit.
        ("MedInc," * 100_000 + "HouseAge", "column 'MedInc' appears 100,000 times"),
    ],
    ids=["twice", "thrice", "trailing-comma", "empty-inside", "many-duplicates"],
)
def test_header_names_are_reported_as_written(tmp_path: Path, header: str, expected: str) -> None:
    # pandas renamed them MedInc.1 and Unnamed: 9, names that are not in the file.
    path = _write(tmp_path, header + "\n" + ",".join(["1"] * (header.count(",") + 1)) + "\n")
    with pytest.raises(DataError) as err:
        data.load(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: {expected}")
    assert "Unnamed" not in message and ".1" not in message
    assert len(message) < 1000


def test_many_extra_columns_are_listed_with_a_count(tmp_path: Path) -> None:
    path = _write(tmp_path, HEADER + "," + ",".join(f"c{i}" for i in range(50_000)) + "\n")
    with pytest.raises(DataError, match=r"unexpected column\(s\) c0, c1, .*, c9 and 49,990 more \(expected MedInc"):
        data.load(str(path))


def _unusable(tmp_path: Path, kind: str) -> Path:
    """A path that is not a readable regular file, of the given kind."""
    path = tmp_path / "input.csv"
    if kind == "folder":
        path.mkdir()
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "symlink loop":
        path.symlink_to(path)
    elif kind == "broken symlink":
        path.symlink_to(tmp_path / "gone.csv")
    elif kind == "permission denied":
        path.write_text(HEADER + "\n" + ROW + "\n")
        path.chmod(0)
    return path


UNUSABLE = {
    "folder": "is a folder, not a file",
    "FIFO": "is a FIFO, not a regular file",
    "symlink loop": "is a symlink loop",
    "broken symlink": "is a symlink to {tmp_path}/gone.csv, which does not exist",
}


@pytest.mark.parametrize("kind", UNUSABLE)
def test_a_path_that_is_no_regular_file_says_what_it_is(tmp_path: Path, kind: str) -> None:
    # All four were "no such file"; a FIFO is checked without being read, so nothing waits for a writer.
    path = _unusable(tmp_path, kind)
    for read in (lambda: data.load(str(path)), lambda: list(data.read_csv_chunks(path, chunksize=10))):
        with pytest.raises(DataError) as err:
            read()
        assert str(err.value) == f"{path}: {UNUSABLE[kind].format(tmp_path=tmp_path)}"


# Root reads any file; without these two capabilities it is held to the file's mode like any user.
AS_A_USER = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["permission denied", "FIFO"])
@pytest.mark.parametrize(
    "flags",
    [["train", "--data"], ["predict", "--input"], ["monitor", "--batch"], ["monitor", "--batch", "", "--reference"]],
    ids=["train-data", "predict-input", "monitor-batch", "monitor-reference"],
)
def test_every_step_names_an_unreadable_input_in_one_line(
    scoring: str, tmp_path: Path, python: str, synthetic_frame: pd.DataFrame, kind: str, flags: list[str]
) -> None:
    # An unreadable file was a traceback and exit 1.
    path = _unusable(tmp_path, kind)
    batch = tmp_path / "batch.csv"
    synthetic_frame.to_csv(batch, index=False)
    args = [str(batch) if flag == "" else flag for flag in flags]
    result = subprocess.run(
        [*AS_A_USER, python, "-m", "pipeline", *args, str(path), "--output", str(tmp_path / "out.csv")][
            : None if flags[0] == "predict" else -2
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    expected = "permission denied" if kind == "permission denied" else "is a FIFO, not a regular file"
    assert result.stderr.strip().splitlines()[-1] == f"error: {path}: {expected}"
    assert not (tmp_path / "out.csv").exists()


def test_too_few_rows_to_split(tmp_path: Path, synthetic_frame: pd.DataFrame) -> None:
    path = tmp_path / "tiny.csv"
    synthetic_frame.head(12).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"12 data row.* too few to split"):
        data.split(data.load(str(path)), test_size=0.2, random_state=42)


def test_target_optional_for_scoring(tmp_path: Path, synthetic_frame: pd.DataFrame) -> None:
    path = tmp_path / "features.csv"
    synthetic_frame[list(FEATURES)].to_csv(path, index=False)
    dataset = data.load(str(path), target=data.TARGET_OPTIONAL)
    assert dataset.y is None
    assert dataset.X.shape == (200, 8)


def test_offline_without_cache_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty data home on a machine with no network (CI here; a proxy-less laptop elsewhere).
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(DataError, match=f"not cached in {tmp_path}.*SCIKIT_LEARN_DATA"):
        data.load_california()
