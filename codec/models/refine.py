"""Encoder effort: search the latent of one image for a lower rate-distortion cost, with the
decoder unchanged.

``g_a`` gives an amortised guess of the latent; the encoder may instead optimise the latent of
the image at hand against the shipped model's own loss, rate + lambda * 255^2 * MSE, and code
what it finds: any latent is a valid file, decoded by the unchanged decoder. Rounding has no
gradient, so the search relaxes it as stochastic Gumbel annealing does (Yang, Bamler & Mandt,
"Improving Inference for Neural Image Compression", NeurIPS 2020): each value is rounded down or
up at random, with odds from its distance to each (atanh), softened by a temperature that anneals
towards 0, so that the search ends on what hard rounding will code. Long searches take SGA+'s
odds instead (Perugachi-Diaz et al., NeurIPS 2024): linear in the distance, which saturates less
than atanh near the integers. The rate is the entropy model's probability of the rounded value under the
contexts the decoder will use: the hyperprior's follows every step; the context networks' (the
earlier slices, the checkerboard's anchors) see the values as rounded at their last refresh, every
``REFRESH`` steps, and the rate's gradient reaches each value through its own probability, not
back through them. What the search keeps is measured with every context fresh.

Large images are searched in tiles of the latent (with a margin that is searched but not kept),
so memory stays bounded like the rest of the codec. The same image, quality and effort give the
same latent on the same machine: the random draws are seeded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import GDN

from codec.models.cpu_transforms import gdn_matrices
from codec.models.hyperprior import GainedTransforms, bpp_of

EFFORTS = {0: 0, 1: 25, 2: 58, 3: 100, 4: 2000}  # effort level -> search iterations (0: g_a's latent as it is);
# level 4 as Yang et al.'s search: three 128^2 validation crops, cost lowered at q 20 / 60 / 100 by 6.91 / 5.26 /
# 13.81% in 1000 steps, 7.35 / 5.58 / 14.19% in 2000
END_TEMPERATURE = 0.02  # each search anneals its temperature exponentially from its start to this
SCHEDULES = {0: (0.8, 0.0), 100: (0.5, 0.0), 300: (2.0, 1.0)}  # a search of at least N steps: its first temperature
# and the slope of its odds (0: atanh; a > 0: SGA+'s sigmoid-scaled logit, a = 1 linear). Three 256^2
# validation crops, cost lowered at q 20 / 60 / 100: 50 steps, 2.4 / 1.8 / 5.4% from 0.8, 2.1 / 1.6 / 4.8% from
# 0.5, less from 0.3; 128^2 crops, 300 steps, 4.93 / 4.02 / 11.28% from 0.5 (atanh), 5.45 / 4.29 / 12.45%
# from 1 (atanh), 5.70 / 4.43 / 12.15% from 1 (linear), 6.08 / 4.56 / 11.49% from 1 (slope 2), 5.17 / 4.02 /
# 9.91% from 0.5 (slope 2), 5.04 / 4.04 / 10.94% from 0.5 (linear), 6.00 / 4.52 / 12.79% from 2 (linear):
# the warmer start is most of the gain. At 1000 steps (q 20) from 2: 6.91%; from 4: 6.62%; Adam's step doubled: 6.53%
LEARNING_RATE = 0.01  # Adam's, on latent values in quantisation steps; halved for 100 steps and more
# (two 256^2 validation crops, 30 steps: 0.005 lowered the cost 0.8% / 1.8% at q 40 / 75, 0.01 0.7% / 2.4%);
# constant: a cosine decay to a fifth lowered it less at q 20 / 60 (2.08 / 1.58% against 2.21 / 1.84%,
# three 256^2 validation crops, 50 steps) and barely more at q 100 (6.69% against 6.58%); model 4 without the
# context gradient, the same crops: 0.007 / 0.01 / 0.015 lowered it 2.31 / 2.45 / 2.11% at q 20,
# 2.18 / 2.36 / 2.26% at q 60
TOP_BOOST = (80, 3.0)  # above this quality Adam's step rises log-linearly to this many times at q 100: three
# 256^2 validation crops, 50 steps, cost lowered at q 100 by 4.8% at 0.01, 5.8% at 0.02, 5.9% at 0.03;
# at q 20 / 60 / 80 more than 0.01 loses (q 20: 2.1% at 0.01, 1.3% at 0.02 decaying, 2.0% at 0.005)
TILE = GainedTransforms.TILE // 16  # latent units searched at once, as coding's tiles: a Kodak image is one
MARGIN = 4  # latent units around a tile, searched for its context but not kept
REFRESH = 5  # steps between runs of the context networks (the earlier slices, the checkerboard's anchors),
# whose outputs are kept in between: they cost a quarter of a step, and a few steps' staleness costs less than
# the steps it buys. Three 256^2 validation crops, about the same time: 50 steps refreshing at every one lowered
# the cost 2.39 / 2.36 / 9.80% at q 20 / 60 / 100, 58 steps every 5th 2.42 / 2.55 / 10.03%, 55 every 3rd
# 2.42 / 2.49 / 9.95%. The rate's gradient never flows back through them: without it the search gains more per
# step (model 4, the same crops, 50 steps: 2.45 / 2.36 / 9.76% against 2.45 / 2.12 / 9.29% with it), likely
# as that gradient follows one random rounding and is mostly noise
CHECK = 10  # steps between measurements of the latent as hard rounding codes it (every 5th before: level 2
# now checks 4 times, not 7, a step and a half's time)
CHECK_FROM = 0.5  # ... from this share of the search on (each check costs half a step): on kodim01 at q 10 / 40 /
# 70 / 100, 50 steps, the lowest cost came at step 35 / 45 / 45 / 30, never in the first half


def schedule(iterations: int) -> tuple[float, float]:
    """The first temperature and the odds' slope of a search of ``iterations`` steps (:data:`SCHEDULES`)."""
    return SCHEDULES[max(n for n in SCHEDULES if n <= iterations)]


