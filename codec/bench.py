"""``aecodec bench DIR``: rate-distortion and speed of aecodec against the codecs Pillow ships.

For every image in DIR, every codec codes it at each point of its quality sweep. We count the
bits of the bytes the codec really writes (the whole ``.aec`` file for aecodec, the whole
JPEG/WebP/AVIF/JP2 file for the others), decode to 8-bit RGB and measure

* PSNR over all pixels and the three channels, MAX = 255 (capped at 100 dB for a lossless
  decode, so that averages stay finite);
* MS-SSIM on RGB with ``pytorch_msssim`` (data_range 255, the standard 5 scales). That needs a
  short side over 160 px; for smaller images MS-SSIM is NaN (empty in the CSV, left out of the
  averages) rather than computed with fewer scales, which would not be comparable with
  published figures.

Timing covers only the in-process encode and decode calls (``perf_counter`` around
``compress``/``decompress``, or Pillow's ``save``/``open+load`` into memory): no process start,
no model load, no file I/O. One untimed warm-up call per codec comes first.

Outputs (``--out``): one CompressAI-style JSON per codec (curves averaged over images, one entry
per quality point), ``per_image.csv``, ``summary.md`` (BD-rate / BD-PSNR against JPEG 4:2:0 and
any ``--reference`` curves, device, command line) and ``rd-psnr.png`` / ``rd-ms-ssim.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, features

from . import AecodecError
from .bdrate import bd_psnr, bd_rate, msssim_db
from .metrics import MSSSIM_MIN_SIDE, PSNR_CAP, ms_ssim_rgb, psnr  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")
ALL_CODECS = ("aecodec", "aecodec-vae", "jpeg420", "jpeg444", "webp", "avif", "jpeg2000")
ANCHOR = "jpeg420"  # BD numbers in summary.md are against this codec; it is always run
AECODEC_QUALITIES = (1, 10, 25, 40, 55, 70, 85, 100)
AECODEC_QUICK = (10, 55, 100)
VAE_QUALITIES = (1, 34, 67, 100)  # the f8 VAE's codec covers a narrow, low rate range
VAE_QUICK = (1, 100)
QUICK_IMAGES = 3
QUICK_CROP = 256  # centre crop: small enough for CI, big enough for 5-scale MS-SSIM


class BenchError(AecodecError):
    """Bad input or environment, reported as one line (not a bug)."""


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


# benchmark name -> (registered model, plot label, qualities, --quick qualities)
AECODEC_MODELS = {
    "aecodec": ("hyperprior-gain", "aecodec", AECODEC_QUALITIES, AECODEC_QUICK),
    "aecodec-vae": ("vae-kl-f8", "aecodec VAE f8", VAE_QUALITIES, VAE_QUICK),
}


class AeCodec:
    """aecodec through its public API, one registered model; it loads once, here."""

    def __init__(self, device: str = "auto", weights: str | None = None, key: str = "aecodec"):
        from .api import Codec  # late: torch and the weights load only when aecodec is benchmarked

        model, self.label, self.qualities, self.quick = AECODEC_MODELS[key]
        self.key = key
        self.codec = Codec(weights=weights, device=device, model=model)
        self.device = self.codec.device

    def encode(self, image: Image.Image, quality: int) -> bytes:
        return self.codec.compress(image, quality=quality)

    def decode(self, data: bytes) -> Image.Image:
        image = self.codec.decompress(data)
        return image if image.mode == "RGB" else image.convert("RGB")

    def description(self) -> str:
        sha = getattr(self.codec, "weights_sha256", "")
        return f"{self.label} weights {sha[:16]}; {describe_torch_device(self.device)}"


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One image coded at one quality: a line of per_image.csv."""

    codec: str
    quality: int
    image: str
    width: int
    height: int
    bytes: int
    bpp: float
    psnr_rgb: float
    ms_ssim_rgb: float
    encode_s: float
    decode_s: float


