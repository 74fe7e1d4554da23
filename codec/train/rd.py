"""The training pieces of the rate-distortion models (hyperprior, channel-conditional,
space-channel): how each is made from the command line or grown from another, the objective,
the parameter groups, what export adds. ``codec/registry.py`` names this class for each of them.

The objective is bpp + lambda * 255^2 * MSE, each training image at its own random position on
the quality axis, and so its own lambda: that is how one set of weights learns the whole rate
range (gain units interpolate between the anchor lambdas).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from codec import registry
from codec.metrics import psnr_from_mse
from codec.models.cc import CCConfig, ChannelConditional
from codec.models.hyperprior import GainedTransforms, GainHyperprior, ModelConfig, bpp_of, default_lambdas
from codec.models.sc import SCConfig, SpaceChannel
from codec.train.data import model_of

# the entropy models' context networks: trained at --slice-lr (they start from zero on trained transforms)
CONTEXT_PREFIXES = ("latent_codec.slice_nets.", "latent_codec.lrp.")


def rd_loss(model: GainedTransforms, x: torch.Tensor, pos: torch.Tensor, net=None, balance: float = 0.0) -> dict:
    """Per-image bpp + lambda * 255^2 * MSE, averaged; also returns bpp and PSNR for logging.
    ``net``: what runs the forward pass (the DistributedDataParallel wrapper), default ``model``.
    ``balance`` B weighs each image's loss by (lambda / the anchors' geometric mean)^-B: the loss
    grows about as lambda^0.55 over the anchors, so without it the highest quality's gradients,
    many times the lowest's, decide most of each shared weight's step."""
    out = (model if net is None else net)(x, pos)
    n_px = x.shape[-2] * x.shape[-1]
    bpp = bpp_of(out["likelihoods"], n_px)
    mse = ((out["x_hat"].float() - x) ** 2).flatten(1).mean(1)
    lmbda = model.lmbda(pos.cpu()).to(x.device, torch.float32)
    loss = bpp + lmbda * 255**2 * mse
    if balance:
        middle = torch.tensor(model.config.lambdas, dtype=torch.float64).log().mean().exp().item()
        loss = loss * (lmbda / middle) ** -balance
    return {"loss": loss.mean(), "bpp": bpp.mean(), "psnr": psnr_from_mse(mse).mean()}


ANCHORS = ("low", "middle", "high")  # the quality positions validation measures, by name


def mean_and_each(runs: list[dict], names: tuple[str, ...]) -> dict:
    """Every measure averaged over the runs, and each run's loss under its name."""
    mean = {k: sum(float(r[k]) for r in runs) / len(runs) for k in runs[0]}
    return mean | {name: float(r["loss"]) for name, r in zip(names, runs)}


