"""Peak memory and time of the command line on large images (issue: bounded memory).

    python tools/memory.py --mp 1 6 24                  # the default model (sc), 2 threads
    python tools/memory.py --mp 24 --model vae          # the f8 VAE
    python tools/memory.py --mp 67.1 --decode-only      # the largest size the format allows

Each size is a photo-like test image (docs/sample.jpg resized to 3:2, with grain, so that it
does not code to nothing), written as PNG; ``aecodec compress`` and ``aecodec decompress`` run
as whole processes under ``/usr/bin/time -v``, which reports the peak resident set size.
Prints a Markdown table. Pause other work on the machine for the timings.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_image(megapixels: float, path: Path, seed: int = 0) -> tuple[int, int]:
    w = int(round(math.sqrt(megapixels * 1e6 * 3 / 2))) // 2 * 2
    h = min(int(megapixels * 1e6 // w), 65535)
    base = Image.open(ROOT / "docs" / "sample.jpg").convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    out = np.empty((h, w, 3), np.uint8)
    for top in range(0, h, 1024):  # add grain in bands, to keep this tool's own memory small
        band = np.asarray(base.crop((0, top, w, min(top + 1024, h))), dtype=np.int16)
        out[top : top + band.shape[0]] = np.clip(band + rng.integers(-6, 7, band.shape), 0, 255)
    Image.fromarray(out, "RGB").save(path, compress_level=1)
    return w, h


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one whole process."""
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts))), rss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mp", type=float, nargs="+", default=[1, 6, 24], help="sizes in megapixels (default: 1 6 24)")
    p.add_argument("--model", choices=["sc", "cc", "vae"], default="sc",
                   help="which model codes (default: sc, the command line's default)")
    p.add_argument("--quality", type=int, default=75, help="quality (default: 75)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--decode-only", action="store_true",
                   help="time only decompress (the file is made with the same command first)")
    args = p.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs /usr/bin/time (GNU time: apt-get install time)")
    aecodec = shutil.which("aecodec") or raise_missing()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("| image | pixels | compress s | compress peak RSS MB | .aec bytes | bpp | decompress s "
          "| decompress peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.mp:
            src = Path(tmp) / f"{mp:g}mp.png"
            w, h = make_image(mp, src)
            aec, png = src.with_suffix(".aec"), Path(tmp) / f"{mp:g}mp-out.png"
            ct, crss = timed([aecodec, "compress", str(src), "-o", str(aec), "-q", str(args.quality), "--device", "cpu",
                              "--model", args.model, "--force"], env)
            dt, drss = timed([aecodec, "decompress", str(aec), "-o", str(png), "--device", "cpu", "--force",
                              "--max-pixels", "0"], env)
            size = aec.stat().st_size
            cpart = "-" if args.decode_only else f"{ct:.1f}"
            crss_part = "-" if args.decode_only else f"{crss:.0f}"
            print(f"| {w}x{h} | {w * h / 1e6:.1f} MP | {cpart} | {crss_part} | {size} | {8 * size / (w * h):.3f} "
                  f"| {dt:.1f} | {drss:.0f} |", flush=True)
            for f in (src, aec, png):
                f.unlink(missing_ok=True)
    return 0


def raise_missing() -> str:
    raise SystemExit("the aecodec command is not installed (pip install -e .)")


if __name__ == "__main__":
    sys.exit(main())
