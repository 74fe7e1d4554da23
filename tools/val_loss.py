"""Validation loss of weights files, as the training script measures it (its first 20 val images
by default, 256^2 centre crops, the lowest, middle and highest anchor, hard rounding), for the
model and the hyperprior inside a cc file: how a release is compared with the weights it replaces.
Models with other anchors compare at the same lambdas with --lambdas (each model at the position
of its quality axis where it trained for that lambda). Beside the mean, the loss at each lambda
(or anchor): the mean is mostly the highest one's, which is several times the others':

    python tools/val_loss.py weights/aecodec-cc.safetensors NEW.safetensors --val ../shared/data/val
    python tools/val_loss.py weights/aecodec-cc.safetensors SC.safetensors --lambdas 0.00065,0.00806226,0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+",
                   help="weights files of rate-distortion models (a cc file: also the hyperprior inside it)")
    p.add_argument("--val", default="../shared/data/val", help="validation folder (default: ../shared/data/val)")
    p.add_argument("--images", type=int, default=20, help="how many of its images (default: 20)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--lambdas", help="comma list: validate at these lambdas instead of the model's lowest, middle "
                   "and highest anchor")
    args = p.parse_args(argv)

    import torch

    from codec.train.data import list_images, load_images
    from codec.train.fit import validate
    from codec.train.rd import ANCHORS, RateDistortion, mean_and_each, rd_loss
    from codec.weights import load_weights

    torch.set_num_threads(args.threads)
    images = load_images(list_images(args.val), 64)[: args.images]
    if not images:
        p.error(f"no images in {args.val}")

    lambdas = [float(x) for x in args.lambdas.split(",")] if args.lambdas else []
    each = [f"{lmbda:g}" for lmbda in lambdas] or list(ANCHORS)  # the loss at each lambda or anchor
    print("| weights | model | val loss | bpp | PSNR | " + " | ".join(f"loss at {k}" for k in each)
          + " |\n|---|---|---:|---:|---:|" + "---:|" * len(each))
    trainer = RateDistortion(argparse.Namespace())
    if lambdas:

        def at_lambdas(model, x):
            log_l = torch.log(torch.tensor(model.config.lambdas, dtype=torch.float64))
            runs = []
            for lmbda in lambdas:  # the position whose log-linear lambda is this one
                t = torch.tensor(lmbda, dtype=torch.float64).log()
                k = int(torch.searchsorted(log_l, t).clamp(1, len(log_l) - 1)) - 1
                pos = k + float((t - log_l[k]) / (log_l[k + 1] - log_l[k]))
                runs.append(rd_loss(model, x, torch.tensor([pos])))
            return mean_and_each(runs, each)

        trainer.validation = at_lambdas
    for path in args.weights:
        loaded, sha = load_weights(path)
        inner = getattr(loaded, "submodel", lambda name: None)("hyperprior-gain")  # the hyperprior inside a cc file
        for model in [loaded] + ([inner] if inner is not None else []):
            v = validate(model, trainer, images, torch.device("cpu"))
            print(f"| {sha[:16]} | {model.NAME} | {v['loss']:.4f} | {v['bpp']:.4f} | {v['psnr']:.2f} | "
                  + " | ".join(f"{v[k]:.4f}" for k in each) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
