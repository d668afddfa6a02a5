"""The code MLflow runs to serve both registered models: the input check they share, and each model.

MLflow copies this file into every model it logs and imports it when the model loads, in any
process, with or without this package installed. So it imports nothing but numpy, pandas and
mlflow. It is

- the quantized model's code ("models from code": `set_model` at the end), its parameters in a
  JSON file next to it (no pickle; how they are chosen is `pipeline.quantization`), and
- the float model's python_function loader (`_load_pyfunc`): the model keeps its scikit-learn
  flavor and `model.skops`, and MLflow serves it through this file instead of `mlflow.sklearn`.

Both check every request the same way (`checked_features`, `checked_predictions`): a missing,
non-finite or non-numeric cell, or a prediction that overflows, is refused with an
`MlflowException` naming the column and row, which `mlflow models serve` answers with HTTP 400
and that message. scikit-learn and numpy would otherwise answer a cell of NaN or infinity with a
NaN or infinite prediction (the quantized model) or an error that names nothing (scikit-learn's
"Input X contains NaN", which the server turns into "an unexpected error").

Quantized prediction, with z_i = (x_i − μ_i)/σ_i the standardized features:

    ŷ(x) = c + s · Σ_i q_i · z_i

q_i are signed `bits`-bit integers, s is one float32 scale for the whole weight vector, μ_i and
σ_i are the training data's mean and standard deviation, c is a float32 intercept. ρ ≤ s, also
stored, bounds how far each s·q_i is from the float model's standardized weight; it is only
used by the error bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

# The artifact key and file name of the parameters inside a logged model.
PARAMS_KEY = "params"
PARAMS_FILE = "quantized_linear.json"
FORMAT = "housing-mlops/quantized-linear/2"


def _refuse(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE: the scoring server answers 400 with the message. Any other
    # exception from a model's predict becomes a 400 that says only "an unexpected error".
    return MlflowException.invalid_parameter_value(message)


def checked_features(model_input: Any, features: Sequence[str]) -> np.ndarray:
    """The `features` columns of a model input as float64 rows, every cell a finite number.

    Rows in messages count from 1, in the order of the request (or of the frame).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE, naming the column (and row) of the first
            missing column, missing cell (NaN, null or an absent CSV field), infinite cell
            (±Infinity, or a number like 1e309 that float64 cannot hold) or non-numeric cell.
    """
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    index = frame.index
    if isinstance(index, pd.MultiIndex) or index.dtype.kind not in "iu":
        # pandas (MLflow's CSV parser) takes the first fields of rows longer than the header as
        # row labels, shifting every value to another column.
        raise _refuse(
            f"row 1: the rows carry labels ({index[0]!r}): a CSV row with more fields than the header? "
            "Send exactly the header's fields"
        )
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise _refuse(f"input lacks column(s) {', '.join(missing)}")
    frame = frame[list(features)]
    for name in features:
        values = frame[name]
        if values.dtype.kind not in "fiu":  # cell by cell only where a cell may not be a number
            numeric = pd.to_numeric(values, errors="coerce")
            # A boolean would pass as 1/0.
            boolean = values.map(lambda cell: isinstance(cell, bool | np.bool_))
            non_numbers = ((numeric.isna() & values.notna()) | boolean).to_numpy(dtype=bool)
            if non_numbers.any():
                row = int(np.argmax(non_numbers))
                raise _refuse(f"column {name!r}, row {row + 1}: {str(values.iloc[row])!r} is not a number")
            frame = frame.assign(**{name: numeric})
    array = frame.to_numpy(dtype=np.float64)
    if not np.isfinite(array).all():  # one pass over the whole array; the rest only to name the cell
        for index, name in enumerate(features):
            for problem, bad in (
                ("missing (NaN or null)", np.isnan(array[:, index])),
                ("infinite", np.isinf(array[:, index])),
            ):
                if bad.any():
                    row = int(np.argmax(bad))
                    raise _refuse(f"column {name!r}, row {row + 1}: value is {problem} ({int(bad.sum())} such cell(s))")
    return array


def checked_predictions(predict: Callable[[Any], Any], rows: np.ndarray | pd.DataFrame) -> np.ndarray:
    """`predict(rows)` as a 1-D float64 array, refused if any prediction is not finite.

    Finite inputs can still overflow (a cell of 1e308 times a coefficient above 1).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE, naming the first such row.
    """
    # No RuntimeWarning on stderr for an overflow: it is refused below, by row.
    with np.errstate(over="ignore", invalid="ignore"):
        predictions = np.asarray(predict(rows), dtype=np.float64).reshape(-1)
    overflow = ~np.isfinite(predictions)
    if overflow.any():
        row = int(np.argmax(overflow))
        error = _refuse(
            f"row {row + 1}: the prediction overflows float64 ({predictions[row]}); its values are too large "
            f"({int(overflow.sum())} such row(s))"
        )
        # `pipeline.scoring` names rows of a file scored in chunks: it reads the predictions from the error to
        # name the file's row and count such rows across all chunks.
        error.predictions = predictions
        raise error
    return predictions


@dataclass(frozen=True)
class QuantizedLinear:
    """The stored parameters of a quantized linear model."""

    features: tuple[str, ...]  # input column names, in the order of the weights
    bits: int  # bit width of the integer weights
    weights: np.ndarray  # the integers q_i, each in [−(2^(bits−1) − 1), 2^(bits−1) − 1]
    scale: np.float32  # s
    rho: np.float32  # ρ: every |s·q_i − v_i| ≤ ρ ≤ s, v_i the float model's standardized weight
    mean: np.ndarray  # μ_i, float16 (or float32 where float16 cannot hold them)
    std: np.ndarray  # σ_i, same dtype rule; positive
    intercept: np.float32  # c

    @property
    def standardized_weights(self) -> np.ndarray:
        """The dequantized weights in standardized units, s·q_i."""
        return np.float64(self.scale) * self.weights.astype(np.float64)

    @property
    def coefficients(self) -> np.ndarray:
        """The equivalent weights on raw features, s·q_i/σ_i."""
        return self.standardized_weights / self.std.astype(np.float64)

    @property
    def param_bytes(self) -> int:
        """Bytes of the numbers prediction uses: the weights packed at `bits` bits, scale, μ, σ, intercept.

        ρ (4 bytes) is stored too but only feeds `error_bound`, so it is not counted.
        """
        packed_weights = -(-self.weights.size * self.bits // 8)
        return packed_weights + self.scale.nbytes + self.mean.nbytes + self.std.nbytes + self.intercept.nbytes

    def standardize(self, X: np.ndarray) -> np.ndarray:
        """z = (x − μ)/σ for rows of raw features (float64)."""
        z = np.subtract(X, self.mean.astype(np.float64), dtype=np.float64)
        z /= self.std.astype(np.float64)  # in place: the same numbers without a second array of the rows
        return z

    def predict(self, X: np.ndarray) -> np.ndarray:
        """ŷ for rows of raw features in `features` order (float64)."""
        return np.float64(self.intercept) + self.standardize(X) @ self.standardized_weights

    def error_bound(self, X: np.ndarray) -> np.ndarray:
        """Per row, how far ŷ can be from the float model it was quantized from, at most.

        |Δy(x)| ≤ ρ·Σ_i (|x_i − μ_i| + δμ_i)/σ_i + δc, where δμ_i and δc are half the spacing
        of the stored μ_i and c in their dtypes: the largest rounding of the training mean and
        of the intercept when they were stored (see `pipeline.quantization`).
        """
        mean = self.mean.astype(np.float64)
        mean_rounding = np.spacing(np.abs(self.mean)).astype(np.float64) / 2
        intercept_rounding = float(np.spacing(np.abs(self.intercept))) / 2
        distance = (np.abs(np.asarray(X, dtype=np.float64) - mean) + mean_rounding) / self.std.astype(np.float64)
        return float(self.rho) * distance.sum(axis=1) + intercept_rounding

    def to_json(self) -> str:
        """The parameters as JSON; each number written so that it reads back bit for bit."""
        return json.dumps(
            {
                "format": FORMAT,
                "features": list(self.features),
                "bits": self.bits,
                "weights": [int(q) for q in self.weights],
                "scale": _exact(self.scale),
                "rho": _exact(self.rho),
                "mean": [_exact(m) for m in self.mean],
                "mean_dtype": self.mean.dtype.name,
                "std": [_exact(s) for s in self.std],
                "std_dtype": self.std.dtype.name,
                "intercept": _exact(self.intercept),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> QuantizedLinear:
        """Reads what `to_json` wrote."""
        params = json.loads(text)
        if params.get("format") != FORMAT:
            raise ValueError(f"not a quantized linear model (format {params.get('format')!r}, expected {FORMAT!r})")
        return cls(
            features=tuple(params["features"]),
            bits=int(params["bits"]),
            weights=np.asarray(params["weights"], dtype=np.int8),
            scale=np.float32(params["scale"]),
            rho=np.float32(params["rho"]),
            mean=np.asarray(params["mean"], dtype=params["mean_dtype"]),
            std=np.asarray(params["std"], dtype=params["std_dtype"]),
            intercept=np.float32(params["intercept"]),
        )


def _exact(value: np.floating) -> float:
    # The shortest decimal that rounds back to the same value in its own dtype, so a float16
    # is written as 35.62, not as the float64 expansion 35.625 or 35.6171875.
    return float(np.format_float_positional(value, unique=True, trim="-"))


class QuantizedLinearModel(mlflow.pyfunc.PythonModel):
    """The quantized pyfunc model: a DataFrame with the feature columns in, a 1-D float64 array out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Reads the parameters from the model's JSON artifact."""
        with open(context.artifacts[PARAMS_KEY], encoding="utf-8") as handle:
            self.params = QuantizedLinear.from_json(handle.read())

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """One float64 prediction per row of `model_input`, its columns taken by name."""
        return checked_predictions(self.params.predict, checked_features(model_input, self.params.features))

    def error_bound(self, model_input: pd.DataFrame) -> np.ndarray:
        """Per row, the most the prediction can differ from the float model's (see `QuantizedLinear`)."""
        return self.params.error_bound(checked_features(model_input, self.params.features))


class CheckedEstimator:
    """The float model as python_function: scikit-learn's estimator behind the shared input check."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.features = [str(name) for name in estimator.feature_names_in_]

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """One float64 prediction per row of `model_input`, its columns taken by name."""
        # As a frame with the names the estimator was fitted on, which it checks.
        rows = pd.DataFrame(checked_features(model_input, self.features), columns=self.features, copy=False)
        return checked_predictions(self.estimator.predict, rows)

    def get_raw_model(self) -> Any:
        """The scikit-learn estimator (what `PyFuncModel.get_raw_model` returns)."""
        return self.estimator


def _load_pyfunc(path: str) -> CheckedEstimator:
    """MLflow's python_function loader for the float model; `path` is the model's folder."""
    return CheckedEstimator(mlflow.sklearn.load_model(path))


# Only where MLflow runs this file as a model's code: imported as part of the package (by train,
# quantize and the quantization math), it must not set MLflow's process-wide model.
if __name__ != "pipeline.served_model":
    mlflow.models.set_model(QuantizedLinearModel())
