"""Encoder effort: search the latent of one image for a lower rate-distortion cost, with the
decoder unchanged.

``g_a`` gives an amortised guess of the latent; the encoder may instead optimise the latent of
the image at hand against the shipped model's own loss, rate + lambda * 255^2 * MSE, and code
what it finds: any latent is a valid file, decoded by the unchanged decoder. Rounding has no
gradient, so the search relaxes it as stochastic Gumbel annealing does (Yang, Bamler & Mandt,
"Improving Inference for Neural Image Compression", NeurIPS 2020): each value is rounded down or
up at random, with odds from its distance to each (atanh), softened by a temperature that anneals
from 0.5 towards 0, so that the search ends on what hard rounding will code. The rate is the
entropy model's probability of the rounded value, with every context (the hyperprior, earlier
slices, the checkerboard's anchors) computed from rounded values, as the decoder will.

Large images are searched in tiles of the latent (with a margin that is searched but not kept),
so memory stays bounded like the rest of the codec. The same image, quality and effort give the
same latent on the same machine: the random draws are seeded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from codec.models.hyperprior import GainedTransforms, bpp_of

EFFORTS = {0: 0, 1: 25, 2: 100, 3: 300, 4: 1000}  # effort level -> search iterations (0: g_a's latent as it is)
TEMPERATURE = (0.5, 0.02)  # annealed exponentially from the first to the last over the iterations
LEARNING_RATE = 0.01  # Adam's, on latent values in quantisation steps
TILE = 32  # latent units (512 pixels) searched at once
MARGIN = 4  # latent units around a tile, searched for its context but not kept
CHECK = 5  # steps between measurements of the latent as hard rounding codes it


def sga(v: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Stochastic Gumbel annealing of ``round(v)``: floor or ceil, relaxed (differentiable in v)."""
    floor = torch.floor(v).detach()
    frac = (v - floor).clamp(1e-4, 1 - 1e-4)
    logits = torch.stack([-torch.atanh(frac), -torch.atanh(1 - frac)], dim=-1) / temperature
    u = torch.rand(logits.shape, generator=generator).clamp(1e-9, 1 - 1e-9).to(logits.device)
    weights = torch.softmax((logits - torch.log(-torch.log(u))) / temperature, dim=-1)
    return floor + weights[..., 1]  # floor * w_floor + (floor + 1) * w_ceil


def rd_cost(model: GainedTransforms, x: torch.Tensor, y: torch.Tensor, quality: float,
            quantise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """bpp + lambda * 255^2 * MSE of latent ``y`` for padded image ``x``, as the model trains."""
    position = model.position(quality).reshape(1)
    _, inv_gain = model.gains(position)
    y_hat, likelihoods = model.latent_pass(y, quantise)
    x_hat = model.g_s(y_hat * inv_gain.to(y.dtype))
    mse = ((x_hat - x) ** 2).mean()
    lmbda = float(model.lmbda(position))
    return bpp_of(likelihoods, x.shape[-2] * x.shape[-1])[0] + lmbda * 255**2 * mse


def hard(v: torch.Tensor) -> torch.Tensor:
    """Rounding as the encoder codes it, with a straight-through gradient."""
    return v + (torch.round(v) - v).detach()


def search(model: GainedTransforms, x: torch.Tensor, y: torch.Tensor, quality: float, iterations: int,
           seed: int = 0, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The latent after ``iterations`` steps of the search, starting from ``y`` (g_a's); tile by
    tile for a large latent. ``progress(n)`` is told as each step is done."""
    if iterations <= 0:
        return y
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # the search moves the latent alone
        p.requires_grad_(False)
    try:
        return _search(model, x, y, quality, iterations, seed, progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _search(model, x, y, quality, iterations, seed, progress) -> torch.Tensor:
    H, W = y.shape[-2:]
    out = y.detach().clone()
    for top in range(0, H, TILE):
        for left in range(0, W, TILE):
            t0, l0 = max(top - MARGIN, 0), max(left - MARGIN, 0)
            t1, l1 = min(top + TILE + MARGIN, H), min(left + TILE + MARGIN, W)
            found = _search_tile(model, x[..., 16 * t0 : 16 * t1, 16 * l0 : 16 * l1], y[..., t0:t1, l0:l1],
                                 quality, iterations, seed + 7919 * (top * W + left), progress)
            h, w = min(TILE, H - top), min(TILE, W - left)
            out[..., top : top + h, left : left + w] = found[..., top - t0 : top - t0 + h, left - l0 : left - l0 + w]
    return out


def _search_tile(model, x, y, quality, iterations, seed, progress) -> torch.Tensor:
    """The search over one tile; it keeps the best latent that hard rounding measured (at the
    start, every CHECK steps and at the end), so it never returns a costlier one than it started from."""
    generator = torch.Generator().manual_seed(seed)
    latent = y.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=LEARNING_RATE)
    hi, lo = TEMPERATURE
    best, best_cost = y.detach(), _hard_cost(model, x, y, quality)
    for step in range(iterations):
        temperature = hi * (lo / hi) ** (step / max(iterations - 1, 1))
        cost = rd_cost(model, x, latent, quality, lambda v, t=temperature: sga(v, t, generator))
        opt.zero_grad(set_to_none=True)
        cost.backward()
        opt.step()
        if (step + 1) % CHECK == 0 or step == iterations - 1:
            now = _hard_cost(model, x, latent, quality)
            if now < best_cost:
                best, best_cost = latent.detach().clone(), now
        if progress:
            progress(1)
    return best


@torch.no_grad()
def _hard_cost(model, x, y, quality) -> float:
    return float(rd_cost(model, x, y.float(), quality, hard))