def sga(v: torch.Tensor, temperature: float, generator: torch.Generator, odds: float = 0.0) -> torch.Tensor:
    """Stochastic Gumbel annealing of ``round(v)``: floor or ceil, relaxed (differentiable in v); ``odds``:
    0 for Yang et al.'s atanh odds, a > 0 for SGA+'s sigmoid-scaled logit of slope a."""
    floor = torch.floor(v).detach()
    frac = (v - floor).clamp(1e-4, 1 - 1e-4)
    if odds:
        up = odds * torch.logit(frac)
        logits = torch.stack([F.logsigmoid(-up), F.logsigmoid(up)], dim=-1)
    else:
        logits = torch.stack([-torch.atanh(frac), -torch.atanh(1 - frac)], dim=-1)
    logits = logits / temperature  # then a relaxed one-hot draw at the same temperature, as Yang et al.'s code does
    u = torch.rand(logits.shape, generator=generator).clamp(1e-9, 1 - 1e-9).to(logits.device)
    weights = torch.softmax((logits - torch.log(-torch.log(u))) / temperature, dim=-1)
    return floor + weights[..., 1]  # floor * w_floor + (floor + 1) * w_ceil


def rd_cost(model: GainedTransforms, x: torch.Tensor, y: torch.Tensor, quality: float,
            quantise: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor | None = None,
            synthesis: torch.nn.Module | None = None, contexts: dict | None = None) -> torch.Tensor:
    """bpp + lambda * 255^2 * MSE of latent ``y`` (and side information ``z``, else h_a's) for
    padded image ``x``, as the model trains; ``synthesis``: g_s, or a copy of it in another layout;
    ``contexts``: the search's kept context outputs (:func:`~codec.models.hyperprior.context_output`), None
    to compute them afresh."""
    position = model.position(quality).reshape(1)
    _, inv_gain = model.gains(position)
    y_hat, likelihoods = model.latent_pass(y, quantise, z, contexts)
    y_hat = y_hat * inv_gain.to(y.dtype)
    if synthesis is None:
        x_hat = model.g_s(y_hat)
    else:
        x_hat = synthesis(y_hat.contiguous(memory_format=torch.channels_last))
    mse = ((x_hat - x) ** 2).mean()
    lmbda = float(model.lmbda(position))
    return bpp_of(likelihoods, x.shape[-2] * x.shape[-1])[0] + lmbda * 255**2 * mse


