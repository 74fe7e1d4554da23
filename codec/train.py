"""Train the variable-rate model on rate + lambda * distortion, and export shipped weights.

    python -m codec.train fit --data ../shared/data/train --val ../shared/data/val --out runs/hp
    python -m codec.train export runs/hp/best.pt weights/aecodec-hp.safetensors

Each training image gets its own random position on the quality axis, and so its own lambda,
which is how one set of weights learns the whole rate range (gain units interpolate between
the anchor lambdas). Images are decoded once into memory: on a 2-core CPU, JPEG decoding per
step would cost as much as the model.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .model import GainHyperprior, ModelConfig, bpp_of, count_parameters
from .weights import load_weights, save_weights

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def list_images(folder: str | Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise SystemExit(f"error: no images in {folder}")
    return files


def load_images(files: list[Path], min_side: int) -> list[torch.Tensor]:
    """Decode every image once to uint8 CHW tensors (skipping ones smaller than a crop)."""
    images = []
    for f in tqdm(files, desc="loading images", leave=False):
        with Image.open(f) as im:
            a = np.asarray(im.convert("RGB"))
        if min(a.shape[:2]) >= min_side:
            images.append(torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous())
    return images


def random_batch(images: list[torch.Tensor], batch: int, size: int, gen: random.Random) -> torch.Tensor:
    """Random crops with random horizontal flips, as float in [0, 1]."""
    out = torch.empty(batch, 3, size, size)
    for i in range(batch):
        im = images[gen.randrange(len(images))]
        top = gen.randrange(im.shape[1] - size + 1)
        left = gen.randrange(im.shape[2] - size + 1)
        crop = im[:, top : top + size, left : left + size]
        if gen.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop.float() / 255
    return out


def rd_loss(model: GainHyperprior, x: torch.Tensor, pos: torch.Tensor) -> dict:
    """Per-image bpp + lambda * 255^2 * MSE, averaged; also returns bpp and PSNR for logging."""
    out = model(x, pos)
    n_px = x.shape[-2] * x.shape[-1]
    bpp = bpp_of(out["likelihoods"], n_px)
    mse = ((out["x_hat"].float() - x) ** 2).flatten(1).mean(1)
    lmbda = model.lmbda(pos.cpu()).to(x.device, torch.float32)
    loss = (bpp + lmbda * 255**2 * mse).mean()
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()
    return {"loss": loss, "bpp": bpp.mean(), "psnr": psnr}


@torch.no_grad()
def validate(model: GainHyperprior, images: list[torch.Tensor], device: torch.device, size: int = 256) -> dict:
    """Centre crops of held-out images at three qualities, with hard rounding (eval mode)."""
    model.eval()
    K = len(model.config.lambdas)
    totals = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0}
    n = 0
    for pos_value in (0.0, (K - 1) / 2, K - 1.0):
        for im in images:
            s = min(size, im.shape[1] // 64 * 64, im.shape[2] // 64 * 64)  # small images: smaller crops
            t, l = (im.shape[1] - s) // 2, (im.shape[2] - s) // 2
            x = (im[:, t : t + s, l : l + s].float() / 255)[None].to(device)
            r = rd_loss(model, x, torch.tensor([pos_value]))
            for k in totals:
                totals[k] += float(r[k])
            n += 1
    model.train()
    return {k: v / n for k, v in totals.items()}


def fit(args: argparse.Namespace) -> None:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ckpt = None
    if args.resume:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=False)
        config = ModelConfig.from_dict(ckpt["config"])
    elif args.init:  # continue from shipped weights (fresh optimiser state)
        init_model, _ = load_weights(args.init)
        config = init_model.config
    else:
        config = ModelConfig(N=args.N, M=args.M)
    model = GainHyperprior(config)
    if args.init and not ckpt:
        model.load_state_dict(init_model.state_dict())
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3)
    step, best, elapsed = 0, math.inf, 0.0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        if not args.fresh_optimizer:
            opt.load_state_dict(ckpt["opt"])
            aux_opt.load_state_dict(ckpt["aux_opt"])
        step, best, elapsed = ckpt["step"], ckpt["best"], ckpt.get("elapsed", 0.0)
        for g in opt.param_groups:
            g["lr"] = args.lr

    train_images = load_images(list_images(args.data), args.patch_size)
    val_images = load_images(list_images(args.val), 64)[: args.val_images]
    if not train_images or not val_images:
        raise SystemExit(f"error: need images of at least {args.patch_size} px (training) and 64 px (validation)")
    print(f"{count_parameters(model)/1e6:.2f}M parameters, {len(train_images)} training images, "
          f"{len(val_images)} validation images, device {device}, lambdas {config.lambdas}", flush=True)

    K = len(config.lambdas)
    amp = device.type == "cuda" and not args.no_amp
    model.train()
    t0 = time.time() - elapsed
    bar = tqdm(total=args.steps, initial=step, desc="training", dynamic_ncols=True, file=sys.stdout,
               mininterval=args.log_interval)

    def save(name: str) -> None:
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                 "config": config.to_dict(), "step": step, "best": best, "elapsed": time.time() - t0,
                 "args": vars(args)}
        tmp = out / f"{name}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, out / name)

    while step < args.steps:
        if args.lr_drop and step == int(args.steps * args.lr_drop):
            for g in opt.param_groups:
                g["lr"] = args.lr / 10
        x = random_batch(train_images, args.batch_size, args.patch_size, gen).to(device)
        if device.type == "cuda":
            x = x.to(memory_format=torch.channels_last)
        pos = torch.rand(args.batch_size, generator=torch.Generator().manual_seed(gen.getrandbits(32))) * (K - 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            r = rd_loss(model, x, pos)
        opt.zero_grad(set_to_none=True)
        r["loss"].backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        aux_loss = model.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{r['loss'].item():.3f}", bpp=f"{r['bpp'].item():.3f}",
                        psnr=f"{r['psnr'].item():.2f}", aux=f"{aux_loss.item():.0f}", refresh=False)
        if step % args.val_every == 0 or step == args.steps:
            v = validate(model, val_images, device)
            is_best = v["loss"] < best
            best = min(best, v["loss"])
            print(f"\nstep {step} [{(time.time()-t0)/60:.1f} min] val loss {v['loss']:.4f} bpp {v['bpp']:.3f} "
                  f"psnr {v['psnr']:.2f}{' (best)' if is_best else ''}", flush=True)
            save("last.pt")
            if is_best:
                save("best.pt")
    bar.close()


def export(args: argparse.Namespace) -> None:
    """Checkpoint -> shipped safetensors: builds the rANS tables (``update``) and records the run."""
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model = GainHyperprior(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    model.update(force=True)
    a = ckpt.get("args", {})
    info = {"steps": ckpt["step"], "train_minutes": round(ckpt.get("elapsed", 0) / 60, 1),
            "batch_size": a.get("batch_size"), "patch_size": a.get("patch_size"), "lr": a.get("lr"),
            "data": a.get("data"), "best_val_loss": ckpt.get("best")}
    digest = save_weights(model, args.output, info)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size/1e6:.1f} MB, sha256 {digest[:16]})")


def main(argv: list[str] | None = None, prog: str = "python -m codec.train") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="train (or resume) the variable-rate model")
    f.add_argument("--data", required=True, help="folder of training images")
    f.add_argument("--val", required=True, help="folder of held-out validation images")
    f.add_argument("--out", required=True, help="folder for last.pt / best.pt checkpoints")
    f.add_argument("--resume", help="checkpoint to continue from")
    f.add_argument("--init", help="start from a weights file (e.g. weights/aecodec-hp.safetensors)")
    f.add_argument("--fresh-optimizer", action="store_true", help="on resume, reset Adam's state")
    f.add_argument("--steps", type=int, default=100_000, help="total steps (counting resumed ones)")
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--patch-size", type=int, default=256)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--lr-drop", type=float, default=0.0, help="fraction of --steps after which lr /= 10 (0: never)")
    f.add_argument("--N", type=int, default=128, help="transform channels")
    f.add_argument("--M", type=int, default=192, help="latent channels")
    f.add_argument("--val-every", type=int, default=1000)
    f.add_argument("--val-images", type=int, default=60)
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    f.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    f.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--log-interval", type=float, default=10.0, help="seconds between progress updates")
    f.set_defaults(func=fit)
    e = sub.add_parser("export", help="write shipped safetensors weights from a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("output")
    e.set_defaults(func=export)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