def measure(codec, image: Image.Image, original: np.ndarray, quality: int, name: str) -> Row:
    """Code ``image`` once at ``quality``; times only the encode and decode calls."""
    t0 = time.perf_counter()
    data = codec.encode(image, quality)
    t1 = time.perf_counter()
    decoded = codec.decode(data)
    t2 = time.perf_counter()
    out = np.asarray(decoded)
    if out.shape != original.shape:
        raise BenchError(f"{codec.key} q={quality} on {name}: decoded {out.shape}, expected {original.shape}")
    h, w = original.shape[:2]
    return Row(
        codec=codec.key, quality=quality, image=name, width=w, height=h, bytes=len(data),
        bpp=8.0 * len(data) / (w * h), psnr_rgb=psnr(original, out), ms_ssim_rgb=ms_ssim_rgb(original, out),
        encode_s=t1 - t0, decode_s=t2 - t1,
    )


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise BenchError(f"{folder}: no such directory")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise BenchError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def load_rgb(path: Path, crop: int | None = None) -> Image.Image:
    """Decode an image to RGB, optionally centre-cropped to at most crop x crop."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise BenchError(f"{path}: cannot read image ({e})") from None
    if crop is not None and (image.width > crop or image.height > crop):
        w, h = min(crop, image.width), min(crop, image.height)
        left, top = (image.width - w) // 2, (image.height - h) // 2
        image = image.crop((left, top, left + w, top + h))
    return image


def sweep(codecs: list, paths: list[Path], qualities: dict[str, Sequence[int]], crop: int | None) -> list[Row]:
    """Run every codec at every quality on every image (each image decoded once)."""
    from tqdm import tqdm

    total = len(paths) * sum(len(qualities[c.key]) for c in codecs)
    rows: list[Row] = []
    with tqdm(total=total, desc="bench", unit="code", file=sys.stderr, disable=None) as bar:
        for i, path in enumerate(paths):
            image = load_rgb(path, crop)
            original = np.asarray(image)
            if i == 0:  # untimed warm-up: first-call setup is not the codec's steady speed
                small = image.crop((0, 0, min(64, image.width), min(64, image.height)))
                for codec in codecs:
                    codec.decode(codec.encode(small, qualities[codec.key][0]))
            for codec in codecs:
                for q in qualities[codec.key]:
                    bar.set_postfix_str(f"{path.name} {codec.key} q={q}", refresh=False)
                    rows.append(measure(codec, image, original, q, path.name))
                    bar.update()
    return rows


# --------------------------------------------------------------------------- results


def average(rows: list[Row], key: str, qualities: Sequence[int]) -> dict[str, list]:
    """CompressAI-style curve for one codec: per quality point, the mean over images.

    MS-SSIM is averaged over the images where it is defined; null where it is for none.
    """
    res: dict[str, list] = {k: [] for k in ("q", "bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")}
    for q in qualities:
        sel = [r for r in rows if r.codec == key and r.quality == q]
        ms = [r.ms_ssim_rgb for r in sel if math.isfinite(r.ms_ssim_rgb)]
        res["q"].append(q)
        res["bpp"].append(float(np.mean([r.bpp for r in sel])))
        res["psnr-rgb"].append(float(np.mean([r.psnr_rgb for r in sel])))
        res["ms-ssim-rgb"].append(float(np.mean(ms)) if ms else None)
        res["encoding_time"].append(float(np.mean([r.encode_s for r in sel])))
        res["decoding_time"].append(float(np.mean([r.decode_s for r in sel])))
    return res


@dataclass
class Curve:
    """An RD curve to compare or plot: ours, or loaded from a --reference JSON."""

    label: str
    bpp: np.ndarray
    psnr: np.ndarray
    msssim: np.ndarray  # NaN where unknown
    reference: bool = False


def curve_from_results(label: str, results: dict, reference: bool = False) -> Curve:
    bpp = np.asarray(results["bpp"], dtype=np.float64)
    psnr_values = results.get("psnr-rgb", results.get("psnr"))
    if psnr_values is None:
        raise KeyError("psnr-rgb")
    ms = results.get("ms-ssim-rgb", [None] * len(bpp))
    return Curve(
        label, bpp, np.asarray(psnr_values, dtype=np.float64),
        np.asarray([math.nan if v is None else v for v in ms], dtype=np.float64), reference,
    )


def load_reference(path: str) -> Curve:
    """A --reference JSON; labelled "NAME (published)" for published-*.json, else by file stem."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        stem = p.stem
        label = f"{data.get('name', stem)} (published)" if stem.startswith("published") else stem
        return curve_from_results(label, data.get("results", data), reference=True)
    except OSError as e:
        raise BenchError(f"{path}: cannot read reference ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"{path}: not a CompressAI results JSON with bpp and psnr-rgb ({e})") from None


def bd_cells(anchor: Curve, c: Curve) -> list[str]:
    """BD-rate (PSNR), BD-PSNR and BD-rate (MS-SSIM in dB) of c against anchor, as table cells."""
    def fmt(v: float, unit: str) -> str:
        return "n/a" if not math.isfinite(v) else f"{v:+.1f}%" if unit == "%" else f"{v:+.2f} dB"

    ms_ok = np.isfinite(anchor.msssim).sum() >= 2 and np.isfinite(c.msssim).sum() >= 2
    ms_rate = bd_rate(anchor.bpp, msssim_db(anchor.msssim), c.bpp, msssim_db(c.msssim)) if ms_ok else math.nan
    return [
        fmt(bd_rate(anchor.bpp, anchor.psnr, c.bpp, c.psnr), "%"),
        fmt(bd_psnr(anchor.bpp, anchor.psnr, c.bpp, c.psnr), "dB"),
        fmt(ms_rate, "%"),
    ]


def bd_table(anchor: Curve, curves: list[Curve]) -> list[str]:
    lines = [
        "| codec | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM) | bpp range | PSNR range |",
        "|---|---:|---:|---:|---|---|",
    ]
    for c in curves:
        if c is anchor:
            continue
        rng = f"{np.nanmin(c.bpp):.3f}-{np.nanmax(c.bpp):.3f} | {np.nanmin(c.psnr):.2f}-{np.nanmax(c.psnr):.2f}"
        lines.append(f"| {c.label} | " + " | ".join(bd_cells(anchor, c)) + f" | {rng} |")
    return lines


def write_summary(
    path: Path, ours: dict[str, Curve], results: dict[str, dict], descriptions: dict[str, str],
    refs: list[Curve], n_images: int, device_lines: list[str], command: str, wall_s: float,
) -> None:
    """summary.md: BD tables (vs our JPEG 4:2:0, then vs each reference), speed, device, command."""
    anchor = ours[ANCHOR]
    lines = [
        "# aecodec benchmark",
        "",
        f"{n_images} images; BD numbers use piecewise-cubic interpolation over the overlapping range "
        "(negative BD-rate / positive BD-PSNR = better than the anchor). BD-rate (MS-SSIM) uses "
        "-10 log10(1 - MS-SSIM).",
        "",
        f"## Against {anchor.label} (this run)",
        "",
        *bd_table(anchor, list(ours.values()) + refs),
    ]
    for ref in refs:
        lines += ["", f"## Against {ref.label}", "", *bd_table(ref, list(ours.values()))]
    lines += [
        "",
        "## Codecs and speed",
        "",
        "Seconds per image, averaged over images and quality points; only the encode/decode calls "
        "are timed (no process start, model load or file I/O).",
        "",
        "| codec | settings | qualities | encode s | decode s |",
        "|---|---|---|---:|---:|",
    ]
    for key, res in results.items():
        qs = ",".join(str(q) for q in res["q"])
        lines.append(
            f"| {ours[key].label} | {descriptions[key]} | {qs} | "
            f"{np.mean(res['encoding_time']):.4f} | {np.mean(res['decoding_time']):.4f} |"
        )
    lines += ["", "## Device", "", *[f"- {d}" for d in device_lines], f"- total wall time: {wall_s:.0f} s",
              "", "## Command", "", "```", command, "```", ""]
    path.write_text("\n".join(lines))


def plot_rd(path: Path, ours: list[Curve], refs: list[Curve], metric: str) -> None:
    """PSNR or MS-SSIM (dB) against bpp; references dashed. x range follows our curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def y_of(c: Curve) -> np.ndarray:
        return c.psnr if metric == "psnr" else msssim_db(c.msssim)

    xmax = 1.05 * max(float(np.nanmax(c.bpp)) for c in ours)
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    visible = []
    for c in ours + refs:
        x, y = c.bpp, y_of(c)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() == 0:
            continue
        o = np.argsort(x[ok])
        x, y = x[ok][o], y[ok][o]
        style = dict(linestyle="--", linewidth=1, marker=".") if c.reference else dict(linewidth=1.8, marker="o", markersize=4)
        ax.plot(x, y, label=c.label, **style)
        visible.extend(y[x <= xmax])
    ax.set_xlim(0, xmax)
    if visible:
        lo, hi = min(visible), max(visible)
        pad = 0.03 * (hi - lo) + 0.1
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR RGB (dB)" if metric == "psnr" else "MS-SSIM RGB (dB, -10 log10(1 - MS-SSIM))")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:  # e.g. MS-SSIM when every image is too small for it
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([fl.name for fl in fields(Row)])
        for r in rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in asdict(r).values()])


def write_json(path: Path, name: str, description: str, results: dict) -> None:
    path.write_text(json.dumps({"name": name, "description": description, "results": results}, indent=1) + "\n")


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


# --------------------------------------------------------------------------- CLI


def _parse_codecs(text: str | None) -> list[str]:
    names = [n.strip().lower() for n in (text or ",".join(ALL_CODECS)).split(",") if n.strip()]
    for n in names:
        if n not in ALL_CODECS:
            raise BenchError(f"unknown codec {n!r} (choose from {', '.join(ALL_CODECS)})")
    if "avif" in names and not features.check("avif"):
        if text is not None:
            raise BenchError("avif: this Pillow build has no AVIF support")
        names.remove("avif")
        print("aecodec bench: note: no AVIF support in this Pillow build; skipping avif", file=sys.stderr)
    if ANCHOR not in names:  # the BD-rate anchor; cheap
        names.append(ANCHOR)
    return list(dict.fromkeys(names))


def _parse_qualities(text: str) -> tuple[int, ...]:
    try:
        qs = tuple(int(q) for q in text.split(",") if q.strip())
    except ValueError:
        raise BenchError(f"--qualities must be integers from 1 to 100, got {text!r}") from None
    if not qs or any(not 1 <= q <= 100 for q in qs):
        raise BenchError(f"--qualities must be integers from 1 to 100, got {text!r}")
    return tuple(dict.fromkeys(qs))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="folder of images (PNG, JPEG, ...), e.g. the 24 Kodak images")
    p.add_argument("--codecs", metavar="LIST",
                   help=f"comma list from {','.join(ALL_CODECS)} (default: all; {ANCHOR} always runs, "
                   "as the BD-rate anchor)")
    p.add_argument("--qualities", metavar="LIST",
                   help="aecodec qualities, comma list of 1-100 "
                   f"(default: {','.join(map(str, AECODEC_QUALITIES))}; --quick: {','.join(map(str, AECODEC_QUICK))})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where aecodec runs (default: auto)")
    p.add_argument("--weights", metavar="FILE", help="aecodec weights (default: the shipped weights)")
    p.add_argument("--vae-weights", metavar="FILE", help="aecodec-vae weights (default: the shipped weights)")
    p.add_argument("--out", default="bench-out", metavar="DIR", help="output folder (default: bench-out)")
    p.add_argument("--reference", nargs="+", action="extend", default=[], metavar="FILE.json",
                   help="CompressAI-style result JSONs to compare and plot against")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (by name)")
    p.add_argument("--quick", action="store_true",
                   help=f"CI-sized run: first {QUICK_IMAGES} images, centre {QUICK_CROP}x{QUICK_CROP} crops, "
                   "3-4 qualities per codec")


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "bench", help="rate-distortion and speed against JPEG, WebP, AVIF, JPEG 2000",
        description="Benchmark aecodec and Pillow's codecs on a folder of images: per-codec JSON "
        "(CompressAI format), per-image CSV, summary.md with BD-rates, and RD plots.",
    )
    _add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``aecodec bench``; returns the exit status, errors as one line."""
    try:
        return _run(args)
    except BenchError as e:
        print(f"aecodec bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aecodec bench: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    names = _parse_codecs(args.codecs)
    aecodec_qs = _parse_qualities(args.qualities) if args.qualities else None
    if args.limit is not None and args.limit < 1:
        raise BenchError("--limit must be at least 1")
    refs = [load_reference(p) for p in args.reference]
    paths = list_images(Path(args.dir))
    limit = args.limit if args.limit is not None else (QUICK_IMAGES if args.quick else None)
    paths = paths[:limit]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"{out}: cannot create output folder ({e.strerror or e})") from None

    classical = pillow_codecs()
    codecs: list = []
    for n in names:
        if n in AECODEC_MODELS:
            codecs.append(_load_aecodec(args.device, args.vae_weights if n == "aecodec-vae" else args.weights, n))
        else:
            codecs.append(classical[n])
    qualities = {c.key: (c.quick if args.quick else c.qualities) for c in codecs}
    if aecodec_qs is not None:
        qualities["aecodec"] = aecodec_qs

    try:
        rows = sweep(codecs, paths, qualities, QUICK_CROP if args.quick else None)
    except BenchError:
        raise
    except (OSError, ValueError, RuntimeError) as e:  # a codec refusing an image
        raise BenchError(f"coding failed: {e}") from None

    results = {c.key: average(rows, c.key, qualities[c.key]) for c in codecs}
    descriptions = {c.key: c.description() for c in codecs}
    ours = {c.key: curve_from_results(c.label, results[c.key]) for c in codecs}
    for c in codecs:
        write_json(out / f"{c.key}.json", c.key, descriptions[c.key], results[c.key])
    write_csv(out / "per_image.csv", rows)
    plot_rd(out / "rd-psnr.png", list(ours.values()), refs, "psnr")
    plot_rd(out / "rd-ms-ssim.png", list(ours.values()), refs, "ms-ssim")

    device_lines = [
        f"classical codecs: CPU {cpu_name()} ({os.cpu_count()} logical cores), Pillow {Image.__version__}",
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
    ]
    if any(c.key == "aecodec" for c in codecs):
        device_lines.insert(0, f"aecodec: {describe_torch_device(codecs[names.index('aecodec')].device)}")
    command = getattr(args, "command_line", None) or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    write_summary(out / "summary.md", ours, results, descriptions, refs, len(paths), device_lines,
                  command, time.perf_counter() - start)

    anchor = ours[ANCHOR]
    print(f"{len(paths)} images; BD-rate (PSNR) vs {anchor.label}:")
    for c in list(ours.values()) + refs:
        if c is not anchor:
            print(f"  {c.label:40s} {bd_cells(anchor, c)[0]:>8s}")
    print(f"wrote {out}/ (summary.md, per_image.csv, *.json, rd-psnr.png, rd-ms-ssim.png)")
    return 0


def _load_aecodec(device: str, weights: str | None, key: str = "aecodec") -> AeCodec:
    try:
        return AeCodec(device=device, weights=weights, key=key)
    except ImportError as e:
        raise BenchError(f"aecodec: cannot import the codec ({e})") from None
    except Exception as e:  # CodecError, WeightsError, OSError: bad device or weights
        raise BenchError(f"aecodec: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m codec.bench DIR ...``: the same options as ``aecodec bench``."""
    parser = argparse.ArgumentParser(prog="python -m codec")
    subparsers = parser.add_subparsers()
    register(subparsers)
    bench = subparsers.choices["bench"]  # the parser register() made
    bench.prog = "python -m codec.bench"
    argv = sys.argv[1:] if argv is None else list(argv)
    args = bench.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "codec.bench", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
