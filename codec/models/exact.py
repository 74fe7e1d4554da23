"""Exactness as a part: what any network whose output picks a CDF table needs.

Learned codecs break when the decoder computes a slightly different probability model than the
encoder did. Two tools here keep them in step:

* :class:`FixedPointConvStack`: convolutions with weights on a 2^-12 grid and activations on a
  2^-10 grid, evaluated in float64 on CPU, where every product and partial sum is an exactly
  representable number: the result does not depend on summation order, thread count or device.
  Training uses the same quantisers with a straight-through gradient, so what is trained is what
  runs. Its weights are stored as the exact integers (:func:`integer_scales`).
* :func:`plain_cpu_kernels`: PyTorch's native CPU convolutions instead of oneDNN's, for the float
  networks whose output should not depend on the thread count (the synthesis transforms).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHT_FRAC_BITS = 12  # fixed-point weights: multiples of 2^-12
ACT_FRAC_BITS = 10  # fixed-point activations: multiples of 2^-10
ACT_LIMIT = 2048.0  # |activation| bound; keeps every partial sum far below 2^53
WEIGHT_LIMIT = 32767 / 4096  # so a weight fits int16 on the 2^-12 grid


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def fixed(x: torch.Tensor, frac_bits: int, limit: float) -> torch.Tensor:
    """Snap x onto the grid k * 2^-frac_bits, clamped to +-limit (exact in float32 and float64)."""
    scale = float(2**frac_bits)
    return ste_round(torch.clamp(x, -limit, limit) * scale) / scale


class FixedPointConvStack(nn.Module):
    """Conv2d / ConvTranspose2d layers with ReLU between them, in fixed point."""

    def __init__(self, layers: list[nn.Conv2d | nn.ConvTranspose2d]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def _weights(self, layer: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's weights on their grids. Where no gradient reaches them (coding, the encoder's
        search) they are snapped once and kept until they change (a tensor's version counts its
        in-place changes: optimiser steps, load_state_dict)."""
        frozen = not (torch.is_grad_enabled() and layer.weight.requires_grad)
        key = (layer.weight._version, layer.bias._version, layer.weight.device, dtype)
        if frozen and getattr(layer, "_fixed_key", None) == key:
            return layer._fixed
        w = fixed(layer.weight, WEIGHT_FRAC_BITS, WEIGHT_LIMIT).to(dtype)
        b = fixed(layer.bias, WEIGHT_FRAC_BITS + ACT_FRAC_BITS, WEIGHT_LIMIT).to(dtype)
        if frozen:
            layer._fixed_key, layer._fixed = key, (w.detach(), b.detach())
        return w, b

    @staticmethod
    def _conv(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if isinstance(layer, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, w, b, layer.stride, layer.padding, layer.output_padding)
        return F.conv2d(x, w, b, layer.stride, layer.padding)

    def _after_first(self, x: torch.Tensor) -> torch.Tensor:
        """The stack from the first layer's sums (bias included) on."""
        for i, layer in enumerate(self.layers):
            if i:
                x = self._conv(layer, x, *self._weights(layer, x.dtype))
            x = fixed(x, ACT_FRAC_BITS, ACT_LIMIT)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training path (any device and float type), on the same grids as :meth:`exact`."""
        x = fixed(x, ACT_FRAC_BITS, ACT_LIMIT)
        return self._after_first(self._conv(self.layers[0], x, *self._weights(self.layers[0], x.dtype)))

    @torch.no_grad()
    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The coding path: float64 on CPU, where every sum is exact."""
        return self.forward(x.detach().to("cpu", torch.float64))

    # A network run twice on inputs that share their leading channels (a checkerboard's two
    # passes) computes the first layer's sums over those channels once: the sums are exact, so
    # splitting them changes nothing. exact(cat([a, b])) == exact_rest(exact_first(a), b).

    # The training path splits the same way (first / rest: differentiable, any device and float
    # type), so that a checkerboard's two passes cost one pass of the first layer's big sums.

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """The first layer's sums over the leading input channels ``x`` (no bias)."""
        layer = self.layers[0]
        x = fixed(x, ACT_FRAC_BITS, ACT_LIMIT)
        w, _ = self._weights(layer, x.dtype)
        return self._conv(layer, x, w[:, : x.shape[1]] if isinstance(layer, nn.Conv2d) else w[: x.shape[1]], None)

    def rest(self, partial: torch.Tensor, rest: torch.Tensor | None) -> torch.Tensor:
        """The output for the input (leading channels, ``rest``), given :meth:`first` of the
        leading channels; ``rest`` None: zeros, whose sums are the bias alone."""
        layer = self.layers[0]
        w, b = self._weights(layer, partial.dtype)
        if rest is None:
            return self._after_first(partial + b.reshape(1, -1, 1, 1))
        rest = fixed(rest, ACT_FRAC_BITS, ACT_LIMIT)
        n = rest.shape[1]
        w = w[:, -n:] if isinstance(layer, nn.Conv2d) else w[-n:]
        return self._after_first(partial + self._conv(layer, rest, w, b))

    @torch.no_grad()
    def exact_first(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`first`, exactly: float64 on CPU."""
        return self.first(x.detach().to("cpu", torch.float64))

    @torch.no_grad()
    def exact_rest(self, partial: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """:meth:`rest`, exactly, given :meth:`exact_first`."""
        return self.rest(partial, rest.detach().to("cpu", torch.float64))


@torch.no_grad()
def exact_first_shared(stacks: list[FixedPointConvStack], x: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
    """Each stack's first-layer sums over the input channels ``start`` .. ``start + x.shape[1]``
    (no bias), exactly, as one convolution: the stacks' weights on those channels side by side,
    so ``x`` is read once for all of them. Exact sums, so the same numbers as each stack's own
    (``exact_first`` where ``start`` is 0); model 4's five slice networks share the hyperprior's
    640 channels, and one convolution over them ran 1.9x faster than five."""
    layers = [stack.layers[0] for stack in stacks]
    shape = lambda layer: (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups)  # noqa: E731
    if not all(isinstance(layer, nn.Conv2d) and layer.groups == 1 and shape(layer) == shape(layers[0])
               for layer in layers):
        raise ValueError("stacks whose first layers are ungrouped convolutions of one shape")
    x = fixed(x.detach().to("cpu", torch.float64), ACT_FRAC_BITS, ACT_LIMIT)
    weights = [stack._weights(layer, x.dtype)[0][:, start : start + x.shape[1]] for stack, layer in zip(stacks, layers)]
    sums = F.conv2d(x, torch.cat(weights), None, layers[0].stride, layers[0].padding)
    return list(sums.split([w.shape[0] for w in weights], dim=1))


def integer_scales(model: nn.Module) -> dict[str, int]:
    """State-dict names of every fixed-point tensor in ``model`` -> the integer scale it is
    stored with (weights x 2^12 as int16, biases x 2^22 as int32), so a file holds them exactly."""
    scales = {}
    for prefix, module in model.named_modules():
        if isinstance(module, FixedPointConvStack):
            for name, _ in module.named_parameters():
                full = f"{prefix}.{name}" if prefix else name
                weight = name.endswith("weight")
                scales[full] = 2**WEIGHT_FRAC_BITS if weight else 2 ** (WEIGHT_FRAC_BITS + ACT_FRAC_BITS)
    return scales


_plain_lock = threading.Lock()
_plain_users = 0  # threads inside plain_cpu_kernels
_mkldnn_before = True


@contextmanager
def plain_cpu_kernels() -> Iterator[None]:
    """oneDNN's CPU convolutions change their summation order with the thread count, which moves
    a few decoded pixels by one level; PyTorch's native kernels, over MKL GEMMs in strict CNR
    mode (set in ``codec/__init__.py``), give the same result with 1 or N threads
    (tests/test_quality.py, tests/test_hostile.py), at a small cost in speed. The switch is
    process-wide: counted, so that codecs in several threads leave it off until the last is done."""
    global _plain_users, _mkldnn_before
    with _plain_lock:
        if _plain_users == 0:
            _mkldnn_before = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _plain_users += 1
    try:
        yield
    finally:
        with _plain_lock:
            _plain_users -= 1
            if _plain_users == 0:
                torch.backends.mkldnn.enabled = _mkldnn_before
