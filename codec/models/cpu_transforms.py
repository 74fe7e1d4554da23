"""The transforms on a CPU, for coding: ``g_a``'s and ``g_s``'s own layers and weights,
computed without PyTorch's column buffers.

Coding runs PyTorch's native CPU kernels, so that files and pixels do not depend on the thread
count (:func:`~codec.models.exact.plain_cpu_kernels`). Their convolutions copy the input into one
buffer of channels x 25 x pixels (470 MB for the third layer of a 192-wide ``g_s`` on a Kodak
image), multiply and, for a transposed convolution, scatter it back: memory-bound, a quarter of it
page faults. Here a 5x5 stride-2 convolution (CompressAI's ``conv``) is a sum of 25 matrix
products, one per tap, of one of the four polyphase components of the channels-last input,
shifted, with that tap's weights, accumulated in place; the transposed one (``deconv``) is four
interleaved stride-1 convolutions, one per output phase (9, 6, 6 and 4 taps), each such a sum; GDN
is one matrix product over the channels. The first layer of ``g_a`` (3 input channels) and the
last of ``g_s`` (3 output channels) have small column buffers and keep the native column form,
reading or writing the image's layout. Every sum is an MKL GEMM in strict CNR mode (set in
``codec/__init__.py``): the same on 1 or N threads, and every output value sees only its own
inputs, so tiles (``codec/models/tiles.py``) stay exact.

The f8 VAE's 3x3 stride-1 convolutions (:func:`with_tap_convs`) are nine such matrix products
each, on the image's own layout: a shifted view of the flattened, zero-padded input is a plain
(C_in, pixels) matrix too.

The maths is the layers'; the summation order is not the native kernels', so against them a
decoded pixel in about 10^5 moves by one level. Training and the encoder's search use the layers
themselves: these are kernels for coding, not different networks.
"""

from __future__ import annotations

import copy
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


