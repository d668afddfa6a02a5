"""SIGTERM (`kill`, `docker stop`, a CI cancel) and SIGINT (Ctrl-C) stop a step cleanly: its open
runs end as KILLED, its temp files are removed, and it exits 143 / 130 with one line on stderr.

Each test starts a real step in a subprocess on a real store, waits until it is mid-way (its run
RUNNING, or predict's temp file growing), and sends the signal.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.config import FEATURES
from tests.conftest import ROOT, Store, using

# Seconds to wait for a step to reach the point where it is stopped; generous on a busy machine.
REACH_TIMEOUT = 600
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


def runs() -> list[Run]:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@dataclass(frozen=True)
class Step:
    """A step started in a subprocess, its private temp folder, and the file its stderr goes to
    (a pipe nobody reads while the test waits could fill up and stall it)."""

    process: subprocess.Popen
    temp: Path
    stderr: Path

    def stderr_text(self) -> str:
        return self.stderr.read_text()


def start(command: list[str], tmp_path: Path, env: dict[str, str] | None = None, **kwargs) -> Step:
    """Starts `command` with a private temp folder, so leftovers can be seen."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**(os.environ if env is None else env), "TMPDIR": str(temp)}
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, **kwargs)
    return Step(process, temp, stderr)


def wait_until(condition: Callable[[], bool], step: Step, what: str) -> None:
    deadline = time.monotonic() + REACH_TIMEOUT
    while not condition():
        if step.process.poll() is not None:
            pytest.fail(f"the step exited ({step.process.returncode}) before {what}: {step.stderr_text()[-3000:]}")
        if time.monotonic() > deadline:
            step.process.kill()
            pytest.fail(f"no {what} within {REACH_TIMEOUT} s")
        time.sleep(0.1)


def nested_run_running() -> bool:
    return any(r.info.status == "RUNNING" and "mlflow.parentRunId" in r.data.tags for r in runs())


def wait_until_group_gone(group: int) -> None:
    deadline = time.monotonic() + REACH_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"processes of group {group} still run after {REACH_TIMEOUT} s")


def finish(step: Step) -> tuple[int, str]:
    step.process.wait(timeout=REACH_TIMEOUT)
    return step.process.returncode, step.stderr_text()


def assert_one_line(err: str, signum: int) -> None:
    """The step's own line ends stderr; above it only log lines, no traceback."""
    assert (
        err.strip().splitlines()[-1]
        == f"error: stopped by {signal.Signals(signum).name}; its open runs ended as KILLED"
    )
    assert "Traceback" not in err
    assert err.count("error:") == 1


def run_running(name_prefix: str) -> Callable[[], bool]:
    def running() -> bool:
        return any(
            r.info.status == "RUNNING" and r.data.tags.get("mlflow.runName", "").startswith(name_prefix) for r in runs()
        )

    return running


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("stage", ["train", "evaluate-"], ids=["mid-train", "mid-promote"])
def test_pipeline_stopped_mid_step(tracking_uri: str, python: str, tmp_path: Path, signum: int, stage: str) -> None:
    # Mid-promote, the signal lands while MLflow evaluates a candidate and writes to the store.
    step = start([python, "-m", "pipeline", "main"], tmp_path, cwd=tmp_path)
    wait_until(run_running(stage), step, f"a run {stage}… RUNNING")

    step.process.send_signal(signum)

    code, err = finish(step)
    assert code == EXIT_CODES[signum]
    assert_one_line(err, signum)
    statuses = {r.data.tags.get("mlflow.runName"): r.info.status for r in runs()}
    assert statuses.pop("pipeline") == "KILLED"
    assert any(name.startswith(stage) and status == "KILLED" for name, status in statuses.items()), statuses
    # Steps that had ended before the signal stay FINISHED; none is left RUNNING or FAILED.
    assert set(statuses.values()) <= {"KILLED", "FINISHED"}
    assert list(step.temp.iterdir()) == []


