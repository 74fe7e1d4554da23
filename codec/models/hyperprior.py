"""The aecodec model: a mean-scale hyperprior autoencoder with gain units for variable rate.

Layout follows CompressAI's ``mbt2018-mean`` (Minnen et al. 2018, without the autoregressive
context) with two changes that a codec shipping real files needs:

* **One model for every quality.** Gain units (Cui et al., "Asymmetric gained deep image
  compression with continuous rate adaptation", CVPR 2021) scale the latent channel-wise
  before quantisation, and an inverse gain undoes it after. Gains are learned for K
  anchor lambdas and interpolated log-linearly between them, so ``quality`` is continuous.
* **A deterministic probability model.** The hyper synthesis, which turns the decoded side
  information into the means and scales that pick the CDF tables, runs in fixed point
  (``codec/models/exact.py``): the result does not depend on summation order, thread count or
  device, so encoder and decoder can never disagree about a CDF index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from codec import registry
from codec.models import lean_imports

lean_imports.load()  # CompressAI's entropy models, not its point-cloud datasets (see there)
from compressai.entropy_models import EntropyBottleneck, GaussianConditional  # noqa: E402
from compressai.layers import GDN  # noqa: E402
from compressai.models.base import CompressionModel  # noqa: E402
from compressai.models.utils import conv, deconv  # noqa: E402

from codec.format import entropy  # noqa: E402
from codec.models import cpu_transforms, tiles  # noqa: E402
from codec.models.exact import FixedPointConvStack, plain_cpu_kernels, ste_round  # noqa: E402


def default_lambdas(k: int = 7, lo: float = 0.00065, hi: float = 0.1) -> tuple[float, ...]:
    """Log-spaced rate-distortion trade-offs (MSE on [0, 1] images, scaled by 255^2). The lowest
    reaches about 0.1 bpp on Kodak, the highest about 1.4 bpp."""
    return tuple(float(lo * (hi / lo) ** (i / (k - 1))) for i in range(k))


MAX_CHANNELS = 512  # bounds on sizes read from a weights file (a crafted config must not make the
MAX_ANCHORS = 64  # model allocate gigabytes before its tensors are compared); published: N, M <= 320


def check_rd_config(c) -> None:
    """Refuse sizes no trained model has (ValueError): a config may come from a hostile file."""
    if not (1 <= c.N <= MAX_CHANNELS and 1 <= c.M <= MAX_CHANNELS):
        raise ValueError(f"N={c.N}, M={c.M}: channel counts must be 1..{MAX_CHANNELS}")
    if not 2 <= len(c.lambdas) <= MAX_ANCHORS or not all(0 < x < 1e3 for x in c.lambdas):
        raise ValueError(f"lambdas: 2..{MAX_ANCHORS} positive numbers below 1000")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in the weights file."""

    N: int = 128
    M: int = 192
    lambdas: tuple[float, ...] = field(default_factory=default_lambdas)

    def __post_init__(self) -> None:
        check_rd_config(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(N=int(d["N"]), M=int(d["M"]), lambdas=tuple(float(x) for x in d["lambdas"]))


def analysis(N: int, M: int) -> nn.Sequential:
    """g_a: image -> latent of M channels at 1/16 of the size (CompressAI's mbt2018-mean)."""
    return nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


def synthesis(N: int, M: int) -> nn.Sequential:
    """g_s: the inverse of :func:`analysis`."""
    return nn.Sequential(
        deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
    )


TRANSFORM_NAMES = ("g_a.", "g_s.", "log_gain", "log_inv_gain")  # a model's own tensors; the rest is its latent codec


def upgrade_names(state: dict) -> dict:
    """Tensor names as models 1 and 3 stored them up to 0.15.0 (the latent codec's layers at the top
    level: ``h_a.0.weight``) -> today's (``latent_codec.h_a.0.weight``); today's pass unchanged.
    Released weights files and training checkpoints keep loading."""
    new = any(k.startswith("latent_codec.") for k in state)
    if new and any(not k.startswith((*TRANSFORM_NAMES, "latent_codec.")) for k in state):
        raise ValueError("tensor names of two layouts mixed (h_a.* beside latent_codec.*)")
    if new or not state:
        return state
    return {(k if k.startswith(TRANSFORM_NAMES) else "latent_codec." + k): v for k, v in state.items()}


class GainedTransforms(CompressionModel):
    """A rate-distortion model: the transforms ``g_a`` / ``g_s`` with gain units for a continuous
    quality, around a latent codec (``self.latent_codec``: y -> streams -> y_hat), as CompressAI
    composes ``g_a`` -> latent codec -> ``g_s``. A model gives its config and its latent codec."""

    FP16_PREFIXES = ("g_a.", "g_s.")  # the big transforms; the exact parts are stored as integers
    INT8_PREFIXES = ("latent_codec.h_a.",)  # encoder-only: picks z, never changes how a file decodes
    device_parts = ("g_a", "g_s")  # what runs on the chosen device; the latent codec stays on CPU
    padding = 64  # the image passes through g_a (x16) and h_a (x4)

    def __init__(self, config, latent_codec: Callable[[], nn.Module]):
        """``latent_codec`` builds it, after the transforms: a seeded model draws its weights in
        the same order as it always has (a grown model is byte for byte reproducible)."""
        super().__init__()
        self.config = config
        self.g_a = analysis(config.N, config.M)
        self.g_s = synthesis(getattr(config, "N_s", 0) or config.N, config.M)
        self.latent_codec = latent_codec()
        self._init_gains(config.lambdas, config.M)

    @property
    def num_streams(self) -> int:
        return self.latent_codec.num_streams

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """z's shape, which decoding starts from."""
        return -(-height // 64), -(-width // 64)

    upgrade_names = staticmethod(upgrade_names)  # weights files (codec/weights.py) name tensors as they were saved

    def load_state_dict(self, state_dict, strict: bool = True):
        """As CompressAI's (which sizes the CDF tables to the state's); also takes the tensor names
        of earlier releases (:func:`upgrade_names`)."""
        return super().load_state_dict(upgrade_names(state_dict), strict=strict)

    def _init_gains(self, lambdas: tuple[float, ...], M: int) -> None:
        # Start each anchor's quantiser step near 1/sqrt(lambda): a good warm start.
        log_l = torch.log(torch.tensor(lambdas))
        init = 0.5 * (log_l - log_l.mean())
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M))
        self.log_inv_gain = nn.Parameter(-init[:, None].repeat(1, M))

    def position(self, quality: float | torch.Tensor) -> torch.Tensor:
        """Map quality 1..100 onto the anchor axis 0..K-1 (linear, so q is continuous)."""
        K = len(self.config.lambdas)
        q = torch.as_tensor(quality, dtype=torch.float64)
        return (q.clamp(1, 100) - 1) / 99 * (K - 1)

    def lmbda(self, pos: torch.Tensor) -> torch.Tensor:
        """The lambda a position on the anchor axis was trained for (log-linear)."""
        log_l = torch.log(torch.tensor(self.config.lambdas, dtype=torch.float64))
        return torch.exp(self._interp(log_l[:, None], pos.to(torch.float64)))[..., 0]

    @staticmethod
    def _interp(table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Row-wise linear interpolation of ``table`` (K, C) at positions ``pos`` (B,)."""
        K = table.shape[0]
        lo = pos.floor().clamp(0, K - 2).long()
        t = (pos - lo.to(pos.dtype)).to(table.dtype)[:, None]
        return table[lo] * (1 - t) + table[lo + 1] * t

    def gains(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample channel gains (B, M, 1, 1) and inverse gains for positions ``pos``."""
        pos = pos.to(self.log_gain.device, self.log_gain.dtype).reshape(-1)
        g = torch.exp(self._interp(self.log_gain, pos))
        ig = torch.exp(self._interp(self.log_inv_gain, pos))
        return g[:, :, None, None], ig[:, :, None, None]

    def gain_tables_at(self, lambdas: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The gain tables read off at other anchor lambdas: linear in log(lambda) between the
        anchors, extrapolated beyond them (to widen or move the quality range of trained weights)."""
        old = torch.log(torch.tensor(self.config.lambdas, dtype=torch.float64))
        target = torch.log(torch.tensor(lambdas, dtype=torch.float64))
        lo = (torch.searchsorted(old, target) - 1).clamp(0, len(old) - 2)
        pos = lo + (target - old[lo]) / (old[lo + 1] - old[lo])  # on the old anchor axis
        return tuple(self._interp(t.detach().to(torch.float64), pos) for t in (self.log_gain, self.log_inv_gain))

    # -- training, and the encoder's search (codec/models/refine.py) ------------------------------

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> dict:
        """Training pass; ``pos`` is one position on the anchor axis per image. The rate term uses
        additive noise, the synthesis the rounded latent with a straight-through gradient (as the
        published channel-conditional models train), so the decoder trains on what it will decode."""
        gain, inv_gain = self.gains(pos)
        y = self.g_a(x).float() * gain
        # Under CUDA autocast only the big transforms run in bf16: the latent codec needs float32.
        with torch.autocast(x.device.type, enabled=False):
            y_hat, likelihoods = self.latent_codec(y)
        return {"x_hat": self.g_s(y_hat * inv_gain), "likelihoods": likelihoods}

    def side_information(self, y: torch.Tensor) -> torch.Tensor:
        """z, as the encoder computes it from y (h_a)."""
        return self.latent_codec.h_a(y)

    def latent_pass(self, y: torch.Tensor, quantise=None, z: torch.Tensor | None = None,
                    contexts: dict | None = None) -> tuple[torch.Tensor, dict]:
        """y (and z: h_a's unless given) -> (y_hat, likelihoods of y and z): the latent codec's
        forward; ``contexts``: see :func:`context_output`."""
        return self.latent_codec(y, quantise, z, contexts)

    # Large images run in tiles (codec/models/tiles.py), so memory stays bounded: g_a in tiles of
    # TILE pixels, the latent codec's networks over the matching latents, each with a halo wider
    # than its receptive field. The decoder's tiles give exactly the one-pass result.
    TILE = 768  # pixels; a multiple of 64 (the stride), and a Kodak image is one tile

    def _g_a(self, x: torch.Tensor) -> torch.Tensor:
        net = cpu_transforms.analysis(self.g_a) if x.device.type == "cpu" else self.g_a
        return tiles.exact(net, x, self.TILE, 64, down=16)

    def _g_s(self, y_hat: torch.Tensor) -> torch.Tensor:
        net = cpu_transforms.synthesis(self.g_s) if y_hat.device.type == "cpu" else self.g_s
        return tiles.exact(net, y_hat, self.TILE // 16, 4, up=16)

    # Coding is split in two: analysis (image -> latent) and coding (latent -> streams), so an
    # encoder-side search can sit between them; decoding mirrors it.

    @torch.no_grad()
    def analyse(self, x: torch.Tensor, quality: float) -> torch.Tensor:
        """Padded image batch of one -> the gained latent y (before rounding)."""
        return self.at_quality(self.transform(x), quality)

    @torch.no_grad()
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The part of :meth:`analyse` that no quality changes (g_a): computed once, a search
        over qualities (``Codec.compress_to``) tries each one with :meth:`at_quality` alone."""
        with plain_cpu_kernels():
            return self._g_a(x)

    def at_quality(self, features: torch.Tensor, quality: float) -> torch.Tensor:
        gain, _ = self.gains(self.position(quality).reshape(1))
        return features * gain.to(features.device)

    def encode_streams(self, y: torch.Tensor, quality: float,
                       z: torch.Tensor | None = None) -> tuple[list[bytes], tuple[int, int]]:
        """Latent (the gain already holds the quality; z: h_a's unless given) -> the streams, z's shape."""
        return self.latent_codec.compress(y, z)

    def decode_streams(self, strings: list[bytes], z_shape: tuple[int, int], quality: float) -> torch.Tensor:
        """Streams -> the dequantised latent the synthesis sees."""
        return self.latent_codec.decompress(strings, z_shape)

    @torch.no_grad()
    def synthesize(self, y_hat: torch.Tensor, quality: float, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dequantised latent -> the padded reconstruction in [0, 1]."""
        _, inv_gain = self.gains(self.position(quality).reshape(1))
        y_hat = y_hat.to(device, torch.float32) * inv_gain.to(device)
        with plain_cpu_kernels():
            return self._g_s(y_hat).clamp_(0, 1)

    def compress(self, x: torch.Tensor, quality: float) -> tuple[list[bytes], tuple[int, int]]:
        """Code a padded image batch of one; returns the streams and z's shape."""
        return self.encode_streams(self.analyse(x, quality), quality)

    def decompress(self, strings: list[bytes], z_shape: tuple[int, int], quality: float,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """Inverse of :meth:`compress`: returns the padded reconstruction in [0, 1]."""
        return self.synthesize(self.decode_streams(strings, z_shape, quality), quality, device)


class Hyperprior(nn.Module):
    """The mean-scale hyperprior latent codec (Minnen et al. 2018): y -> [z stream, y stream] -> y_hat.
    Side information z (h_a) is coded with a factorised prior; h_s turns it into the means and
    scales that pick y's CDF tables, in fixed point (codec/models/exact.py), so encoder and decoder
    always agree. Its networks run in tiles of TILE latent units, as the transforms do."""

    TILE = GainedTransforms.TILE // 16  # latent units, as the transforms' tiles
    num_streams = 2

    def __init__(self, N: int, M: int, hyper: tuple[int, int] | None = None):
        super().__init__()
        h1, h2 = hyper or (M, M * 3 // 2)
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N),
        )
        self.h_s = FixedPointConvStack([deconv(N, h1), deconv(h1, h2), conv(h2, 2 * M, stride=1, kernel_size=3)])
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)

    def forward(self, y: torch.Tensor, quantise=None, z: torch.Tensor | None = None,
                contexts: dict | None = None) -> tuple[torch.Tensor, dict]:
        """y (and z: h_a's unless given) -> (y_hat, likelihoods of y and z). ``quantise`` None:
        training's relaxation (noise for the rate; in training, rounding with a straight-through
        gradient for the synthesis); else a function of ``value - mean`` whose result is both coded
        and decoded (the encoder's search, codec/models/refine.py). ``contexts``: for the
        models with context networks (cc, sc, :func:`context_output`); the hyperprior has none."""
        z_hat, z_likelihoods = coded_side(self.entropy_bottleneck, self.h_a(y) if z is None else z, quantise)
        scales, means = self.h_s(z_hat).chunk(2, dim=1)
        if quantise is not None:
            y_hat, y_likelihoods = coded_gaussian(self.gaussian_conditional, y, scales, means, quantise)
        else:
            y_hat, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
            if self.training:  # mixed quantisation: the rate sees noise, the decoder what it will decode
                y_hat = ste_round(y - means) + means
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    # -- coding: everything that picks a CDF table runs exactly, on CPU, in tiles ---------------

    def _hyper(self, z_hat: torch.Tensor) -> torch.Tensor:
        """h_s, exactly (float64 on CPU), in tiles: scales and means, concatenated."""
        return tiles.exact(self.h_s.exact, z_hat, self.TILE // 4, 2, up=4)

    @torch.no_grad()
    def _side_stream(self, y: torch.Tensor, z: torch.Tensor | None) -> tuple[bytes, torch.Tensor, tuple[int, int]]:
        """The z stream (h_a's z unless given), the hyperprior output the decoder will have
        (:meth:`_hyper`), and z's shape."""
        if z is None:
            with plain_cpu_kernels():
                z = tiles.exact(self.h_a, y.float().cpu(), self.TILE, 8, down=4)
        z = z.float().cpu()
        z_stream, z_hat = entropy.encode_factorized(self.entropy_bottleneck, z)
        return z_stream, self._hyper(z_hat), tuple(z.shape[-2:])

    @torch.no_grad()
    def compress(self, y: torch.Tensor, z: torch.Tensor | None = None) -> tuple[list[bytes], tuple[int, int]]:
        """y (and z, h_a's unless given) -> [z stream, y stream], z's shape."""
        z_stream, hp, z_shape = self._side_stream(y, z)
        scales, means = hp.chunk(2, dim=1)
        return [z_stream, entropy.encode_gaussian(self.gaussian_conditional, y, scales, means)], z_shape

    @torch.no_grad()
    def decompress(self, strings: list[bytes], z_shape: tuple[int, int]) -> torch.Tensor:
        """Streams -> the dequantised latent y_hat (float64 on CPU; exact on any machine)."""
        scales, means = self._hyper(entropy.decode_factorized(self.entropy_bottleneck, strings[0], z_shape)).chunk(2, 1)
        return entropy.decode_gaussian(self.gaussian_conditional, strings[1], scales, means)


@registry.bind  # its id and name: codec/registry.py
class GainHyperprior(GainedTransforms):
    """Gained transforms + the mean-scale hyperprior; ``quality`` in [1, 100] selects the rate."""

    CONFIG = ModelConfig

    def __init__(self, config: ModelConfig | None = None):
        config = config or ModelConfig()
        super().__init__(config, lambda: Hyperprior(config.N, config.M))

    def with_lambdas(self, lambdas: tuple[float, ...]) -> GainHyperprior:
        """A copy of this model for other anchor lambdas (:meth:`gain_tables_at`); everything
        else is copied."""
        new = GainHyperprior(ModelConfig(self.config.N, self.config.M, tuple(float(l) for l in lambdas)))
        state = {k: v for k, v in self.state_dict().items() if k not in ("log_gain", "log_inv_gain")}
        new.load_state_dict(state, strict=False)
        with torch.no_grad():
            for name, table in zip(("log_gain", "log_inv_gain"), self.gain_tables_at(new.config.lambdas)):
                getattr(new, name).copy_(table)
        return new


def coded_gaussian(conditional: GaussianConditional, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor,
                   quantise) -> tuple[torch.Tensor, torch.Tensor]:
    """``y`` rounded by ``quantise`` around ``means``, and the likelihood of that value under the
    entropy model (the probability of its bin): the rate of what is coded, differentiable."""
    y_hat = quantise(y - means) + means
    return y_hat, likelihood_of(conditional, y_hat, scales, means)


def likelihood_of(conditional: GaussianConditional, y_hat: torch.Tensor, scales: torch.Tensor,
                  means: torch.Tensor) -> torch.Tensor:
    """The probability of the bin of the coded value ``y_hat`` (differentiable in all three)."""
    return conditional.likelihood_lower_bound(conditional._likelihood(y_hat, scales, means))


def context_output(contexts: dict | None, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A context network's output, ``compute()``. ``contexts`` None: computed as the caller runs
    (with gradient in training). Else (the encoder's search): computed without gradient, kept in
    ``contexts`` under ``key`` and reused while it is there: the search's rate then reaches each
    value through its own probability and the hyperprior's, and the search decides how stale a
    context may be (it clears ``contexts``)."""
    if contexts is None:
        return compute()
    if key not in contexts:
        with torch.no_grad():
            contexts[key] = compute()
    return contexts[key]


def coded_side(bottleneck: EntropyBottleneck, z: torch.Tensor, quantise) -> tuple[torch.Tensor, torch.Tensor]:
    """z -> (z_hat, likelihood): training's noise (``quantise`` None) or the search's rounding."""
    return bottleneck(z) if quantise is None else coded_factorized(bottleneck, z, quantise)


def coded_slice(conditional: GaussianConditional, part: torch.Tensor, scales: torch.Tensor, means: torch.Tensor,
                quantise) -> tuple[torch.Tensor, torch.Tensor]:
    """A slice -> (what later contexts and the synthesis see, its likelihood): training's relaxation
    (noise for the rate, rounding with a straight-through gradient for the rest) or the search's rounding."""
    if quantise is not None:
        return coded_gaussian(conditional, part, scales, means, quantise)
    _, likelihood = conditional(part, scales, means=means)
    return ste_round(part - means) + means, likelihood


def coded_factorized(bottleneck: EntropyBottleneck, z: torch.Tensor, quantise) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`coded_gaussian` for the side information's factorised prior (around its medians)."""
    medians = bottleneck.quantiles[:, 0, 1].reshape(1, -1, 1, 1)
    z_hat = quantise(z - medians) + medians
    C = z.shape[1]
    lik, _, _ = bottleneck._likelihood(z_hat.transpose(0, 1).reshape(C, 1, -1))
    lik = bottleneck.likelihood_lower_bound(lik)
    return z_hat, lik.reshape(C, z.shape[0], *z.shape[2:]).transpose(0, 1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bpp_of(likelihoods: dict, num_pixels: int) -> torch.Tensor:
    """Bits per pixel of a batch, per image (B,), from the entropy models' likelihoods."""
    total = 0
    for lk in likelihoods.values():
        total = total + torch.log(lk).flatten(1).sum(1)
    return total / (-math.log(2) * num_pixels)