def _gdn(gdn: GDN) -> Layer:
    """x * (beta + x^2 gamma)^(+-1/2) over the last (channel) dimension of an (h, w, C) tensor."""
    beta, gamma_t = gdn_matrices(gdn)
    inverse = gdn.inverse

    def layer(x: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        norm = torch.addmm(beta, (x * x).reshape(-1, C), gamma_t).view(x.shape)
        return (norm.sqrt_() if inverse else norm.rsqrt_()).mul_(x)

    return layer


def _sum_of_products(out: torch.Tensor, bias: torch.Tensor, products) -> torch.Tensor:
    """``out = bias + a1 @ b1 + a2 @ b2 + ...`` in place, one GEMM a term, in the order given (the
    order is part of the result's bits)."""
    (a, b), *rest = products
    torch.addmm(bias, a, b, out=out)
    for a, b in rest:
        out.addmm_(a, b)
    return out


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
            starts = [(1 + da) * wp + 1 + db for _, _, da, db in phase]
            _sum_of_products(acc, bias, [(flat[s : s + n], taps[kh, kw]) for s, (kh, kw, _, _) in zip(starts, phase)])
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


def _conv(layer: nn.Conv2d) -> Layer:
    """(h, w, C_in) -> (ceil(h/2), ceil(w/2), C_out), channels last, for CompressAI's ``conv``
    (kernel 5, stride 2, padding 2)."""
    taps = layer.weight.detach().permute(2, 3, 1, 0).contiguous()  # (5, 5, C_in, C_out)
    bias = layer.bias.detach()

    def conv(x: torch.Tensor) -> torch.Tensor:
        h, w, c_in = x.shape
        ho, wo = (h + 1) // 2, (w + 1) // 2
        # the polyphase components x[py::2, px::2], each zero-padded by a row above and two below,
        # a column either side: tap (kh, kw) reads component (kh % 2, kw % 2) shifted by
        # (kh // 2 - 1, kw // 2 - 1), a plain (rows, C_in) matrix of the flattened component
        wp = wo + 2
        phases = x.new_zeros(2, 2, ho + 3, wp, c_in)
        for py in (0, 1):
            for px in (0, 1):
                part = x[py::2, px::2]
                phases[py, px, 1 : 1 + part.shape[0], 1 : 1 + part.shape[1]] = part
        flat = phases.view(2, 2, -1, c_in)
        n = ho * wp
        taps_in_order = [(kh, kw, (kh // 2) * wp + kw // 2) for kh in range(5) for kw in range(5)]
        acc = _sum_of_products(x.new_empty(n, taps.shape[-1]), bias,
                               [(flat[kh % 2, kw % 2, s : s + n], taps[kh, kw]) for kh, kw, s in taps_in_order])
        return acc.view(ho, wp, -1)[:, :wo]

    return conv


def _first_conv(layer: nn.Conv2d) -> Layer:
    """(1, C_in, h, w) -> (ceil(h/2), ceil(w/2), C_out): the native kernel's column form (unfold,
    then one matrix product), whose buffer is small for an image's 3 channels, reading the image's
    layout and writing channels last."""
    c_out = layer.weight.shape[0]
    weight_t = layer.weight.detach().reshape(c_out, -1).t()
    bias = layer.bias.detach()

    def conv(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        columns = F.unfold(x, 5, padding=2, stride=2)[0]  # (C_in x 25, ho wo)
        return torch.addmm(bias, columns.t(), weight_t).view((h + 1) // 2, (w + 1) // 2, c_out)

    return conv


def _plain(layer: nn.Module, kind: type) -> bool:
    """Exactly a ``kind`` (no subclass), with no hooks (weight norm, observers) that its forward
    would run and these kernels would not."""
    return type(layer) is kind and not layer._forward_hooks and not layer._forward_pre_hooks


def _coding(x: torch.Tensor) -> bool:
    """The case these kernels compute: a batch of one, no gradient wanted."""
    return x.shape[0] == 1 and not torch.is_grad_enabled()


def _is_conv(layer: nn.Module) -> bool:
    return (_plain(layer, nn.Conv2d) and layer.kernel_size == (5, 5) and layer.stride == (2, 2)
            and layer.padding == (2, 2) and layer.dilation == (1, 1) and layer.groups == 1
            and layer.bias is not None and layer.padding_mode == "zeros")


def _is_deconv(layer: nn.Module) -> bool:
    return (_plain(layer, nn.ConvTranspose2d) and layer.kernel_size == (5, 5) and layer.stride == (2, 2)
            and layer.padding == (2, 2) and layer.output_padding == (1, 1) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.bias is not None)


def analysis(g_a: nn.Sequential) -> Layer:
    """``g_a`` (CompressAI's conv / GDN stack, the image first) as a function (1, 3, H, W) ->
    (1, M, H/16, W/16) for coding on a CPU; ``g_a`` itself for any other stack, and the layers
    for a batch of more than one or with gradients on."""
    layers = list(g_a)
    if not (len(layers) > 1 and all(_is_conv(m) or _plain(m, GDN) for m in layers)
            and _is_conv(layers[0]) and _is_conv(layers[-1])):
        return g_a
    steps = [_first_conv(layers[0])] + [_gdn(m) if _plain(m, GDN) else _conv(m) for m in layers[1:]]

    def run(x: torch.Tensor) -> torch.Tensor:
        if not _coding(x):
            return g_a(x)
        for step in steps:
            x = step(x)
        return x.permute(2, 0, 1)[None].contiguous()

    return run


def synthesis(g_s: nn.Sequential) -> Layer:
    """``g_s`` (CompressAI's deconv / inverse GDN stack, the image last) as a function
    (1, M, h, w) -> (1, 3, 16h, 16w) for decoding on a CPU; ``g_s`` itself for any other stack, and
    the layers for a batch of more than one or with gradients on."""
    layers = list(g_s)
    if not (len(layers) > 1 and all(_is_deconv(m) or _plain(m, GDN) for m in layers)
            and _is_deconv(layers[0]) and _is_deconv(layers[-1])):
        return g_s
    steps = [_gdn(m) if _plain(m, GDN) else _deconv(m) for m in layers[:-1]] + [_last_deconv(layers[-1])]

    def run(y: torch.Tensor) -> torch.Tensor:
        if not _coding(y):
            return g_s(y)
        x = y[0].permute(1, 2, 0).contiguous()  # (h, w, M)
        for step in steps:
            x = step(x)
        return x

    return run


class _TapConv3x3(nn.Module):
    """A 3x3, stride-1, padding-1 convolution of (1, C_in, h, w) as nine in-place matrix
    products, ``out += w[:, :, kh, kw] @ x shifted by (kh - 1, kw - 1)``, with the layer's weights."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv  # for any other case (a batch, a gradient)
        self.register_buffer("taps", conv.weight.detach().permute(2, 3, 0, 1).contiguous(), persistent=False)
        self.register_buffer("bias", conv.bias.detach()[:, None], persistent=False)  # (C_out, C_in) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _coding(x):
            return self.conv(x)
        _, c_in, h, w = x.shape
        # zeros around the input, a column either side, a row above and two below: each tap reads a
        # (C_in, h * wp) window of the flattened rows; the two padding columns of the output are dropped
        wp = w + 2
        padded = x.new_zeros(c_in, h + 3, wp)
        padded[:, 1 : h + 1, 1 : w + 1] = x[0]
        flat = padded.view(c_in, -1)
        n = h * wp
        acc = _sum_of_products(x.new_empty(self.taps.shape[2], n), self.bias,
                               [(self.taps[kh, kw], flat[:, kh * wp + kw : kh * wp + kw + n])
                                for kh in range(3) for kw in range(3)])
        return acc.view(1, -1, h, wp)[..., :w].contiguous()


def _is_conv3x3(layer: nn.Module) -> bool:
    return (_plain(layer, nn.Conv2d) and layer.kernel_size == (3, 3) and layer.stride == (1, 1)
            and layer.padding == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1
            and layer.bias is not None and layer.padding_mode == "zeros")


def with_tap_convs(net: nn.Module) -> nn.Module:
    """A copy of ``net`` for coding a batch of one on a CPU, its 3x3 stride-1 convolutions (the
    VAE's) as :class:`_TapConv3x3`; everything else as it is. Only the modules are new: the copy
    shares ``net``'s parameters and buffers, and ``net`` is left as it was."""
    if _is_conv3x3(net):
        return _TapConv3x3(net)
    new = copy.copy(net)  # a new module object over the same tensors
    new._modules = {name: None if child is None else with_tap_convs(child) for name, child in net._modules.items()}
    return new
