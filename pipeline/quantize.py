"""The `quantize` step: integer weights for the float model, evaluated, logged, registered as `quantized`.

The math and its error bound are in `pipeline.quantization`; the served model is
`pipeline/served_model.py`. This module loads the float model and the split it was
evaluated on, measures the quantized model against it on the same held-out rows, logs a run
with the same metric keys as `train`, and registers the model.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from sklearn.linear_model import LinearRegression

from pipeline import cli, data, models, plots, registry, splits, tracking
from pipeline.config import ALIAS_QUANTIZED, CHALLENGER_URI, FEATURES, MODEL_ARTIFACT, TARGET
from pipeline.errors import DataError, PipelineError
from pipeline.metrics import float_param_bytes, regression_metrics
from pipeline.params import BITS, EXPERIMENT_NAME, QUANTIZE_MODEL_URI, SWEEP
from pipeline.quantization import per_tensor_uint, quantize_linear
from pipeline.served_model import PARAMS_FILE, PARAMS_KEY, QuantizedLinear
from pipeline.train import describe_cell

log = logging.getLogger(__name__)

SCHEME = "standardized-symmetric-adaptive-rounding-mse"
SWEEP_BITS = (8, 6, 4, 3, 2)
PARAMS = (QUANTIZE_MODEL_URI, BITS, SWEEP, EXPERIMENT_NAME)
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class QuantizeResult:
    """What a quantize run produced, as `TrainResult` (of the run that logged the registered
    model), and with a sweep the frontier: one row of metrics per bit width."""

    run_id: str
    version: str
    model_uri: str
    metrics: dict[str, float]
    frontier: pd.DataFrame | None = None


@dataclass(frozen=True)
class Source:
    """The float model and the split it was evaluated on."""

    uri: str
    version: str | None
    run_id: str
    model: LinearRegression
    signature: ModelSignature | None
    split: data.Split
    split_record: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """A quantized model measured against its float source on the held-out rows."""

    params: QuantizedLinear
    metrics: dict[str, float]
    coefficients: pd.DataFrame
    float_pred: np.ndarray
    quantized_pred: np.ndarray
    bound: np.ndarray


def load_source(model_uri: str) -> Source:
    """Loads the float model by URI and rebuilds the split its training run recorded.

    Raises:
        PipelineError: Unknown alias or version, not a scikit-learn LinearRegression on the 8
            features, or no recorded split.
    """
    version, load_uri = registry.pin(model_uri)
    info = mlflow.models.get_model_info(load_uri)
    if "sklearn" not in info.flavors:
        raise PipelineError(
            f"{model_uri} is not a scikit-learn model (flavors: {', '.join(info.flavors)}); quantize takes "
            f"the float model, e.g. {CHALLENGER_URI}"
        )
    model = mlflow.sklearn.load_model(load_uri)
    if not isinstance(model, LinearRegression):
        raise PipelineError(f"{model_uri} is a {type(model).__name__}; quantize takes a LinearRegression")
    names = [str(n) for n in getattr(model, "feature_names_in_", [])]
    if names != list(FEATURES) or np.ndim(model.coef_) != 1:
        raise PipelineError(f"{model_uri} takes features {names or '(unnamed)'}; expected {', '.join(FEATURES)}")
    split, record = splits.load_split(info.run_id)
    number = None if version is None else str(version.version)
    return Source(model_uri, number, info.run_id, model, info.signature, split, record)


def check_storable(split: data.Split, origin: str) -> None:
    """Refuses training rows whose statistics the quantized model cannot store (no I/O).

    The model stores each feature's mean and standard deviation over the training rows, and its
    intercept (the targets' mean, for a least-squares model), as float32 at most: beyond
    ±3.4e38 they would be infinite, and so would every prediction.

    Raises:
        DataError: Naming the file, the column, and its row of largest magnitude.
    """
    training = split.X_train.assign(**{TARGET: split.y_train})
    for column in training.columns:
        values = training[column].to_numpy(dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            stats = {"mean": values.mean()} if column == TARGET else {"mean": values.mean(), "std": values.std()}
        for name, value in stats.items():
            if not abs(value) <= FLOAT32_MAX:
                stored = "intercept" if column == TARGET else f"feature {name}"
                raise DataError(
                    f"{origin}: {describe_cell(training, column)}: the column's {name} over the training rows "
                    f"({value:g}) is beyond float32 (±{FLOAT32_MAX:.3g}), in which the quantized model stores "
                    f"its {stored}"
                )


def evaluate(source: Source, bits: int) -> Evaluation:
    """Quantizes the float model at `bits` bits and measures it on the held-out rows (no I/O).

    Coefficient errors are in standardized units (per standard deviation of the feature),
    where each is at most ρ ≤ s; `intercept_abs_error` compares the stored intercept with the
    float model's intercept at the same centre, b + Σ w_i μ_i.
    """
    model, split = source.model, source.split
    params = quantize_linear(model.coef_, model.intercept_, split.X_train.to_numpy(), bits, FEATURES)
    X_test = split.X_test[list(FEATURES)].to_numpy(dtype=np.float64)
    float_pred = model.predict(split.X_test)
    quantized_pred = params.predict(X_test)
    bound = params.error_bound(X_test)
    diff = np.abs(quantized_pred - float_pred)
    std = params.std.astype(np.float64)
    coef_error = np.abs(params.standardized_weights - model.coef_ * std)
    float_metrics = regression_metrics(split.y_test, float_pred)
    metrics = regression_metrics(split.y_test, quantized_pred)
    naive_coef, naive_intercept = per_tensor_uint(model.coef_, model.intercept_, bits)
    naive_r2 = regression_metrics(split.y_test, X_test @ naive_coef + naive_intercept)["test_r2"]
    param_bytes = params.param_bytes
    metrics.update(
        {
            "param_bytes": float(param_bytes),
            "r2_delta": metrics["test_r2"] - float_metrics["test_r2"],
            "mse_delta": metrics["test_mse"] - float_metrics["test_mse"],
            "coef_max_abs_error": float(coef_error.max()),
            "coef_mean_abs_error": float(coef_error.mean()),
            "intercept_abs_error": abs(
                float(params.intercept) - float(model.intercept_ + model.coef_ @ params.mean.astype(np.float64))
            ),
            "pred_max_abs_diff": float(diff.max()),
            "pred_mean_abs_diff": float(diff.mean()),
            "error_bound_max": float(bound.max()),
            "error_bound_violations": float(np.count_nonzero(diff > bound)),
            "compression_ratio": float_param_bytes(model.coef_, model.intercept_) / param_bytes,
            "naive_r2_delta": naive_r2 - float_metrics["test_r2"],
        }
    )
    coefficients = pd.DataFrame(
        {
            "feature": list(FEATURES),
            "coefficient": model.coef_,
            "dequantized_coefficient": params.coefficients,
            "mean": params.mean.astype(np.float64),
            "std": std,
            "standardized": model.coef_ * std,
            "quantized_int": params.weights,
            "dequantized_standardized": params.standardized_weights,
            "abs_error_standardized": coef_error,
        }
    )
    return Evaluation(params, metrics, coefficients, float_pred, quantized_pred, bound)


def quantize(
    model_uri: str = QUANTIZE_MODEL_URI.default,
    bits: int = BITS.default,
    sweep: bool = SWEEP.default,
    experiment_name: str = EXPERIMENT_NAME.default,
) -> QuantizeResult:
    """Quantizes the float model, logs the run(s), registers the `bits` model as alias `quantized`.

    Everything is loaded, quantized and measured before any run starts, and the model is
    registered last: a failure leaves no registered version. With `sweep`, a parent run
    `quantize-sweep` holds one nested run per bit width of 8, 6, 4, 3, 2 (and `bits`) plus
    the size/accuracy frontier; only the `bits` model is registered, the others stay logged
    models of their runs.

    The arguments are `PARAMS`, each described once in `pipeline.params`; `model_uri` may be
    `models:/name@alias`, `models:/name/N` or `runs:/…`.

    Raises:
        PipelineError: Bad `bits`, unknown model URI, or a model that is not a LinearRegression.
        DataError: Training statistics the quantized model cannot store.
    """
    BITS.check(bits)
    source = load_source(model_uri)
    check_storable(source.split, source.split_record["source"])
    widths = sorted({bits, *SWEEP_BITS}, reverse=True) if sweep else [bits]
    evaluations = {width: evaluate(source, width) for width in widths}
    if not sweep:
        with tracking.step_run(
            "quantize", f"quantize-int{bits}", _description(source, evaluations[bits]), experiment_name
        ) as run:
            model_info, metrics = _log_quantized(source, evaluations[bits])
            version = _register(model_info, run.info.run_id, source, evaluations[bits])
        return _result(run.info.run_id, version, metrics)
    description = f"Sweep over int{', int'.join(map(str, widths))} of {model_uri}; int{bits} registered."
    with tracking.step_run("quantize", "quantize-sweep", description, experiment_name):
        tracking.log_params({"bits": bits, "sweep_bits": ",".join(map(str, widths)), **_source_params(source)})
        runs: dict[int, tuple[str, ModelInfo, dict[str, float]]] = {}
        for width, evaluation in evaluations.items():
            with tracking.step_run("quantize", f"quantize-int{width}", _description(source, evaluation)) as child:
                runs[width] = (child.info.run_id, *_log_quantized(source, evaluation))
        frontier = pd.DataFrame([{"bits": width, "run_id": runs[width][0], **runs[width][2]} for width in widths])
        mlflow.log_text(frontier.to_csv(index=False), "frontier.csv")
        float_bytes = float_param_bytes(source.model.coef_, source.model.intercept_)
        mlflow.log_figure(plots.quantization_frontier(frontier, float_bytes), "plots/frontier.png")
        run_id, model_info, metrics = runs[bits]
        version = _register(model_info, run_id, source, evaluations[bits])
    return _result(run_id, version, metrics, frontier)


def _description(source: Source, evaluation: Evaluation) -> str:
    m = evaluation.metrics
    return (
        f"int{evaluation.params.bits} quantization of {source.uri} ({SCHEME}): test R² {m['test_r2']:.4f}, "
        f"r2_delta {m['r2_delta']:+.6f}, mean |Δprediction| {m['pred_mean_abs_diff']:.5f}, "
        f"{m['param_bytes']:.0f} bytes of parameters."
    )


def _source_params(source: Source) -> dict[str, str]:
    return {
        "scheme": SCHEME,
        "source_model_uri": source.uri,
        "source_version": source.version or "none",
        "source_run_id": source.run_id,
    }


def _log_quantized(source: Source, evaluation: Evaluation) -> tuple[ModelInfo, dict[str, float]]:
    """Logs one quantized model and its evaluation to the active run; returns the model and metrics."""
    params = evaluation.params
    split = source.split
    tracking.log_params(
        {
            "bits": params.bits,
            **_source_params(source),
            "n_test": len(split.X_test),
            "stats_dtype": params.mean.dtype.name,
        }
    )
    splits.log_split_record(source.split_record)
    mlflow.log_text(evaluation.coefficients.to_csv(index=False), "coefficients.csv")
    mlflow.log_figure(
        plots.quantized_vs_float(
            evaluation.float_pred,
            evaluation.quantized_pred,
            evaluation.bound,
            params.bits,
            int(evaluation.metrics["error_bound_violations"]),
        ),
        "plots/quantized_vs_float.png",
    )
    figure = plots.coefficients_float_vs_quantized(evaluation.coefficients, params.bits)
    mlflow.log_figure(figure, "plots/coefficients.png")
    with tempfile.TemporaryDirectory() as folder:
        params_path = Path(folder) / PARAMS_FILE
        params_path.write_text(params.to_json(), encoding="utf-8")
        model_info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(models.SERVED_CODE),
            artifacts={PARAMS_KEY: str(params_path)},
            signature=source.signature,
            input_example=split.X_train.head(5),
            pip_requirements=models.model_requirements(),
        )
    size = models.model_file_bytes(model_info, f"artifacts/{PARAMS_FILE}")
    metrics = {**evaluation.metrics, "model_size_bytes": float(size)}
    mlflow.log_metrics(metrics)
    return model_info, metrics


def _register(model_info: ModelInfo, run_id: str, source: Source, evaluation: Evaluation) -> ModelVersion:
    return registry.register(
        model_info.model_uri,
        ALIAS_QUANTIZED,
        tags={
            "run_id": run_id,
            "quantization": f"int{evaluation.params.bits}",
            "source_version": source.version or "none",
            "test_r2": f"{evaluation.metrics['test_r2']:.6f}",
            "flavor": "python_function",
            "scheme": SCHEME,
        },
    )


def _result(
    run_id: str, version: ModelVersion, metrics: dict[str, float], frontier: pd.DataFrame | None = None
) -> QuantizeResult:
    return QuantizeResult(run_id, str(version.version), registry.version_uri(version), dict(metrics), frontier)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m pipeline quantize`."""
    return cli.build_parser("quantize", __doc__, PARAMS)


def _report(result: QuantizeResult) -> None:
    m = result.metrics
    if result.frontier is not None:
        columns = ["bits", "test_r2", "r2_delta", "pred_mean_abs_diff", "error_bound_max", "param_bytes"]
        print(result.frontier[columns].to_string(index=False))
    print(
        f"Quantized {result.model_uri} (alias {ALIAS_QUANTIZED}) in run {result.run_id}: test R² {m['test_r2']:.4f} "
        f"(r2_delta {m['r2_delta']:+.6f}), mean |Δprediction| {m['pred_mean_abs_diff']:.5f}, "
        f"{m['error_bound_violations']:.0f} rows over the error bound, {m['param_bytes']:.0f} parameter bytes"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the step from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return cli.run(lambda: quantize(**vars(args)), _report)
