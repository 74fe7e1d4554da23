"""A channel-conditional entropy model on the hyperprior's transforms (model id 3).

Minnen & Singh, "Channel-wise autoregressive entropy models for learned image compression"
(ICIP 2020): the latent is coded in S channel slices, and each slice's means and scales are
predicted from the hyperprior *and the slices already decoded*, so later slices cost fewer bits.
Here, without a spatial context:

* the model is the gained transforms (:class:`~codec.models.hyperprior.GainedTransforms`) around
  a latent codec, :class:`ChannelConditionalContext`, which is the hyperprior's
  (:class:`~codec.models.hyperprior.Hyperprior`) with the slices added;
* slice ``i``'s network sees the hyperprior's output (scales and means of every channel) and
  the dequantised slices ``0..i-1``, and predicts a *correction* to the hyperprior's scale and
  mean for its own channels. Its last layer starts at zero, so a model made from trained
  hyperprior weights (:meth:`ChannelConditional.from_hyperprior`) starts out coding exactly as
  they do, and training can only move it from there;
* the slice networks pick CDF tables, so they run in fixed point (``codec/models/exact.py``): a file
  decodes bit-identically on any machine and thread count, like the hyperprior's;
* optionally (``lrp`` > 0) *latent residual prediction*: once every slice is decoded, a small
  network sees the hyperprior's output and the whole decoded latent and adds a prediction of the
  rounding error (at most half a step, as ``0.5 * tanh``) before the synthesis. It feeds nothing
  that picks a CDF table, so it runs in floating point like the synthesis, and, as it is only
  used at the end, it may see every slice (Minnen & Singh's sees the slices before it). It too
  starts at zero, so it can be added to trained weights without changing what they decode.

A file holds the z stream, then one stream per slice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from codec import registry
from codec.format import entropy
from codec.models import tiles
from codec.models.exact import FixedPointConvStack, plain_cpu_kernels
from codec.models.hyperprior import (
    MAX_CHANNELS,
    GainedTransforms,
    GainHyperprior,
    Hyperprior,
    ModelConfig,
    check_rd_config,
    coded_side,
    coded_slice,
    context_output,
    conv,
    default_lambdas,
)


MAX_SLICES = 16  # published models use 5 (ELIC) or 10 (Minnen & Singh)


@dataclass(frozen=True)
class CCConfig:
    N: int = 128
    M: int = 192
    lambdas: tuple[float, ...] = field(default_factory=default_lambdas)
    slices: int = 4  # M must be a multiple
    width: int = 128  # channels of the slice networks
    lrp: int = 0  # channels of the latent residual prediction network; 0: none

    def __post_init__(self) -> None:
        check_rd_config(self)
        if not (1 <= self.slices <= MAX_SLICES and self.M % self.slices == 0 and 1 <= self.width <= MAX_CHANNELS):
            raise ValueError(f"slices={self.slices}, width={self.width}: M must be a multiple of the slices "
                             f"(1..{MAX_SLICES}), width 1..{MAX_CHANNELS}")
        if not 0 <= self.lrp <= MAX_CHANNELS:
            raise ValueError(f"lrp={self.lrp}: 0 (none) .. {MAX_CHANNELS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CCConfig:
        return cls(N=int(d["N"]), M=int(d["M"]), lambdas=tuple(float(x) for x in d["lambdas"]),
                   slices=int(d["slices"]), width=int(d["width"]), lrp=int(d.get("lrp", 0)))  # 0.6.0 and before: none


class ChannelConditionalContext(Hyperprior):
    """The latent codec: the hyperprior, and the latent in channel slices, each predicted from the
    hyperprior and the slices before it (and, with ``lrp``, the residual prediction at the end)."""

    def __init__(self, N: int, M: int, slices: int, width: int, lrp: int):
        super().__init__(N, M)
        self.slices = slices
        C = M // slices
        self.slice_nets = nn.ModuleList(
            FixedPointConvStack([
                conv(2 * M + i * C, width, stride=1, kernel_size=3),
                conv(width, width, stride=1, kernel_size=3),
                conv(width, 2 * C, stride=1, kernel_size=3),
            ])
            for i in range(slices)
        )
        self.lrp = None
        if lrp:  # the whole decoded latent and the hyperprior output -> the rounding error
            self.lrp = nn.Sequential(
                conv(3 * M, lrp, stride=1, kernel_size=1), nn.LeakyReLU(inplace=True),
                conv(lrp, lrp, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
                conv(lrp, M, stride=1, kernel_size=3),
            )
        with torch.no_grad():  # start as the hyperprior: no correction
            for last in [net.layers[-1] for net in self.slice_nets] + ([self.lrp[-1]] if self.lrp else []):
                last.weight.zero_()
                last.bias.zero_()

    @property
    def num_streams(self) -> int:
        return 1 + self.slices

    def _slice_params(self, i: int, hp: torch.Tensor, done: list[torch.Tensor],
                      net, contexts: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and means of slice ``i`` from the hyperprior output and the slices before it
        (``contexts``: see :func:`~codec.models.hyperprior.context_output`)."""
        C = hp.shape[1] // 2 // self.slices
        scales, means = hp.chunk(2, dim=1)
        out = context_output(contexts, i, lambda: net(torch.cat([hp, *done], dim=1)))
        d_scale, d_mean = out.chunk(2, dim=1)
        return scales[:, i * C : (i + 1) * C] + d_scale, means[:, i * C : (i + 1) * C] + d_mean

    def forward(self, y: torch.Tensor, quantise=None, z: torch.Tensor | None = None,
                contexts: dict | None = None) -> tuple[torch.Tensor, dict]:
        """As :meth:`Hyperprior.forward`; the slices see the earlier slices as rounded."""
        z_hat, z_likelihoods = coded_side(self.entropy_bottleneck, self.h_a(y) if z is None else z, quantise)
        hp = self.h_s(z_hat)
        done, likelihoods = [], []
        for i, part in enumerate(y.chunk(self.slices, dim=1)):
            scales, means = self._slice_params(i, hp, done, self.slice_nets[i], contexts)
            part_hat, lik = coded_slice(self.gaussian_conditional, part, scales, means, quantise)
            done.append(part_hat)
            likelihoods.append(lik)
        y_hat = self._refine(hp, torch.cat(done, dim=1))
        return y_hat, {"y": torch.cat(likelihoods, dim=1), "z": z_likelihoods}

    def _refine(self, hp: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """The decoded latent plus the predicted rounding error (none without ``lrp``)."""
        if self.lrp is None:
            return y_hat
        return y_hat + 0.5 * torch.tanh(self.lrp(torch.cat([hp, y_hat], dim=1)))

    # -- coding: everything that picks a CDF table runs exactly, on CPU, in tiles ---------------

    def _exact_net(self, i: int):
        return lambda t: tiles.exact(self.slice_nets[i].exact, t, self.TILE, 4)

    @torch.no_grad()
    def compress(self, y: torch.Tensor, z: torch.Tensor | None = None) -> tuple[list[bytes], tuple[int, int]]:
        """y (and z, h_a's unless given) -> [z stream, one per slice], z's shape."""
        z_stream, hp, z_shape = self._side_stream(y, z)
        streams, done = [z_stream], []
        for i, part in enumerate(y.double().cpu().chunk(self.slices, dim=1)):
            scales, means = self._slice_params(i, hp, done, self._exact_net(i))
            streams.append(entropy.encode_gaussian(self.gaussian_conditional, part, scales, means))
            done.append(torch.round(part - means) + means)  # what the decoder will have
        return streams, z_shape

    @torch.no_grad()
    def decompress(self, strings: list[bytes], z_shape: tuple[int, int]) -> torch.Tensor:
        """Streams -> the dequantised latent (float64 on CPU; exact on any machine), plus its
        predicted rounding error where there is a residual prediction (floating point, in tiles)."""
        hp = self._hyper(entropy.decode_factorized(self.entropy_bottleneck, strings[0], z_shape))
        done = []
        for i in range(self.slices):
            scales, means = self._slice_params(i, hp, done, self._exact_net(i))
            done.append(entropy.decode_gaussian(self.gaussian_conditional, strings[1 + i], scales, means))
        y_hat = torch.cat(done, dim=1)
        if self.lrp is None:
            return y_hat
        with plain_cpu_kernels():
            net = lambda t: self._refine(t[:, : hp.shape[1]], t[:, hp.shape[1] :])  # noqa: E731
            return tiles.exact(net, torch.cat([hp, y_hat], dim=1).float(), self.TILE, 4)


@registry.bind  # its id and name: codec/registry.py
class ChannelConditional(GainedTransforms):
    """Gained transforms + the channel-conditional latent codec; ``quality`` 1-100 as for the hyperprior."""

    CONFIG = CCConfig
    # the residual prediction: int8 like h_a (a correction of under half a step, where int8's error is
    # lost; float16 would take the file past 20 MB), dequantised the same way on every machine
    INT8_PREFIXES = ("latent_codec.h_a.", "latent_codec.lrp.")

    def __init__(self, config: CCConfig | None = None):
        c = config or CCConfig()
        super().__init__(c, lambda: ChannelConditionalContext(c.N, c.M, c.slices, c.width, c.lrp))

    @property
    def lrp(self) -> nn.Module | None:
        return self.latent_codec.lrp

    @classmethod
    def from_hyperprior(cls, hp: GainHyperprior, slices: int = 4, width: int = 128, lrp: int = 0) -> ChannelConditional:
        """A channel-conditional model that starts out coding exactly as ``hp``."""
        c = hp.config
        model = cls(CCConfig(c.N, c.M, tuple(c.lambdas), slices, width, lrp))
        missing, unexpected = model.load_state_dict(hp.state_dict(), strict=False)
        if unexpected or any(not k.startswith(CONTEXT) for k in missing):
            raise ValueError(f"not a hyperprior of this shape ({unexpected or missing})")
        return model

    def with_lrp(self, width: int) -> ChannelConditional:
        """This model with a residual prediction of ``width`` channels added, starting at zero:
        it decodes exactly as this one until trained; ``width`` 0: this model without its own."""
        c = self.config
        model = type(self)(CCConfig(c.N, c.M, tuple(c.lambdas), c.slices, c.width, width))
        state = {k: v for k, v in self.state_dict().items() if width or not k.startswith(LRP)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(LRP) for k in missing):
            raise ValueError(f"cannot add a residual prediction ({unexpected or missing})")
        return model

    def submodel(self, name: str) -> GainHyperprior | None:
        """The hyperprior inside: the same transforms, hyperprior and tables without the slice
        corrections, so one shipped file serves ``--model cc`` and ``--model hp``."""
        if name != GainHyperprior.NAME:
            return None
        c = self.config
        hp = GainHyperprior(ModelConfig(c.N, c.M, tuple(c.lambdas)))
        hp.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith(CONTEXT)})
        return hp


LRP = "latent_codec.lrp."
CONTEXT = ("latent_codec.slice_nets.", LRP)  # what model 3 adds to the hyperprior

