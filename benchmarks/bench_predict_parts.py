"""Where batch `predict`'s time goes, per part, in one process, next to the floor.

    python benchmarks/bench_predict_parts.py [--rows 1000000] [--alias challenger] [--repeat 5]
    python benchmarks/bench_predict_parts.py --chunksize 25000    # other chunk sizes than predict's

Uses the CSV and the store `bench_predict.py` fills in benchmarks/out/. Each part runs
`--repeat` times after a warm-up; the best and the median wall seconds are printed, and the
CPU seconds (all threads) of the best run:
- floor: `pandas.read_csv` of the whole file (pandas 3 parses it on one thread per CPU);
- the same on one thread (`mode.max_threads=1`), as pandas 2 read it;
- reading the file in `predict`'s chunks (pyarrow's streaming CSV reader) and validating them;
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
from collections.abc import Callable, Iterator

from bench_predict import ROOT, ensure_csv, ensure_models, tracking_env

sys.path.insert(0, str(ROOT))


def timed(label: str, work: Callable[[], object], repeat: int) -> None:
    work()
    runs = []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        work()
        runs.append((time.perf_counter() - started, time.process_time() - cpu))
    best, cpu = min(runs)
    median = statistics.median(wall for wall, _ in runs)
    print(f"{label:<48} best {best:.3f} s  median {median:.3f} s  CPU {cpu:.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--alias", default="challenger")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunksize", type=int, help="rows per chunk (default: predict's)")
    args = parser.parse_args()
    ensure_models()
    path = ensure_csv(args.rows)
    os.environ.update(tracking_env())
    import mlflow
    import pandas as pd

    from pipeline import data
    from pipeline.params import CHUNKSIZE
    from pipeline.predict import open_csv, score
    from pipeline.scoring import model_predictions

    chunksize = args.chunksize or CHUNKSIZE.default

    model = mlflow.pyfunc.load_model(f"models:/california-housing@{args.alias}")
    features = list(data.FEATURES)

    def chunks() -> Iterator[pd.DataFrame]:
        return data.read_csv_chunks(path, data.TARGET_OPTIONAL, chunksize)

    validated = list(chunks())
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        output = os.path.join(tmp, "predictions.csv")
        print(f"{args.rows:,} rows, {args.alias}, chunks of {chunksize:,} rows")
        timed("floor: pandas.read_csv(file)", lambda: pd.read_csv(path), args.repeat)
        with pd.option_context("mode.max_threads", 1):
            timed("pandas.read_csv(file) on one thread", lambda: pd.read_csv(path), args.repeat)
        timed("read in chunks (pyarrow) and validate", lambda: list(chunks()), args.repeat)
        timed(
            "score validated chunks",
            lambda: [model_predictions(model, chunk[features], str(path)) for chunk in validated],
            args.repeat,
        )
        timed("score and write validated chunks", lambda: score(model, validated, output, str(path)), args.repeat)

        def score_file() -> None:
            batch = open_csv(str(path), chunksize)
            try:
                score(model, batch.chunks, output, str(path))
            finally:
                batch.close()

        timed(
            "predict's loop: read ahead, validate, score, write",
            score_file,
            args.repeat,
        )


if __name__ == "__main__":
    main()
