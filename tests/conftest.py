"""Shared fixtures: one loaded codec per test session and small generated photo-like images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from codec.metrics import psnr  # noqa: F401 (the tests' PSNR is the codec's)

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)


def make_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A photo-like test image: smooth gradients, a few hard-edged shapes, mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3, 3)
        img[..., c] = 0.5 + 0.3 * np.sin(fx * xx / max(width, 8) * 6.28 + ph) * np.cos(fy * yy / max(height, 8) * 6.28)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, max(4, min(width, height) / 3))
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    rgb = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")
    if mode == "RGB":
        return rgb
    if mode == "L":
        return rgb.convert("L")
    alpha = Image.fromarray((np.clip(xx / max(width - 1, 1), 0, 1) * 255).astype(np.uint8), "L")
    out = rgb.convert("RGBA" if mode == "RGBA" else "LA")
    out.putalpha(alpha)
    return out


@pytest.fixture(scope="session")
def codec():
    """The plain hyperprior: the container and hostile-input tests count its two streams."""
    from codec.api import Codec

    return Codec(device="cpu", model="hyperprior-gain")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
