"""Batch `predict` next to the floor, `pandas.read_csv`, and next to MLflow's own batch scorer.

    python benchmarks/bench_predict.py                      # 1M and 10M rows, the champion, 3 runs each
    python benchmarks/bench_predict.py --rows 1000000 --repeat 1 --alias challenger quantized

The CSVs are the 20,640 real rows of California Housing (8 features) repeated to the size asked,
written once to benchmarks/out/ (git-ignored; the 10M-row file is about 0.9 GB) and reused. The
models come from a tracking store the script fills once with the whole pipeline, also there.

Each measurement is a fresh process, so peak RSS (from wait4) is that command's alone:
- floor: `pandas.read_csv(file)` of the whole file; rows/s excludes the interpreter start.
- predict: `python -m pipeline predict --input file`; rows/s is the one the run logs (reading,
  validating, scoring and writing every row; not the start-up, model loading or run logging),
  and the command's wall time end to end.
- MLflow: `mlflow models predict -m models:/california-housing@ALIAS -t csv --env-manager local`
  on the same file: wall time end to end.
The three alternate; medians are reported (other processes on a shared machine slow any of them
down at random), so each ratio compares runs made side by side.

Targets: predict ≥ 50% of the floor's rows/s at 10M rows; end to end ≥ 3× faster than MLflow's
scorer at 10M rows; predict's 10M-row peak RSS ≤ 1.2 × its 1M-row one.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
STORE = OUT / "store"
FLOOR = "import sys, time, pandas as pd; t = time.perf_counter(); n = len(pd.read_csv(sys.argv[1])); " + (
    "print(n / (time.perf_counter() - t))"
)


def tracking_env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{STORE / 'mlflow.db'}"}
    shared = ROOT.parent / "shared" / "data" / "scikit_learn_data"
    if "SCIKIT_LEARN_DATA" not in env and shared.is_dir():
        env["SCIKIT_LEARN_DATA"] = str(shared)
    return env


def ensure_models() -> None:
    """Runs the pipeline once into the benchmark store (challenger, quantized, champion)."""
    if (STORE / "done").exists():
        return
    STORE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pipeline", "main"], env=tracking_env(), check=True, cwd=STORE)
    (STORE / "done").touch()


def ensure_csv(rows: int) -> Path:
    """The real feature rows repeated to `rows` rows, written in blocks (bounded memory).

    pandas writes whole numbers as 41.0: MLflow's scorer reads the file with pandas and refuses
    a column that reads as int64 (the models' signatures take doubles).
    """
    path = OUT / f"houses_{rows}.csv"
    if path.exists():
        return path
    import numpy as np

    os.environ.update({k: v for k, v in tracking_env().items() if k == "SCIKIT_LEARN_DATA"})
    from pipeline import data

    features = data.load_california().X
    partial = path.with_suffix(".partial")
    block = 1_000_000
    with partial.open("w") as handle:
        for start in range(0, rows, block):
            index = np.arange(start, min(start + block, rows)) % len(features)
            features.iloc[index].to_csv(handle, header=start == 0, index=False)
    partial.rename(path)
    return path


def run_one(command: list[str]) -> tuple[str, float, float]:
    """Runs a command; returns its stdout, wall seconds and its own peak RSS in MB."""
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=devnull, env=tracking_env(), cwd=OUT)
        stdout = process.stdout.read()
        process.stdout.close()
        # Reaped here rather than by subprocess, to read this child's own resource usage.
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}")
    return stdout.decode(), time.perf_counter() - started, usage.ru_maxrss / 1024


def bench(path: Path, rows: int, alias: str, repeat: int) -> dict[str, float]:
    model_uri = f"models:/california-housing@{alias}"
    runs: dict[str, list[float]] = {}
    for _ in range(repeat):
        out, _, peak = run_one([sys.executable, "-c", FLOOR, str(path)])
        runs.setdefault("floor_rows_per_s", []).append(float(out))
        runs.setdefault("floor_rss", []).append(peak)
        command = [sys.executable, "-m", "pipeline", "predict", "--model-uri", model_uri, "--input", str(path)]
        out, wall, peak = run_one([*command, "--output", str(OUT / "predictions.csv")])
        match = re.search(r"Scored ([\d,]+) rows at ([\d,]+) rows/s", out)
        assert match and int(match[1].replace(",", "")) == rows, out
        runs.setdefault("rows_per_s", []).append(float(match[2].replace(",", "")))
        runs.setdefault("seconds", []).append(wall)
        runs.setdefault("rss", []).append(peak)
        mlflow_cli = [str(Path(sys.executable).parent / "mlflow"), "models", "predict", "-m", model_uri]
        _, wall, peak = run_one(
            [*mlflow_cli, "-i", str(path), "-t", "csv", "--env-manager", "local", "-o", str(OUT / "mlflow.json")]
        )
        runs.setdefault("mlflow_seconds", []).append(wall)
        runs.setdefault("mlflow_rss", []).append(peak)
    return {name: (max if name.endswith("rss") else statistics.median)(values) for name, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--alias", nargs="+", default=["champion"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ensure_models()
    results = {}
    for rows in args.rows:
        path = ensure_csv(rows)
        for alias in args.alias:
            r = results[rows, alias] = bench(path, rows, alias, args.repeat)
            print(
                f"{rows:>11,} rows  {alias:<10}  rows/s: predict {r['rows_per_s']:>10,.0f}, "
                f"pandas.read_csv {r['floor_rows_per_s']:>10,.0f}, ratio {r['rows_per_s'] / r['floor_rows_per_s']:4.0%}"
                f"  |  end to end: predict {r['seconds']:5.1f} s, {r['rss']:5,.0f} MB; "
                f"mlflow models predict {r['mlflow_seconds']:5.1f} s, {r['mlflow_rss']:5,.0f} MB; "
                f"{r['mlflow_seconds'] / r['seconds']:.1f}x faster  (floor peak RSS {r['floor_rss']:,.0f} MB)",
                flush=True,
            )
    for alias in args.alias:
        small, large = (results.get((rows, alias)) for rows in (1_000_000, 10_000_000))
        if small and large:
            print(f"{alias}: predict's 10M-row peak RSS / 1M-row peak RSS = {large['rss'] / small['rss']:.2f}")


if __name__ == "__main__":
    main()
