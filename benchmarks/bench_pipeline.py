"""Times the entry points end to end next to the import floor, and prints the figures.

    python benchmarks/bench_pipeline.py [--repeat 3]

Each command runs `--repeat` times, after one warm-up, in a scratch folder with its own SQLite
store (created by the warm-up, as after a user's first run). The commands take turns, round by
round, and each median wall time is compared with the median of the floor
`python -c "import mlflow, sklearn"`. Targets: `python -m pipeline train` within 3× the floor,
`mlflow run . -e train` within 4×, `mlflow run .` (the whole pipeline) within 5×.
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
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
RUN_FLAGS = ["--env-manager", "local", "--experiment-name", "california-housing"]
RUN = [MLFLOW, "run", str(ROOT), *RUN_FLAGS]
EMPTY_PROJECT = ROOT / "benchmarks" / "empty_project"

COMMANDS = {
    "floor: python -c 'import mlflow, sklearn'": ([sys.executable, "-c", "import mlflow, sklearn"], None),
    "mlflow run of a project whose command is `true`": ([MLFLOW, "run", str(EMPTY_PROJECT), *RUN_FLAGS], None),
    "python -m pipeline train": ([sys.executable, "-m", "pipeline", "train"], 3.0),
    "mlflow run . -e train --env-manager local": ([*RUN, "-e", "train"], 4.0),
    "mlflow run . --env-manager local (train → quantize → promote)": (RUN, 5.0),
}


def wall_time(command: list[str], cwd: Path) -> float:
    """Seconds one run of `command` takes; fails loudly if the command fails."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # The venv's bin first on PATH: `mlflow run` starts `python` from PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    times: dict[str, list[float]] = {label: [] for label in COMMANDS}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folders = {label: Path(tmp) / f"cmd{i}" for i, label in enumerate(COMMANDS)}
        # Rounds run every command once, so a change in machine speed (seen here: the floor
        # went from 2.3 s to 3.0 s within minutes) moves the floor and the commands alike.
        for round_ in range(args.repeat + 1):
            for label, (command, _) in COMMANDS.items():
                folders[label].mkdir(exist_ok=True)
                os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folders[label] / 'mlflow.db'}"
                elapsed = wall_time(command, folders[label])
                if round_ > 0:  # round 0 warms up and creates each store
                    times[label].append(elapsed)
            print(f"round {round_}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values() if t), flush=True)
    medians = {label: statistics.median(t) for label, t in times.items()}
    for label, t in times.items():
        print(f"{label}: median {medians[label]:.2f} s of {[round(x, 2) for x in t]}")
    floor = next(iter(medians.values()))
    print("\n| command | median s | × floor | target |\n| --- | --- | --- | --- |")
    for label, (_, target) in COMMANDS.items():
        ratio = medians[label] / floor
        verdict = "" if target is None else f"≤ {target:g}× {'met' if ratio <= target else 'MISSED'}"
        print(f"| {label} | {medians[label]:.2f} | {ratio:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
