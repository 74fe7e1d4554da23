"""BD-rate / BD-PSNR against cases whose answer is known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.integrate import trapezoid
from scipy.interpolate import PchipInterpolator

from codec.bench.bdrate import bd_psnr, bd_rate, load_curve, msssim_db

# A JPEG-like curve: PSNR rises with log(bpp), a little concave.
BPP = np.array([0.2, 0.35, 0.55, 0.8, 1.1, 1.5, 2.2])
PSNR = np.array([25.0, 27.6, 29.7, 31.5, 33.0, 34.6, 36.8])


def test_identical_curves_give_zero():
    assert bd_rate(BPP, PSNR, BPP, PSNR) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(BPP, PSNR, BPP, PSNR) == pytest.approx(0.0, abs=1e-9)


def test_half_the_rate_is_minus_50_percent():
    assert bd_rate(BPP, PSNR, BPP / 2, PSNR) == pytest.approx(-50.0, abs=1e-9)
    # and the reference against the halved curve needs twice the bits
    assert bd_rate(BPP / 2, PSNR, BPP, PSNR) == pytest.approx(100.0, abs=1e-9)


def test_one_db_better_is_plus_one_db():
    assert bd_psnr(BPP, PSNR, BPP, PSNR + 1.0) == pytest.approx(1.0, abs=1e-9)
    assert bd_psnr(BPP, PSNR, BPP, PSNR - 1.0) == pytest.approx(-1.0, abs=1e-9)


def test_sign_conventions():
    """Better codec: fewer bits (negative BD-rate) and more dB (positive BD-PSNR)."""
    assert bd_rate(BPP, PSNR, BPP * 0.8, PSNR) < 0
    assert bd_psnr(BPP, PSNR, BPP * 0.8, PSNR) > 0
    assert bd_rate(BPP, PSNR, BPP, PSNR + 0.5) < 0
    assert bd_rate(BPP, PSNR, BPP * 1.3, PSNR) > 0
    assert bd_psnr(BPP, PSNR, BPP * 1.3, PSNR) < 0


def test_rate_gap_growing_linearly_with_psnr():
    """log(rate) = a + b*p for the reference and + c*(p - p0) for the test: both linear, so PCHIP
    is exact and the mean gap over the overlap [lo, hi] is c*((lo + hi)/2 - p0)."""
    p_ref = np.linspace(26, 38, 7)
    p = np.linspace(28, 40, 6)  # overlap is [28, 38]
    a, b, c, p0 = -4.0, 0.12, 0.02, 30.0
    r_ref = np.exp(a + b * p_ref)
    r = np.exp(a + b * p + c * (p - p0))
    expected = (math.exp(c * ((28 + 38) / 2 - p0)) - 1) * 100
    assert bd_rate(r_ref, p_ref, r, p) == pytest.approx(expected, abs=1e-9)


def test_unsorted_and_duplicate_points():
    o = np.array([3, 0, 6, 1, 5, 2, 4])
    assert bd_rate(BPP, PSNR, BPP[o] / 2, PSNR[o]) == pytest.approx(-50.0, abs=1e-9)
    dup_b, dup_p = np.append(BPP, BPP[2]), np.append(PSNR, PSNR[2])
    assert bd_rate(BPP, PSNR, dup_b, dup_p) == pytest.approx(0.0, abs=1e-9)


def test_no_overlap_or_too_few_points_is_nan():
    assert math.isnan(bd_rate(BPP, PSNR, BPP, PSNR + 20))
    assert math.isnan(bd_psnr(BPP, PSNR, BPP * 100, PSNR))
    assert math.isnan(bd_rate(BPP, PSNR, BPP[:1], PSNR[:1]))
    assert math.isnan(bd_rate(BPP, PSNR, [0.5, np.nan], [30.0, np.nan]))


def test_agrees_with_sampled_trapezoid_variant():
    """The anchors' script samples PCHIP at 200 points; we integrate it exactly."""
    b2 = np.array([0.12, 0.25, 0.4, 0.62, 0.9, 1.3, 1.9])
    p2 = np.array([26.1, 28.9, 30.6, 32.4, 34.0, 35.7, 37.5])

    def sampled(rb, rp, tb, tp):
        lo, hi = max(rp.min(), tp.min()), min(rp.max(), tp.max())
        xs = np.linspace(lo, hi, 200)
        f_ref, f = PchipInterpolator(rp, np.log(rb)), PchipInterpolator(tp, np.log(tb))
        return (np.exp(trapezoid(f(xs) - f_ref(xs), xs) / (hi - lo)) - 1) * 100

    assert bd_rate(BPP, PSNR, b2, p2) == pytest.approx(sampled(BPP, PSNR, b2, p2), abs=0.01)
    assert bd_rate(BPP, PSNR, b2, p2) < 0


def test_load_curve_and_msssim_db(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "x", "results": {"bpp": [0.1, 0.2], "psnr-rgb": [30, 31],
                                                          "ms-ssim-rgb": [0.9, None]}}))
    name, bpp, psnr = load_curve(path)
    assert name == "x" and list(bpp) == [0.1, 0.2] and list(psnr) == [30, 31]
    _, _, ms = load_curve(path, "ms-ssim-rgb")
    assert ms[0] == 0.9 and math.isnan(ms[1])
    assert msssim_db([0.9, 0.99])[1] == pytest.approx(20.0)