def hard(v: torch.Tensor) -> torch.Tensor:
    """Rounding as the encoder codes it, with a straight-through gradient."""
    return v + (torch.round(v) - v).detach()


def search(model: GainedTransforms, x: torch.Tensor, y: torch.Tensor, quality: float, iterations: int,
           seed: int = 0, progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent and side information (y, z) after ``iterations`` steps of the search, starting
    from ``y`` (g_a's) and h_a's z; tile by tile for a large latent. ``progress(n)`` is told as
    each step is done."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # the search moves the latent alone
        p.requires_grad_(False)
    # the whole model beside the image for the search; afterwards each tensor goes back where coding
    # keeps it (the entropy models and the fixed-point networks on the CPU)
    params = [(p, p.device) for p in model.parameters()]
    buffers = [(m, n, b.device) for m in model.modules() for n, b in m._buffers.items() if b is not None]
    try:
        model.to(x.device)
        synthesis = search_synthesis(model.g_s)
        return _search(model, x, y, quality, iterations, seed, progress, synthesis)
    finally:
        for p, device in params:
            p.data = p.data.to(device)
        for m, n, device in buffers:
            m._buffers[n] = m._buffers[n].to(device)
        for p in frozen:
            p.requires_grad_(True)


class FrozenGDN(nn.Module):
    """A GDN (or inverse GDN) whose parameters the search does not move, read off once: each call is
    one matrix product over the channels of a channels_last tensor, where CompressAI's re-derives
    beta and gamma and takes a slower 1x1 convolution."""

    def __init__(self, gdn: GDN):
        super().__init__()
        beta, gamma_t = gdn_matrices(gdn)
        self.register_buffer("beta", beta)
        self.register_buffer("gamma_t", gamma_t)
        self.inverse = gdn.inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # NHWC: a view of a channels_last tensor
        return _GDN.apply(x, self.beta, self.gamma_t, self.inverse).permute(0, 3, 1, 2)


class _GDN(torch.autograd.Function):
    """x * norm^p, norm = beta + x^2 gamma (p = 1/2 inverse, else -1/2), over the last dimension,
    with a backward of four passes over x where autograd's takes seven (the search's synthesis
    spends a fifth of a step on its last GDN alone); gradient for x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor, gamma_t: torch.Tensor, inverse: bool) -> torch.Tensor:
        C = x.shape[-1]
        factor = torch.addmm(beta, (x * x).reshape(-1, C), gamma_t).reshape(x.shape)
        factor = factor.sqrt_() if inverse else factor.rsqrt_()
        ctx.save_for_backward(x, factor, gamma_t)
        ctx.inverse = inverse
        return x * factor

    @staticmethod
    @torch.autograd.function.once_differentiable  # the search needs no second derivative
    def backward(ctx, grad: torch.Tensor):
        x, factor, gamma_t = ctx.saved_tensors
        C = x.shape[-1]
        # twice d loss / d norm: 2 * grad * x * d factor / d norm = grad * x / factor (inverse), -grad * x * factor^3
        twice = grad * x
        twice = twice.div_(factor) if ctx.inverse else twice.mul_(factor * factor * factor).neg_()
        # d loss / d x = grad * factor + 2x * (d loss / d norm) gamma_t^T
        by_square = torch.mm(twice.reshape(-1, C), gamma_t.t()).reshape(x.shape)
        return (grad * factor).addcmul_(x, by_square), None, None, None


def search_synthesis(g_s: nn.Sequential) -> nn.Sequential:
    """A copy of ``g_s`` for the search: channels_last (1.4x faster forward and backward on a CPU,
    measured on a Zen 3) with its GDNs as :class:`FrozenGDN` (1.1-1.15x more, Kodak-sized latent);
    a copy, so the decoder's own layers (and its exact results) stay as they are."""
    layers = [FrozenGDN(layer) if isinstance(layer, GDN) else copy.deepcopy(layer) for layer in g_s]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


def _search(model, x, y, quality, iterations, seed, progress, synthesis) -> tuple[torch.Tensor, torch.Tensor]:
    H, W = y.shape[-2:]  # multiples of 4, as TILE and MARGIN are: z is y's size / 4
    with torch.no_grad():
        z = model.side_information(y.float())
    out_y, out_z = y.detach().clone().float(), z.detach().clone()
    for top in range(0, H, TILE):
        for left in range(0, W, TILE):
            t0, l0 = max(top - MARGIN, 0), max(left - MARGIN, 0)
            t1, l1 = min(top + TILE + MARGIN, H), min(left + TILE + MARGIN, W)
            found_y, found_z = _search_tile(model, x[..., 16 * t0 : 16 * t1, 16 * l0 : 16 * l1], y[..., t0:t1, l0:l1],
                                            z[..., t0 // 4 : t1 // 4, l0 // 4 : l1 // 4], quality, iterations,
                                            seed + 7919 * (top * W + left), progress, synthesis)
            h, w = min(TILE, H - top), min(TILE, W - left)
            a, b = top - t0, left - l0
            out_y[..., top : top + h, left : left + w] = found_y[..., a : a + h, b : b + w]
            a, b, h, w = a // 4, b // 4, h // 4, w // 4
            out_z[..., top // 4 : top // 4 + h, left // 4 : left // 4 + w] = found_z[..., a : a + h, b : b + w]
    return out_y, out_z


def _search_tile(model, x, y, z, quality, iterations, seed, progress, synthesis) -> tuple[torch.Tensor, torch.Tensor]:
    """The search over one tile, of y and z together (Yang et al. search both); it keeps the best
    pair hard rounding measured (at the start, every CHECK steps of the later part and at the end),
    so it never returns a costlier one than it started from."""
    generator = torch.Generator().manual_seed(seed)
    y_var = y.detach().clone().float().requires_grad_(True)
    z_var = z.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([y_var, z_var], lr=learning_rate(quality, iterations))
    (hi, odds), lo = schedule(iterations), END_TEMPERATURE
    best, best_cost = (y.detach().float(), z.detach().float()), _hard_cost(model, x, y, z, quality, synthesis)
    contexts: dict = {}
    for step in range(iterations):
        temperature = hi * (lo / hi) ** (step / max(iterations - 1, 1))
        if step % REFRESH == 0:
            contexts.clear()
        cost = rd_cost(model, x, y_var, quality, lambda v, t=temperature: sga(v, t, generator, odds), z_var, synthesis,
                       contexts)
        opt.zero_grad(set_to_none=True)
        cost.backward()
        opt.step()
        if ((step + 1) % CHECK == 0 and step + 1 >= CHECK_FROM * iterations) or step == iterations - 1:
            now = _hard_cost(model, x, y_var, z_var, quality, synthesis)
            if now < best_cost:
                best, best_cost = (y_var.detach().clone(), z_var.detach().clone()), now
        if progress:
            progress(1)
    return best


def learning_rate(quality: float, iterations: int) -> float:
    """Adam's step for a search of ``iterations`` at ``quality``: a high quality's latent spans
    many quantisation steps and gains from longer strides; a low one's mostly rounds to zero,
    where a long stride buys rate it does not repay."""
    start, boost = TOP_BOOST
    lr = LEARNING_RATE * boost ** min(max((quality - start) / (100 - start), 0.0), 1.0)
    return lr if iterations < 100 else lr / 2


@torch.no_grad()
def _hard_cost(model, x, y, z, quality, synthesis=None) -> float:
    return float(rd_cost(model, x, y.float(), quality, hard, z.float(), synthesis))
