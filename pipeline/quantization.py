"""Quantizing a linear model's weights to signed `bits`-bit integers (pure math: arrays in and out).

Why not the raw weights. y = b + Σ w_i x_i with b = −37.02 while w·x contributes about −15
(Latitude) and +52 (Longitude): a rounding error ε on such a weight moves every prediction by
ε·x_i ≈ 120·ε, and Population's −2e−6 vanishes on any grid shared with −0.42. So:

1. Standardize with the training data's mean μ_i and standard deviation σ_i (stored as float16
   when float16 holds them, else float32; constant features get σ_i = 1):
   v_i = w_i·σ_i is the effect of one standard deviation of feature i; all are comparable.
2. One scale for the whole vector, symmetric round to nearest, qmax = 2^(bits−1) − 1:
   q_i = round(v_i/s), so |s·q_i − v_i| ≤ s/2 for every weight. s is the smallest scale that
   clips nothing, s0 = max_i |v_i|/qmax, or a larger one if it fits the float model better:
   s minimizes the mean squared difference from the float model's predictions on the
   training rows, (s·q(s) − v)ᵀ C (s·q(s) − v) with C the covariance of the standardized
   training features, searched exactly over s0 ≤ s ≤ 2·s0 (q(s) is constant between the
   points where some v_i/s is a half-integer, and the objective is quadratic in s there;
   beyond 2·s0 the largest weight would use half the levels, a bit wasted).
3. Intercept (bias correction): the least-squares intercept given the quantized weights, i.e.
   the c that minimizes Σ_rows (f(x) − c − Σ_i s·q_i·z_i)² over the training rows, where f is the
   float model: c = mean(f) − Σ_i s·q_i·mean(z_i). For an ordinary-least-squares float model this
   is also the least-squares intercept against the targets. c is stored as float32.

Error bound. With μ the exact training mean, mean(f) = b + Σ_i w_i μ_i, so for every x

    ŷ(x) − f(x) = Σ_i (s·q_i − v_i)·(x_i − μ_i)/σ_i + (c_float32 − c)
    |Δy(x)| ≤ (s/2)·Σ_i |x_i − μ_i|/σ_i + δc,

δc = half the float32 spacing at c. The stored μ̃_i is μ_i rounded to float16, off by at most
δμ_i = half its spacing, so the bound the model computes from what it stores is
(s/2)·Σ_i (|x_i − μ̃_i| + δμ_i)/σ_i + δc (`QuantizedLinear.error_bound`). It holds for any input,
not only on average; float64 arithmetic adds about 1e−14.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.quantized_model import QuantizedLinear

MIN_BITS = 2
MAX_BITS = 8
# How far above the smallest scale s0 the calibration looks (see the module docstring).
MAX_SCALE_FACTOR = 2.0


def check_bits(bits: int) -> None:
    """Raises PipelineError unless 2 ≤ bits ≤ 8."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise PipelineError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits}")


def qmax(bits: int) -> int:
    """Largest integer of the symmetric signed range, 2^(bits−1) − 1."""
    return 2 ** (bits - 1) - 1


