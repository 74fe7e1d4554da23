"""The command line of training (``python -m codec.train``, ``aecodec train``): parsed here, with
no torch, so that ``--help`` and usage errors answer at once; the work is codec/train/fit.py's."""

from __future__ import annotations

import argparse
import ast
import importlib.util
from pathlib import Path

from codec import helptext, registry


def _train_docstring(prog: str) -> str:
    """codec/train/fit.py's docstring (the guide to training), read without importing torch, as
    plain text: its examples under the name the command was run by, without reST's quotes."""
    origin = importlib.util.find_spec("codec.train.fit").origin
    text = ast.get_docstring(ast.parse(Path(origin).read_text(encoding="utf-8"))) or ""
    return text.replace("python -m codec.train", prog).replace("``", "")


def parse_lambdas(text: str) -> tuple[float, ...]:
    """--lambdas: at least two positive, strictly increasing numbers."""
    try:
        lambdas = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if len(lambdas) < 2 or lambdas[0] <= 0 or any(b <= a for a, b in zip(lambdas, lambdas[1:])):
        raise argparse.ArgumentTypeError("need at least two positive lambdas in increasing order")
    return lambdas


def positive_number(text: str) -> float:
    """A finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


class _Formatter(helptext.RawDescription):
    """The module docstring as written, and each option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def main(argv: list[str] | None = None, prog: str = "python -m codec.train") -> None:
    p = argparse.ArgumentParser(prog=prog, description=_train_docstring(prog), formatter_class=_Formatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{fit,export}")
    f = sub.add_parser("fit", help="train (or resume) the variable-rate model or the VAE", formatter_class=_Formatter,
                       description="Train, or resume. Ctrl-C (or kill PID) writes last.pt and stops. Data-parallel on "
                       "several processes or GPUs: torchrun --nproc_per_node=N -m codec.train fit ...")
    f.add_argument("--model", choices=[e.short for e in registry.MODELS.values() if e.trainer],
                   help="the model to train (codec/registry.py). Default: the model of --resume/--init; new runs: "
                   "the first registered, the hyperprior (hp). Another model than the checkpoint's or weights' is "
                   "made from it where its training pieces know how: cc from an hp model (its transforms carry "
                   "over), sc grown from a cc model (it starts out coding as the cc model does), hp from a cc "
                   "file's --init (the hyperprior inside it)")
    f.add_argument("--data", required=True, help="folder of training images")
    f.add_argument("--val", required=True, help="folder of held-out validation images")
    f.add_argument("--out", required=True, help="folder for last.pt / best.pt checkpoints")
    f.add_argument("--resume", help="checkpoint to continue from")
    f.add_argument("--init", help="start from a weights file (e.g. weights/aecodec-cc.safetensors)")
    f.add_argument("--fresh-optimizer", action="store_true", help="on resume, reset Adam's state")
    f.add_argument("--steps", type=int, default=100_000, help="total steps (counting resumed ones)")
    f.add_argument("--batch-size", type=int, default=8, help="crops per step (per rank under torchrun)")
    f.add_argument("--patch-size", type=int, default=256, help="side of the random training crops, pixels")
    f.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    f.add_argument("--slice-lr", type=float, help="cc: learning rate of the slice networks and the residual "
                   "prediction (default: --lr)")
    f.add_argument("--top-share", type=float, default=0.0, metavar="P",
                   help="share of training images placed between the two highest anchors (the rest: uniform "
                   "over the whole axis): new high anchors catch up faster")
    f.add_argument("--rate-balance", type=float, default=0.0, metavar="B",
                   help="weigh each training image's loss by (lambda / the anchors' geometric mean)^-B, so that "
                   "low qualities, whose losses are many times smaller, count as much as high ones (default 0: "
                   "plain loss; 0.5 about evens out the anchors of 0.15.0's model)")
    f.add_argument("--lr-drop", type=float, default=0.0, help="fraction of --steps after which lr /= 10 (0: never)")
    f.add_argument("--lambdas", type=parse_lambdas,
                   help="comma-separated anchor lambdas, low to high (default: the model's; "
                   "on --resume/--init, retargets the gain tables to them)")
    f.add_argument("--N", type=int, default=128, help="transform channels (new models only)")
    f.add_argument("--M", type=int, default=192, help="latent channels (new models only)")
    f.add_argument("--slices", type=int, default=4, help="cc: channel slices of the latent (default: 4)")
    f.add_argument("--cc-width", type=int, default=128, help="cc: channels of the slice networks (default: 128)")
    f.add_argument("--lrp", type=int, default=0, metavar="CHANNELS",
                   help="cc: add a latent residual prediction network of this width (trains at --slice-lr; "
                   "a --resume/--init model without one grows it, starting at zero; default 0: none, or the model's)")
    f.add_argument("--synthesis-width", type=int, metavar="N_S",
                   help="sc: channels of the synthesis g_s (default: the model's; a --resume/--init model with "
                   "fewer is widened, its new channels starting where they change no pixel; widen from "
                   "--init of an `export --ema` file: a --resume checkpoint's average is not carried over)")
    f.add_argument("--channels", default="32,64,128,128", help="VAE block widths (4 blocks: f8)")
    f.add_argument("--layers-per-block", type=int, help="VAE resnet blocks per scale (default: 1, or the model's; a "
                   "--resume/--init VAE with fewer is deepened: the added blocks start as identities)")
    f.add_argument("--kl-weight", type=float, default=1e-6, help="VAE KL weight (latent diffusion: 1e-6)")
    f.add_argument("--rec-loss", choices=["mse", "l1"], default="mse", help="VAE reconstruction loss")
    f.add_argument("--chroma-weight", type=positive_number, default=1.0, metavar="W",
                   help="VAE: weight of the reconstruction error's two colour axes (red-blue, green-magenta) "
                   "against luma's (default 1: plain RGB error; weak colours are learned last under it)")
    f.add_argument("--hue-turn", type=float, default=0.0, metavar="P",
                   help="VAE: turn the hues of this share of the training crops by a random angle, luma kept "
                   "(default 0; photos hold little green-magenta, so the latent learns none without it)")
    f.add_argument("--val-every", type=int, default=1000, help="steps between validations (and checkpoints)")
    f.add_argument("--val-images", type=int, default=60, help="how many --val images to validate on")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if present")
    f.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16: bf16 autocast with channels_last for the transforms (entropy models and the "
                   "fixed-point parts stay float32/64); auto (default): bf16 on CUDA, on CPU whichever of "
                   "the two a timed step finds faster (bf16 was 3.8x faster on a Xeon with AMX, 6.7x "
                   "slower on an AMD EPYC without bf16 units)")
    f.add_argument("--compile", action="store_true",
                   help="compile the training step with torch.compile (faster after ~2 minutes of compiling)")
    f.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="also keep an exponential moving average of the weights (e.g. 0.999), validated "
                   "beside them and saved in the checkpoints (export --ema); 0: none")
    f.add_argument("--keep", type=int, default=0, metavar="N",
                   help="also keep the checkpoints of the last N validations as step-STEP.pt (export --average)")
    f.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    f.add_argument("--seed", type=int, default=0, help="random seed (crops, quality positions)")
    f.add_argument("--log-interval", type=float, default=10.0, help="seconds between progress updates")
    f.set_defaults(func="fit")
    e = sub.add_parser("export", help="write shipped safetensors weights from a checkpoint", formatter_class=_Formatter)
    e.add_argument("checkpoint", help="a checkpoint of train fit (best.pt, last.pt)")
    e.add_argument("output", help="the weights file to write (.safetensors)")
    e.add_argument("--data", help="VAE only: training images to measure the latent scale and fit the priors on")
    e.add_argument("--calib-crops", type=int, default=256, help="VAE only: random crops for calibration")
    e.add_argument("--calib-size", type=int, default=256, help="VAE only: crop size for calibration")
    e.add_argument("--prior-iters", type=int, default=1500, help="VAE only: Adam steps per prior")
    e.add_argument("--codec-steps", help="VAE only: anchor quantisation steps of the scaled latent, "
                   "coarse to fine (default: the model's, 1,0.5,0.25,0.125)")
    e.add_argument("--seed", type=int, default=0, help="random seed (VAE calibration crops)")
    e.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default). Give 1 beside a training "
                   "run: the VAE's prior fits are small steps that wait on each other on a busy CPU (measured: "
                   "0.14 s a step on 1 thread, 3 s on 2)")
    e.add_argument("--ema", action="store_true", help="export the checkpoint's weight average (fit --ema)")
    e.add_argument("--average", nargs="+", metavar="CKPT",
                   help="average these checkpoints' weights (with --ema: their averages) into the first's, "
                   "uniformly (e.g. the step-*.pt of fit --keep)")
    e.add_argument("--no-lrp", action="store_true",
                   help="cc only: write the model without its residual prediction (what it is worth)")
    e.add_argument("--as-hyperprior", action="store_true",
                   help="cc only: write the hyperprior model with the checkpoint's transforms (no slice networks)")
    e.set_defaults(func="export")
    args = p.parse_args(argv)
    if getattr(args, "steps", 1) < 1:
        p.error("--steps must be at least 1")
    if not 0 <= getattr(args, "rate_balance", 0) <= 2:
        p.error("--rate-balance must be between 0 and 2")
    if getattr(args, "layers_per_block", None) is not None and not 1 <= args.layers_per_block <= 4:
        p.error("--layers-per-block must be 1 to 4")
    if getattr(args, "synthesis_width", None) is not None and not 1 <= args.synthesis_width <= 512:
        p.error("--synthesis-width must be 1 to 512")
    for share in ("top_share", "hue_turn"):
        if not 0 <= getattr(args, share, 0) <= 1:  # also refuses nan
            p.error(f"--{share.replace('_', '-')} must be between 0 and 1")
    from codec.train import fit  # torch and the models load only now: --help and usage errors answer without them

    try:
        getattr(fit, args.func)(args)
    except SystemExit as e:  # our refusals say "error: ..."; name the program as argparse does
        if isinstance(e.code, str) and e.code.startswith("error: "):
            raise SystemExit(f"{prog}: {e.code}") from None
        raise
