"""The training pieces of the f8 VAE (``codec/models/vae.py``): reconstruction error +
kl_weight * KL, normalised as latent diffusion does (both summed per image); its export measures
each latent channel's mean and standard deviation on training crops and fits the codec's priors to
those latents (the autoencoder is frozen by then). ``codec/registry.py`` names this class."""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn as nn
from tqdm import tqdm

from codec.metrics import psnr_from_mse
from codec.models.vae import KLAutoencoder, VAEConfig, kl_divergence
from codec.train.data import list_images, load_images, random_batch


# RGB -> an orthonormal opponent space: luma, red-blue, green-magenta. Orthonormal, so squared
# errors sum as in RGB; the two colour axes carry a few percent of a photo's variance (on 256 px
# validation crops: 0.105 luma, 0.012 red-blue, 0.002 green-magenta), so plain MSE learns them last.
OPPONENT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, -2.0, 1.0]])
OPPONENT = OPPONENT / OPPONENT.norm(dim=1, keepdim=True)


def vae_loss(model: KLAutoencoder, x: torch.Tensor, kl_weight: float, rec: str = "mse", sample: bool = True,
             net=None, chroma_weight: float = 1.0) -> dict:
    """Reconstruction + kl_weight * KL. Latent diffusion sums both per image; dividing both by
    the number of pixel values gives the same optimum with losses of a readable size.
    ``chroma_weight``: the reconstruction error's two colour axes (:data:`OPPONENT`) weigh this
    much more than luma (1: plain RGB error)."""
    out = (model if net is None else net)(x, sample=sample)
    err = out["x_hat"].float() - x
    mse = err.pow(2).flatten(1).mean(1)
    if chroma_weight != 1.0:
        err = torch.einsum("oc,bchw->bohw", OPPONENT.to(err.device), err)
        weights = torch.tensor([1.0, chroma_weight, chroma_weight], device=err.device)[:, None, None]
        per_px = (err.abs() if rec == "l1" else err.pow(2)) * weights
    else:
        per_px = err.abs() if rec == "l1" else err.pow(2)
    kl = kl_divergence(out["mean"].float(), out["logvar"].float()) / x[0].numel()
    loss = (per_px.flatten(1).mean(1) + kl_weight * kl).mean()
    return {"loss": loss, "kl": kl.mean() * x[0].numel(), "psnr": psnr_from_mse(mse).mean()}


def turn_hues(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Turn the colour plane of about ``share`` of the crops by a random angle, luma kept
    (clamped to [0, 1]). Photos hold little green-magenta, so a latent trained on them alone
    spends nothing on it; turned crops show every hue as often as any other."""
    n = x.shape[0]
    chosen = torch.rand(n, generator=generator) < share
    if not chosen.any():
        return x
    angle = torch.rand(n, generator=generator) * (2 * torch.pi)
    c, s = torch.cos(angle), torch.sin(angle)
    turn = torch.eye(3).repeat(n, 1, 1)
    turn[:, 1, 1], turn[:, 1, 2], turn[:, 2, 1], turn[:, 2, 2] = c, -s, s, c
    rgb = OPPONENT.T @ turn @ OPPONENT  # back to RGB after turning the opponent plane
    turned = torch.einsum("boc,bchw->bohw", rgb.to(x.device, x.dtype), x).clamp(0, 1)
    return torch.where(chosen.to(x.device)[:, None, None, None], turned, x)


class VAETraining:
    """Training pieces for :class:`~codec.models.vae.KLAutoencoder`."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def build(self, cls: type, start: nn.Module | None) -> tuple[nn.Module, str]:
        """A new VAE from the arguments, or ``start`` as it is or deepened to --layers-per-block
        (see codec/train/rd.py)."""
        layers = self.args.layers_per_block
        if start is not None:
            if not isinstance(start, KLAutoencoder):
                raise SystemExit(f"error: --model vae, but the checkpoint or weights hold a {start.NAME} model")
            if layers is None or layers == start.config.layers_per_block:
                return start, "same"
            if layers < start.config.layers_per_block:
                raise SystemExit(f"error: --layers-per-block {layers}, but the model has "
                                 f"{start.config.layers_per_block}: a VAE can be deepened, not cut")
            # new layers in the middle of the parameter list: the optimiser starts afresh
            return start.deepened(layers), "changed"
        channels = tuple(int(c) for c in self.args.channels.split(","))
        config = VAEConfig(block_out_channels=channels, layers_per_block=layers or 1)
        return KLAutoencoder(config), "same"

    def loss(self, model: KLAutoencoder, x: torch.Tensor, generator: torch.Generator, net=None) -> dict:
        if self.args.hue_turn:
            x = turn_hues(x, self.args.hue_turn, generator)
        return vae_loss(model, x, self.args.kl_weight, self.args.rec_loss, net=net,
                        chroma_weight=self.args.chroma_weight)

    def validation(self, model: KLAutoencoder, x: torch.Tensor) -> dict:
        """Through the posterior mean, as inference uses it."""
        r = vae_loss(model, x, self.args.kl_weight, self.args.rec_loss, sample=False,
                     chroma_weight=self.args.chroma_weight)
        return {k: float(v) for k, v in r.items()}

    def describe(self, model: KLAutoencoder) -> str:
        return (f"kl weight {self.args.kl_weight}, chroma weight {self.args.chroma_weight}, "
                f"hue turn {self.args.hue_turn}")

    def groups(self, model: KLAutoencoder) -> tuple[list[dict], list[nn.Parameter]]:
        """Everything but the priors, which are fitted at export, on the finished latents."""
        params = [p for n, p in model.named_parameters() if not n.startswith("priors.")]
        return [{"params": params, "lr": self.args.lr, "name": "autoencoder"}], []

    def export(self, ckpt: dict, info: dict) -> KLAutoencoder:
        """The checkpoint's autoencoder with its latent scale measured and its priors fitted on --data."""
        args, a = self.args, ckpt.get("args", {})
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
        info.update(kl_weight=a.get("kl_weight"), rec_loss=a.get("rec_loss"), chroma_weight=a.get("chroma_weight", 1.0),
                    hue_turn=a.get("hue_turn", 0.0),
                    calibration=f"{args.calib_crops} random {args.calib_size}px crops of {args.data}",
                    scaled_channel_mean=[round(float(m), 4) for m in per_channel.mean(1)],
                    scaled_channel_std=[round(float(m), 4) for m in per_channel.std(1)])
        info["prior_bits_per_element"] = fit_priors(model, latents, args.prior_iters, gen)
        print(f"latent mean {[round(v, 4) for v in model.config.latents_mean]} "
              f"std {[round(v, 4) for v in model.config.latents_std]}, "
              f"prior bits/element {info['prior_bits_per_element']}")
        return model


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


