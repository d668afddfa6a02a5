"""Times one pipeline through a team's `mlflow server` on PostgreSQL next to the SQLite default, in one run.

    pip install -e ".[dev,server]"
    python benchmarks/bench_team.py [--repeat 3]

Starts PostgreSQL (the `server` extra's binaries) and `mlflow server --backend-store-uri
postgresql+psycopg://... --artifacts-destination DIR` on 127.0.0.1, as tests/conftest.py does, then
runs `python -m pipeline main` `--repeat` times against each store in turns (after one warm-up
each): the default, a SQLite file in the working folder, and the server's URL. Prints each
median wall time and their ratio. The server starts before the timing; its start is printed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import store  # noqa: E402
from tests.conftest import postgres_database  # noqa: E402

PIPELINE = [sys.executable, "-m", "pipeline", "main"]


def timed(command: list[str], cwd: Path, tracking_uri: str | None) -> float:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-team-postgres-") as postgres_dir,
        tempfile.TemporaryDirectory(prefix="bench-team-") as tmp,
    ):
        work = Path(tmp)
        (work / "sqlite").mkdir()
        started = time.perf_counter()
        # postgres_database reports a PostgreSQL that cannot start through pytest; outside it, that raises.
        with (
            postgres_database(Path(postgres_dir)) as database_uri,
            store.proxy_server(database_uri, work / "artifacts") as url,
        ):
            print(f"PostgreSQL + mlflow server up in {time.perf_counter() - started:.1f} s")
            stores = {"SQLite default (sqlite:///mlflow.db)": None, f"mlflow server on PostgreSQL ({url})": url}
            times: dict[str, list[float]] = {name: [] for name in stores}
            for uri in stores.values():
                timed(PIPELINE, work / "sqlite", uri)  # warm-up: creates the store, the experiment, the model
            for _ in range(args.repeat):
                for name, uri in stores.items():
                    times[name].append(timed(PIPELINE, work / "sqlite", uri))
    medians = {name: statistics.median(values) for name, values in times.items()}
    sqlite_median = next(iter(medians.values()))
    print(f"python -m pipeline main, median of {args.repeat} (after one warm-up each), on {os.cpu_count()} cores:")
    for name, median in medians.items():
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"  {name}: {median:.1f} s ({runs}); {median / sqlite_median:.2f}× SQLite")


if __name__ == "__main__":
    main()
