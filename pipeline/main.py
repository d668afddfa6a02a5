"""The `main` entry point, the default of `mlflow run .`: train → quantize → promote.

One parent run with the steps as nested child runs (`train`, `quantize-int<bits>`, `promote`),
all in this one process: a process per step would import MLflow three times over and buy
nothing (docs/benchmarks.md measures the cost of a start). Train's checked and fitted data
passes on in memory; each later step gets the exact versions the previous one made, never an
alias, so pipelines running at the same time cannot pick up each other's models.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import mlflow

from pipeline import cli, links, tracking
from pipeline.config import ALIAS_CHALLENGER, ALIAS_QUANTIZED, CHAMPION_URI, MODEL_NAME
from pipeline.params import (
    BITS,
    DATA,
    EXPERIMENT_NAME,
    MAX_R2_DROP,
    MIN_R2,
    QUANTIZED_TOLERANCE,
    RANDOM_STATE,
    TEST_SIZE,
)
from pipeline.promote import GATE_PARAMS, PromoteResult, check_gate, promote
from pipeline.promote import report as report_promotion
from pipeline.quantize import QuantizeResult, check_storable, quantize
from pipeline.train import TrainResult, log_training, prepare

PARAMS = (DATA, TEST_SIZE, RANDOM_STATE, BITS, *GATE_PARAMS, EXPERIMENT_NAME)


@dataclass(frozen=True)
class PipelineResult:
    """The parent run and what each step produced."""

    run_id: str
    experiment_id: str
    train: TrainResult
    quantize: QuantizeResult
    promote: PromoteResult


def run_pipeline(
    data_path: str | None = DATA.default,
    test_size: float = TEST_SIZE.default,
    random_state: int = RANDOM_STATE.default,
    bits: int = BITS.default,
    min_r2: float = MIN_R2.default,
    max_r2_drop: float = MAX_R2_DROP.default,
    quantized_tolerance: float = QUANTIZED_TOLERANCE.default,
    experiment_name: str = EXPERIMENT_NAME.default,
) -> PipelineResult:
    """Trains, quantizes and promotes, as one parent run with three nested child runs.

    The arguments are `PARAMS`, each described once in `pipeline.params`.

    Raises:
        PipelineError: A parameter out of range; nothing is logged.
        DataError: The data cannot be used, or holds values train or quantize cannot compute with;
            nothing is logged.
        RejectedError: No candidate passed the gate (exit code 3); `champion` is untouched.
    """
    # Every step's parameters, and every value of the data that train or quantize cannot compute
    # with, before the parent run starts and the first step registers anything: a pipeline
    # refused here has logged nothing. train then logs the model fitted here.
    TEST_SIZE.check(test_size)
    RANDOM_STATE.check(random_state)
    BITS.check(bits)
    check_gate(min_r2, max_r2_drop, quantized_tolerance)
    fitted = prepare(data_path, test_size, random_state)
    check_storable(fitted.split, fitted.dataset.source)
    description = f"Pipeline: train → quantize (int{bits}) → promote, on {data_path or 'scikit-learn data'}"
    with tracking.step_run(
        "main", run_name="pipeline", description=description, experiment_name=experiment_name
    ) as run:
        tracking.log_params(
            {
                "data": data_path or "",
                "test_size": test_size,
                "random_state": random_state,
                "bits": bits,
                "min_r2": min_r2,
                "max_r2_drop": max_r2_drop,
                "quantized_tolerance": quantized_tolerance,
            }
        )
        trained = log_training(fitted, experiment_name)
        quantized = quantize(trained.model_uri, bits=bits, experiment_name=experiment_name)
        promoted = promote(
            {ALIAS_CHALLENGER: trained.model_uri, ALIAS_QUANTIZED: quantized.model_uri},
            min_r2=min_r2,
            max_r2_drop=max_r2_drop,
            quantized_tolerance=quantized_tolerance,
            experiment_name=experiment_name,
        )
        mlflow.set_tag("champion_version", promoted.champion)
        mlflow.log_metrics({"champion_version": float(promoted.champion)})
    return PipelineResult(run.info.run_id, run.info.experiment_id, trained, quantized, promoted)


def report(result: PipelineResult) -> None:
    """Prints what each step did."""
    t, q = result.train, result.quantize
    print(f"train:    {t.model_uri} test R² {t.metrics['test_r2']:.4f}, test MSE {t.metrics['test_mse']:.4f}")
    print(f"quantize: {q.model_uri} test R² {q.metrics['test_r2']:.4f} (r2_delta {q.metrics['r2_delta']:+.6f})")
    print("promote:")
    report_promotion(result.promote)
    tracking_uri = mlflow.get_tracking_uri()
    ui = links.locate(tracking_uri)
    print(f"MLflow UI (start it first: {ui.command}):" if ui.command else f"MLflow UI at {ui.base}:")
    champion = result.promote.champion
    pages = {
        "float vs quantized run": links.compare_page(ui.base, result.experiment_id, [t.run_id, q.run_id]),
        f"champion, version {champion}": links.model_version_page(ui.base, MODEL_NAME, champion),
        "every model run": links.runs_page(ui.base, result.experiment_id),
    }
    for label, url in pages.items():
        print(f"  {label + ':':<26}{url}")
    print(f"serve it: {links.serve_hint(tracking_uri, CHAMPION_URI)}")


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m pipeline main`."""
    return cli.build_parser("main", __doc__.splitlines()[0], PARAMS)


def main(argv: list[str] | None = None) -> int:
    """Runs the whole pipeline from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return cli.run(lambda: run_pipeline(**vars(args)), report=report)
