"""The decoder's synthesis on a CPU: ``g_s``'s own layers and weights, computed without
PyTorch's column buffers.

Decoding runs PyTorch's native CPU kernels, so that pixels do not depend on the thread count
(:func:`~codec.models.exact.plain_cpu_kernels`). Its transposed convolution multiplies the whole
input into one buffer of output channels x 25 x input pixels (470 MB for the third layer of a
192-wide ``g_s`` on a Kodak image) and scatters that back into the output: memory-bound, a
quarter of it page faults. Here a stride-2 5x5 transposed convolution is written as what it is,
four interleaved stride-1 convolutions (one per output phase, 9, 6, 6 and 4 taps), each a sum
of matrix products of the channels-last input, shifted, with one tap's weights, accumulated in
place; GDN is one matrix product over the channels; the last layer (3 channels, a small column
buffer) keeps the native column form, so the pixels come out in the image's layout. Every sum is
an MKL GEMM in strict CNR mode (set in ``codec/__init__.py``): the same on 1 or N threads, and
every output value sees only its own inputs, so tiles (``codec/models/tiles.py``) stay exact.

The maths is the layers'; the summation order is not the native kernels', so against them a
pixel in about 10^5 moves by one level. Training and the encoder's search use the layers
themselves: this is a decoder's kernel, not a different network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from codec.models import lean_imports

lean_imports.load()  # CompressAI's layers, not its point-cloud datasets (see there)
from compressai.layers import GDN  # noqa: E402

Layer = Callable[[torch.Tensor], torch.Tensor]


def gdn_matrices(gdn: GDN) -> tuple[torch.Tensor, torch.Tensor]:
    """A GDN's effective beta (C) and gamma, transposed for ``x^2 @ gamma_t`` (C x C), read off its
    reparametrisations once (new tensors: nothing is shared with ``gdn``)."""
    C = gdn.beta.shape[0]
    with torch.no_grad():
        beta = gdn.beta_reparam(gdn.beta)
        gamma_t = gdn.gamma_reparam(gdn.gamma).reshape(C, C).t().contiguous()
    return beta, gamma_t


def _gdn(beta: torch.Tensor, gamma_t: torch.Tensor, inverse: bool) -> Layer:
    """x * (beta + x^2 gamma)^(+-1/2) over the last (channel) dimension of an (h, w, C) tensor."""

    def layer(x: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        norm = torch.addmm(beta, (x * x).view(-1, C), gamma_t).view(x.shape)
        return (norm.sqrt_() if inverse else norm.rsqrt_()).mul_(x)

    return layer


def _phases() -> list[tuple[int, int, list[tuple[int, int, int, int]]]]:
    """Output phase (py, px) of a stride-2, 5x5, padding-2 transposed convolution and its taps:
    ``out[2a + py, 2b + px] += x[a + da, b + db] @ w[:, :, kh, kw]`` for each (kh, kw, da, db)."""
    return [(py, px, [(kh, kw, (py + 2 - kh) // 2, (px + 2 - kw) // 2)
                      for kh in range(py, 5, 2) for kw in range(px, 5, 2)])
            for py in (0, 1) for px in (0, 1)]


PHASES = _phases()


def _deconv(layer: nn.ConvTranspose2d) -> Layer:
    """(h, w, C_in) -> (2h, 2w, C_out), channels last, for CompressAI's ``deconv`` (kernel 5,
    stride 2, padding 2, output padding 1)."""
    taps = layer.weight.detach().permute(2, 3, 0, 1).contiguous()  # (5, 5, C_in, C_out)
    bias = layer.bias.detach()

    def deconv(x: torch.Tensor) -> torch.Tensor:
        h, w, c_in = x.shape
        c_out = taps.shape[-1]
        # zeros around the input: a column either side, a row above and two below, so every
        # shifted view below is a plain (rows, C_in) matrix of the flattened padded input; each
        # phase is computed over the padded width and its last two columns are dropped
        wp = w + 2
        padded = x.new_zeros(h + 3, wp, c_in)
        padded[1 : h + 1, 1 : w + 1] = x
        flat = padded.view(-1, c_in)
        n = h * wp
        out = x.new_empty(h, 2, wp, 2, c_out)  # (a, py, b, px): row 2a + py, column 2b + px
        acc = x.new_empty(n, c_out)
        for py, px, phase in PHASES:
            for i, (kh, kw, da, db) in enumerate(phase):
                start = (1 + da) * wp + 1 + db
                if i == 0:
                    torch.addmm(bias, flat[start : start + n], taps[kh, kw], out=acc)
                else:
                    acc.addmm_(flat[start : start + n], taps[kh, kw])
            out[:, py, :, px] = acc.view(h, wp, c_out)
        return out.view(2 * h, 2 * wp, c_out)[:, : 2 * w]

    return deconv


def _last_deconv(layer: nn.ConvTranspose2d) -> Layer:
    """(h, w, C_in) -> (1, C_out, 2h, 2w): the native kernel's column form (one matrix product,
    then col2im), whose buffer is small for an image's 3 channels, reading the channels-last input
    as it is and writing the image's layout."""
    c_in, c_out = layer.weight.shape[:2]
    columns_t = layer.weight.detach().reshape(c_in, c_out * 25).t()
    bias = layer.bias.detach().view(1, c_out, 1, 1)

    def deconv(x: torch.Tensor) -> torch.Tensor:
        h, w, _ = x.shape
        columns = torch.mm(columns_t, x.reshape(h * w, c_in).t())  # (C_out x 25, h w)
        return F.fold(columns[None], (2 * h, 2 * w), 5, padding=2, stride=2).add_(bias)

    return deconv


def _is_deconv(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.ConvTranspose2d) and layer.kernel_size == (5, 5) and layer.stride == (2, 2)
            and layer.padding == (2, 2) and layer.output_padding == (1, 1) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.bias is not None)


def for_decoding(g_s: nn.Sequential) -> Layer:
    """``g_s`` (CompressAI's deconv / inverse GDN stack, the image last) as a function
    (1, M, h, w) -> (1, 3, 16h, 16w) for decoding on a CPU; ``g_s`` itself for any other stack."""
    layers = list(g_s)
    middle, last = layers[:-1], layers[-1]
    if not (_is_deconv(last) and all(_is_deconv(m) or isinstance(m, GDN) for m in middle)):
        return g_s
    steps = [_gdn(*gdn_matrices(m), m.inverse) if isinstance(m, GDN) else _deconv(m) for m in middle]
    steps.append(_last_deconv(last))

    def synthesis(y: torch.Tensor) -> torch.Tensor:
        x = y[0].permute(1, 2, 0).contiguous()  # (h, w, M)
        for step in steps:
            x = step(x)
        return x

    return synthesis
