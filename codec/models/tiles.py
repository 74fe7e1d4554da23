"""Running networks over large images in tiles, so that memory does not grow with the image.

Two kinds, because the networks differ:

* :func:`exact` for purely local networks (convolutions, GDN, fixed-point stacks): each tile is
  extended by a halo wider than the network's receptive field and only its core is kept, so
  every output value sees exactly the inputs it would see in one pass over the whole image.
  With PyTorch's native CPU kernels (``plain_cpu_kernels``) the result is bit-identical to the
  untiled pass (``tests/test_hostile.py``), whatever the tile size.
* :func:`blended` for networks with image-wide statistics (the VAE's GroupNorm), which no halo
  can make exact: overlapping tiles on a grid fixed by the image size alone, cross-faded
  linearly over the overlap (as diffusers' tiled VAE does). The grid never depends on the
  machine, so a file still always decodes to the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Net = Callable[[torch.Tensor], torch.Tensor]


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``size``: every ``stride``, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def exact(net: Net, x: torch.Tensor, tile: int, halo: int, up: int = 1, down: int = 1) -> torch.Tensor:
    """``net(x)`` computed tile by tile. ``net`` maps (1, C, h, w) to (1, C', h*up/down,
    w*up/down); ``tile`` and ``halo`` are in units of ``x`` and multiples of ``down``."""
    H, W = x.shape[-2:]
    if H <= tile + halo and W <= tile + halo:
        return net(x)
    out = None
    for top in range(0, H, tile):
        for left in range(0, W, tile):
            t0, l0 = max(top - halo, 0), max(left - halo, 0)
            t1, l1 = min(top + tile + halo, H), min(left + tile + halo, W)
            y = net(x[..., t0:t1, l0:l1])
            if out is None:
                out = y.new_empty(*y.shape[:2], H * up // down, W * up // down)
            h, w = (min(top + tile, H) - top) * up // down, (min(left + tile, W) - left) * up // down
            ct, cl = (top - t0) * up // down, (left - l0) * up // down
            t, l = top * up // down, left * up // down
            out[..., t : t + h, l : l + w] = y[..., ct : ct + h, cl : cl + w]
            del y
    return out


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, like: torch.Tensor) -> torch.Tensor:
    """Weights along one axis of a tile: rising over the overlap at a start that has a
    neighbour, falling at such an end, 1 elsewhere (never 0: the sum is divided out)."""
    r = torch.ones(n, dtype=like.dtype, device=like.device)
    k = min(overlap, n)
    ramp = (torch.arange(k, dtype=like.dtype, device=like.device) + 0.5) / k
    if at_start:
        r[:k] *= ramp
    if at_end:
        r[n - k :] *= ramp.flip(0)
    return r


def blended(net: Net, x: torch.Tensor, tile: int, overlap: int, up: int = 1, down: int = 1) -> torch.Tensor:
    """``net`` over overlapping tiles of ``x`` (``tile`` wide, ``overlap`` shared with each
    neighbour, in units of ``x``; multiples of ``down``), outputs cross-faded where they overlap."""
    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        return net(x)
    rows, cols = _starts(H, tile, tile - overlap), _starts(W, tile, tile - overlap)
    out = weight = None
    o = overlap * up // down
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            y = net(x[..., top : top + tile, left : left + tile]).float()
            if out is None:
                out = y.new_zeros(*y.shape[:2], H * up // down, W * up // down)
                weight = y.new_zeros(H * up // down, W * up // down)
            h, w = y.shape[-2:]
            wy = _ramp(h, o, i > 0, i < len(rows) - 1, y)
            wx = _ramp(w, o, j > 0, j < len(cols) - 1, y)
            m = wy[:, None] * wx[None, :]
            t, l = top * up // down, left * up // down
            out[..., t : t + h, l : l + w] += y * m
            weight[t : t + h, l : l + w] += m
            del y
    return out / weight
