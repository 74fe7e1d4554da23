"""Validation loss of weights files, as the training script measures it (its first 20 val images
by default, 256^2 centre crops, the lowest, middle and highest anchor, hard rounding), for the
channel-conditional model and the hyperprior inside the same file: how a release is compared
with the weights it replaces.

    python tools/val_loss.py weights/aecodec-cc.safetensors NEW.safetensors --val ../shared/data/val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+", help="weights files of the channel-conditional model")
    p.add_argument("--val", default="../shared/data/val", help="validation folder (default: ../shared/data/val)")
    p.add_argument("--images", type=int, default=20, help="how many of its images (default: 20)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = p.parse_args(argv)

    import torch

    from codec.train.fit import list_images, load_images, validate
    from codec.weights import load_weights

    torch.set_num_threads(args.threads)
    images = load_images(list_images(args.val), 64)[: args.images]
    if not images:
        p.error(f"no images in {args.val}")
    print("| weights | model | val loss | bpp | PSNR |\n|---|---|---:|---:|---:|")
    for path in args.weights:
        for model in ("cc-hyperprior-gain", "hyperprior-gain"):
            loaded, sha = load_weights(path, model)
            v = validate(loaded, images, torch.device("cpu"), argparse.Namespace())
            print(f"| {sha[:16]} | {model} | {v['loss']:.4f} | {v['bpp']:.4f} | {v['psnr']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
