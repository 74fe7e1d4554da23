"""Benchmark results: per-image rows, averaged curves, BD tables, summary.md, CSV, JSON."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from codec.bench.bdrate import bd_psnr, bd_rate, msssim_db
from codec.bench.codecs import BenchError

ANCHOR = "jpeg420"  # BD numbers in summary.md are against this codec; it is always run


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


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([fl.name for fl in fields(Row)])
        for r in rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in asdict(r).values()])


def write_json(path: Path, name: str, description: str, results: dict) -> None:
    path.write_text(json.dumps({"name": name, "description": description, "results": results}, indent=1) + "\n")


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
    """A --reference JSON; labelled "NAME (published)" for published-*.json, else "STEM (reference)",
    so that an earlier run's aecodec.json never reads as this run's aecodec."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        stem = p.stem
        label = f"{data.get('name', stem)} (published)" if stem.startswith("published") else f"{stem} (reference)"
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

