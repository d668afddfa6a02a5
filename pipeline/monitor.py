"""The `monitor` step: has a batch of new rows drifted away from what the model was trained on?

Every feature and the model's prediction are compared with the reference (by default the
champion's training rows) by `pipeline.drift`; when the batch carries MedHouseVal, its R² and
MSE are set next to the ones the model's run recorded. The run logs per-column metrics, a
summary table and `drift/report.png` (reference vs batch histograms). With `fail_on_drift`,
drift ends the command with exit code 3 after the run is logged, for cron and CI.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pipeline import cli, data, datasets, drift, mlflow_compat, plots, registry, splits, tracking
from pipeline.config import FEATURES, PREDICTION
from pipeline.errors import DataError, PipelineError, RejectedError
from pipeline.metrics import regression_metrics
from pipeline.params import BATCH, EXPERIMENT_NAME, FAIL_ON_DRIFT, MIN_BATCH, MODEL_URI, REFERENCE
from pipeline.scoring import model_predictions

log = logging.getLogger(__name__)

PARAMS = (BATCH, REFERENCE, MODEL_URI, FAIL_ON_DRIFT, MIN_BATCH, EXPERIMENT_NAME)
COLUMNS = (*FEATURES, PREDICTION)
REPORT_ARTIFACT = "drift/report.png"
SUMMARY_ARTIFACT = "drift/summary.csv"


@dataclass(frozen=True)
class _Inputs:
    """What monitor reads before it computes anything."""

    batch: data.Dataset
    reference: data.Dataset  # its source is what the run and the errors call it
    model: mlflow.pyfunc.PyFuncModel
    version: ModelVersion | None
    recorded: dict[str, float]  # the model run's metrics, when the batch carries MedHouseVal


@dataclass(frozen=True)
class Comparison:
    """What `compare` found: the columns it compared (the features, then the model's prediction),
    the drift test's result, what drifted (features in `config.FEATURES` order), and every metric to log."""

    reference: np.ndarray = field(repr=False, compare=False)
    batch: np.ndarray = field(repr=False, compare=False)
    result: drift.DriftResult
    drifted_features: list[str]
    prediction_drift: bool
    metrics: dict[str, float]

    @property
    def drift_detected(self) -> bool:
        """Whether any feature or the prediction drifted."""
        return bool(self.metrics["drift_detected"])

    @property
    def drifted_columns(self) -> str:
        """ "feature(s) A, B and the prediction", or "" when nothing drifted."""
        parts = [f"feature(s) {', '.join(self.drifted_features)}"] if self.drifted_features else []
        if self.prediction_drift:
            parts.append("the prediction")
        return " and ".join(parts)

    @property
    def findings(self) -> str:
        """One line: "No drift", or which columns drifted."""
        return f"Drift in {self.drifted_columns}" if self.drifted_columns else "No drift"


@dataclass(frozen=True)
class MonitorResult(Comparison):
    """What a monitor run found, the run that recorded it, and the batch's rows."""

    run_id: str
    n_rows: int


def monitor(
    batch_path: str,
    reference_path: str | None = REFERENCE.default,
    model_uri: str = MODEL_URI.default,
    fail_on_drift: bool = FAIL_ON_DRIFT.default,
    min_batch: int = MIN_BATCH.default,
    experiment_name: str = EXPERIMENT_NAME.default,
) -> MonitorResult:
    """Tests a batch for drift against the reference and logs the result as a run.

    Everything is read and checked before the run starts: a refused batch logs nothing.

    The arguments are `PARAMS`, each described once in `pipeline.params`. The default reference
    is the training split the model's run recorded (`split.json`); for a model without one,
    pass `reference_path`.

    Raises:
        DataError: The batch or reference file is unusable, or has fewer than `min_batch` rows.
        PipelineError: Bad arguments, or no reference can be found.
        RejectedError: `fail_on_drift` and drift was found; the run is logged first.
    """
    MIN_BATCH.check(min_batch)
    inputs = _load(batch_path, reference_path, model_uri, min_batch)
    found = compare(inputs.model, inputs.batch, inputs.reference, inputs.recorded)
    run_id = _log_run(inputs, found, model_uri, fail_on_drift, min_batch, experiment_name)
    if fail_on_drift and found.drift_detected:
        raise RejectedError(
            f"{inputs.batch.source}: drift in {found.drifted_columns}; see {REPORT_ARTIFACT} of run {run_id}"
        )
    return MonitorResult(**vars(found), run_id=run_id, n_rows=len(inputs.batch.X))


def _load(batch_path: str, reference_path: str | None, model_uri: str, min_batch: int) -> _Inputs:
    """Reads and checks the batch, the model and the reference; nothing is logged."""
    if not batch_path:
        raise PipelineError("no batch given: pass --batch FILE.csv (the 8 features, MedHouseVal optional)")
    batch = data.load(batch_path, target=data.TARGET_OPTIONAL)
    _check_size(batch.source, "batch", len(batch.X), min_batch)
    version, load_uri = registry.pin(model_uri)
    model = mlflow_compat.load_pyfunc(load_uri)
    run_id = version.run_id if version else model.metadata.run_id
    reference = _load_reference(reference_path, run_id, model_uri)
    _check_size(reference.source, "reference", len(reference.X), min_batch)
    recorded = MlflowClient().get_run(run_id).data.metrics if run_id and batch.y is not None else {}
    return _Inputs(batch, reference, model, version, recorded)


def compare(
    model: mlflow.pyfunc.PyFuncModel, batch: data.Dataset, reference: data.Dataset, recorded: dict[str, float]
) -> Comparison:
    """Tests every feature and the model's prediction for drift, and scores a batch that carries
    MedHouseVal against the test metrics `recorded` by the model's run (no I/O)."""
    batch_pred = model_predictions(model, batch.X, batch.source)
    # The prediction is a ninth column, tested in the same family as the features.
    ref_columns = np.column_stack([reference.X.to_numpy(), model_predictions(model, reference.X, reference.source)])
    batch_columns = np.column_stack([batch.X.to_numpy(), batch_pred])
    result = drift.detect(ref_columns, batch_columns)
    drifted = dict(zip(COLUMNS, result.drifted.tolist(), strict=True))
    drifted_features = [f for f in FEATURES if drifted[f]]
    metrics = _drift_metrics(result, drifted_features, drifted[PREDICTION])
    if batch.y is not None:
        metrics.update(_performance(batch.y.to_numpy(), batch_pred, recorded))
    return Comparison(ref_columns, batch_columns, result, drifted_features, drifted[PREDICTION], metrics)


def _log_run(
    inputs: _Inputs, found: Comparison, model_uri: str, fail_on_drift: bool, min_batch: int, experiment_name: str
) -> str:
    """Logs the comparison as a monitor run, with its summary table and report figure; returns the run's id."""
    batch, reference, version = inputs.batch, inputs.reference, inputs.version
    version_text = f"version {version.version}" if version else "no registered version"
    what = f"{len(batch.X)} rows of {Path(batch.source).name}, {model_uri} ({version_text})"
    description = (
        f"{found.findings}: {what}, against the {reference.source}; "
        f"{len(found.drifted_features)} of {len(FEATURES)} features drifted."
    )
    with tracking.step_run("monitor", "monitor", description, experiment_name) as run:
        # Under `mlflow run` the entry point's own parameters are already logged as spelled.
        tracking.log_params(
            {
                "batch": batch.source,
                "batch_digest": batch.digest,
                "n_batch": len(batch.X),
                "reference_source": reference.source,
                "n_reference": len(reference.X),
                "model_uri": model_uri,
                "model_version": version.version if version else "",
                "fail_on_drift": str(fail_on_drift).lower(),
                "min_batch": min_batch,
                "alpha": drift.ALPHA,
                "n_bootstrap": drift.N_BOOTSTRAP,
                "bootstrap_seed": drift.SEED,
            }
        )
        frame = batch.X if batch.y is None else batch.X.assign(**{batch.y.name: batch.y})
        mlflow.log_input(datasets.mlflow_dataset(frame, batch.source, "monitored-batch"), context="monitoring")
        mlflow.log_metrics(found.metrics)
        mlflow.log_text(summary_table(found.result).to_csv(index=False), SUMMARY_ARTIFACT)
        title = f"{found.findings}: {what}\nagainst the {reference.source}"
        figure = plots.drift_report(found.reference, found.batch, found.result, COLUMNS, title)
        mlflow.log_figure(figure, REPORT_ARTIFACT)
    log.info("%s", description)
    return run.info.run_id


def _check_size(origin: str, what: str, n_rows: int, min_batch: int) -> None:
    if n_rows < min_batch:
        raise DataError(
            f"{origin}: the {what} has {n_rows} rows, fewer than min_batch={min_batch}; drift statistics "
            f"on so few rows are mostly noise (lower --min-batch to accept it anyway)"
        )


def _load_reference(reference_path: str | None, run_id: str | None, model_uri: str) -> data.Dataset:
    """The reference rows: a CSV, or the training rows the model's run recorded."""
    if reference_path:
        return data.load(reference_path, target=data.TARGET_OPTIONAL)
    if not run_id:
        raise PipelineError(f"{model_uri} was not logged by a run, so it has no training data; pass --reference")
    split, record = splits.load_split(run_id)
    description = f"training split of run {run_id} ({len(split.X_train)} rows of {record['source']})"
    return data.Dataset(split.X_train, None, description)


def _drift_metrics(result: drift.DriftResult, drifted_features: list[str], prediction_drift: bool) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for j, column in enumerate(COLUMNS):
        metrics[f"drift_{column}_ks_p"] = float(result.ks_p[j])
        metrics[f"drift_{column}_wasserstein"] = float(result.wasserstein[j])
        metrics[f"drift_{column}_psi"] = float(result.psi[j])
    metrics["drifted_feature_count"] = float(len(drifted_features))
    metrics["prediction_drift"] = float(prediction_drift)
    metrics["drift_detected"] = float(bool(drifted_features) or prediction_drift)
    return metrics


def _performance(y_true: np.ndarray, y_pred: np.ndarray, recorded: dict[str, float]) -> dict[str, float]:
    """The batch's test metrics, and how far R² fell from the model's recorded test R²."""
    metrics = regression_metrics(y_true, y_pred)
    if "test_r2" in recorded and "test_mse" in recorded:
        metrics["model_test_r2"] = recorded["test_r2"]
        metrics["model_test_mse"] = recorded["test_mse"]
        metrics["r2_drop"] = recorded["test_r2"] - metrics["test_r2"]
    return metrics


def summary_table(result: drift.DriftResult) -> pd.DataFrame:
    """One row per column: the statistics, what each is compared with, and the decision."""
    thresholds = result.thresholds
    return pd.DataFrame(
        {
            "column": list(COLUMNS),
            "ks_p": result.ks_p,
            "ks_alpha": thresholds.alpha_per_column,
            "wasserstein": result.wasserstein,
            "wasserstein_threshold": thresholds.wasserstein,
            "psi": result.psi,
            "psi_threshold": thresholds.psi,
            "drifted": result.drifted,
        }
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m pipeline monitor`."""
    return cli.build_parser("monitor", __doc__, PARAMS)


def main(argv: list[str] | None = None) -> int:
    """Runs the step from the command line; returns the exit code (3: drift and --fail-on-drift)."""
    args = build_parser().parse_args(argv)
    return cli.run(
        lambda: monitor(**vars(args)),
        report=lambda result: print(
            f"{result.findings} in {result.n_rows} rows (run {result.run_id}, {REPORT_ARTIFACT})"
        ),
        reads_models=True,
    )
