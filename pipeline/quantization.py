"""Quantizing a linear model's weights to signed `bits`-bit integers (pure math: arrays in and out).

Why not the raw weights. y = b + Σ w_i x_i with b = −37.02 while w·x contributes about −15
(Latitude) and +52 (Longitude): a rounding error ε on such a weight moves every prediction by
ε·x_i ≈ 120·ε, and Population's −2e−6 vanishes on any grid shared with −0.42. So:

1. Standardize with the training data's mean μ_i and standard deviation σ_i (stored as float16
   when float16 holds them, else float32; constant features get σ_i = 1):
   v_i = w_i·σ_i is the effect of one standard deviation of feature i; all are comparable.
2. One scale for the whole vector and adaptive rounding, qmax = 2^(bits−1) − 1: each q_i is
   floor(v_i/s) or ceil(v_i/s), whichever of the 2^8 combinations, jointly with s, best
   reproduces the float model: it minimizes the mean squared difference from the float
   model's predictions on the training rows, (s·q − v)ᵀ C (s·q − v) with C the covariance of
   the standardized training features, over s0 ≤ s ≤ 2·s0, s0 = max_i |v_i|/qmax the smallest
   scale that clips nothing (beyond 2·s0 the largest weight would use half the levels, a bit
   wasted). Exactly: between the breakpoints s = |v_i|/k (k a positive integer) every
   floor(v_i/s) is constant, and for each combination q the objective is a parabola in s.
   Rounding to nearest at any of these scales is one of the combinations, so the result is
   never worse on that objective; rounding each weight alone to nearest is not optimal once
   the features are correlated (Latitude and Longitude: −0.92). Every |s·q_i − v_i| ≤ s, and
   the model stores ρ = max_i |s·q_i − v_i| (float32, rounded up), so |s·q_i − v_i| ≤ ρ ≤ s.
3. Intercept (bias correction): the least-squares intercept given the quantized weights, i.e.
   the c that minimizes Σ_rows (f(x) − c − Σ_i s·q_i·z_i)² over the training rows, where f is the
   float model: c = mean(f) − Σ_i s·q_i·mean(z_i). For an ordinary-least-squares float model this
   is also the least-squares intercept against the targets. c is stored as float32.

Error bound. With μ the exact training mean, mean(f) = b + Σ_i w_i μ_i, so for every x

    ŷ(x) − f(x) = Σ_i (s·q_i − v_i)·(x_i − μ_i)/σ_i + (c_float32 − c)
    |Δy(x)| ≤ ρ·Σ_i |x_i − μ_i|/σ_i + δc,

δc = half the float32 spacing at c. The stored μ̃_i is μ_i rounded to float16, off by at most
δμ_i = half its spacing, so the bound the model computes from what it stores is
ρ·Σ_i (|x_i − μ̃_i| + δμ_i)/σ_i + δc (`QuantizedLinear.error_bound`). It holds for any input,
not only on average; float64 arithmetic adds about 1e−14.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.params import BITS
from pipeline.served_model import QuantizedLinear

# How far above the smallest scale s0 the calibration looks (see the module docstring).
MAX_SCALE_FACTOR = 2.0


def qmax(bits: int) -> int:
    """Largest integer of the symmetric signed range, 2^(bits−1) − 1."""
    return 2 ** (bits - 1) - 1


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
    # Compared in float64: against a Python float, numpy would compare in float32.
    return single if float(single) >= value else np.nextafter(single, np.float32(np.inf))


def adaptive_rounding(v: np.ndarray, cov: np.ndarray, bits: int) -> tuple[np.ndarray, np.float32]:
    """The integers q (int8) and float32 scale s in [s0, 2·s0] that best reproduce the float model.

    Minimizes (s·q − v)ᵀ cov (s·q − v), `v` the standardized weights and `cov` the covariance of
    the standardized training features, over every q_i ∈ {floor(v_i/s), ceil(v_i/s)} with
    |q_i| ≤ qmax, exactly (module docstring, step 2): on each interval between breakpoints, for
    each of the 2^n combinations q = floor(v/s) + b, b ∈ {0, 1}^n. Each candidate is judged at
    the float32 scale actually stored; the first best wins (intervals ascending, b
    lexicographic), so the result is deterministic.
    """
    v = np.asarray(v, dtype=np.float64)
    largest = float(np.abs(v).max(initial=0.0))
    if largest == 0.0:
        return np.zeros(v.shape, dtype=np.int8), np.float32(1.0)  # 0 stays 0 on any grid
    limit = qmax(bits)
    low, high = largest / limit, MAX_SCALE_FACTOR * largest / limit
    breakpoints = [low, high]
    for magnitude in np.abs(v[v != 0]):
        k = np.arange(max(1.0, np.floor(magnitude / high)), np.ceil(magnitude / low) + 1)
        points = magnitude / k
        breakpoints.extend(points[(points > low) & (points < high)])
    edges = np.unique(breakpoints)
    left, right = edges[:-1, None], edges[1:, None]
    floor = np.floor(v / ((left + right) / 2))
    combos = np.array(list(itertools.product((0.0, 1.0), repeat=v.size)))
    # Axes (interval, combination, weight); q = floor + b. Products with cov are taken apart as
    # f·cov and b·cov: small matrix products, then only elementwise work on the big arrays.
    q = floor[:, None, :] + combos
    q_cov = (floor @ cov)[:, None, :] + combos @ cov
    curvature = np.sum(q_cov * q, axis=2)
    flat = curvature > 0
    optimum = np.where(flat, (q_cov @ v) / np.where(flat, curvature, 1.0), left)
    scale = np.maximum(np.clip(optimum, left, right).astype(np.float32), float32_at_least(low))
    # Judged at the scale actually stored.
    wide = scale.astype(np.float64)[..., None]
    deviation = wide * q - v
    errors = np.sum((wide * q_cov - cov @ v) * deviation, axis=2)
    # Only floor or ceil of v_i/s at the stored scale (each |s·q_i − v_i| ≤ s), and nothing clipped.
    valid = np.all(np.abs(deviation) <= wide, axis=2) & np.all(np.abs(q) <= limit, axis=2)
    # Intervals ascending, then b lexicographic: argmin's first minimum is the tie rule.
    best = np.unravel_index(np.argmin(np.where(valid, errors, np.inf)), errors.shape)
    return q[best].astype(np.int8), scale[best]


def rounding_bound(v: np.ndarray, q: np.ndarray, scale: np.float32) -> np.float32:
    """ρ: the largest |s·q_i − v_i|, as a float32 rounded up (so it bounds every one exactly)."""
    error = np.abs(np.float64(scale) * np.asarray(q, dtype=np.float64) - np.asarray(v, dtype=np.float64))
    return float32_at_least(float(error.max(initial=0.0)))


def quantize_linear(
    coef: np.ndarray, intercept: float, X_train: np.ndarray, bits: int, features: Sequence[str]
) -> QuantizedLinear:
    """Quantizes y = intercept + X·coef (see the module docstring for every formula); `X_train`'s
    rows give μ, σ, the scale calibration and the intercept, `features` names `coef`'s columns.

    Raises:
        PipelineError: `bits` out of range.
    """
    BITS.check(bits)
    coef = np.asarray(coef, dtype=np.float64)
    X_train = np.asarray(X_train, dtype=np.float64)
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    # A constant feature has no spread to standardize by; any positive σ represents it.
    stored_mean, stored_std = compact(mean), compact(np.where(std > 0, std, 1.0))
    sigma = stored_std.astype(np.float64)
    v = coef * sigma
    z = (X_train - stored_mean.astype(np.float64)) / sigma
    q, scale = adaptive_rounding(v, np.atleast_2d(np.cov(z, rowvar=False, bias=True)), bits)
    # Least-squares intercept given the quantized weights: mean(f) − Σ s·q_i·mean(z_i), with
    # mean(f) = intercept + coef·μ and mean(z_i) = (μ_i − μ̃_i)/σ_i.
    c = intercept + coef @ mean - (np.float64(scale) * q) @ ((mean - stored_mean.astype(np.float64)) / sigma)
    return QuantizedLinear(
        tuple(features), bits, q, scale, rounding_bound(v, q, scale), stored_mean, stored_std, np.float32(c)
    )


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