@pytest.fixture(scope="module")
def large_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 100 MB of valid rows: predict is still scoring it seconds after it started."""
    path = tmp_path_factory.mktemp("large") / "large.csv"
    row = "8.3252,41.0,6.98,1.02,322.0,2.55,37.88,-122.23\n"
    block = row * 100_000
    with path.open("w") as handle:
        handle.write(",".join(FEATURES) + "\n")
        for _ in range(20):
            handle.write(block)
    return path


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_predict_stopped_mid_scoring(scoring: str, python: str, large_csv: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    runs_before = {r.info.run_id for r in runs()}
    command = [python, "-m", "pipeline", "predict", "--input", str(large_csv), "--output", str(out / "p.csv")]
    step = start(command, tmp_path)

    def temp_file_growing() -> bool:
        return any(p.stat().st_size > 0 for p in out.glob(".p.csv.*.tmp"))

    wait_until(temp_file_growing, step, "temp file being written")
    step.process.send_signal(signum)

    code, err = finish(step)
    assert code == EXIT_CODES[signum]
    assert_one_line(err, signum)
    assert list(out.iterdir()) == []
    assert list(step.temp.iterdir()) == []
    # predict logs its run only once every row is scored: stopped before, it logged none.
    assert {r.info.run_id for r in runs()} == runs_before


@pytest.mark.integration
@pytest.mark.parametrize(
    ("signum", "parent_status"),
    [(signal.SIGTERM, "KILLED"), (signal.SIGINT, "FAILED")],
    ids=["SIGTERM", "SIGINT"],
)
def test_mlflow_run_stopped_mid_pipeline(
    tracking_uri: str, python: str, tmp_path: Path, signum: int, parent_status: str
) -> None:
    # The whole process group gets the signal, as from Ctrl-C in a terminal or a CI runner.
    mlflow_cli = [python, "-m", "mlflow", "run", str(ROOT), "-e", "main", "--env-manager", "local"]
    step = start([*mlflow_cli, "--experiment-name", "california-housing"], tmp_path, start_new_session=True)
    wait_until(nested_run_running, step, "nested run RUNNING")

    os.killpg(step.process.pid, signum)

    _, err = finish(step)
    # SIGTERM ends `mlflow run` at once; the step, its child, may still be ending its runs.
    wait_until_group_gone(step.process.pid)
    err = step.stderr_text()
    assert f"error: stopped by {signal.Signals(signum).name}; its open runs ended as KILLED" in err
    statuses = {r.data.tags.get("mlflow.runName"): r.info.status for r in runs()}
    # Every run the step started ends KILLED. SIGTERM ends `mlflow run` too, and its run (the
    # pipeline's parent) stays KILLED; after SIGINT `mlflow run` lives on and marks its run FAILED
    # over our KILLED: MLflow 3.17.2's _maybe_set_run_terminated (mlflow/projects/__init__.py)
    # passes the status string to RunStatus.is_terminated, which expects a number, so it always
    # overwrites. An MLflow that fixes this makes the SIGINT case KILLED too.
    assert statuses.pop("pipeline") == parent_status
    assert "train · sklearn data · split 42" in statuses
    assert set(statuses.values()) == {"KILLED"}
    # `mlflow run` makes an empty --storage-dir folder for every run and never removes it.
    assert [p for p in step.temp.rglob("*") if not p.is_dir()] == []


@pytest.mark.integration
def test_store_wrapper_passes_sigterm_on(python: str, tmp_path: Path, empty_db: Path) -> None:
    # `python -m pipeline.store` runs the step in a child process; SIGTERM reaches only the wrapper.
    directory = tmp_path / "tracking"
    directory.mkdir()
    shutil.copy(empty_db, directory / "mlflow.db")  # migrated: this test's reads race no migration
    command = [python, "-m", "pipeline.store", "--dir", str(directory), "--", python, "-m", "pipeline", "main"]
    env_free = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    with using(Store(directory)):
        step = start(command, tmp_path, cwd=tmp_path, env=env_free)
        wait_until(nested_run_running, step, "nested run RUNNING")

        step.process.send_signal(signal.SIGTERM)

        code, err = finish(step)
        statuses = {r.data.tags.get("mlflow.runName"): r.info.status for r in runs()}
    assert code == 143
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM; its open runs ended as KILLED"
    assert "Traceback" not in err
    assert statuses.get("pipeline") == "KILLED"
    assert "train · sklearn data · split 42" in statuses
    assert set(statuses.values()) == {"KILLED"}
    assert list(step.temp.iterdir()) == []


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopped_while_the_libraries_load(tracking_uri: str, python: str, tmp_path: Path, signum: int) -> None:
    """Before `cli.run` handles signals (MLflow is still being imported), a stop is one line too."""
    step = start([python, "-m", "pipeline", "train"], tmp_path, cwd=tmp_path)

    def numpy_loaded() -> bool:
        # numpy loads early in the imports, seconds before the step starts.
        return "numpy" in Path(f"/proc/{step.process.pid}/maps").read_text()

    wait_until(numpy_loaded, step, "numpy loaded")
    step.process.send_signal(signum)

    code, err = finish(step)
    assert code == EXIT_CODES[signum]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: stopped by {signal.Signals(signum).name}")
    assert err.count("error:") == 1
    assert [r for r in runs() if r.info.status != "KILLED"] == []


def test_run_hands_the_signals_back_after_stopping(capsys: pytest.CaptureFixture[str]) -> None:
    """In-process callers (the container, a notebook) can be stopped again after a step was."""
    from pipeline import cli

    before = {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS}

    def step() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # interrupted long before

    assert cli.run(step, report=print, prepare_store=False) == 143
    assert capsys.readouterr().err == "error: stopped by SIGTERM; its open runs ended as KILLED\n"
    assert {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS} == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_that_lands_in_a_finalizer_is_sent_again(capsys: pytest.CaptureFixture[str], signum: int) -> None:
    """Python drops an exception raised inside a `__del__` or weakref callback (a thread pool's
    clean-up, mid-promote): the stop must still end the step, not be lost with it."""
    from pipeline import cli

    class StoppedWhileFinalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signum)
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:  # the handler runs here, and what it raises is dropped
                pass

    def step() -> str:
        StoppedWhileFinalized()
        time.sleep(30)  # the stop, sent again, lands here
        return "finished"

    hook = sys.unraisablehook
    assert cli.run(step, report=print, prepare_store=False) == 128 + signum
    captured = capsys.readouterr()
    assert "finished" not in captured.out
    assert captured.err == f"error: stopped by {signal.Signals(signum).name}; its open runs ended as KILLED\n"
    assert sys.unraisablehook is hook


def test_a_stop_wrapped_in_another_error_still_stops_the_step(capsys: pytest.CaptureFixture[str]) -> None:
    """Python wraps what a signal handler raises during class creation in a RuntimeError (`Error
    calling __set_name__`, seen mid-promote as MLflow imported its evaluators): still the stop."""
    from pipeline import cli

    def step() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        except KeyboardInterrupt as stop:
            raise RuntimeError("Error calling __set_name__") from stop

    assert cli.run(step, report=print, prepare_store=False) == 143
    assert capsys.readouterr().err == "error: stopped by SIGTERM; its open runs ended as KILLED\n"


def test_a_stop_dropped_in_a_finalizer_as_the_step_ends_still_stops_it(capsys: pytest.CaptureFixture[str]) -> None:
    """The step returns before the stop, sent again, can land: `run` reports the stop, not the result."""
    from pipeline import cli

    class StoppedWhileFinalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                pass

    def step() -> str:
        StoppedWhileFinalized()
        return "finished"

    assert cli.run(step, report=print, prepare_store=False) == 143
    captured = capsys.readouterr()
    assert "finished" not in captured.out
    assert captured.err == "error: stopped by SIGTERM; its open runs ended as KILLED\n"
