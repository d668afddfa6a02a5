"""No step writes over the tracking database, its artifacts or its own input, however the path
is spelled: each case is refused before anything runs, with one line and exit code 2."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import store
from pipeline.config import EXPERIMENT_NAME, FEATURES
from pipeline.predict import main
from tests.conftest import Store

ROW = "8.3252,41.0,6.98,1.02,322.0,2.55,37.88,-122.23"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_runs() -> int:
    client = MlflowClient()
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def first_artifact_root() -> Path:
    location = MlflowClient().get_experiment_by_name(EXPERIMENT_NAME).artifact_location
    return Path(location.removeprefix("file://"))


@pytest.fixture
def store_copy(pipeline_store: Store, clone_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the pipeline's database, the working folder beside it; returns its folder."""
    clone_store(pipeline_store)
    folder = tmp_path / "clone"
    monkeypatch.chdir(folder)
    (folder / "x.csv").write_text(",".join(FEATURES) + "\n" + ROW + "\n")
    return folder


# Each case prepares the output spelling (in the store's folder, the working folder) and returns
# it with the path the error must name as what would be overwritten.
def _link(name: str, target: str, hard: bool = False) -> str:
    (os.link if hard else os.symlink)(Path(target).resolve(), name)
    return name


def _subfolder(spelling: str) -> str:
    Path("sub").mkdir(exist_ok=True)
    return spelling


CASES: dict[str, Callable[[Path], tuple[str, str]]] = {
    "database, relative": lambda d: ("mlflow.db", "the tracking database"),
    "database, absolute": lambda d: (str(d / "mlflow.db"), "the tracking database"),
    "database, through ..": lambda d: (_subfolder("sub/../mlflow.db"), "the tracking database"),
    "database, symlink": lambda d: (_link("link.csv", "mlflow.db"), "the tracking database"),
    "database, hard link": lambda d: (_link("hard.csv", "mlflow.db", hard=True), "the tracking database"),
    "database, folder symlink": lambda d: (_link("alias", ".") + "/mlflow.db", "the tracking database"),
    "journal": lambda d: ("mlflow.db-journal", "a file of the tracking database"),
    "WAL": lambda d: ("mlflow.db-wal", "a file of the tracking database"),
    "shared memory": lambda d: ("./mlflow.db-shm", "a file of the tracking database"),
    "input, same spelling": lambda d: ("x.csv", "the input"),
    "input, absolute": lambda d: (str(d / "x.csv"), "the input"),
    "input, through ..": lambda d: (_subfolder("sub/../x.csv"), "the input"),
    "input, symlink": lambda d: (_link("y.csv", "x.csv"), "the input"),
    "input, hard link": lambda d: (_link("z.csv", "x.csv", hard=True), "the input"),
    "artifact root, new file": lambda d: (str(first_artifact_root() / "p.csv"), "the artifact root"),
    "artifact root, logged file": lambda d: (
        str(next(first_artifact_root().rglob("split.json"))),
        "the artifact root",
    ),
    "default artifact root ./mlruns": lambda d: (_mlruns("mlruns/p.csv"), "the artifact root"),
    "schema lock": lambda d: (_touch("mlflow.schema.lock"), "a lock file of the tracking database"),
    "a FIFO": lambda d: (_special("pipe", stat.S_IFIFO), "not a regular file"),
    # As root, writing the output would have replaced /dev/null itself.
    "a device": lambda d: (_special("null", stat.S_IFCHR, os.makedev(1, 3)), "not a regular file"),
}


def _touch(name: str) -> str:
    Path(name).touch()
    return name


def _special(name: str, kind: int, device: int = 0) -> str:
    os.mknod(name, kind | 0o666, device)
    return name


def _mlruns(spelling: str) -> str:
    Path("mlruns").mkdir(exist_ok=True)
    return spelling


@pytest.mark.parametrize("case", CASES)
def test_output_never_overwrites_store_artifacts_or_input(
    store_copy: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    output, what = CASES[case](store_copy)
    target = Path(os.path.realpath(output))
    before = digest(target) if target.is_file() else None
    files_before = tree(store_copy) | tree(first_artifact_root())
    runs_before = all_runs()

    code = main(["--input", "x.csv", "--output", output])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"error: output {output} ")
    assert f" {what} " in err[0]
    assert err[0].endswith("; nothing was written, choose another file")
    if before is not None:
        assert digest(target) == before
    assert tree(store_copy) | tree(first_artifact_root()) == files_before  # no temp file, nothing new
    assert all_runs() == runs_before


