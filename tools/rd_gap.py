"""Where a curve wins and loses: its PSNR minus each reference's at a few fixed rates, so a
BD-rate (one number over the whole overlap) can be traced to the rates that make it.

    A=../shared/anchors/kodak
    python tools/rd_gap.py results/kodak-aecodec-cc.json --reference "JPEG 4:2:0=$A/measured-jpeg-420.json" \\
        "WebP=$A/measured-webp.json" "mbt2018-mean=$A/published-compressai-mbt2018-mean_mse_cuda.json"

Each curve is interpolated linearly in log-rate between its measured points, never beyond
them: a rate outside a curve's range prints "-" (WebP's measured curve starts at 0.22 bpp).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RATES = (0.15, 0.3, 0.6, 1.0, 1.4)


def psnr_at(bpp: np.ndarray, psnr: np.ndarray, rate: float) -> float | None:
    """The curve's PSNR at ``rate`` bpp (log-rate interpolation), or None outside its points."""
    keep = np.isfinite(bpp) & np.isfinite(psnr) & (bpp > 0)
    bpp, psnr = bpp[keep], psnr[keep]
    if bpp.size < 2 or not bpp.min() <= rate <= bpp.max():
        return None
    order = np.argsort(bpp)
    return float(np.interp(np.log(rate), np.log(bpp[order]), psnr[order]))


def gaps(ours: tuple[np.ndarray, np.ndarray], references: dict[str, tuple[np.ndarray, np.ndarray]],
         rates: tuple[float, ...] = RATES) -> list[tuple[float, float | None, dict[str, float | None]]]:
    """Per rate: our PSNR and, per reference, ours minus its PSNR (None where either lacks the rate)."""
    rows = []
    for rate in rates:
        mine = psnr_at(*ours, rate)
        theirs = {name: psnr_at(*curve, rate) for name, curve in references.items()}
        rows.append((rate, mine, {name: None if mine is None or t is None else mine - t for name, t in theirs.items()}))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("curve", help="results JSON of the curve to explain (aecodec bench writes one per codec)")
    p.add_argument("--reference", nargs="+", required=True, metavar="LABEL=FILE.json", help="curves to compare with")
    p.add_argument("--rates", type=float, nargs="+", default=list(RATES), metavar="BPP",
                   help=f"rates to compare at (default: {' '.join(map(str, RATES))})")
    args = p.parse_args(argv)

    from codec.bench.bdrate import load_curve

    def curve(path: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return load_curve(path)[1:]
        except (OSError, ValueError, KeyError) as e:
            p.error(f"{path}: not a results JSON with bpp and PSNR ({e})")

    references = {}
    for item in args.reference:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            p.error(f"--reference takes LABEL=FILE.json, got {item!r}")
        references[label] = curve(path)
    width = max(len(label) for label in references) + 1
    print(f"{'bpp':>5} {'PSNR':>6} " + " ".join(f"{label:>{width}}" for label in references))
    for rate, mine, diff in gaps(curve(args.curve), references, tuple(args.rates)):
        cells = [f"{'-' if d is None else f'{d:+.2f}':>{width}}" for d in diff.values()]
        print(f"{rate:5.2f} {'-' if mine is None else f'{mine:.2f}':>6} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
