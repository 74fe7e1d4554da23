"""Bjontegaard deltas between two rate-distortion curves.

BD-rate is the average bitrate difference (in %) at equal quality, BD-PSNR the average
quality difference (in dB, or whatever unit the quality has) at equal bitrate. Both follow
the piecewise-cubic variant that CompressAI and the anchors' ``bdrate.py`` use: a monotone
cubic (PCHIP) through the points, integrated over the range where both curves overlap.
Negative BD-rate / positive BD-PSNR means the tested curve is better than the reference.

We integrate the PCHIP pieces exactly instead of sampling 200 points with the trapezoid
rule; the two agree to well under 0.01 %.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from collections.abc import Sequence

import numpy as np


def _clean(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x, drop non-finite points and average duplicate x (PCHIP needs strictly rising x)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"curve has {x.size} x values but {y.size} y values")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    ux, inverse = np.unique(x, return_inverse=True)  # unique also sorts
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, uy


def _mean_gap(x_ref: np.ndarray, y_ref: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean of (curve - reference) over the overlapping x range, NaN if there is none."""
    from scipy.interpolate import PchipInterpolator  # late: keeps `aecodec --help` light

    x_ref, y_ref = _clean(x_ref, y_ref)
    x, y = _clean(x, y)
    if x_ref.size < 2 or x.size < 2:
        return math.nan
    lo, hi = max(x_ref[0], x[0]), min(x_ref[-1], x[-1])
    if hi <= lo:
        return math.nan
    area = PchipInterpolator(x, y).integrate(lo, hi) - PchipInterpolator(x_ref, y_ref).integrate(lo, hi)
    return float(area / (hi - lo))


def bd_rate(
    ref_rate: Sequence[float], ref_quality: Sequence[float], rate: Sequence[float], quality: Sequence[float]
) -> float:
    """Average rate difference in % of (rate, quality) against the reference at equal quality.

    Log-rate is interpolated as a function of quality (e.g. PSNR), so the result is the
    geometric-mean rate ratio over the common quality range, minus one. NaN if the curves'
    quality ranges do not overlap.
    """
    log_ref = np.log(np.asarray(ref_rate, dtype=np.float64))
    log_rate = np.log(np.asarray(rate, dtype=np.float64))
    gap = _mean_gap(np.asarray(ref_quality, dtype=np.float64), log_ref, np.asarray(quality, dtype=np.float64), log_rate)
    return (math.exp(gap) - 1.0) * 100.0 if math.isfinite(gap) else math.nan


def bd_psnr(
    ref_rate: Sequence[float], ref_quality: Sequence[float], rate: Sequence[float], quality: Sequence[float]
) -> float:
    """Average quality difference (dB for PSNR) of (rate, quality) against the reference at equal log-rate."""
    log_ref = np.log(np.asarray(ref_rate, dtype=np.float64))
    log_rate = np.log(np.asarray(rate, dtype=np.float64))
    ref_quality, quality = np.asarray(ref_quality, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    return _mean_gap(log_ref, ref_quality, log_rate, quality)


def msssim_db(values: Sequence[float]) -> np.ndarray:
    """MS-SSIM as -10*log10(1 - MS-SSIM): spreads out values near 1 for plots and BD numbers."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -10.0 * np.log10(1.0 - v)


def load_curve(path: str | Path, metric: str = "psnr-rgb") -> tuple[str, np.ndarray, np.ndarray]:
    """Read (name, bpp, metric) from a CompressAI-style results JSON; KeyError if the metric is absent."""
    data = json.loads(Path(path).read_text())
    results = data.get("results", data)
    if metric == "psnr-rgb" and metric not in results and "psnr" in results:
        metric = "psnr"
    bpp = np.asarray(results["bpp"], dtype=np.float64)
    values = np.asarray([math.nan if v is None else v for v in results[metric]], dtype=np.float64)
    return str(data.get("name", Path(path).stem)), bpp, values