class RateDistortion:
    """Training pieces for the models of ``codec/models/{hyperprior,cc,sc}.py``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def build(self, cls: type, start: nn.Module | None) -> tuple[nn.Module, str]:
        """The model of class ``cls`` to train: new from the arguments (``start`` None), or
        ``start`` itself, retargeted or grown into ``cls``. Also says how it relates to ``start``:
        "same", "changed" (the optimiser state and the best validation loss no longer apply) or
        "grown" (new parameters appended, starting at zero: the old state applies to the rest)."""
        a = self.args
        if start is None:
            if a.synthesis_width and cls is not SpaceChannel:
                raise SystemExit("error: --synthesis-width is for the space-channel model (--model sc)")
            if cls is SpaceChannel:
                try:
                    config = SCConfig(**({"lambdas": a.lambdas} if a.lambdas else {}), N_s=a.synthesis_width or 0)
                except ValueError as e:
                    raise SystemExit(f"error: {e}") from None
                return SpaceChannel(config), "same"
            lambdas = a.lambdas or default_lambdas()
            if cls is ChannelConditional:
                return ChannelConditional(CCConfig(a.N, a.M, lambdas, a.slices, a.cc_width, a.lrp)), "same"
            return GainHyperprior(ModelConfig(N=a.N, M=a.M, lambdas=lambdas)), "same"
        model, how = start, "same"
        if a.lambdas and a.lambdas != start.config.lambdas and cls is not SpaceChannel:
            if type(start) is not GainHyperprior:
                raise SystemExit("error: --lambdas retargets hp models only (retarget first, then convert with "
                                 "--model cc)")
            model, how = start.with_lambdas(a.lambdas), "changed"
        if cls is SpaceChannel and type(model) is ChannelConditional:
            # model 3 grows into model 4: its latents, slices and pixels carry over (SpaceChannel.grown_from)
            if model.lrp is not None:
                raise SystemExit("error: --model sc grows a cc model without residual prediction")
            model, how = SpaceChannel.grown_from(model, lambdas=a.lambdas), "changed"
        if cls is ChannelConditional and type(model) is GainHyperprior:
            # the transforms and hyperprior carry over; the slice networks start as "no correction",
            # so the new model codes exactly as the old one did. New parameters: fresh Adam state.
            model, how = ChannelConditional.from_hyperprior(model, a.slices, a.cc_width, a.lrp), "changed"
        if type(model) is not cls:
            kind = registry.MODELS[model.NAME].short
            raise SystemExit(f"error: --model {registry.MODELS[cls.NAME].short}, but the checkpoint or weights "
                             f"hold a {kind} model")
        if a.synthesis_width:
            if not isinstance(model, SpaceChannel):
                raise SystemExit("error: --synthesis-width is for the space-channel model (--model sc)")
            width = model.config.N_s or model.config.N
            if a.synthesis_width < width:
                raise SystemExit(f"error: --synthesis-width {a.synthesis_width}, but g_s has {width} channels: "
                                 "it can be widened, not narrowed")
            if a.synthesis_width > width:  # new channels inside g_s's layers: the optimiser starts afresh
                model, how = model.with_synthesis_width(a.synthesis_width), "changed"
        if a.lrp and isinstance(model, ChannelConditional) and model.config.lrp != a.lrp:
            if model.config.lrp:
                raise SystemExit(f"error: --lrp {a.lrp}, but the model's residual prediction has "
                                 f"{model.config.lrp} channels")
            model, how = model.with_lrp(a.lrp), ("grown" if how == "same" else how)  # starts at zero
        elif a.lrp and not isinstance(model, ChannelConditional):
            raise SystemExit("error: --lrp is for the channel-conditional model (--model cc)")
        return model, how

    def loss(self, model: GainedTransforms, x: torch.Tensor, generator: torch.Generator, net=None) -> dict:
        """One batch, each image at its own position on the quality axis (``--top-share`` of them
        between the two highest anchors, so that new high anchors catch up), its loss weighed by
        ``--rate-balance``."""
        K = len(model.config.lambdas)
        pos = torch.rand(x.shape[0], generator=generator) * (K - 1)
        top = torch.rand(x.shape[0], generator=generator) < self.args.top_share
        return rd_loss(model, x, torch.where(top, K - 2 + pos / (K - 1), pos), net=net,
                       balance=self.args.rate_balance)

    def validation(self, model: GainedTransforms, x: torch.Tensor) -> dict:
        """A held-out crop, hard-rounded, at the lowest, middle and highest quality (averaged),
        and the loss at each of the three: the average is mostly the highest quality's, whose
        loss is several times the others', so a change at low rates shows only in ``low``."""
        K = len(model.config.lambdas)
        return mean_and_each([rd_loss(model, x, torch.tensor([p])) for p in (0.0, (K - 1) / 2, K - 1.0)], ANCHORS)

    def describe(self, model: GainedTransforms) -> str:
        return f"lambdas {model.config.lambdas}"

    def groups(self, model: GainedTransforms) -> tuple[list[dict], list[nn.Parameter]]:
        """Adam's parameter groups: the transforms at --lr, the context networks (slice networks,
        residual prediction) at --slice-lr; and the quantiles, which follow CompressAI's
        auxiliary loss on an optimiser of their own."""
        a = self.args
        named = [(n, p) for n, p in model.named_parameters() if not n.endswith(".quantiles")]
        groups = [{"params": [p for n, p in named if n.startswith(CONTEXT_PREFIXES) == context], "lr": lr, "name": name}
                  for context, lr, name in ((False, a.lr, "transforms"), (True, a.slice_lr or a.lr, "slice networks"))]
        if a.slice_lr and not groups[1]["params"]:
            raise SystemExit("error: --slice-lr is for the channel-conditional models (--model cc, sc)")
        return [g for g in groups if g["params"]], [p for n, p in model.named_parameters() if n.endswith(".quantiles")]

    def export(self, ckpt: dict, info: dict) -> GainedTransforms:
        """The checkpoint's model as trained, or (cc) without its slice networks or its residual
        prediction, to measure what each is worth on equal weights."""
        a, model = self.args, model_of(ckpt)
        if a.as_hyperprior and isinstance(model, ChannelConditional):
            info["from"] = "channel-conditional checkpoint, slice networks dropped"
            return model.submodel(GainHyperprior.NAME)
        if a.no_lrp and isinstance(model, ChannelConditional) and model.lrp is not None:
            info["from"] = "checkpoint with a residual prediction, dropped"
            return model.with_lrp(0)
        return model
