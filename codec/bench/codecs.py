"""Benchmark adapters: each codec as an object with ``encode(image, q) -> bytes``,
``decode(bytes) -> RGB image``, a key, a label, its quality sweep and a description."""

from __future__ import annotations

import io
import platform
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
from PIL import Image, features

from codec import AecodecError

AECODEC_QUALITIES = (1, 10, 25, 40, 55, 70, 85, 100)  # a model's own (registry) qualities replace these
AECODEC_QUICK = (10, 55, 100)


class BenchError(AecodecError):
    """Bad input or environment, reported as one line (not a bug): exit status 1."""


class BenchUsageError(BenchError):
    """A bad argument (unknown codec, quality list, limit): exit status 2, as argparse's."""


# --------------------------------------------------------------------------- codecs


@dataclass
class PillowCodec:
    """A classical codec through Pillow: ``params(q)`` are its ``Image.save`` options for quality q."""

    key: str
    label: str
    format: str
    qualities: tuple[int, ...]
    quick: tuple[int, ...]
    params: Callable[[int], dict]
    settings: str

    def encode(self, image: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        image.save(buf, self.format, **self.params(quality))
        return buf.getvalue()

    def decode(self, data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")

    def description(self) -> str:
        return f"Pillow {Image.__version__} ({_pillow_library(self.format)}); {self.settings}"


def _pillow_library(fmt: str) -> str:
    """Name and version of the library behind a Pillow format, for the record."""
    feature = {"JPEG": "libjpeg_turbo", "WEBP": "webp", "AVIF": "avif", "JPEG2000": "jpg_2000"}[fmt]
    name = {"libjpeg_turbo": "libjpeg-turbo", "webp": "libwebp", "avif": "libavif", "jpg_2000": "OpenJPEG"}[feature]
    if feature == "libjpeg_turbo" and not features.check(feature):
        feature, name = "jpg", "libjpeg"
    return f"{name} {features.version(feature)}"


def pillow_codecs() -> dict[str, PillowCodec]:
    """The classical codecs and their sweeps.

    Each sweep reaches from about 0.1-0.2 bpp (as low as the codec goes) to 2-3 bpp on Kodak,
    so it overlaps aecodec's range. JPEG 2000's "quality" is the compression ratio against
    24-bit RGB (bpp ~ 24 / ratio), with the irreversible wavelet and the colour transform
    (mct=1; Pillow's default mct=0 codes R, G and B separately and loses ~4 dB).
    JPEG 4:2:0, the BD anchor, gets the measured anchor's 19 points: it costs next to nothing,
    and a sparser anchor curve moves BD-rates by about a point. AVIF is the slowest encoder,
    so it gets the fewest points.
    """
    return {
        "jpeg420": PillowCodec(
            "jpeg420", "JPEG 4:2:0", "JPEG", tuple(range(5, 100, 5)), (5, 30, 60, 90),
            lambda q: {"quality": q, "subsampling": 2}, "quality 1-100, 4:2:0 (Pillow's default)",
        ),
        "jpeg444": PillowCodec(
            "jpeg444", "JPEG 4:4:4", "JPEG", (5, 10, 20, 30, 40, 50, 60, 70, 80, 90), (5, 30, 60, 90),
            lambda q: {"quality": q, "subsampling": 0}, "quality 1-100, 4:4:4",
        ),
        "webp": PillowCodec(
            "webp", "WebP", "WEBP", (5, 15, 25, 35, 45, 55, 65, 75, 85, 95), (5, 35, 65, 95),
            lambda q: {"quality": q, "method": 6}, "quality 1-100, method 6",
        ),
        "avif": PillowCodec(
            "avif", "AVIF", "AVIF", (10, 20, 30, 40, 50, 60, 70, 80), (10, 40, 70),
            lambda q: {"quality": q, "speed": 4, "subsampling": "4:4:4", "max_threads": 1},
            "quality 1-100, speed 4, 4:4:4, one encoder thread",
        ),
        "jpeg2000": PillowCodec(
            "jpeg2000", "JPEG 2000", "JPEG2000", (240, 160, 120, 80, 60, 40, 30, 20, 15, 12), (240, 80, 30, 12),
            lambda r: {"quality_mode": "rates", "quality_layers": [r], "irreversible": True, "mct": 1},
            "quality = compression ratio vs 24-bit RGB (rates mode), irreversible 9/7, colour transform",
        ),
    }


@dataclass
class JxlCodec:
    """JPEG XL through imagecodecs (libjxl, BSD-licensed) at cjxl's defaults: effort 7, quality
    1-100 as ``cjxl -q`` (mapped to a Butteraugli distance by libjxl)."""

    key: str = "jpegxl"
    label: str = "JPEG XL"
    qualities: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    quick: tuple[int, ...] = (10, 50, 90)

    def encode(self, image: Image.Image, quality: int) -> bytes:
        import imagecodecs

        return bytes(imagecodecs.jpegxl_encode(np.asarray(image.convert("RGB")), level=quality, effort=7,
                                               numthreads=1))

    def decode(self, data: bytes) -> Image.Image:
        import imagecodecs

        return Image.fromarray(imagecodecs.jpegxl_decode(data, numthreads=1)).convert("RGB")

    def description(self) -> str:
        import imagecodecs

        return f"imagecodecs {imagecodecs.__version__} (libjxl {imagecodecs.jpegxl_version()}); effort 7, quality 1-100"


def aecodec_models() -> dict:
    """Benchmark name -> registered model (codec/registry.py): every model the registry holds."""
    from codec import registry

    return {e.bench_key: e for e in registry.MODELS.values()}


class AeCodec:
    """aecodec through its public API, one registered model; it loads once, here."""

    def __init__(self, device: str = "auto", weights: str | None = None, key: str = "aecodec", effort: int = 0):
        from codec.api import Codec  # late: torch and the weights load only when aecodec is benchmarked

        entry = aecodec_models()[key]
        self.qualities, self.quick = entry.qualities or AECODEC_QUALITIES, entry.quick or AECODEC_QUICK
        self.key = key
        self.codec = Codec(weights=weights, device=device, model=entry.name)
        self.effort = effort if hasattr(self.codec.model, "latent_pass") else 0  # the VAE has no latent search
        self.label = (entry.label or f"aecodec {entry.name}") + (f", effort {self.effort}" if self.effort else "")
        self.device = self.codec.device

    def encode(self, image: Image.Image, quality: int) -> bytes:
        return self.codec.compress(image, quality=quality, effort=self.effort)

    def decode(self, data: bytes) -> Image.Image:
        image = self.codec.decompress(data)
        return image if image.mode == "RGB" else image.convert("RGB")

    def description(self) -> str:
        sha = getattr(self.codec, "weights_sha256", "")
        effort = f", --effort {self.effort}" if self.effort else ""
        return f"{self.label} weights {sha[:16]}{effort}; {describe_torch_device(self.device)}"


# --------------------------------------------------------------------------- device


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_torch_device(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_name()}, {torch.get_num_threads()} torch threads)"