def test_tracking_directory_of_pipeline_store(
    store_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Behind a server the client sees only a URL; pipeline.store names the directory.
    directory = tmp_path / "tracking"
    (directory / "artifacts").mkdir(parents=True)
    (directory / "mlflow.db").write_bytes(b"SQLite format 3\x00")
    monkeypatch.setenv(store.DIR_ENV, str(directory))
    database, artifacts = directory / "mlflow.db", directory / "artifacts"
    for output, what in (
        (database, f"is the tracking database {database}"),
        (directory / "mlflow.db-wal", f"is a file of the tracking database {directory / 'mlflow.db-wal'}"),
        (artifacts / "p.csv", f"lies under the artifact root {artifacts}"),
    ):
        assert main(["--input", "x.csv", "--output", str(output)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: output {output} {what}; nothing was written, choose another file"
        )
        assert database.read_bytes() == b"SQLite format 3\x00"
    assert sorted(p.name for p in directory.iterdir()) == ["artifacts", "mlflow.db"]
    assert list((directory / "artifacts").iterdir()) == []


def test_database_of_a_uri_with_a_query(store_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SQLAlchemy, and so MLflow, opens `sqlite:///DIR/mlflow.db?timeout=20` as DIR/mlflow.db.
    database = store_copy / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{database}?timeout=20")
    before = digest(database)
    assert main(["--input", "x.csv", "--output", "mlflow.db"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: output mlflow.db is the tracking database {database}; nothing was written, choose another file"
    )
    assert digest(database) == before


def test_model_folder_is_an_input(store_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = Path(mlflow.artifacts.download_artifacts("models:/california-housing@challenger", dst_path="m"))
    output = model / "MLmodel"
    before = digest(output)
    assert main(["--model-uri", str(model), "--input", "x.csv", "--output", str(output)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: output {output} lies under the model {model}; nothing was written, choose another file"
    )
    assert digest(output) == before


def test_other_files_beside_the_store_are_written(store_copy: Path) -> None:
    assert main(["--input", "x.csv", "--output", "predictions.csv"]) == 0
    assert Path("predictions.csv").read_text().splitlines()[0] == "prediction"
    assert main(["--input", "x.csv", "--output", "mlflow.db.csv"]) == 0


@pytest.mark.integration
def test_through_pipeline_store_server(python: str, tmp_path: Path, empty_db: Path) -> None:
    # The step sees only the server's URL; pipeline.store tells it which directory is behind it.
    directory = tmp_path / "tracking"
    (directory / "artifacts").mkdir(parents=True)
    database = directory / "mlflow.db"
    shutil.copy(empty_db, database)
    before = digest(database)
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    for output, what in (
        (database, f"is the tracking database {database}"),
        (directory / "artifacts" / "p.csv", f"lies under the artifact root {directory / 'artifacts'}"),
    ):
        command = [python, "-m", "pipeline", "predict", "--output", str(output)]
        result = subprocess.run(
            [python, "-m", "pipeline.store", "--dir", str(directory), "--", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 2
        assert f"error: output {output} {what}; nothing was written, choose another file\n" in result.stderr
        assert digest(database) == before


def test_data_of_the_held_out_split_is_an_input(
    tracking_uri: str, tmp_path: Path, synthetic_frame, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.train import train

    data_file = tmp_path / "houses.csv"
    synthetic_frame.to_csv(data_file, index=False)
    before = digest(data_file)
    trained = train(str(data_file))
    runs_before = all_runs()
    capsys.readouterr()

    # No --input: predict scores the held-out rows, read from the file it would write.
    assert main(["--model-uri", trained.model_uri, "--output", str(data_file)]) == 2

    assert capsys.readouterr().err.strip() == (
        f"error: output {data_file} is the data of the held-out split {data_file}; "
        "nothing was written, choose another file"
    )
    assert digest(data_file) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["houses.csv", "store"]
    assert all_runs() == runs_before
