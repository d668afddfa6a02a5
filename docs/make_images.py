"""Makes the README's pictures from real runs: plots the runs logged, and MLflow UI screenshots.

    python docs/make_images.py [--out docs/images]

Runs the whole pipeline into a fresh tracking directory, through a local tracking server on
127.0.0.1, and photographs in headless Chromium the UI pages its summary links to, as a user
opens them: the runs table in the saved comparison view and the champion's version page (the
compare-runs page shows 3 decimals in a 7-row box, where the runs table shows every digit).
Then it adds an int8..int2 quantization sweep and a drift check on a one-region batch, and
copies the plots all those runs logged.

Needs Playwright (`pip install -e ".[docs]"`) and a Chromium (Debian: `apt-get install
chromium`; set CHROMIUM to use another binary). Playwright only drives it: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline import links, splits, store
from pipeline.config import EXPERIMENT_NAME, MODEL_NAME, TARGET
from pipeline.main import PipelineResult, run_pipeline
from pipeline.monitor import monitor
from pipeline.quantize import quantize

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
# Runs whose artifact (run name, path in the run) becomes a README picture (file name).
PLOTS = {
    "predicted_vs_actual.png": ("train · sklearn data · split 42", "plots/predicted_vs_actual.png"),
    "residuals.png": ("train · sklearn data · split 42", "plots/residuals.png"),
    "quantized_vs_float.png": ("quantize-int8", "plots/quantized_vs_float.png"),
    "coefficients_float_vs_quantized.png": ("quantize-int8", "plots/coefficients.png"),
    "frontier.png": ("quantize-sweep", "plots/frontier.png"),
    "drift_report.png": ("monitor", "drift/report.png"),
}


def make_more_runs(pipeline: PipelineResult, work: Path) -> None:
    """Adds a quantization sweep and a drift check on one region (rows north of 37°N)."""
    quantize(pipeline.train.model_uri, bits=8, sweep=True)
    split, _ = splits.load_split(pipeline.train.run_id)
    held_out = split.X_test.assign(**{TARGET: split.y_test})
    batch = work / "north_of_37.csv"
    held_out[held_out["Latitude"] > 37].to_csv(batch, index=False)
    monitor(str(batch))


def copy_plots(out: Path) -> None:
    """Copies each run's plot that the README shows into `out`."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
    by_name: dict[str, str] = {}
    for run in runs:
        by_name.setdefault(run.data.tags.get("mlflow.runName", ""), run.info.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        for file_name, (run_name, artifact) in PLOTS.items():
            local = mlflow.artifacts.download_artifacts(run_id=by_name[run_name], artifact_path=artifact, dst_path=tmp)
            shutil.copy(local, out / file_name)
            print(f"{out / file_name}  <- run {run_name!r}, {artifact}")


def screenshots(url: str, pipeline: PipelineResult, out: Path) -> None:
    """Photographs the pages the pipeline's summary links to, as they open: nothing is clicked."""
    from playwright.sync_api import sync_playwright

    experiment = pipeline.experiment_id
    pages = {
        # file name: (link, text the page shows once loaded, height of the picture)
        "mlflow-runs.png": (links.runs_page(url, experiment), "quantize-int8", 420),
        "mlflow-model.png": (
            links.model_version_page(url, MODEL_NAME, pipeline.promote.champion),
            "promotion.reason",
            760,
        ),
    }
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 760},
        )
        # MLflow's assistant panel opens itself on a first visit, over a quarter of the page; a
        # user closes it once with its X.
        browser.add_init_script(
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        )
        page = browser.new_page()
        for file_name, (link, loaded, height) in pages.items():
            page.set_viewport_size({"width": 1600, "height": height})
            page.goto(link)
            page.get_by_text(loaded, exact=True).first.wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=out / file_name)
            print(f"{out / file_name}  <- {link}")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="housing-images-") as tmp:
        work = Path(tmp)
        with store.local_server(work / "tracking") as url:
            os.environ["MLFLOW_TRACKING_URI"] = url
            mlflow.set_tracking_uri(url)
            pipeline = run_pipeline()
            screenshots(url, pipeline, args.out)
            make_more_runs(pipeline, work)
            copy_plots(args.out)


if __name__ == "__main__":
    main()
