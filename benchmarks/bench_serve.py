"""Latency and throughput of `mlflow models serve`, float model next to the quantized one.

    python benchmarks/bench_serve.py                    # both models, default request counts
    python benchmarks/bench_serve.py --alias quantized --requests 100

For each alias a real server starts on 127.0.0.1 (a free port, `--env-manager local`, one
worker: MLflow's default), from the store `bench_predict.py` fills once in benchmarks/out/. Then:
- p50/p95 latency of sequential `dataframe_split` requests of 1 row and of 1000 rows;
- requests/s of 1-row requests from 8 concurrent clients (threads, one connection each).
The client runs on the same machine, so it takes CPU from the server: figures are a floor.
Every loop is bounded in requests; only 127.0.0.1 is contacted.

Target: the quantized model's p50 no worse than the float model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from bench_predict import OUT, ROOT, STORE, ensure_models, tracking_env

# The integration tests' way to start and stop a real server, reused.
sys.path.insert(0, str(ROOT))
from pipeline.store import stop
from tests.conftest import Store
from tests.test_serve import launch, wait_until_up

CLIENTS = 8


def body(rows: int) -> str:
    """A `dataframe_split` request with the first `rows` rows of the real data."""
    os.environ.update({k: v for k, v in tracking_env().items() if k == "SCIKIT_LEARN_DATA"})
    from pipeline import data

    frame = data.load_california().X.head(rows)
    split = frame.to_dict(orient="split")
    return json.dumps({"dataframe_split": {"columns": split["columns"], "data": split["data"]}})


def post(session: requests.Session, url: str, payload: str) -> float:
    started = time.perf_counter()
    response = session.post(
        f"{url}/invocations", data=payload, headers={"Content-Type": "application/json"}, timeout=60
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def latency(url: str, payload: str, count: int) -> tuple[float, float]:
    """p50 and p95 in milliseconds of `count` sequential requests, after 10 warm-up requests."""
    with requests.Session() as session:
        for _ in range(10):
            post(session, url, payload)
        times = sorted(post(session, url, payload) for _ in range(count))
    return statistics.median(times) * 1000, times[min(len(times) - 1, int(0.95 * len(times)))] * 1000


def throughput(url: str, payload: str, per_client: int) -> float:
    """Requests per second with `CLIENTS` clients each sending `per_client` requests back to back."""

    def client(_: int) -> int:
        with requests.Session() as session:
            for _ in range(per_client):
                post(session, url, payload)
        return per_client

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        total = sum(pool.map(client, range(CLIENTS)))
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", nargs="+", default=["challenger", "quantized"])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per latency figure")
    parser.add_argument("--per-client", type=int, default=100, help="requests per concurrent client")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ensure_models()
    one, thousand = body(1), body(1000)
    for alias in args.alias:
        process, server = launch(alias, Store(STORE), OUT / f"serve-{alias}.log")
        try:
            wait_until_up(process, server)
            p50_1, p95_1 = latency(server.url, one, args.requests)
            p50_1k, p95_1k = latency(server.url, thousand, max(args.requests // 3, 20))
            rps = throughput(server.url, one, args.per_client)
        finally:
            stop(process)
        print(
            f"{alias:<10}  1 row: p50 {p50_1:6.1f} ms  p95 {p95_1:6.1f} ms   "
            f"1000 rows: p50 {p50_1k:6.1f} ms  p95 {p95_1k:6.1f} ms   "
            f"{CLIENTS} clients: {rps:6.0f} req/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
