"""`predict --engine spark` next to the pandas engine, on the same files, and Spark's scaling with cores.

    python benchmarks/bench_spark.py                         # 1M and 10M rows, the champion, once each
    python benchmarks/bench_spark.py --rows 1000000 --repeat 3 --scaling-rows 1000000   # quicker

Needs the [spark] extra and Java 17 or 21. The CSVs and the tracking store are bench_predict.py's
(benchmarks/out/, made once and reused): the real feature rows repeated to the size asked.

Each measurement is a fresh `python -m pipeline predict` process, the two engines alternating:
- pandas: `--engine pandas --output predictions.csv`;
- Spark: `--engine spark --spark-master local[N] --output predictions.parquet`.
rows/s is the one the run logs (pandas: reading, validating, scoring and writing; Spark: the
same plus computing the metrics, as three Spark jobs: validate, score and write, count); wall
seconds are end to end (Spark's include starting its JVM and workers). Medians of `--repeat`.

Scaling: Spark's rows/s in local[1] and local[2] on `--scaling-rows` rows give the speed-up S of
a second task slot. On a 2-core machine one slot already keeps both cores busy (the JVM reads,
converts and writes while a Python worker runs the model), so S ≈ 1 there says the machine is
full, not that Spark stops scaling. The partitions are independent (the job shuffles nothing
but a few counts), so Spark's rows/s grow with machines like this one: the script prints how
many such machines, at local[1]'s rows/s each, it takes to pass the pandas engine on one.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
from pathlib import Path

from bench_predict import OUT, ensure_csv, ensure_models, run_one


def predict_command(path: Path, alias: str, engine: str, master: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "pipeline", "predict", "--model-uri", f"models:/california-housing@{alias}"]
    command += ["--input", str(path), "--engine", engine]
    if engine == "spark":
        output = OUT / "predictions.parquet"
        command += ["--spark-master", master, "--output", str(output)]
    else:
        command += ["--output", str(OUT / "predictions.csv")]
    return command


def measure(command: list[str], rows: int) -> tuple[float, float, float]:
    """rows/s as logged, wall seconds and peak RSS (MB, the Python process only) of one run."""
    out, wall, peak = run_one(command)
    match = re.search(r"Scored ([\d,]+) rows at ([\d,]+) rows/s", out)
    assert match and int(match[1].replace(",", "")) == rows, out
    return float(match[2].replace(",", "")), wall, peak


def bench(path: Path, rows: int, alias: str, repeat: int, masters: list[str]) -> dict[str, tuple[float, float]]:
    """Median rows/s and wall seconds per engine ("pandas", and "spark local[N]" per master)."""
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeat):
        rate, wall, _ = measure(predict_command(path, alias, "pandas"), rows)
        runs.setdefault("pandas", []).append((rate, wall))
        for master in masters:
            rate, wall, _ = measure(predict_command(path, alias, "spark", master), rows)
            runs.setdefault(f"spark {master}", []).append((rate, wall))
    return {
        name: (statistics.median(r for r, _ in values), statistics.median(w for _, w in values))
        for name, values in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--scaling-rows", type=int, default=10_000_000)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ensure_models()
    results = {}
    for rows in sorted({*args.rows, args.scaling_rows}):
        masters = ["local[2]", "local[1]"] if rows == args.scaling_rows else ["local[2]"]
        results[rows] = r = bench(ensure_csv(rows), rows, args.alias, args.repeat, masters)
        if rows not in args.rows:
            continue
        pandas, spark = r["pandas"], r["spark local[2]"]
        print(
            f"{rows:>11,} rows  pandas engine {pandas[0]:>9,.0f} rows/s, {pandas[1]:6.1f} s end to end  |  "
            f"Spark local[2] {spark[0]:>9,.0f} rows/s, {spark[1]:6.1f} s  |  Spark is {pandas[0] / spark[0]:.1f}x "
            f"slower in rows/s, {spark[1] / pandas[1]:.1f}x end to end",
            flush=True,
        )
    r = results[args.scaling_rows]
    one, two, pandas = r["spark local[1]"][0], r["spark local[2]"][0], r["pandas"][0]
    machines = math.ceil(pandas / one)
    print(
        f"scaling on {args.scaling_rows:,} rows: Spark local[1] {one:,.0f} rows/s, local[2] {two:,.0f} rows/s: "
        f"a second task slot gives {two / one:.2f}x on this machine"
    )
    print(
        f"Spark passes the pandas engine's {pandas:,.0f} rows/s with {machines} machines like this one "
        f"({pandas:,.0f} / {one:,.0f} rows/s each, rounded up; {os.cpu_count()} cores each), "
        "if rows/s grow with machines"
    )


if __name__ == "__main__":
    main()
