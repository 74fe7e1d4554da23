"""Train the variable-rate model on rate + lambda * distortion, or the f8 VAE, and export weights.

    python -m codec.train fit --model cc --data ../shared/data/train --val ../shared/data/val --out runs/cc --ema 0.995
    python -m codec.train export runs/cc/last.pt weights/aecodec-cc.safetensors --ema

    python -m codec.train fit --model vae --data ../shared/data/train --val ../shared/data/val --out runs/vae
    python -m codec.train export runs/vae/best.pt weights/aecodec-vae-f8.safetensors --data ../shared/data/train

Each training image gets its own random position on the quality axis, and so its own lambda,
which is how one set of weights learns the whole rate range (gain units interpolate between
the anchor lambdas). With ``--ema`` a running average of the weights trains beside them: at a
constant learning rate it validated as well as a copy annealed at a tenth of it (weights/README.md,
phase 9), so a release is exported from the average. Images are decoded once into memory: on
a 2-core CPU, JPEG decoding per step would cost as much as the model.

The VAE (``--model vae``) minimises reconstruction error + kl_weight * KL, normalised as latent
diffusion does (both summed per image). Its export measures each latent channel's mean and
standard deviation on training crops and fits the codec's priors to those latents (the
autoencoder is frozen by then).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from codec import registry
from codec.files import write_atomic
from codec.models.cc import CCConfig, ChannelConditional
from codec.models.sc import SCConfig, SpaceChannel
from codec.metrics import psnr_from_mse
from codec.models.hyperprior import GainHyperprior, ModelConfig, bpp_of, count_parameters, default_lambdas
from codec.models.vae import KLAutoencoder, VAEConfig, kl_divergence
from codec.weights import WeightsError, load_weights, save_weights

# the entropy models' context networks: trained at --slice-lr (they start from zero on trained transforms)
CONTEXT_PREFIXES = ("slice_nets.", "lrp.", "latent_codec.slice_nets.")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def list_images(folder: str | Path) -> list[Path]:
    if not Path(folder).is_dir():
        raise SystemExit(f"error: {folder}: no such folder")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise SystemExit(f"error: {folder}: no images (PNG, JPEG, WebP, BMP, TIFF) in it")
    return files


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint of ``fit``, or a one-line refusal: a missing file, a file that is not a
    torch checkpoint, or one that is not ours are all a user's mistake, not a bug."""
    if not Path(path).is_file():
        raise SystemExit(f"error: {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # ours: it holds the run's args
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip), EOFError...
        raise SystemExit(f"error: {path}: not a training checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"step", "model", "config"} <= ckpt.keys():
        raise SystemExit(f"error: {path}: not a checkpoint of codec.train fit (no step, model or config)")
    return ckpt


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


def rd_loss(model: GainHyperprior, x: torch.Tensor, pos: torch.Tensor, net=None) -> dict:
    """Per-image bpp + lambda * 255^2 * MSE, averaged; also returns bpp and PSNR for logging.
    ``net``: what runs the forward pass (the DistributedDataParallel wrapper), default ``model``."""
    out = (model if net is None else net)(x, pos)
    n_px = x.shape[-2] * x.shape[-1]
    bpp = bpp_of(out["likelihoods"], n_px)
    mse = ((out["x_hat"].float() - x) ** 2).flatten(1).mean(1)
    lmbda = model.lmbda(pos.cpu()).to(x.device, torch.float32)
    loss = (bpp + lmbda * 255**2 * mse).mean()
    return {"loss": loss, "bpp": bpp.mean(), "psnr": psnr_from_mse(mse).mean()}


def vae_loss(model: KLAutoencoder, x: torch.Tensor, kl_weight: float, rec: str = "mse", sample: bool = True,
             net=None) -> dict:
    """Reconstruction + kl_weight * KL. Latent diffusion sums both per image; dividing both by
    the number of pixel values gives the same optimum with losses of a readable size."""
    out = (model if net is None else net)(x, sample=sample)
    err = out["x_hat"].float() - x
    per_px = err.abs() if rec == "l1" else err.pow(2)
    kl = kl_divergence(out["mean"].float(), out["logvar"].float()) / x[0].numel()
    mse = err.pow(2).flatten(1).mean(1)
    loss = (per_px.flatten(1).mean(1) + kl_weight * kl).mean()
    return {"loss": loss, "kl": kl.mean() * x[0].numel(), "psnr": psnr_from_mse(mse).mean()}


def _centre_crop(im: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    s = min(size, im.shape[1] // 64 * 64, im.shape[2] // 64 * 64)  # small images: smaller crops
    t, l = (im.shape[1] - s) // 2, (im.shape[2] - s) // 2
    return (im[:, t : t + s, l : l + s].float() / 255)[None].to(device)


@torch.no_grad()
def validate(model: GainHyperprior | KLAutoencoder, images: list[torch.Tensor], device: torch.device,
             args: argparse.Namespace, size: int = 256) -> dict:
    """Centre crops of held-out images: the RD model at three qualities with hard rounding, the
    VAE through its posterior mean (what inference uses)."""
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    if isinstance(model, KLAutoencoder):
        runs = [lambda x: vae_loss(model, x, args.kl_weight, args.rec_loss, sample=False)]
    else:
        K = len(model.config.lambdas)
        runs = [lambda x, p=p: rd_loss(model, x, torch.tensor([p])) for p in (0.0, (K - 1) / 2, K - 1.0)]
    for run in runs:
        for im in images:
            for k, v in run(_centre_crop(im, size, device)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
            n += 1
    model.train()
    return {k: v / n for k, v in totals.items()}


def build_model(args: argparse.Namespace, ckpt: dict | None) -> tuple[GainHyperprior | KLAutoencoder, bool, bool]:
    """The model to train: from a checkpoint, from shipped weights (--init), or new; whether
    its anchors were retargeted (--lambdas), after which the optimiser state and the best
    validation loss of the checkpoint no longer apply; and whether it grew a residual
    prediction (--lrp), whose new parameters start with no optimiser state of their own."""
    if ckpt:
        cls = registry.by_short(ckpt.get("kind", "hp")).cls
        model = cls(cls.CONFIG.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    elif args.init:  # continue from shipped weights (fresh optimiser state)
        # --model hp from a cc file: the hyperprior inside it (load_weights' submodel)
        try:
            init_model, _ = load_weights(args.init, GainHyperprior.NAME if args.model == "hp" else None)
        except WeightsError as e:
            raise SystemExit(f"error: {e}") from None
        model = type(init_model)(init_model.config)
        model.load_state_dict(init_model.state_dict())
    elif args.model == "vae":
        channels = tuple(int(c) for c in args.channels.split(","))
        config = VAEConfig(block_out_channels=channels, layers_per_block=args.layers_per_block)
        return KLAutoencoder(config), False, False
    elif args.model == "sc":
        return SpaceChannel(SCConfig(**({"lambdas": args.lambdas} if args.lambdas else {}))), False, False
    elif args.model == "cc":
        lambdas = args.lambdas or default_lambdas()
        return ChannelConditional(CCConfig(args.N, args.M, lambdas, args.slices, args.cc_width, args.lrp)), False, False
    else:
        return GainHyperprior(ModelConfig(N=args.N, M=args.M, lambdas=args.lambdas or default_lambdas())), False, False
    kind = registry.MODELS[model.NAME].short
    grows = (args.model, kind) in (("cc", "hp"), ("sc", "cc"))
    if args.model is not None and args.model != kind and not grows:
        raise SystemExit(f"error: --model {args.model}, but the checkpoint or weights hold a {kind} model")
    if (args.lambdas and type(model) is not GainHyperprior and not grows
            and args.lambdas != getattr(model.config, "lambdas", None)):
        raise SystemExit("error: --lambdas retargets hp models only (retarget first, then convert with --model cc)")
    retargeted = False
    if args.lambdas and type(model) is GainHyperprior and args.lambdas != model.config.lambdas:
        model, retargeted = model.with_lambdas(args.lambdas), True
    if args.model == "sc" and isinstance(model, ChannelConditional):
        # model 3 grows into model 4: its latents, slices and pixels carry over (SpaceChannel.grown_from)
        if model.lrp is not None:
            raise SystemExit("error: --model sc grows a cc model without residual prediction")
        return SpaceChannel.grown_from(model, lambdas=args.lambdas), True, False
    if args.model == "cc" and type(model) is GainHyperprior:
        # the transforms and hyperprior carry over; the slice networks start as "no correction",
        # so the new model codes exactly as the old one did. New parameters: fresh Adam state.
        model, retargeted = ChannelConditional.from_hyperprior(model, args.slices, args.cc_width, args.lrp), True
    grown = False
    if args.lrp and isinstance(model, ChannelConditional) and model.config.lrp != args.lrp:
        if model.config.lrp:
            raise SystemExit(f"error: --lrp {args.lrp}, but the model's residual prediction has "
                             f"{model.config.lrp} channels")
        model, grown = model.with_lrp(args.lrp), True  # starts at zero: decodes as before
    elif args.lrp and not isinstance(model, ChannelConditional):
        raise SystemExit("error: --lrp is for the channel-conditional model (--model cc)")
    return model, retargeted, grown


def fit(args: argparse.Namespace) -> None:
    """Train. Under ``torchrun --nproc_per_node=N`` this is data-parallel (PyTorch's
    DistributedDataParallel: gloo on CPU, NCCL on CUDA): every rank draws its own crops, gradients
    are averaged, rank 0 alone validates, logs and writes checkpoints; resume with any N."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda" if cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP checks them too)
    out = Path(args.out)
    for path in (args.resume, args.init):
        if path and not Path(path).is_file():
            raise SystemExit(f"error: {path}: no such file")
    train_files, val_files = list_images(args.data), list_images(args.val)  # before --out is made
    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt and ckpt["step"] >= args.steps:
        raise SystemExit(f"error: the checkpoint is at step {ckpt['step']}: --steps counts the resumed "
                         f"steps too, so it must be more")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    model, retargeted, grown = build_model(args, ckpt)
    # Each rank draws its own crops, noise and quality positions (DDP syncs the weights), and a
    # resumed run draws new ones rather than repeating those its first steps saw.
    seed = args.seed + 1000 * rank + 1_000_003 * (ckpt["step"] if ckpt else 0)
    gen = random.Random(seed)
    torch.manual_seed(seed)
    vae = isinstance(model, KLAutoencoder)
    kind = registry.MODELS[model.NAME].short
    config = model.config
    model = model.to(device)
    # The VAE's priors are fitted at export, on the finished latents; the RD model's quantiles
    # follow CompressAI's auxiliary loss as it trains.
    frozen = "priors." if vae else None
    main_params = [p for n, p in model.named_parameters()
                   if not n.endswith(".quantiles") and not (frozen and n.startswith(frozen))]
    main_params_set = set(main_params)
    aux_params = [] if vae else [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    # The channel-conditional model's slice networks (and residual prediction) start from zero on
    # trained transforms: they may learn at their own rate (--slice-lr) while the transforms keep theirs.
    groups = [{"params": [p for n, p in model.named_parameters() if p in main_params_set and
                          n.startswith(CONTEXT_PREFIXES) == new], "lr": lr}
              for new, lr in ((False, args.lr), (True, args.slice_lr or args.lr))]
    if args.slice_lr and not groups[1]["params"]:
        raise SystemExit("error: --slice-lr is for the channel-conditional model (--model cc)")
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    base_lrs = [g["lr"] for g in opt.param_groups]
    if len(base_lrs) > 1 and rank == 0:
        print(f"learning rates: transforms {base_lrs[0]:g}, slice networks {base_lrs[1]:g}", flush=True)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-3) if aux_params else None
    step, best, elapsed = 0, math.inf, 0.0
    if ckpt:
        if not (args.fresh_optimizer or retargeted):
            saved = _regroup(ckpt["opt"], opt)
            opt.load_state_dict(_grow(saved, opt) if grown else saved)
            if aux_opt:
                aux_opt.load_state_dict(ckpt["aux_opt"])
        step, best, elapsed = ckpt["step"], ckpt["best"], ckpt.get("elapsed", 0.0)
        if retargeted:  # validation now runs at other anchors: the old best is not comparable
            best = math.inf

    train_images = load_images(train_files, args.patch_size)
    val_images = load_images(val_files, 64)[: args.val_images]
    if not train_images or not val_images:
        raise SystemExit(f"error: need images of at least {args.patch_size} px (training) and 64 px (validation)")
    log = print if rank == 0 else (lambda *a, **k: None)
    log(f"{count_parameters(model)/1e6:.2f}M parameters, {len(train_images)} training images, "
        f"{len(val_images)} validation images, device {device}"
        + (f", {world} ranks" if world > 1 else "") + ", "
        + (f"kl weight {args.kl_weight}" if vae else f"lambdas {config.lambdas}"), flush=True)
    net = None  # the DDP wrapper when distributed; losses call it for the forward pass

    K = None if vae else len(config.lambdas)

    def train_step(x: torch.Tensor, bf16: bool) -> dict:
        """Forward and backward of one batch (the optimiser steps are the caller's)."""
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if vae:
                r = vae_loss(model, x, args.kl_weight, args.rec_loss, net=net)
            else:  # each image its own position on the quality axis
                g = torch.Generator().manual_seed(gen.getrandbits(32))
                pos = torch.rand(x.shape[0], generator=g) * (K - 1)
                top = torch.rand(x.shape[0], generator=g) < args.top_share  # --top-share: the top interval more often
                pos = torch.where(top, K - 2 + pos / (K - 1), pos)
                r = rd_loss(model, x, pos, net=net)
        opt.zero_grad(set_to_none=True)
        r["loss"].backward()
        return r

    model.train()
    precision = args.precision
    if precision == "auto":  # timed before DDP wraps the model; rank 0's choice holds for all
        precision = pick_precision(model, device, train_step,
                                   random_batch(train_images, args.batch_size, args.patch_size, gen), log=log)
        if world > 1:
            choice = [precision]
            dist.broadcast_object_list(choice, src=0)
            precision = choice[0]
    bf16 = precision == "bf16"
    ema = None
    if args.ema:  # a running average of the weights, beside them: what the noisy steps agree on
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema))
        if ckpt and "ema" in ckpt and not retargeted:
            missing, unexpected = ema.module.load_state_dict(ckpt["ema"], strict=not grown)
            if unexpected or any(not k.startswith("lrp.") for k in missing):  # grown: only the new part
                raise SystemExit(f"error: the checkpoint's average does not fit the model ({unexpected or missing})")
            ema.n_averaged.fill_(ckpt["ema_n"])
    if bf16:  # channels_last is what makes bf16 convolutions fast (oneDNN / cuDNN)
        model = model.to(memory_format=torch.channels_last)
    log(f"precision {precision}" + (" (bf16 autocast, channels_last)" if bf16 else " (float32)"), flush=True)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # The quantiles follow their own aux loss, which depends on the (synchronised) weights
        # alone, so every rank computes the same update: DDP leaves them out. So it does every
        # buffer (CDF tables, fixed-point copies): each rank rebuilds them from the same weights,
        # and with none left to sync, broadcast_buffers (deprecated in torch 2.14) is not passed.
        skip = [n for n, _ in model.named_parameters() if n.endswith(".quantiles")]
        skip += [n for n, _ in model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, skip)
        net = DistributedDataParallel(model, find_unused_parameters=vae)  # the VAE's priors train at export
    if args.compile:  # TorchInductor: 1.48x the steps per second on a 2-core Xeon (bf16), after ~2 min of compiling
        net = torch.compile(model if net is None else net)
    t0 = time.time() - elapsed
    bar = tqdm(total=args.steps, initial=step, desc="training", dynamic_ncols=True, file=sys.stdout,
               mininterval=args.log_interval, disable=rank != 0)

    def save(name: str) -> None:
        if rank != 0:
            return
        state = {"model": model.state_dict(), "opt": opt.state_dict(),
                 "aux_opt": aux_opt.state_dict() if aux_opt else None, "kind": kind,
                 "config": config.to_dict(), "step": step, "best": best, "elapsed": time.time() - t0,
                 "args": {k: v for k, v in vars(args).items() if k != "func"}}
        if ema is not None:
            state.update(ema=ema.module.state_dict(), ema_n=int(ema.n_averaged))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomic(out / name, buffer.getbuffer(), force=True)

    def stop(signum, frame):  # `kill PID` saves as Ctrl-C does (a nohup'ed background run ignores SIGINT)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: see below
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while step < args.steps:
            dropped = args.lr_drop and step >= int(args.steps * args.lr_drop)  # also right after a resume
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr / 10 if dropped else lr
            x = random_batch(train_images, args.batch_size, args.patch_size, gen).to(device)
            if bf16:
                x = x.to(memory_format=torch.channels_last)
            r = train_step(x, bf16)
            torch.nn.utils.clip_grad_norm_(main_params, 1.0)
            opt.step()
            if aux_opt:
                aux_loss = model.aux_loss()
                aux_opt.zero_grad(set_to_none=True)
                aux_loss.backward()
                aux_opt.step()
                r["aux"] = aux_loss
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in r.items()}, refresh=False)
            if rank == 0 and (step % args.val_every == 0 or step == args.steps):
                v = validate(model, val_images, device, args)
                is_best = v["loss"] < best
                best = min(best, v["loss"])
                log(f"\nstep {step} [{(time.time()-t0)/60:.1f} min] val "
                    + " ".join(f"{k} {x:.4f}" for k, x in v.items()) + (" (best)" if is_best else ""), flush=True)
                if ema is not None:
                    log(f"step {step} ema {args.ema:g} val "
                        + " ".join(f"{k} {x:.4f}" for k, x in validate(ema.module, val_images, device, args).items()),
                        flush=True)
                save("last.pt")
                if is_best:
                    save("best.pt")
                if args.keep:  # for export --average: the last few validations' checkpoints
                    save(f"step-{step}.pt")
                    kept = [f for f in out.glob("step-*.pt") if f.stem[5:].isdigit()]
                    for old in sorted(kept, key=lambda f: int(f.stem[5:]))[: -args.keep]:
                        old.unlink()
    except KeyboardInterrupt:
        # `pkill -f` reaches a rank twice (itself, and torchrun forwarding it): a second SIGTERM
        # must not cut the save short (it did once, leaving last.pt one validation old)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        save("last.pt")
        bar.close()
        raise SystemExit(f"interrupted at step {step}" + (f": saved {out / 'last.pt'} (continue with "
                         f"--resume {out / 'last.pt'})" if rank == 0 else "")) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    bar.close()
    if world > 1:
        try:
            _check_ranks_agree(model, log)
        finally:
            dist.destroy_process_group()


def _regroup(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """A saved optimiser state laid out in ``opt``'s parameter groups: checkpoints written before
    the slice networks had a group of their own hold one group of the same parameters in the same
    order (the slice networks are the model's last parameters)."""
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    sizes = [len(g["params"]) for g in opt.param_groups]
    if len(saved["param_groups"]) == len(sizes) or len(ids) != sum(sizes):
        return saved  # as saved (a real mismatch is reported by load_state_dict)
    params = [p for g in opt.param_groups for p in g["params"]]
    if any(saved["state"].get(i, {}).get("exp_avg", p).shape != p.shape for i, p in zip(ids, params)):
        raise ValueError("the checkpoint's optimiser state does not match the model's parameters")
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    groups = [{**saved["param_groups"][0], "lr": g["lr"], "params": ids[a : a + n]}
              for g, a, n in zip(opt.param_groups, starts, sizes)]
    return {"state": saved["state"], "param_groups": groups}


def _average(ckpts: list[dict], key: str) -> dict:
    """The uniform average of the checkpoints' ``key`` ("model" or "ema") weights: averaging the
    running average over several validations' checkpoints evens out more of the steps' noise."""
    first = ckpts[0]
    for c in ckpts[1:]:
        if (c.get("kind"), c.get("config")) != (first.get("kind"), first.get("config")) or key not in c:
            raise SystemExit(f"error: --average: the checkpoints differ in model or config, or lack {key!r}")
    return {k: (sum(c[key][k].double() for c in ckpts) / len(ckpts)).to(v.dtype) if v.is_floating_point() else v
            for k, v in first[key].items()}


def _grow(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """A saved optimiser state for a model that has since grown parameters at the end of its
    last group (--lrp): the new ones join that group with no state (Adam starts theirs)."""
    sizes = [len(g["params"]) for g in opt.param_groups]
    had = [len(g["params"]) for g in saved["param_groups"]]
    if len(had) != len(sizes) or had[:-1] != sizes[:-1] or had[-1] > sizes[-1]:
        return saved  # not a growth (load_state_dict reports the mismatch)
    n = sum(had)
    groups = [dict(g) for g in saved["param_groups"]]
    groups[-1]["params"] = list(groups[-1]["params"]) + list(range(n, n + sizes[-1] - had[-1]))
    return {"state": saved["state"], "param_groups": groups}


def _check_ranks_agree(model: torch.nn.Module, log) -> None:
    """Every rank must hold the same weights after training (what DDP promises; tested)."""
    import torch.distributed as dist

    device = next(model.parameters()).device  # NCCL gathers CUDA tensors, gloo CPU ones
    total = torch.tensor([sum(float(p.detach().double().sum()) for p in model.parameters())],
                         dtype=torch.float64, device=device)
    sums = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, total)
    if any(not torch.equal(s, sums[0]) for s in sums):
        raise RuntimeError(f"ranks disagree on the weights: {[float(s) for s in sums]}")
    log(f"{len(sums)} ranks hold identical weights (checksum {float(sums[0]):.10g})", flush=True)


def pick_precision(model: torch.nn.Module, device: torch.device, train_step, x: torch.Tensor,
                   repeats: int = 2, log=print) -> str:
    """--precision auto: bf16 on CUDA; on CPU, time a training step both ways and keep the
    faster. CPUs differ: bf16 + channels_last ran 3.7x faster than float32 on a Xeon with AMX,
    while an AMD EPYC without bf16 units emulates it, 6.7x slower (14.5 s vs 2.17 s a step)."""
    if device.type == "cuda":
        return "bf16"
    times = {}
    for precision in ("fp32", "bf16"):
        fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
        model.to(memory_format=fmt)
        xs = x.to(device, memory_format=fmt)
        best = math.inf
        for _ in range(repeats + 1):  # the first run warms up oneDNN's kernel choice
            t = time.perf_counter()
            train_step(xs, precision == "bf16")
            best = min(best, time.perf_counter() - t)
        times[precision] = best
    model.to(memory_format=torch.contiguous_format)
    model.zero_grad(set_to_none=True)
    choice = min(times, key=times.get)
    log("precision auto: " + ", ".join(f"{k} {v:.2f} s/step" for k, v in times.items()) + f" -> {choice}", flush=True)
    return choice


@torch.no_grad()
def latent_statistics(model: KLAutoencoder, images: list[torch.Tensor], crops: int, size: int,
                      gen: random.Random) -> torch.Tensor:
    """Posterior means of random training crops (unscaled), as (crops, C, size/8, size/8)."""
    model.eval()
    means = [model.encode(random_batch(images, 1, size, gen))[0]
             for _ in tqdm(range(crops), desc="latents", leave=False)]
    return torch.cat(means)


def fit_priors(model: KLAutoencoder, latents: torch.Tensor, iters: int, gen: random.Random) -> list[float]:
    """Fit each anchor step's EntropyBottleneck to the scaled latents divided by that step
    (noise-relaxed likelihood + CompressAI's aux loss for the quantiles); returns bits/element."""
    bits = []
    for step, prior in zip(model.config.codec_steps, model.priors):
        prior.train()
        y_all = model.scale(latents) / step
        opt = torch.optim.Adam([p for n, p in prior.named_parameters() if not n.endswith("quantiles")], lr=1e-2)
        aux_opt = torch.optim.Adam([prior.quantiles], lr=1e-2)
        for i in tqdm(range(iters), desc=f"prior step {step:g}", leave=False):
            if i == iters * 3 // 4:
                for g in opt.param_groups:
                    g["lr"] = 1e-3
            idx = torch.tensor([gen.randrange(len(y_all)) for _ in range(16)])
            _, lik = prior(y_all[idx])
            loss = -torch.log2(lik).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            aux = prior.loss()
            aux_opt.zero_grad(set_to_none=True)
            aux.backward()
            aux_opt.step()
        prior.eval()
        with torch.no_grad():
            _, lik = prior(y_all)
        bits.append(round(float(-torch.log2(lik).mean()), 4))
    return bits


def export(args: argparse.Namespace) -> None:
    """Checkpoint -> shipped safetensors: builds the rANS tables (``update``) and records the run.
    For the VAE, first measures the latent mean/std per channel and fits the priors on ``--data``."""
    ckpt = load_checkpoint(args.checkpoint)
    a = ckpt.get("args", {})
    if args.ema:
        if "ema" not in ckpt:
            raise SystemExit(f"error: {args.checkpoint} holds no weight average (train with --ema)")
        ckpt["model"] = ckpt["ema"]
    if args.average:
        ckpt["model"] = _average([ckpt] + [load_checkpoint(p) for p in args.average], "ema" if args.ema else "model")
    info = {"steps": ckpt["step"], "train_minutes": round(ckpt.get("elapsed", 0) / 60, 1),
            "batch_size": a.get("batch_size"), "patch_size": a.get("patch_size"), "lr": a.get("lr"),
            "data": a.get("data"), "best_val_loss": ckpt.get("best")}
    if a.get("slice_lr"):
        info["slice_lr"] = a["slice_lr"]
    if args.ema:  # the checkpoint's best validation loss was the weights', not the average's
        info["weights"] = f"exponential moving average (decay {a.get('ema')}) over {ckpt['ema_n']} steps"
        del info["best_val_loss"]
    if args.average:
        info["averaged_with"] = [Path(p).name for p in args.average]
        info.pop("best_val_loss", None)
    if ckpt.get("kind") == "vae":
        if not args.data:
            raise SystemExit("error: exporting a VAE needs --data (training images to calibrate on)")
        config = VAEConfig.from_dict(ckpt["config"])
        if args.codec_steps:
            config.codec_steps = tuple(float(v) for v in args.codec_steps.split(","))
        model = KLAutoencoder(config)
        # the priors are refitted below (their number may have changed with --codec-steps)
        missing, unexpected = model.load_state_dict(
            {k: v for k, v in ckpt["model"].items() if not k.startswith("priors.")}, strict=False)
        if unexpected or any(not k.startswith("priors.") for k in missing):
            raise SystemExit(f"error: checkpoint does not fit the VAE ({unexpected or missing})")
        gen = random.Random(args.seed)
        torch.manual_seed(args.seed)
        images = load_images(list_images(args.data), args.calib_size)
        latents = latent_statistics(model, images, args.calib_crops, args.calib_size, gen)
        by_channel = latents.transpose(0, 1).flatten(1)
        model.config.shift_factor, model.config.scaling_factor = 0.0, 1.0
        model.config.latents_mean = tuple(float(v) for v in by_channel.mean(1))
        model.config.latents_std = tuple(float(v) for v in by_channel.std(1))
        per_channel = model.scale(latents).transpose(0, 1).flatten(1)
        info.update(kl_weight=a.get("kl_weight"), rec_loss=a.get("rec_loss"),
                    calibration=f"{args.calib_crops} random {args.calib_size}px crops of {args.data}",
                    scaled_channel_mean=[round(float(m), 4) for m in per_channel.mean(1)],
                    scaled_channel_std=[round(float(m), 4) for m in per_channel.std(1)])
        info["prior_bits_per_element"] = fit_priors(model, latents, args.prior_iters, gen)
        print(f"latent mean {[round(v, 4) for v in model.config.latents_mean]} "
              f"std {[round(v, 4) for v in model.config.latents_std]}, "
              f"prior bits/element {info['prior_bits_per_element']}")
    else:
        cls = registry.by_short(ckpt.get("kind", "hp")).cls
        model = cls(cls.CONFIG.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
        if args.as_hyperprior and isinstance(model, ChannelConditional):
            # the same transforms and hyperprior without the slice corrections: what the
            # channel-conditional entropy model alone is worth, measured on equal transforms
            model = model.submodel(GainHyperprior.NAME)
            info["from"] = "channel-conditional checkpoint, slice networks dropped"
        elif args.no_lrp and isinstance(model, ChannelConditional) and model.lrp is not None:
            # what the residual prediction is worth, on equal weights; or weights without a part that does not pay
            model, info["from"] = model.with_lrp(0), "checkpoint with a residual prediction, dropped"
    model.update(force=True)
    digest = save_weights(model, args.output, info)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size/1e6:.1f} MB, sha256 {digest[:16]})")
