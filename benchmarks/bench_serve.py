"""Latency and throughput of `mlflow models serve`, float model next to the quantized one.

    python benchmarks/bench_serve.py                    # both models, default request counts
    python benchmarks/bench_serve.py --alias quantized --requests 100

For each alias a real server starts on 127.0.0.1 (a free port, `--env-manager local`, one
worker: MLflow's default), from the store `bench_predict.py` fills once in benchmarks/out/; the
servers run side by side and take turns, so both see the same machine. Then:
- p50/p95 latency of sequential `dataframe_split` requests of 1 row and of 1000 rows;
- requests/s of 1-row requests from 8 concurrent clients (threads, one connection each);
- then, for comparison, p50 of `pyfunc.predict` in this process, without HTTP and JSON.
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
from tests.integration.test_serve import launch, wait_until_up

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


def latency(urls: dict[str, str], payload: str, count: int) -> dict[str, tuple[float, float]]:
    """p50 and p95 in milliseconds per server of `count` sequential requests, after 10 warm-ups.

    The servers take turns request by request, first one then the other, so a change in machine
    speed during the loop slows both alike.
    """
    sessions = {alias: requests.Session() for alias in urls}
    times: dict[str, list[float]] = {alias: [] for alias in urls}
    try:
        for alias, url in urls.items():
            for _ in range(10):
                post(sessions[alias], url, payload)
        for i in range(count):
            for alias in list(urls)[:: 1 if i % 2 == 0 else -1]:
                times[alias].append(post(sessions[alias], urls[alias], payload))
    finally:
        for session in sessions.values():
            session.close()
    return {
        alias: (statistics.median(t) * 1000, sorted(t)[min(len(t) - 1, int(0.95 * len(t)))] * 1000)
        for alias, t in times.items()
    }


def throughput(urls: dict[str, str], payload: str, per_client: int, rounds: int = 4) -> dict[str, float]:
    """Requests per second per server, `CLIENTS` clients each sending requests back to back.

    Each server gets `rounds` turns of `per_client / rounds` requests per client, alternating.
    """

    def client(url: str, count: int) -> int:
        with requests.Session() as session:
            for _ in range(count):
                post(session, url, payload)
        return count

    done = dict.fromkeys(urls, 0)
    seconds = dict.fromkeys(urls, 0.0)
    count = max(per_client // rounds, 1)
    for turn in range(rounds):
        for alias in list(urls)[:: 1 if turn % 2 == 0 else -1]:
            started = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                done[alias] += sum(pool.map(client, [urls[alias]] * CLIENTS, [count] * CLIENTS))
            seconds[alias] += time.perf_counter() - started
    return {alias: done[alias] / seconds[alias] for alias in urls}


def in_process(aliases: list[str], rows: tuple[int, ...] = (1, 1000), calls: int = 500) -> None:
    """Prints p50 of `pyfunc.predict` alone, without HTTP and JSON, per alias and request size."""
    os.environ.update(tracking_env())
    import mlflow

    from pipeline import data

    frame = data.load_california().X
    for alias in aliases:
        model = mlflow.pyfunc.load_model(f"models:/california-housing@{alias}")
        figures = []
        for n in rows:
            batch = frame.head(n)
            for _ in range(20):
                model.predict(batch)
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                model.predict(batch)
                times.append(time.perf_counter() - started)
            figures.append(f"{n} row(s) p50 {statistics.median(times) * 1000:.2f} ms")
        print(f"{alias:<10}  in-process pyfunc.predict: {', '.join(figures)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", nargs="+", default=["challenger", "quantized"])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per server and figure")
    parser.add_argument("--per-client", type=int, default=100, help="requests per concurrent client and server")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ensure_models()
    one, thousand = body(1), body(1000)
    launched = {alias: launch(alias, Store(STORE), OUT / f"serve-{alias}.log") for alias in args.alias}
    try:
        for process, server in launched.values():
            wait_until_up(process, server)
        urls = {alias: server.url for alias, (_, server) in launched.items()}
        single = latency(urls, one, args.requests)
        batch = latency(urls, thousand, max(args.requests // 3, 20))
        rps = throughput(urls, one, args.per_client)
    finally:
        for process, _ in launched.values():
            stop(process)
    in_process(args.alias)
    for alias in args.alias:
        print(
            f"{alias:<10}  1 row: p50 {single[alias][0]:6.2f} ms  p95 {single[alias][1]:6.2f} ms   "
            f"1000 rows: p50 {batch[alias][0]:6.2f} ms  p95 {batch[alias][1]:6.2f} ms   "
            f"{CLIENTS} clients: {rps[alias]:6.0f} req/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
