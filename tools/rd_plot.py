"""Redraw an RD plot from benchmark JSONs of separate runs (the README's docs/rd-psnr-kodak.png):
curves measured here solid, references dashed, as ``aecodec bench`` draws its own.

    A=../shared/anchors/kodak
    python tools/rd_plot.py docs/rd-psnr-kodak.png \\
        --ours "aecodec (sc, 0.19.0)=results/kodak-aecodec-sc.json" \\
        "aecodec --model cc (0.15.0)=results/kodak-aecodec-cc.json" \\
        --reference "JPEG 4:2:0=$A/measured-jpeg-420.json" "WebP=$A/measured-webp.json" \\
        "JPEG XL=$A/measured-jxl.json" "AVIF=$A/measured-avif.json" \\
        "mbt2018-mean (published)=$A/published-compressai-mbt2018-mean_mse_cuda.json"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="PNG to write")
    p.add_argument("--ours", nargs="+", required=True, metavar="LABEL=FILE.json", help="solid curves")
    p.add_argument("--reference", nargs="*", default=[], metavar="LABEL=FILE.json", help="dashed curves")
    p.add_argument("--title", default="Kodak (24 images)")
    args = p.parse_args(argv)

    from codec.bench.plot import plot_rd
    from codec.bench.report import curve_from_results

    def curves(items: list[str], reference: bool) -> list:
        out = []
        for item in items:
            label, sep, path = item.rpartition("=")
            if not sep:
                p.error(f"{item!r}: expected LABEL=FILE.json")
            try:
                data = json.loads(Path(path).read_text())
                out.append(curve_from_results(label, data.get("results", data), reference=reference))
            except (OSError, ValueError, KeyError, TypeError) as e:
                p.error(f"{path}: not a readable results JSON ({e})")
        return out

    plot_rd(Path(args.out), curves(args.ours, False), curves(args.reference, True), "psnr", args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