def round_to_nearest(v: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """q = round(v/s), as int8. Every |q| ≤ qmax when s ≥ max|v|/qmax (checked)."""
    q = np.rint(np.asarray(v, dtype=np.float64) / np.float64(scale))
    if np.abs(q).max(initial=0) > qmax(bits):
        raise ValueError(f"scale {scale} clips weights at {bits} bits")
    return q.astype(np.int8)


def compact(values: np.ndarray) -> np.ndarray:
    """`values` as float16 when float16 holds them (finite, and non-zero where they were), else float32."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):  # overflow is what this checks for
        half = values.astype(np.float16)
    if np.all(np.isfinite(half)) and np.all((half != 0) | (values == 0)):
        return half
    single = values.astype(np.float32)
    if not np.all(np.isfinite(single)):
        raise PipelineError(f"feature statistics {values.tolist()} do not fit in float32")
    return single


def float32_at_least(value: float) -> np.float32:
    """The float32 nearest to `value`, moved up one step if it fell below it."""
    single = np.float32(value)
    return single if single >= value else np.nextafter(single, np.float32(np.inf))


def calibrated_scale(v: np.ndarray, cov: np.ndarray, bits: int) -> np.float32:
    """The float32 scale in [s0, 2·s0] whose rounded weights best reproduce the float model.

    Minimizes (s·q(s) − v)ᵀ cov (s·q(s) − v), q(s) = round(v/s), exactly: on each interval
    between breakpoints (s = |v_i|/(k + 1/2)) q is constant and the objective a parabola in s.

    Args:
        v: Standardized weights.
        cov: Covariance of the standardized training features.
        bits: Bit width.
    """
    v = np.asarray(v, dtype=np.float64)
    largest = float(np.abs(v).max(initial=0.0))
    if largest == 0.0:
        return np.float32(1.0)  # every weight is 0 and stays 0 on any grid
    low, high = largest / qmax(bits), MAX_SCALE_FACTOR * largest / qmax(bits)
    breakpoints = [low, high]
    for magnitude in np.abs(v[v != 0]):
        k = np.arange(np.floor(magnitude / high - 0.5), np.ceil(magnitude / low))
        points = magnitude / (k + 0.5)
        breakpoints.extend(points[(points > low) & (points < high)])
    edges = np.unique(breakpoints)
    best_scale, best_error = float32_at_least(low), np.inf
    for left, right in itertools.pairwise(edges):
        q = np.rint(v / ((left + right) / 2))
        curvature = q @ cov @ q
        candidate = np.clip(q @ cov @ v / curvature, left, right) if curvature > 0 else left
        scale = max(np.float32(candidate), float32_at_least(low))
        # Judged at the scale actually stored, with the weights it actually rounds to.
        error_vector = float(scale) * np.rint(v / float(scale)) - v
        error = float(error_vector @ cov @ error_vector)
        if error < best_error:
            best_scale, best_error = scale, error
    return best_scale


def quantize_linear(
    coef: np.ndarray, intercept: float, X_train: np.ndarray, bits: int, features: Sequence[str]
) -> QuantizedLinear:
    """Quantizes y = intercept + X·coef (see the module docstring for every formula).

    Args:
        coef: Raw-feature weights of the float model.
        intercept: Its intercept.
        X_train: The training rows (for μ, σ, the scale calibration and the intercept).
        bits: 2 to 8.
        features: Column names, in the order of `coef`.

    Raises:
        PipelineError: `bits` out of range.
    """
    check_bits(bits)
    coef = np.asarray(coef, dtype=np.float64)
    X_train = np.asarray(X_train, dtype=np.float64)
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    # A constant feature has no spread to standardize by; any positive σ represents it.
    stored_mean, stored_std = compact(mean), compact(np.where(std > 0, std, 1.0))
    sigma = stored_std.astype(np.float64)
    v = coef * sigma
    z = (X_train - stored_mean.astype(np.float64)) / sigma
    scale = calibrated_scale(v, np.atleast_2d(np.cov(z, rowvar=False, bias=True)), bits)
    q = round_to_nearest(v, scale, bits)
    # Least-squares intercept given the quantized weights: mean(f) − Σ s·q_i·mean(z_i), with
    # mean(f) = intercept + coef·μ and mean(z_i) = (μ_i − μ̃_i)/σ_i.
    c = intercept + coef @ mean - (np.float64(scale) * q) @ ((mean - stored_mean.astype(np.float64)) / sigma)
    return QuantizedLinear(tuple(features), bits, q, scale, stored_mean, stored_std, np.float32(c))


def per_tensor_uint(coef: np.ndarray, intercept: float, bits: int = 8) -> tuple[np.ndarray, float]:
    """The seeds' scheme, for comparison: raw weights and intercept on one unsigned min/max grid.

    All 9 numbers share one affine grid of 2^bits levels from their minimum to their maximum;
    the intercept (−37) stretches the grid so that the Latitude/Longitude weights, multiplied
    by x ≈ 36 and −120, carry rounding errors of up to (max − min)/2^(bits+1) each.

    Returns:
        The dequantized coefficients and intercept.
    """
    values = np.append(np.asarray(coef, dtype=np.float64), intercept)
    low, high = values.min(), values.max()
    step = (high - low) / (2**bits - 1)
    zero_point = np.rint(-low / step)
    levels = np.clip(np.rint(values / step) + zero_point, 0, 2**bits - 1)
    dequantized = (levels - zero_point) * step
    return dequantized[:-1], float(dequantized[-1])
