"""Encode and decode time of one image per model (issue 13's target: a Kodak image decodes in at
most 2x 0.74 s on 2 CPU threads, and encodes likewise).

    python tools/speed.py ../shared/data/kodak/kodim01.png            # sc and cc, 2 threads
    python tools/speed.py IMG --models cc --threads 1 --runs 9 -q 40
    python tools/speed.py IMG --models sc --effort 2 --runs 1           # the encoder's search

Times the API's ``compress`` and ``decompress`` calls (the model and the entropy coding: no
process start, model load or file I/O), after one warm-up call each (for ``--effort``, a
compress at effort 0: the search's own first-call costs, small beside its minutes, are timed as
a user waits for them), and prints the median and the range of ``--runs`` calls as a Markdown
table. Nothing else should run on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def timed(fn, runs: int, warm_up: bool = True) -> list[float]:
    if warm_up:
        fn()  # first-call allocations, kernel selection
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image to code, e.g. ../shared/data/kodak/kodim01.png")
    p.add_argument("--models", default="sc,cc", help="comma-separated --model names (default: sc,cc)")
    p.add_argument("--weights", help="weights file (default: the shipped weights of each model)")
    p.add_argument("--threads", type=positive, default=2, help="torch threads (default: 2)")
    p.add_argument("--runs", type=positive, default=5, help="timed calls of each (default: 5)")
    p.add_argument("-q", "--quality", type=int, default=75, help="quality (default: 75)")
    p.add_argument("--effort", type=int, default=0, choices=range(5), metavar="0-4",
                   help="encoder effort, as compress --effort (default: 0)")
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    from codec import registry
    from codec import AecodecError
    from codec.api import Codec

    shorts = args.models.split(",")
    unknown = [s for s in shorts if s not in {e.short for e in registry.MODELS.values()}]
    if unknown:
        p.error(f"unknown model {unknown[0]!r} (choose from {', '.join(e.short for e in registry.MODELS.values())})")
    torch.set_num_threads(args.threads)
    try:
        image = Image.open(args.image)
        image.load()
    except OSError as e:
        p.error(f"{args.image}: cannot read the image ({e})")
    print(f"{Path(args.image).name} {image.size[0]}x{image.size[1]}, q {args.quality}, effort {args.effort}, "
          f"{args.threads} threads, median (min-max) of {args.runs} calls")
    print("| model | weights | bytes | encode s | decode s |\n|---|---|---:|---:|---:|")
    for short in shorts:
        try:
            codec = Codec(args.weights, device="cpu", model=registry.by_short(short).name)
        except AecodecError as e:  # e.g. --weights of a model that is not the one asked for
            print(f"speed.py: error: {e}", file=sys.stderr)
            return 1
        files = []
        encode = lambda: files.append(codec.compress(image, args.quality, effort=args.effort))  # noqa: B023, E731
        codec.compress(image, args.quality)  # the warm-up, at effort 0: a search's minutes need no second run
        encoded = timed(encode, args.runs, warm_up=False)
        data = files[-1]  # the file decoded, and the bytes reported, are the effort's
        cells = [f"{statistics.median(t):.3f} ({min(t):.3f}-{max(t):.3f})"
                 for t in (encoded, timed(lambda: codec.decompress(data), args.runs))]  # noqa: B023
        print(f"| {short} | {codec.weights_sha256[:16]} | {len(data):,} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
