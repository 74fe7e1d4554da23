"""--target-size and --target-psnr: the analysis runs once, a secant search picks the quality,
and the file is the one plain coding writes at that quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from codec.api import Codec, search_quality
from codec.metrics import psnr, psnr_yuv420
from conftest import make_image


@pytest.mark.parametrize("inclusive", [True, False])
def test_the_search_finds_what_trying_every_quality_finds_in_few_calls(inclusive):
    rng = np.random.default_rng(0)
    calls = []
    for _ in range(300):
        a, b, c = rng.uniform(8, 10), 0.026 * rng.uniform(0.5, 2), rng.uniform(-0.3, 0.3)
        curve = [a + b * q + c * b * q * q / 100 for q in range(102)]  # grows with q, bent a little
        target = rng.uniform(curve[0] - 0.1, curve[101] + 0.1)
        below = [q for q in range(1, 101) if (curve[q] <= target if inclusive else curve[q] < target)]
        asked = []
        found = search_quality(lambda q: asked.append(q) or curve[q], target, slope=0.026, inclusive=inclusive)  # noqa: B023
        assert found == (below[-1] if below else 0)
        assert len(set(asked)) == len(asked)  # no quality is coded twice
        calls.append(len(asked))
    assert np.mean(calls) < 5 and max(calls) <= 9  # bisection of 1..100: 7 every time


@pytest.fixture(scope="module")
def codec():
    return Codec(device="cpu")


@pytest.mark.slow
def test_a_size_target_gives_the_file_of_the_quality_it_found(codec):
    image = make_image(96, 80)
    sizes = {q: len(codec.compress(image, q)) for q in (20, 21)}
    data, q = codec.compress_to(image, max_bytes=sizes[20] + (sizes[21] - sizes[20]) // 2)
    assert q == 20 and data == codec.compress(image, 20)  # byte for byte: same coding path
    data, q = codec.compress_to(image, max_bytes=10)  # nothing fits: the smallest, and the caller can tell
    assert q == 1 and len(data) > 10


@pytest.mark.slow
def test_a_psnr_target_gives_the_lowest_quality_that_reaches_it(codec):
    image = make_image(96, 80)
    target = psnr(image, codec.decompress(codec.compress(image, 60)))
    data, q = codec.compress_to(image, min_psnr=target)
    assert q <= 60 and psnr(image, codec.decompress(data)) >= target
    assert psnr(image, codec.decompress(codec.compress(image, q - 1))) < target
    with pytest.raises(ValueError, match="psnr_of"):
        codec.compress_to(image, min_psnr=30, psnr_of="lab")


def test_yuv420_psnr_weighs_luma_as_cwebp_does():
    grey = Image.new("RGB", (16, 16), (120, 120, 120))
    assert psnr_yuv420(grey, grey) == 100.0  # capped, as psnr
    brighter = Image.new("RGB", (16, 16), (125, 125, 125))  # luma 5 levels off, chroma exact
    luma, chroma = 16 * 16, 2 * 8 * 8  # samples: one luma a pixel, a Cb and a Cr per 2x2 block
    assert math.isclose(psnr_yuv420(grey, brighter), 10 * math.log10(255**2 / (25 * luma / (luma + chroma))))
    assert math.isclose(psnr(grey, brighter), 10 * math.log10(255**2 / 25))
