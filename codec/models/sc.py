"""The space-channel model (model id 4): transforms plus a latent codec, wide enough for high rates.

As CompressAI composes its models, ``g_a`` -> latent codec -> ``g_s``:

* the transforms and gain units are :class:`~codec.models.hyperprior.GainedTransforms`' (N=128), with a
  latent of M=320 channels (CompressAI's width for every quality above its fourth) and anchor
  lambdas up to 0.23, so ``quality`` 100 asks for a high-quality image;
* the latent codec, :class:`SpaceChannelContext`, is a hyperprior plus a context in space and
  channel (He et al., "ELIC", CVPR 2022): the latent is coded in channel slices of uneven sizes,
  and each slice in two passes over a checkerboard (He et al., "Checkerboard context model",
  CVPR 2021): first the anchors (where row + column is even), predicted from the hyperprior and
  the slices before, then the rest, predicted from those *and the decoded anchors around them*.
  One slice network does both passes: its input holds the slice's decoded anchors (zeros in the
  first pass). It picks CDF tables, so it runs in fixed point (``codec/models/exact.py``) as the
  hyperprior's synthesis does: a file decodes bit-identically on any machine and thread count.

It is grown from model 3 (:meth:`SpaceChannel.grown_from`), not trained from scratch: model 3's
four slices of 48 channels and their networks are kept, the 128 new channels are a fifth slice
after them with gain units of their own, and every layer that gains inputs gets them with zero
weights, so the grown model codes model 3's latents bit for bit and its pixels to within a level
until training moves it. A file holds the z stream, then one stream per slice (anchors, then the
rest).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn

from codec import registry
from codec.format import entropy
from codec.models import tiles
from codec.models.exact import FixedPointConvStack, exact_first_shared, ste_round
from codec.models.hyperprior import (
    MAX_CHANNELS,
    GainedTransforms,
    Hyperprior,
    check_rd_config,
    coded_side,
    coded_slice,
    context_output,
    conv,
    likelihood_of,
)

MAX_SLICES = 16  # published models use 5 (ELIC) or 10 (Minnen & Singh)


def _lambdas() -> tuple[float, ...]:
    """Model 3's seven anchors and one more on the same log scale: 0.23 (CompressAI's top
    quality, bmshj2018 at lambda 0.18, reaches 40.6 dB on Kodak)."""
    return (0.00065, 0.00150462, 0.00348291, 0.00806226, 0.0186626, 0.0432002, 0.1, 0.23148)


@dataclass(frozen=True)
class SCConfig:
    N: int = 128
    M: int = 320
    lambdas: tuple[float, ...] = field(default_factory=_lambdas)
    slices: tuple[int, ...] = (48, 48, 48, 48, 128)  # channels per slice, coded in this order; sum M
    width: int = 128  # channels of the slice networks
    hyper: tuple[int, int] = (192, 288)  # channels of h_s's two hidden layers (model 3's)
    N_s: int = 0  # g_s's channels, where wider than g_a's (0: N, as every model up to 0.18.0)

    def __post_init__(self) -> None:
        check_rd_config(self)
        if not (self.N_s == 0 or self.N <= self.N_s <= MAX_CHANNELS):
            raise ValueError(f"N_s={self.N_s}: 0 (same as N) or N..{MAX_CHANNELS}")
        if not (1 <= len(self.slices) <= MAX_SLICES and min(self.slices) >= 1 and sum(self.slices) == self.M):
            raise ValueError(f"slices={self.slices}: 1..{MAX_SLICES} positive sizes that add up to M={self.M}")
        widths = (self.width, *self.hyper)
        if len(self.hyper) != 2 or not all(1 <= w <= MAX_CHANNELS for w in widths):
            raise ValueError(f"width={self.width}, hyper={self.hyper}: channel counts 1..{MAX_CHANNELS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SCConfig:
        return cls(N=int(d["N"]), M=int(d["M"]), lambdas=tuple(float(x) for x in d["lambdas"]),
                   slices=tuple(int(x) for x in d["slices"]), width=int(d["width"]),
                   hyper=tuple(int(x) for x in d["hyper"]), N_s=int(d.get("N_s", 0)))


def anchors(shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """The checkerboard's first pass: True where row + column is even, as (1, 1, H, W)."""
    H, W = shape[-2:]
    rows, cols = torch.arange(H, device=device)[:, None], torch.arange(W, device=device)[None, :]
    return ((rows + cols) % 2 == 0)[None, None]


