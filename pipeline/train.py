"""The `train` step: fit LinearRegression, log it to MLflow, register it as `challenger`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model, infer_signature
from mlflow.models.model import MLMODEL_FILE_NAME, ModelInfo
from sklearn.linear_model import LinearRegression

from pipeline import cli, data, datasets, models, plots, registry, splits, tracking
from pipeline.config import ALIAS_CHALLENGER, FEATURES, MODEL_ARTIFACT, SKLEARN_SOURCE, TARGET
from pipeline.errors import DataError
from pipeline.metrics import float_param_bytes, regression_metrics
from pipeline.params import DATA, EXPERIMENT_NAME, RANDOM_STATE, TEST_SIZE

log = logging.getLogger(__name__)

# The file MLflow writes the fitted estimator to (skops format, MLflow 3 default).
SKLEARN_MODEL_FILE = "model.skops"


class CheckedSklearnFlavor:
    """MLflow's scikit-learn flavor, served through `served_model.py` (a flavor for `Model.log`).

    The model is what `mlflow.sklearn.log_model` writes (`mlflow.sklearn.load_model` reads it,
    so `quantize` finds the LinearRegression), except that its python_function flavor loads
    through `served_model._load_pyfunc`, which refuses missing, non-finite and non-numeric
    cells by column and row, as the quantized model does, instead of predicting NaN.
    `mlflow.sklearn.save_model` cannot name another loader (see `pipeline.mlflow_compat`).
    """

    @staticmethod
    def save_model(path: str, mlflow_model: Model, **kwargs: Any) -> None:
        """Saves as `mlflow.sklearn.save_model` does, with `served_model.py` as the pyfunc loader."""
        mlflow.sklearn.save_model(path=path, mlflow_model=mlflow_model, code_paths=[str(models.SERVED_CODE)], **kwargs)
        mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME][mlflow.pyfunc.MAIN] = models.SERVED_CODE.stem
        mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))


PARAMS = (DATA, TEST_SIZE, RANDOM_STATE, EXPERIMENT_NAME)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: its run, the registered version (a string, as MLflow gives
    it), `models:/california-housing/<version>`, and every metric the run logged."""

    run_id: str
    version: str
    model_uri: str
    metrics: dict[str, float]


def fit(X: pd.DataFrame, y: pd.Series) -> LinearRegression:
    """Fits ordinary least squares with an intercept (pure: no I/O)."""
    return LinearRegression().fit(X, y)


def coefficient_table(model: LinearRegression, X_train: pd.DataFrame) -> pd.DataFrame:
    """Coefficients next to coefficient × feature std, the effect of a one-std change.

    Raw coefficients are not comparable across features in different units (Population's
    −2e−6 per person matters as much as AveOccup's −0.0035 per person/household); the
    standardized column is.
    """
    std = X_train.std(ddof=0).to_numpy()
    return pd.DataFrame(
        {
            "feature": list(FEATURES),
            "coefficient": model.coef_,
            "feature_std": std,
            "coefficient_x_std": model.coef_ * std,
        }
    )


class Fitted(NamedTuple):
    """What `train` computes before it logs anything, and the split parameters it used."""

    dataset: data.Dataset
    split: data.Split
    model: LinearRegression
    test_pred: np.ndarray
    metrics: dict[str, float]
    test_size: float
    random_state: int


def prepare(
    data_path: str | None = DATA.default,
    test_size: float = TEST_SIZE.default,
    random_state: int = RANDOM_STATE.default,
) -> Fitted:
    """Loads, splits, fits and evaluates (nothing is logged), refusing what float64 least squares cannot fit.

    Raises:
        PipelineError: `test_size` or `random_state` out of range.
        DataError: The data cannot be used; the message names file, column and row.
    """
    TEST_SIZE.check(test_size)
    RANDOM_STATE.check(random_state)
    dataset = data.load(data_path)
    split = data.split(dataset, test_size=test_size, random_state=random_state)
    training = split.X_train.assign(**{TARGET: split.y_train})
    _check_sums(training, dataset.source)
    # Overflow is checked for below, and named; numpy's warnings would only add lines to that.
    with np.errstate(over="ignore", invalid="ignore"):
        model = fit(split.X_train, split.y_train)
        test_pred = model.predict(split.X_test)
        train_pred = model.predict(split.X_train)
        train_metrics = regression_metrics(split.y_train, train_pred, prefix="train_")
        metrics = {
            **regression_metrics(split.y_test, test_pred),
            "train_r2": train_metrics["train_r2"],
            "train_mse": train_metrics["train_mse"],
            "param_bytes": float(float_param_bytes(model.coef_, model.intercept_)),
        }
    _check_rank(model, split.X_train, dataset.source)
    if not all(np.isfinite(list(metrics.values()))):
        _refuse_overflowing_errors(model, split, test_pred, train_pred, dataset.source)
    return Fitted(dataset, split, model, test_pred, metrics, test_size, random_state)


