"""Where batch `predict`'s time goes, per part, in one process, next to the floor.

    python benchmarks/bench_predict_parts.py [--rows 1000000] [--alias challenger] [--repeat 5]

Uses the CSV and the store `bench_predict.py` fills in benchmarks/out/. Each part runs
`--repeat` times after a warm-up; the best and the median seconds are printed:
- floor: `pandas.read_csv` of the whole file;
- reading the file in `predict`'s chunks, then also validating each chunk;
- scoring the validated chunks with the pyfunc model (MLflow's schema enforcement included);
- scoring them and writing the predictions as `predict` does (shortest decimals that read back
  exactly): the difference from the line before is the writing;
- `predict`'s whole loop (`pipeline.predict.score`): reading, validating, scoring, writing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from bench_predict import ROOT, ensure_csv, ensure_models, tracking_env

sys.path.insert(0, str(ROOT))


def timed(label: str, work: Callable[[], object], repeat: int) -> None:
    work()
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    print(f"{label:<44} best {min(seconds):.3f} s  median {statistics.median(seconds):.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--alias", default="challenger")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ensure_models()
    path = ensure_csv(args.rows)
    os.environ.update(tracking_env())
    import mlflow
    import pandas as pd

    from pipeline import data
    from pipeline.predict import DEFAULT_CHUNKSIZE, model_predictions, score

    model = mlflow.pyfunc.load_model(f"models:/california-housing@{args.alias}")
    features = list(data.FEATURES)

    def chunks() -> list[pd.DataFrame]:
        return list(data.read_csv_chunks(path, data.TARGET_OPTIONAL, DEFAULT_CHUNKSIZE))

    validated = chunks()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        output = os.path.join(tmp, "predictions.csv")
        print(f"{args.rows:,} rows, {args.alias}, chunks of {DEFAULT_CHUNKSIZE:,} rows")
        timed("floor: pandas.read_csv(file)", lambda: pd.read_csv(path), args.repeat)
        timed("read in chunks", lambda: list(pd.read_csv(path, chunksize=DEFAULT_CHUNKSIZE)), args.repeat)
        timed("read in chunks and validate", chunks, args.repeat)
        timed(
            "score validated chunks",
            lambda: [model_predictions(model, chunk[features]) for chunk in validated],
            args.repeat,
        )
        timed("score and write validated chunks", lambda: score(model, validated, output), args.repeat)
        timed("predict's loop: read, validate, score, write", lambda: score(model, chunks(), output), args.repeat)


if __name__ == "__main__":
    main()
