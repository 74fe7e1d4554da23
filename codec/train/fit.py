"""Train the variable-rate model on rate + lambda * distortion, or the f8 VAE, and export weights.

    python -m codec.train fit --init weights/aecodec-sc.safetensors --data DIR --val DIR --out runs/sc --ema 0.995
    python -m codec.train export runs/sc/last.pt runs/sc/aecodec-sc.safetensors --ema

    python -m codec.train fit --model vae --data ../shared/data/train --val ../shared/data/val --out runs/vae
    python -m codec.train export runs/vae/best.pt runs/vae/aecodec-vae-f8.safetensors --data ../shared/data/train

The loop here knows no model by name: each registered model names its training pieces
(``codec/registry.py``: how it is built or grown from another, its loss, validation, parameter
groups and export), codec/train/rd.py for the rate-distortion models (each image at its own
lambda: one set of weights learns every rate) and codec/train/vae.py for the VAE. With ``--ema``
a running average of the weights trains beside them: at a constant learning rate it validated as
well as a copy annealed at a tenth of it (docs/training-record.md, phase 9), so a release is
exported from the average.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from codec import registry
from codec.files import write_atomic
from codec.models.hyperprior import count_parameters
from codec.train.data import centre_crop, list_images, load_checkpoint, load_images, model_of, random_batch
from codec.weights import WeightsError, load_weights, save_weights


@torch.no_grad()
def validate(model: torch.nn.Module, trainer, images: list[torch.Tensor], device: torch.device,
             size: int = 256) -> dict:
    """Centre crops of held-out images, each as the model's trainer validates one."""
    model.eval()
    totals: dict[str, float] = {}
    for im in images:
        for k, v in trainer.validation(model, centre_crop(im, size, device)).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    model.train()
    return {k: v / len(images) for k, v in totals.items()}


def trainer_of(model_short: str, args: argparse.Namespace):
    """The training pieces the registry names for a model (codec/train/rd.py, vae.py, ...)."""
    entry = registry.by_short(model_short)
    if not entry.trainer:
        raise SystemExit(f"error: model {entry.name} names no training pieces in codec/registry.py")
    return entry.trainer_cls(args)


def build_model(args: argparse.Namespace, ckpt: dict | None):
    """The model to train, its trainer, and how it relates to the checkpoint or weights it
    starts from: "same", "changed" (retargeted or converted: the optimiser state and the best
    validation loss no longer apply) or "grown" (new parameters appended, starting at zero)."""
    start = None
    if ckpt:
        start = model_of(ckpt)
    elif args.init:  # continue from shipped weights (fresh optimiser state)
        name = registry.by_short(args.model).name if args.model else None
        try:  # --model hp from a cc file: the hyperprior inside it (load_weights' submodel)
            loaded, _ = load_weights(args.init, name)
        except WeightsError:
            try:  # another model, which the trainer may grow into the one asked for
                loaded, _ = load_weights(args.init)
            except WeightsError as e:
                raise SystemExit(f"error: {e}") from None
        start = type(loaded)(loaded.config)
        start.load_state_dict(loaded.state_dict())
    first = next(iter(registry.MODELS.values())).short  # new runs: the hyperprior
    short = args.model or (registry.MODELS[start.NAME].short if start is not None else first)
    trainer = trainer_of(short, args)
    model, how = trainer.build(registry.by_short(short).cls, start)
    return model, how, trainer


def fit(args: argparse.Namespace) -> None:
    """Train. Under ``torchrun --nproc_per_node=N`` this is data-parallel (PyTorch's
    DistributedDataParallel: gloo on CPU, NCCL on CUDA): every rank draws its own crops, gradients
    are averaged, rank 0 alone validates, logs and writes checkpoints; resume with any N."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if world > 1:
        import torch.distributed as dist

        # a long wait is no fault here: ranks paused together (SIGSTOP) for a measurement find on
        # waking that their pending exchange has waited as long as the pause (the default, 30 minutes,
        # ended a run paused for 45)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=6))
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

    model, how, trainer = build_model(args, ckpt)
    retargeted, grown = how == "changed", how == "grown"
    # Each rank draws its own crops, noise and quality positions (DDP syncs the weights), and a
    # resumed run draws new ones rather than repeating those its first steps saw.
    seed = args.seed + 1000 * rank + 1_000_003 * (ckpt["step"] if ckpt else 0)
    gen = random.Random(seed)
    torch.manual_seed(seed)
    kind = registry.MODELS[model.NAME].short
    config = model.config
    model = model.to(device)
    groups, aux_params = trainer.groups(model)
    main_params = [p for g in groups for p in g["params"]]
    optimised = set(main_params) | set(aux_params)
    for p in model.parameters():  # what no optimiser steps (the VAE's priors, fitted at export) takes no gradient
        if p not in optimised:
            p.requires_grad_(False)
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    if len(base_lrs) > 1 and rank == 0:
        print("learning rates: " + ", ".join(f"{g['name']} {g['lr']:g}" for g in groups), flush=True)
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
        + trainer.describe(model), flush=True)
    net = None  # the DDP wrapper when distributed; losses call it for the forward pass

    def train_step(x: torch.Tensor, bf16: bool) -> dict:
        """Forward and backward of one batch (the optimiser steps are the caller's)."""
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            r = trainer.loss(model, x, torch.Generator().manual_seed(gen.getrandbits(32)), net=net)
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
            if unexpected or (missing and not grown):  # grown: only the new part is missing
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
        net = DistributedDataParallel(model)
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
                v = validate(model, trainer, val_images, device)
                is_best = v["loss"] < best
                best = min(best, v["loss"])
                log(f"\nstep {step} [{(time.time()-t0)/60:.1f} min] val "
                    + " ".join(f"{k} {x:.4f}" for k, x in v.items()) + (" (best)" if is_best else ""), flush=True)
                if ema is not None:
                    averaged = validate(ema.module, trainer, val_images, device)
                    log(f"step {step} ema {args.ema:g} val " + " ".join(f"{k} {x:.4f}" for k, x in averaged.items()),
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

    def model(c: dict) -> tuple:  # configs compared as read (a field added since reads as its default)
        return c.get("kind"), registry.by_short(c.get("kind", "hp")).cls.CONFIG.from_dict(c["config"])

    for c in ckpts[1:]:
        if model(c) != model(first) or key not in c:
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


def export(args: argparse.Namespace) -> None:
    """Checkpoint -> shipped safetensors: builds the rANS tables (``update``) and records the run.
    For the VAE, first measures the latent mean/std per channel and fits the priors on ``--data``."""
    if args.threads:
        torch.set_num_threads(args.threads)
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
    model = trainer_of(ckpt.get("kind", "hp"), args).export(ckpt, info)
    model.update(force=True)
    digest = save_weights(model, args.output, info)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size/1e6:.1f} MB, sha256 {digest[:16]})")
