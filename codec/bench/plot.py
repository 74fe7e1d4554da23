"""Benchmark plots: rate-distortion curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codec.bench.bdrate import msssim_db
from codec.bench.report import Curve


MARKERS = "os^Dv<>pP*Xh"


def plot_rd(path: Path, ours: list[Curve], refs: list[Curve], metric: str, title: str = "") -> None:
    """PSNR or MS-SSIM (dB) against bpp; references dashed. x range follows our curves. Every
    curve has its own colour and marker (ten colours, twelve markers), aecodec's drawn thickest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def y_of(c: Curve) -> np.ndarray:
        return c.psnr if metric == "psnr" else msssim_db(c.msssim)

    xmax = 1.05 * max(float(np.nanmax(c.bpp)) for c in ours)
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    visible = []
    colours = plt.get_cmap("tab10").colors
    for i, c in enumerate(ours + refs):
        x, y = c.bpp, y_of(c)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() == 0:
            continue
        o = np.argsort(x[ok])
        x, y = x[ok][o], y[ok][o]
        style = dict(color=colours[i % 10], marker=MARKERS[i % len(MARKERS)], markersize=4)
        if c.reference:
            style.update(linestyle="--", linewidth=1, markerfacecolor="none")
        else:
            style.update(linewidth=2.6 if c.label.startswith("aecodec") else 1.6)
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
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:  # e.g. MS-SSIM when every image is too small for it
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

