"""How much lower a search schedule brings the rate-distortion cost than effort 0, on validation crops.

    python tools/effort_tune.py --steps 50 --qualities 20,60,100
    python tools/effort_tune.py --steps 50 --qualities 100 --lr 0.02 --boost 1

For each quality, the mean over the crops of 1 - cost(searched) / cost(g_a's latent), the cost
being what ``codec/models/refine.py`` lowers (bpp + lambda * 255^2 * MSE, hard rounding), for
the default model's weights (``--weights``: another file). The schedule's knobs are the
module's constants, set from the options, so a schedule measured here is the one ``--effort``
runs once they are written there.
Tune on validation images, never on Kodak.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from codec.bench import load_rgb
from codec.models import refine
from codec.train.data import list_images
from codec.weights import load_weights
from speed import positive  # tools/speed.py, beside this file


def centre_crops(folder: str, first: int, count: int, side: int) -> list[torch.Tensor]:
    """The images' centre crops, read as the benchmark reads them, as (1, 3, side, side) in [0, 1]."""
    paths = [Path(p) for p in list_images(folder)[first : first + count]]
    return [torch.from_numpy(np.array(load_rgb(p, side))).permute(2, 0, 1)[None].float() / 255 for p in paths]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights/aecodec-sc.safetensors",
                   help="a rate-distortion weights file (default: the default model's)")
    p.add_argument("--val", default="../shared/data/val", help="validation folder")
    p.add_argument("--first", type=int, default=20, help="index of the first image used (default 20)")
    p.add_argument("--images", type=int, default=3, help="how many images (default 3)")
    p.add_argument("--crop", type=int, default=256, help="centre crop side (default 256)")
    p.add_argument("--qualities", default="20,60,100", help="comma-separated qualities")
    p.add_argument("--steps", type=int, default=50, help="search steps")
    p.add_argument("--lr", type=float, default=refine.LEARNING_RATE, help="Adam's step up to the boost's start")
    p.add_argument("--boost", type=float, default=refine.TOP_BOOST[1], help="the step's factor at q 100 (1: none)")
    p.add_argument("--start-temperature", type=float,
                   help="the first temperature (default: the module's for this many steps)")
    p.add_argument("--odds", type=float,
                   help="the odds' slope: 0 atanh, a > 0 SGA+'s sigmoid-scaled logit (default: the module's)")
    p.add_argument("--refresh", type=positive, default=refine.REFRESH,
                   help="steps between runs of the context networks (default: the module's)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    defaults = refine.LEARNING_RATE, refine.TOP_BOOST, refine.SCHEDULES, refine.REFRESH
    start, odds = refine.schedule(args.steps)
    refine.LEARNING_RATE, refine.TOP_BOOST = args.lr, (refine.TOP_BOOST[0], args.boost)
    refine.SCHEDULES = {0: (start if args.start_temperature is None else args.start_temperature,
                            odds if args.odds is None else args.odds)}
    refine.REFRESH = args.refresh
    try:
        return measure(args)
    finally:  # the module's schedule as it was (the tool may run inside another program)
        refine.LEARNING_RATE, refine.TOP_BOOST, refine.SCHEDULES, refine.REFRESH = defaults


def measure(args: argparse.Namespace) -> int:
    model, _ = load_weights(args.weights)
    model.eval()
    crops = centre_crops(args.val, args.first, args.images, args.crop)
    if not crops:
        raise SystemExit(f"error: no images in {args.val}")
    drops = {}
    for q in (float(v) for v in args.qualities.split(",")):
        each, seconds = [], 0.0
        for i, x in enumerate(crops):
            with torch.no_grad():
                y = model.analyse(x, q)
                z = model.side_information(y)
            before = refine._hard_cost(model, x, y, z, q)
            start = time.perf_counter()
            found_y, found_z = refine.search(model, x, y, q, args.steps, seed=i)
            seconds += time.perf_counter() - start
            each.append(1 - refine._hard_cost(model, x, found_y, found_z, q) / before)
        drops[q] = float(np.mean(each))
        print(f"q {q:g}: cost {100 * drops[q]:.2f}% lower ({args.steps} steps, {len(crops)} crops, "
              f"{seconds / len(crops):.1f} s a search)", flush=True)
    print(f"mean {100 * np.mean(list(drops.values())):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