class SpaceChannelContext(Hyperprior):
    """The latent codec: y -> (z stream, one stream per slice) -> y_hat."""

    def __init__(self, N: int, M: int, slices: tuple[int, ...], width: int, hyper: tuple[int, int]):
        super().__init__(N, M, hyper)
        self.slices = tuple(slices)
        # slice i sees the hyperprior output (scales, then means, of all M channels), the decoded
        # slices before it, and its own decoded anchors; it predicts corrections to its scales and means
        starts = [sum(self.slices[:i]) for i in range(len(self.slices))]
        self.slice_nets = nn.ModuleList(
            FixedPointConvStack([
                conv(2 * M + start + C, width, stride=1, kernel_size=3),
                conv(width, width, stride=1, kernel_size=3),
                conv(width, 2 * C, stride=1, kernel_size=3),
            ])
            for start, C in zip(starts, self.slices)
        )
        with torch.no_grad():  # start as the hyperprior alone: no correction
            for net in self.slice_nets:
                net.layers[-1].weight.zero_()
                net.layers[-1].bias.zero_()

    def _corrected(self, i: int, hp: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, C = sum(self.slices[:i]), self.slices[i]
        scales, means = hp.chunk(2, dim=1)
        d_scale, d_mean = out.chunk(2, dim=1)
        return scales[:, start : start + C] + d_scale, means[:, start : start + C] + d_mean

    def _output(self, i: int, hp: torch.Tensor, done: list[torch.Tensor], contexts: dict | None):
        """Slice ``i``'s network as a function of its own decoded anchors (None in the first pass);
        the first layer's sum over the hyperprior and the slices before is made once for both passes."""
        net = self.slice_nets[i]
        partial: list[torch.Tensor] = []  # made by whichever pass runs the network first

        def output(own: torch.Tensor | None) -> torch.Tensor:
            def compute() -> torch.Tensor:
                if not partial:
                    partial.append(net.first(torch.cat([hp, *done], dim=1)))
                return net.rest(partial[0], own)
            return context_output(contexts, (i, own is None), compute)
        return output

    def forward(self, y: torch.Tensor, quantise=None, z: torch.Tensor | None = None,
                contexts: dict | None = None) -> tuple[torch.Tensor, dict]:
        """y -> (y_hat, likelihoods of y and z). ``quantise`` None: training's relaxation (noise for
        the rate, rounding with a straight-through gradient for the contexts and the synthesis);
        else a function of ``value - mean`` whose result is coded and decoded (codec/models/refine.py),
        the anchors rounded once, for their own rate and for the second pass's context alike.
        ``contexts``: see :func:`~codec.models.hyperprior.context_output` (kept, the second pass's
        context is the anchors as rounded when it was made)."""
        z_hat, z_likelihoods = coded_side(self.entropy_bottleneck, self.h_a(y) if z is None else z, quantise)
        hp = self.h_s(z_hat)
        first = anchors(y.shape, y.device)
        rounded = quantise or ste_round
        done, likelihoods = [], []
        for i, part in enumerate(y.split(self.slices, dim=1)):
            output = self._output(i, hp, done, contexts)
            s1, m1 = self._corrected(i, hp, output(None))  # the anchors: nothing of their own yet
            anchors_hat = rounded(part - m1) + m1
            s2, m2 = self._corrected(i, hp, output(anchors_hat * first))
            scales, means = torch.where(first, s1, s2), torch.where(first, m1, m2)
            if quantise is None:
                part_hat, lik = coded_slice(self.gaussian_conditional, part, scales, means, None)
            else:
                part_hat = torch.where(first, anchors_hat, quantise(part - m2) + m2)
                lik = likelihood_of(self.gaussian_conditional, part_hat, scales, means)
            done.append(part_hat)
            likelihoods.append(lik)
        return torch.cat(done, dim=1), {"y": torch.cat(likelihoods, dim=1), "z": z_likelihoods}

    # -- coding: everything that picks a CDF table runs exactly, on CPU, in tiles ---------------

    def _hyper_sums(self, hp: torch.Tensor) -> list[torch.Tensor] | None:
        """Every slice network's first-layer sums over the hyperprior's channels, in one convolution
        (one pass over them instead of one a slice: the same exact sums, sooner) where the latent is
        one tile, as a Kodak image's is; None on larger ones, where holding all of them at once
        would cost as much memory as the hyperprior itself: each slice then makes its own."""
        if max(hp.shape[-2:]) > self.TILE:
            return None
        return exact_first_shared(list(self.slice_nets), hp)

    def _exact_params(self, i: int, hp: torch.Tensor, done: list[torch.Tensor],
                      hyper_sums: list[torch.Tensor] | None = None):
        """Coding: slice ``i``'s scales and means as a function of its own decoded anchors, exact,
        in tiles; the first layer's sums over the hyperprior (or ``hyper_sums``, see
        :meth:`_hyper_sums`) and the slices before are made once for both passes."""
        net = self.slice_nets[i]
        if hyper_sums is None:
            partial = tiles.exact(net.exact_first, torch.cat([hp, *done], dim=1), self.TILE, 2)
        else:  # one tile: no tiles.exact needed
            partial = hyper_sums[i]
            if done:
                partial = partial + exact_first_shared([net], torch.cat(done, dim=1), start=hp.shape[1])[0]
        W = partial.shape[1]
        rest = lambda t: net.exact_rest(t[:, :W], t[:, W:])  # noqa: E731
        return lambda own: self._corrected(i, hp, tiles.exact(rest, torch.cat([partial, own], dim=1), self.TILE, 4))

    @property
    def num_streams(self) -> int:
        return 1 + len(self.slices)

    @torch.no_grad()
    def compress(self, y: torch.Tensor, z: torch.Tensor | None = None) -> tuple[list[bytes], tuple[int, int]]:
        """y (and z, the side information: h_a's unless given) -> [z stream, one per slice], z's shape."""
        z_stream, hp, z_shape = self._side_stream(y, z)
        first = anchors(y.shape)
        streams, done = [z_stream], []
        hyper_sums = self._hyper_sums(hp)
        for i, part in enumerate(y.double().cpu().split(self.slices, dim=1)):
            params, a = self._exact_params(i, hp, done, hyper_sums), first.expand_as(part)
            s1, m1 = params(torch.zeros_like(part))
            s2, m2 = params((torch.round(part - m1) + m1) * first)
            streams.append(entropy.encode_gaussian_parts(
                self.gaussian_conditional, [(part[a], s1[a], m1[a]), (part[~a], s2[~a], m2[~a])]))
            means = torch.where(first, m1, m2)
            done.append(torch.round(part - means) + means)  # what the decoder will have
        return streams, z_shape

    @torch.no_grad()
    def decompress(self, strings: list[bytes], z_shape: tuple[int, int]) -> torch.Tensor:
        """The dequantised latent (float64 on CPU; exact on any machine)."""
        z_hat = entropy.decode_factorized(self.entropy_bottleneck, strings[0], z_shape)
        hp = self._hyper(z_hat)
        first = anchors(hp.shape)
        tables = entropy.CdfTables.of(self.gaussian_conditional)
        done, hyper_sums = [], self._hyper_sums(hp)
        for i, C in enumerate(self.slices):
            params, part = self._exact_params(i, hp, done, hyper_sums), hp.new_zeros(1, C, *hp.shape[-2:])
            a = first.expand_as(part)
            reader = entropy.Reader(strings[1 + i], tables)
            s1, m1 = params(part)
            part[a] = entropy.read_gaussian(reader, self.gaussian_conditional, s1[a], m1[a])
            s2, m2 = params(part)
            part[~a] = entropy.read_gaussian(reader, self.gaussian_conditional, s2[~a], m2[~a])
            reader.close()
            done.append(part)
        return torch.cat(done, dim=1)


@registry.bind  # its id and name: codec/registry.py
class SpaceChannel(GainedTransforms):
    """Gained transforms + the space-channel latent codec; ``quality`` 1-100."""

    CONFIG = SCConfig
    # g_a is encoder-only, as h_a: int8 changes which latent a file holds, never how it decodes.
    # Measured on 0.18.0's file: validation +0.0% / +0.1% / +0.2% at model 3's lambdas; it keeps a
    # file with a wider synthesis within 30 MB. Files stored in float16 (0.18.0's) load as stored.
    INT8_PREFIXES = ("latent_codec.h_a.", "g_a.")

    def __init__(self, config: SCConfig | None = None):
        c = config or SCConfig()
        super().__init__(c, lambda: SpaceChannelContext(c.N, c.M, c.slices, c.width, c.hyper))

    @classmethod
    def grown_from(cls, cc, extra: int = 128, lambdas: tuple[float, ...] | None = None,
                   seed: int = 0) -> SpaceChannel:
        """A model 4 that starts out coding as ``cc`` (a trained model 3 without residual
        prediction) does, with ``extra`` latent channels as a fifth slice and the anchors
        ``lambdas`` (default: cc's and one more, as :class:`SCConfig`'s).

        The new channels must be able to move: with zero weights on both sides (g_a's new
        outputs, g_s's new inputs) and latents that round to 0 neither side gets a gradient. So
        g_s's new inputs start small and random (the decoder sees rounded zeros, so the pixels do
        not change), g_a's new outputs random and small, and their gains at the level of the old
        channels': distortion reaches them through g_s from the first step."""
        c = cc.config
        if getattr(c, "lrp", 0):
            raise ValueError("grow a model 3 without residual prediction")
        M0, S = c.M, c.slices
        lambdas = tuple(lambdas or (*c.lambdas, round(c.lambdas[-1] ** 2 / c.lambdas[-2], 5)))
        M = M0 + extra
        torch.manual_seed(seed)
        model = cls(SCConfig(c.N, M, lambdas, (M0 // S,) * S + (extra,), c.width, (M0, M0 * 3 // 2)))
        old, new = cc.state_dict(), model.state_dict()

        # kept as they are: h_a (its new inputs are filled in below), h_s up to its last layer, the entropy models
        kept = tuple("latent_codec." + k for k in ("h_a.", "h_s.layers.0", "h_s.layers.1", "entropy_bottleneck.",
                                                    "gaussian_conditional."))

        def put(name: str, value: torch.Tensor) -> None:
            if new[name].shape != value.shape:
                raise ValueError(f"{name}: {tuple(value.shape)} does not fit {tuple(new[name].shape)}")
            new[name] = value

        def leading(base: torch.Tensor, value: torch.Tensor, dim: int = 0) -> torch.Tensor:
            """``base`` with its first entries along ``dim`` replaced by the old ``value``."""
            base = base.clone()
            base.narrow(dim, 0, value.shape[dim]).copy_(value)
            return base

        with torch.no_grad():
            for k, v in old.items():
                if k.startswith(("g_a.", "g_s.", *kept)) and new[k].shape == v.shape:
                    put(k, v)
            last = f"g_a.{len(model.g_a) - 1}"
            for key in (last + ".weight", last + ".bias", "g_s.0.weight"):  # g_s.0: ConvTranspose2d, (in, out, k, k)
                put(key, leading(new[key] * 0.1, old[key]))
            put("latent_codec.h_a.0.weight", leading(torch.zeros_like(new["latent_codec.h_a.0.weight"]),
                                                     old["latent_codec.h_a.0.weight"], dim=1))
            # h_s's output: (scales, means) of M0 channels -> of M; the new ones start at zero
            # (a scale of zero is the entropy model's lower bound: the new slice costs nothing yet)
            for kind in ("weight", "bias"):
                o = old[f"latent_codec.h_s.layers.2.{kind}"]
                n = torch.zeros_like(new[f"latent_codec.h_s.layers.2.{kind}"])
                n[:M0], n[M : M + M0] = o[:M0], o[M0:]
                put(f"latent_codec.h_s.layers.2.{kind}", n)
            for i in range(S):  # inputs (scales, means, slices before): spread out, zeros between
                o = old[f"latent_codec.slice_nets.{i}.layers.0.weight"]
                n = torch.zeros_like(new[f"latent_codec.slice_nets.{i}.layers.0.weight"])
                n[:, :M0], n[:, M : M + M0] = o[:, :M0], o[:, M0 : 2 * M0]
                n[:, 2 * M : 2 * M + i * (M0 // S)] = o[:, 2 * M0 :]
                put(f"latent_codec.slice_nets.{i}.layers.0.weight", n)
                for k in ("layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight", "layers.2.bias"):
                    put(f"latent_codec.slice_nets.{i}.{k}", old[f"latent_codec.slice_nets.{i}.{k}"])
            for name, table in zip(("log_gain", "log_inv_gain"), cc.gain_tables_at(lambdas)):
                t = table.float().new_empty(len(lambdas), M)
                t[:, :M0] = table
                t[:, M0:] = table.mean(1, keepdim=True)
                put(name, t)
        model.load_state_dict(new)
        return model

    def with_synthesis_width(self, N_s: int, seed: int = 0) -> SpaceChannel:
        """A copy whose synthesis ``g_s`` has ``N_s`` channels, grown, not restarted: the old
        channels keep their weights, the new ones start random on their inputs and with zero
        weights into every old channel (and into the pixels), so the copy codes the same bits and
        the same pixels (to float rounding) until training moves it. The zero weights get a
        gradient at once: the random channels they read are not zero. The analysis, the latent
        codec and every CDF table stay as they are; the file's config records ``N_s``."""
        c = self.config
        old = c.N_s or c.N
        if N_s < old:
            raise ValueError(f"g_s has {old} channels: it can be widened, not narrowed, to {N_s}")
        with torch.random.fork_rng():  # the new channels' draw, without touching the caller's generator
            torch.manual_seed(seed)
            model = SpaceChannel(replace(c, N_s=N_s))
        state = model.state_dict()
        with torch.no_grad():
            for k, v in self.state_dict().items():
                if k.startswith("g_s."):  # the old channels in the leading corner, the rest as drawn
                    state[k] = state[k].clone()
                    state[k][tuple(slice(0, n) for n in v.shape)] = v
                else:
                    state[k] = v
            for i, layer in enumerate(model.g_s):
                if isinstance(layer, nn.ConvTranspose2d) and i > 0:  # weight: (in, out, k, k)
                    out = layer.out_channels if i == len(model.g_s) - 1 else old
                    state[f"g_s.{i}.weight"][old:, :out] = 0
        model.load_state_dict(state)
        return model