def describe_cell(frame: pd.DataFrame, column: str, position: int | None = None) -> str:
    """`column 'Population', row 17: 1e+308`: row as data.py counts them (the frame's index + 1).

    `position` None: the column's cell of largest magnitude.
    """
    if position is None:
        position = int(np.argmax(np.abs(frame[column].to_numpy())))
    return f"column {column!r}, row {int(frame.index[position]) + 1}: {frame[column].iloc[position]:g}"


def _check_sums(training: pd.DataFrame, origin: str) -> None:
    """LinearRegression centres every column on its mean; a sum beyond float64 makes it infinite."""
    with np.errstate(over="ignore", invalid="ignore"):
        means = training.to_numpy().mean(axis=0)
    for column, mean in zip(training.columns, means, strict=True):
        if not np.isfinite(mean):
            raise DataError(
                f"{origin}: {describe_cell(training, column)}: the column's sum over the training rows "
                "overflows float64, so least squares cannot centre it"
            )


def _check_rank(model: LinearRegression, X_train: pd.DataFrame, origin: str) -> None:
    """Refuses a fit that dropped features because one column's scale dwarfs the others.

    LinearRegression's least squares treats singular values under `tol` (1e-6) times the
    largest as zero; a column far out of scale (one cell of 1e10 among populations of
    thousands, or a column in much smaller units) takes the largest one, and the fit silently
    ignores the other features. Constant columns are dropped by any fit and are not refused.
    """
    varying = int((X_train.max() > X_train.min()).sum())
    if model.rank_ >= varying:
        return
    centred = X_train - X_train.mean()
    # The column that carries the largest singular value, and its row farthest from its mean.
    top = np.linalg.svd(centred.to_numpy(), full_matrices=False)[2][0]
    column = X_train.columns[int(np.argmax(np.abs(top)))]
    position = int(np.argmax(np.abs(centred[column].to_numpy())))
    raise DataError(
        f"{origin}: {describe_cell(X_train, column, position)}: the column is so far out of scale with the others that "
        f"least squares (LinearRegression, singular values under {model.tol:g} of the largest count as zero) "
        f"would ignore {varying - model.rank_} of the {varying} features; correct the value or rescale the column"
    )


def _refuse_overflowing_errors(
    model: LinearRegression, split: data.Split, test_pred: np.ndarray, train_pred: np.ndarray, origin: str
) -> None:
    """Names the row whose squared error overflows float64, and the cell that drives it."""
    rows = pd.concat([split.X_test.assign(**{TARGET: split.y_test}), split.X_train.assign(**{TARGET: split.y_train})])
    with np.errstate(over="ignore", invalid="ignore"):
        errors = np.abs(np.concatenate([test_pred, train_pred]) - rows[TARGET].to_numpy())
        position = int(np.argmax(np.where(np.isfinite(errors), errors, np.inf)))
        # prediction − target = Σ coef·(x − mean x) − (y − mean y): the cell with the largest term drives it.
        row = rows.iloc[position]
        shares = [
            *np.abs(model.coef_ * (row[list(FEATURES)] - split.X_train.mean())),
            abs(row[TARGET] - split.y_train.mean()),
        ]
    column = rows.columns[int(np.argmax(shares))]
    raise DataError(
        f"{origin}: {describe_cell(rows, column, position)}: the model's squared error on this row overflows float64, "
        "so its MSE and R² would be infinite"
    )


