"""What limits each quality: the entropy model or the transforms? For every anchor of a weights
file, the bpp and PSNR as coded (hard rounding around the predicted means, as a file decodes)
beside the PSNR of the same transforms with the latent left unquantised: the ceiling that no
number of bits reaches. Where the two meet, more bits buy nothing and only training the
transforms raises the curve (docs/training-record.md, phase 10).

    python tools/ceiling.py weights/aecodec-cc.safetensors --val ../shared/data/val --images 8

Whole validation images (cropped to a multiple of 64), never Kodak. Takes about a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="weights file of a rate-distortion model (cc or hp)")
    p.add_argument("--val", default="../shared/data/val", help="validation folder (default: ../shared/data/val)")
    p.add_argument("--images", type=int, default=8, help="how many of its images (default: 8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = p.parse_args(argv)

    import torch

    from codec.metrics import psnr_from_mse
    from codec.models.hyperprior import bpp_of
    from codec.train.data import list_images, load_images
    from codec.weights import load_weights

    torch.set_num_threads(args.threads)
    model, sha = load_weights(args.weights)
    images = load_images(list_images(args.val), 64)[: args.images]
    if not images:
        p.error(f"no images in {args.val}")
    crops = [im[:, : im.shape[1] // 64 * 64, : im.shape[2] // 64 * 64].float()[None] / 255 for im in images]
    print(f"{sha[:16]} ({model.NAME}), {len(crops)} validation images\n")
    print("| anchor | lambda | bpp | PSNR as coded | PSNR unquantised (ceiling) | gap |")
    print("|---:|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for k, lmbda in enumerate(model.config.lambdas):
            pos = torch.tensor([float(k)])
            gain, inv_gain = model.gains(pos)
            bpp = coded = ceiling = 0.0
            for x in crops:  # both clamped to [0, 1], as a decoded file is
                out = model(x, pos)
                bpp += float(bpp_of(out["likelihoods"], x.shape[-2] * x.shape[-1])) / len(crops)
                coded += float(psnr_from_mse(((out["x_hat"].clamp(0, 1) - x) ** 2).mean())) / len(crops)
                x_hat = model.g_s(model.g_a(x) * gain * inv_gain).clamp(0, 1)
                ceiling += float(psnr_from_mse(((x_hat - x) ** 2).mean())) / len(crops)
            cells = (f"{k}", f"{lmbda:.5f}", f"{bpp:.3f}", f"{coded:.2f}", f"{ceiling:.2f}", f"{ceiling - coded:.2f}")
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
