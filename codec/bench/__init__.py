"""``aecodec bench DIR``: rate-distortion and speed of aecodec against the codecs Pillow ships.

The benchmark is this package: the codec adapters (``codecs``), the results and reports
(``report``), the plots (``plot``), BD-rate (``bdrate``), with the metrics of ``codec/metrics.py``
(shared with training and the tests); this module measures and runs the command.

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
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from collections.abc import Sequence

import numpy as np
from PIL import Image, features

from codec import helptext
from codec.bench.codecs import (  # noqa: F401 (the adapters, re-exported)
    AECODEC_QUALITIES,
    AECODEC_QUICK,
    AeCodec,
    BenchError,
    BenchUsageError,
    JxlCodec,
    PillowCodec,
    aecodec_models,
    cpu_name,
    describe_torch_device,
    pillow_codecs,
)
from codec.bench.plot import plot_rd  # noqa: F401
from codec.bench.report import (  # noqa: F401
    ANCHOR,
    Curve,
    Row,
    average,
    bd_cells,
    bd_table,
    curve_from_results,
    load_reference,
    write_csv,
    write_json,
    write_summary,
)
from codec.image import IMAGE_SUFFIXES, ImageError, image_files, read_image
from codec.metrics import MSSSIM_MIN_SIDE, PSNR_CAP, ms_ssim_rgb, psnr  # noqa: F401 (re-exported)

CLASSICAL = ("jpeg420", "jpeg444", "webp", "avif", "jpeg2000", "jpegxl")


def all_codecs() -> tuple[str, ...]:
    """Every name --codecs takes: each registered aecodec model, then the classical codecs."""
    return (*aecodec_models(), *CLASSICAL)
QUICK_IMAGES = 3
QUICK_CROP = 256  # centre crop: small enough for CI, big enough for 5-scale MS-SSIM


# --------------------------------------------------------------------------- measuring


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
        raise BenchError(f"{folder}: " + ("not a directory (bench measures a folder of images)" if folder.exists()
                                          else "no such directory"))
    paths = image_files(folder)
    if not paths:
        raise BenchError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def load_rgb(path: Path, crop: int | None = None) -> Image.Image:
    """Decode an image to RGB as the CLI reads it (one 8-bit image, upright; Pillow's errors and
    its decompression-bomb guard one line), optionally centre-cropped to at most crop x crop."""
    try:
        image = read_image(path).convert("RGB")
    except ImageError as e:
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
            if bar.disable:  # no terminal (a log file): a line per image, as compress writes one per file
                print(f"aecodec bench: {i + 1}/{len(paths)} images ({path.name})", file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------- CLI


def _parse_codecs(text: str | None, default: tuple[str, ...]) -> list[str]:
    names = [n.strip().lower() for n in (text or ",".join(default)).split(",") if n.strip()]
    for n in names:
        if n not in all_codecs():
            raise BenchUsageError(f"unknown codec {n!r} (choose from {', '.join(all_codecs())})")
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
        raise BenchUsageError(f"--qualities must be integers from 1 to 100, got {text!r}") from None
    if not qs or any(not 1 <= q <= 100 for q in qs):
        raise BenchUsageError(f"--qualities must be integers from 1 to 100, got {text!r}")
    return tuple(dict.fromkeys(qs))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="folder of images (PNG, JPEG, ...), e.g. the 24 Kodak images")
    p.add_argument("--codecs", metavar="LIST",
                   help=f"comma list from {', '.join(all_codecs())} (default: all, the aecodec models without "
                   f"weights to measure left out; {ANCHOR} always runs, as the BD-rate anchor). aecodec-sc is "
                   "compress's default model, aecodec-cc its --model cc, aecodec the plain hyperprior inside the "
                   "cc file (API only)")
    p.add_argument("--qualities", metavar="LIST",
                   help="aecodec qualities, comma list of 1-100 "
                   f"(default: {','.join(map(str, AECODEC_QUALITIES))}; --quick: {','.join(map(str, AECODEC_QUICK))})")
    p.add_argument("--effort", type=int, default=0, choices=range(5), metavar="0-4",
                   help="the encoder effort of the rate-distortion models (as `aecodec compress --effort`; "
                   "default 0: no search). Levels 1-4 are slow: measure them on a few images (--limit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where aecodec runs (default: auto)")
    p.add_argument("--weights", metavar="FILE", help="aecodec (the hyperprior) weights: a file of that model, or a "
                   "channel-conditional file, whose hyperprior it is (default: --cc-weights, else the shipped file)")
    for key, entry in aecodec_models().items():  # --cc-weights, --vae-weights, ...: one per registered model
        if entry.short != "hp":
            p.add_argument(f"--{entry.short}-weights", metavar="FILE",
                           help=f"{key} weights (default: " + ("the shipped weights)" if entry.weights_file
                                                               else "none ships yet: needed to measure it)"))
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
        "bench", help="rate-distortion and speed against JPEG, WebP, JPEG XL, AVIF, JPEG 2000",
        description="Benchmark aecodec and Pillow's codecs on a folder of images: per-codec JSON "
        "(CompressAI format), per-image CSV, summary.md with BD-rates, and RD plots.",
    )
    _add_arguments(p)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``aecodec bench``; returns the exit status, errors as one line."""
    try:
        return _run(args)
    except BenchError as e:
        print(f"aecodec bench: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, BenchUsageError) else 1  # as the other commands: 2 for usage alone
    except KeyboardInterrupt:
        print("aecodec bench: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    models = aecodec_models()
    given = {key: getattr(args, "weights" if e.short == "hp" else f"{e.short}_weights", None)
             for key, e in models.items()}
    for key, e in models.items():  # a model shipped inside another's file (the hyperprior): that file, if given
        given[key] = given[key] or next((given[k] for k, o in models.items()
                                         if o.weights_file == e.weights_file and e.weights_file and given[k]), None)
    measurable = tuple(k for k, e in models.items() if e.weights_file or given[k])
    names = _parse_codecs(args.codecs, (*measurable, *CLASSICAL))
    aecodec_qs = _parse_qualities(args.qualities) if args.qualities else None
    if args.limit is not None and args.limit < 1:
        raise BenchUsageError("--limit must be at least 1")
    refs = [load_reference(p) for p in args.reference]
    paths = list_images(Path(args.dir))
    limit = args.limit if args.limit is not None else (QUICK_IMAGES if args.quick else None)
    paths = paths[:limit]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"{out}: cannot create output folder ({e.strerror or e})") from None

    classical = {**pillow_codecs(), "jpegxl": JxlCodec()}
    codecs: list = []
    for n in names:
        codecs.append(_load_aecodec(args.device, given[n], n, args.effort) if n in models else classical[n])
    qualities = {c.key: (c.quick if args.quick else c.qualities) for c in codecs}
    if aecodec_qs is not None:  # --qualities: the models on the benchmark's own qualities
        for c in codecs:
            if c.key in models and not models[c.key].qualities:
                qualities[c.key] = aecodec_qs

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
    title = f"{Path(args.dir).resolve().name}: {len(paths)} image{'s' if len(paths) != 1 else ''}" + (
        f", {QUICK_CROP}x{QUICK_CROP} centre crops" if args.quick else "")
    plot_rd(out / "rd-psnr.png", list(ours.values()), refs, "psnr", title)
    plot_rd(out / "rd-ms-ssim.png", list(ours.values()), refs, "ms-ssim", title)

    device_lines = [
        f"classical codecs: CPU {cpu_name()} ({os.cpu_count()} logical cores), Pillow {Image.__version__}",
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
    ]
    ours_loaded = [c for c in codecs if c.key in models]
    if ours_loaded:
        device_lines.insert(0, f"aecodec: {describe_torch_device(ours_loaded[0].device)}")
    command = getattr(args, "command_line", None) or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    write_summary(out / "summary.md", ours, results, descriptions, refs, len(paths), device_lines,
                  command, time.perf_counter() - start)

    anchor = ours[ANCHOR]
    print(f"{len(paths)} images; BD-rate (PSNR) vs {anchor.label}:")
    for c in list(ours.values()) + refs:
        if c is not anchor:
            print(f"  {c.label:40s} {bd_cells(anchor, c)[0]:>8s}")
    print(f"wrote {out}/ (summary.md, per_image.csv, *.json, rd-psnr.png, rd-ms-ssim.png)")
    stale = sorted(p.name for p in out.glob("*.json") if p.stem not in results)  # an earlier run's, left as they were
    if stale:
        print(f"note: {out}/ also holds {', '.join(stale)} from an earlier run, not part of this one's summary",
              file=sys.stderr)
    return 0


def _load_aecodec(device: str, weights: str | None, key: str = "aecodec", effort: int = 0) -> AeCodec:
    try:
        return AeCodec(device=device, weights=weights, key=key, effort=effort)
    except ImportError as e:
        raise BenchError(f"aecodec: cannot import the codec ({e})") from None
    except Exception as e:  # CodecError, WeightsError, OSError: bad device or weights
        raise BenchError(f"aecodec: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m codec.bench DIR ...``: the same options as ``aecodec bench``."""
    parser = helptext.Parser(prog="python -m codec")
    subparsers = parser.add_subparsers()
    register(subparsers)
    bench = subparsers.choices["bench"]  # the parser register() made
    bench.prog = "python -m codec.bench"
    argv = sys.argv[1:] if argv is None else list(argv)
    args = bench.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "codec.bench", *argv])
    return args.func(args)