def train(
    data_path: str | None = DATA.default,
    test_size: float = TEST_SIZE.default,
    random_state: int = RANDOM_STATE.default,
    experiment_name: str = EXPERIMENT_NAME.default,
) -> TrainResult:
    """Trains, evaluates, logs and registers the float model.

    Data are loaded and validated before any run is touched, and the model is registered only
    after everything else is logged: bad input or a failure leaves no registered version.

    The arguments are `PARAMS`, each described once in `pipeline.params`.

    Raises:
        PipelineError: `test_size` or `random_state` out of range.
        DataError: The data cannot be used, also values float64 least squares cannot fit; the
            message names file, column and row.
    """
    return log_training(prepare(data_path, test_size, random_state), experiment_name)


def run_name(fitted: Fitted) -> str:
    """What tells this train run from the others in the UI: its data and its split."""
    data_label = "sklearn data" if fitted.dataset.source == SKLEARN_SOURCE else Path(fitted.dataset.source).name
    words = ["train", data_label, f"split {fitted.random_state}"]
    if fitted.test_size != TEST_SIZE.default:
        words.append(f"test {fitted.test_size:g}")
    return " · ".join(words)


def log_training(fitted: Fitted, experiment_name: str = EXPERIMENT_NAME.default) -> TrainResult:
    """Logs what `prepare` computed as a train run and registers the model as `challenger`, last."""
    dataset, split, model, test_pred, metrics, test_size, random_state = fitted
    description = (
        f"Float LinearRegression trained on {len(split.X_train)} rows of {dataset.source}; "
        f"test R² {metrics['test_r2']:.4f} on {len(split.X_test)} held-out rows."
    )
    with tracking.step_run("train", run_name(fitted), description, experiment_name) as run:
        tracking.log_params(
            {
                "test_size": test_size,
                "random_state": random_state,
                "n_train": len(split.X_train),
                "n_test": len(split.X_test),
                "data_source": dataset.source,
                "data_digest": dataset.digest,
            }
        )
        datasets.log_dataset_inputs(split, dataset)
        splits.log_split(split, dataset, test_size, random_state)
        _log_figures(model, split, test_pred)
        model_info = _log_model(model, split.X_train)
        metrics = {**metrics, "model_size_bytes": float(models.model_file_bytes(model_info, SKLEARN_MODEL_FILE))}
        mlflow.log_metrics(metrics)
        version = registry.register(
            model_info.model_uri,
            ALIAS_CHALLENGER,
            tags={"run_id": run.info.run_id, "test_r2": f"{metrics['test_r2']:.6f}", "flavor": "sklearn"},
        )
    log.info("test R² %.4f, test MSE %.4f, intercept %.4f", metrics["test_r2"], metrics["test_mse"], model.intercept_)
    return TrainResult(run.info.run_id, str(version.version), registry.version_uri(version), metrics)


def _log_figures(model: LinearRegression, split: data.Split, test_pred: np.ndarray) -> None:
    """Logs the coefficient table and the test set's predicted-vs-actual and residual plots."""
    mlflow.log_text(coefficient_table(model, split.X_train).to_csv(index=False), "coefficients.csv")
    mlflow.log_figure(
        plots.predicted_vs_actual(split.y_test, test_pred, "Float model: predicted vs actual (test)"),
        "plots/predicted_vs_actual.png",
    )
    mlflow.log_figure(plots.residuals(split.y_test, test_pred, "Float model: residuals (test)"), "plots/residuals.png")


def _log_model(model: LinearRegression, X_train: pd.DataFrame) -> ModelInfo:
    """Logs the fitted model in the scikit-learn flavor, served through `served_model.py`."""
    # The frame is validated (no missing cells), so a few rows give the schema all rows
    # would, without MLflow checking every cell of the training set for missing values.
    example = X_train.head(5)
    return Model.log(
        artifact_path=None,
        name=MODEL_ARTIFACT,
        flavor=CheckedSklearnFlavor,
        flavor_name=mlflow.sklearn.FLAVOR_NAME,
        sk_model=model,
        signature=infer_signature(example, model.predict(example)),
        input_example=example,
        pip_requirements=models.model_requirements(),
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m pipeline train`."""
    return cli.build_parser("train", __doc__, PARAMS)


def main(argv: list[str] | None = None) -> int:
    """Runs the step from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return cli.run(
        lambda: train(**vars(args)),
        report=lambda result: print(
            f"Trained {result.model_uri} (alias {ALIAS_CHALLENGER}) in run {result.run_id}: "
            f"test R² {result.metrics['test_r2']:.4f}, test MSE {result.metrics['test_mse']:.4f}"
        ),
    )
