"""A KL-regularised f8 autoencoder in the style of latent diffusion's ``kl-f8`` (model id 2).

The image goes to a diagonal Gaussian over 4 latent channels at H/8 x W/8; training samples it
with the reparameterisation trick and pays a small KL term, inference uses its mean. Latents
are normalised by statistics measured on training data (Stable Diffusion's single 0.18215 is
such a factor; SDXL-style configs carry a mean and a standard deviation per channel, as here)
so that diffusion models see every channel centred, with unit variance.

Module and parameter names follow diffusers' ``AutoencoderKL`` exactly (without the mid-block
attention, which is quadratic in image size), so ``export_diffusers`` writes a folder that
``diffusers.AutoencoderKL.from_pretrained`` loads as is.

As a codec, the scaled latent is divided by a quantisation step, rounded, and ANS-coded
(``codec/format/entropy.py``) with the CDF tables of CompressAI's ``EntropyBottleneck`` (a learned,
factorised prior: one per anchor step, fitted on training latents). The tables are fixed in the
weights and depend on nothing decoded, so encoder and decoder always agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from codec import registry
from codec.format import entropy
from codec.models import cpu_transforms, tiles
from codec.models.exact import plain_cpu_kernels
from codec.models.hyperprior import (  # compressai's, imported quietly there
    CompressionModel,
    EntropyBottleneck,
)


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)  # one block per scale: f = 2^(n-1)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    # measured on training data at export. scaled = (z - latents_mean) * scaling_factor / latents_std
    # per channel (diffusers' convention); weights without per-channel statistics use the single
    # scaled = (z - shift_factor) * scaling_factor
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    codec_steps: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)  # anchor quantisation steps, coarse to fine

    def __post_init__(self) -> None:
        """Refuse what no trained model has (ValueError): a config may come from a hostile file.
        The bounds keep the largest model near half a GB."""
        def ok(xs, lo, hi, n):
            return 1 <= len(xs) <= n and all(lo <= x <= hi for x in xs)
        if not (ok(self.block_out_channels, 1, 512, 6) and 1 <= self.layers_per_block <= 4
                and 1 <= self.latent_channels <= 64 and 1 <= self.norm_num_groups <= 512
                and ok(self.codec_steps, 1e-6, 1e6, 16) and math.isfinite(self.scaling_factor)
                and self.scaling_factor > 0 and math.isfinite(self.shift_factor)):
            raise ValueError("VAE config out of range")
        for stats in (self.latents_mean, self.latents_std):
            if stats is not None and (len(stats) != self.latent_channels or not ok(stats, -1e6, 1e6, 64)):
                raise ValueError("latents_mean/std need one finite value per latent channel")
        if self.latents_std is not None and min(self.latents_std) <= 0:
            raise ValueError("latents_std must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        """From a file's JSON: each field converted to its type (TypeError/ValueError if it is not
        one); a missing field takes its default."""
        d = {**asdict(cls()), **d}

        def floats(xs):
            return None if xs is None else tuple(float(x) for x in xs)

        return cls(block_out_channels=tuple(int(c) for c in d["block_out_channels"]),
                   layers_per_block=int(d["layers_per_block"]), latent_channels=int(d["latent_channels"]),
                   norm_num_groups=int(d["norm_num_groups"]), scaling_factor=float(d["scaling_factor"]),
                   shift_factor=float(d["shift_factor"]), latents_mean=floats(d["latents_mean"]),
                   latents_std=floats(d["latents_std"]), codec_steps=floats(d["codec_steps"]))


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1x1 shortcut when the width changes (diffusers' block)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample2D(nn.Module):
    """Stride-2 conv with latent diffusion's asymmetric padding (right and bottom)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Block(nn.Module):
    """diffusers' DownEncoderBlock2D / UpDecoderBlock2D: resnets, then an optional resampler."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cin if i == 0 else cout, cout, groups) for i in range(layers))
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(cout)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        for s in getattr(self, "downsamplers", ()) or getattr(self, "upsamplers", ()):
            x = s(x)
        return x


class _MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, groups), ResnetBlock2D(ch, ch, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.resnets[0](x))


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch, g = c.block_out_channels, c.norm_num_groups
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            _Block(ch[max(i - 1, 0)], ch[i], c.layers_per_block, g, "down" if i < len(ch) - 1 else None)
            for i in range(len(ch))
        )
        self.mid_block = _MidBlock(ch[-1], g)
        self.conv_norm_out = _norm(g, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch, g = tuple(reversed(c.block_out_channels)), c.norm_num_groups
        self.conv_in = nn.Conv2d(c.latent_channels, ch[0], 3, padding=1)
        self.mid_block = _MidBlock(ch[0], g)
        self.up_blocks = nn.ModuleList(
            _Block(ch[max(i - 1, 0)], ch[i], c.layers_per_block + 1, g, "up" if i < len(ch) - 1 else None)
            for i in range(len(ch))
        )
        self.conv_norm_out = _norm(g, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


@registry.bind  # its id and name: codec/registry.py
class KLAutoencoder(CompressionModel):
    """Encoder -> diagonal Gaussian (mean, log-variance) -> decoder; plus the codec's priors
    (CompressionModel gives them ``update``, ``aux_loss`` and loading of their CDF tables)."""

    # the codec model interface (codec/registry.py)
    CONFIG = VAEConfig
    FP16_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")  # priors stay float32
    num_streams = 1  # the latent

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig()
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1)
        self.priors = nn.ModuleList(EntropyBottleneck(c.latent_channels) for _ in c.codec_steps)

    def deepened(self, layers_per_block: int) -> KLAutoencoder:
        """A copy with ``layers_per_block`` resnets per encoder block (the decoder one more, as
        diffusers has it), grown, not restarted: the added resnets go last in each block with
        their second convolution at zero, so each adds exactly nothing and the copy reconstructs
        as this model does, bit for bit; training then moves them (the zero convolution's input
        is not zero, so it gets a gradient at once)."""
        old = self.config.layers_per_block
        if layers_per_block < old:
            raise ValueError(f"cannot deepen {old} layers per block to {layers_per_block}")
        new = KLAutoencoder(VAEConfig(**{**asdict(self.config), "layers_per_block": layers_per_block}))
        missing, unexpected = new.load_state_dict(self.state_dict(), strict=False)
        added = {k.rsplit(".", 1)[0] for k in missing}
        if unexpected or any(".resnets." not in k for k in added):
            raise ValueError(f"deepening does not fit this model ({unexpected or missing})")
        with torch.no_grad():
            for blocks, first in ((new.encoder.down_blocks, old), (new.decoder.up_blocks, old + 1)):
                for block in blocks:
                    for resnet in block.resnets[first:]:
                        resnet.conv2.weight.zero_()
                        resnet.conv2.bias.zero_()
        return new

    @property
    def stride(self) -> int:
        """Image size / latent size (8 for f8)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def padding(self) -> int:
        return self.stride

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        return -(-height // self.stride), -(-width // self.stride)

    device_parts = ("encoder", "decoder", "quant_conv", "post_quant_conv")

    # --- the autoencoder ---
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [0, 1] -> (mean, logvar) of the posterior over the unscaled latent."""
        moments = self.quant_conv(self.encoder(2 * x - 1))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> image in [0, 1] (not clamped, so training sees the true error)."""
        return (self.decoder(self.post_quant_conv(z)) + 1) / 2

    def forward(self, x: torch.Tensor, sample: bool = True) -> dict:
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
        return {"x_hat": self.decode(z), "mean": mean, "logvar": logvar}

    def _shift_and_scale(self, z: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """scaled = (z - shift) * scale, with per-channel shift and scale when the weights have them."""
        c = self.config
        if c.latents_mean is None or c.latents_std is None:
            return c.shift_factor, c.scaling_factor
        mean = torch.tensor(c.latents_mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        std = torch.tensor(c.latents_std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        return mean, c.scaling_factor / std

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self._shift_and_scale(z)
        return (z - shift) * scale

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self._shift_and_scale(z)
        return z / scale + shift

    # --- the codec ---
    def step(self, quality: int) -> tuple[float, int]:
        """Quantisation step for quality 1-100 (log-interpolated between the anchor steps) and
        the index of the nearest anchor, whose prior codes it."""
        steps = self.config.codec_steps
        t = (quality - 1) / 99 * (len(steps) - 1)
        return math.exp(float(np.interp(t, range(len(steps)), [math.log(s) for s in steps]))), round(t)

    # Large images run in overlapping tiles of TILE pixels, cross-faded over OVERLAP
    # (codec/models/tiles.py), so memory stays bounded; a Kodak image is one tile. GroupNorm's
    # statistics are per tile then, on a grid fixed by the image size.
    TILE, OVERLAP = 768, 128  # pixels, multiples of the stride

    @torch.no_grad()
    def encode_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Padded image -> the scaled posterior mean (what latent files and the codec hold)."""
        model = cpu_transforms.with_tap_convs(self) if x.device.type == "cpu" else self  # the same weights
        with plain_cpu_kernels():  # same latents whatever the thread count
            mean = tiles.blended(lambda t: model.encode(t)[0], x, self.TILE, self.OVERLAP, down=self.stride)
        return self.scale(mean)

    @torch.no_grad()
    def decode_scaled(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image in [0, 1], float32 on CPU."""
        s = self.stride
        model = cpu_transforms.with_tap_convs(self) if latent.device.type == "cpu" else self  # the same weights
        with plain_cpu_kernels():  # same pixels whatever the thread count, as for the hyperprior
            x = tiles.blended(lambda z: model.decode(self.unscale(z)).clamp(0, 1).float().cpu(), latent,
                              self.TILE // s, self.OVERLAP // s, up=s)
        return x.clamp(0, 1)

    # Coding in two halves, as for the hyperprior: analysis / coding, decoding / synthesis.
    def analyse(self, x: torch.Tensor, quality: int) -> torch.Tensor:
        """Padded image -> the scaled latent divided by the quality's step (before rounding)."""
        return self.at_quality(self.transform(x), quality)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The quality-free part of :meth:`analyse` (the encoder), as in the rate-distortion models."""
        return self.encode_scaled(x)

    def at_quality(self, features: torch.Tensor, quality: int) -> torch.Tensor:
        return (features / self.step(quality)[0]).float().cpu()

    def encode_streams(self, y: torch.Tensor, quality: int) -> tuple[list[bytes], tuple[int, int]]:
        stream, _ = entropy.encode_factorized(self.priors[self.step(quality)[1]], y)
        return [stream], tuple(y.shape[-2:])

    def decode_streams(self, strings: list[bytes], shape: tuple[int, int], quality: int) -> torch.Tensor:
        """Stream -> the dequantised latent (in steps; exact on any machine)."""
        return entropy.decode_factorized(self.priors[self.step(quality)[1]], strings[0], shape)

    def synthesize(self, y: torch.Tensor, quality: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.decode_scaled(y.to(device) * self.step(quality)[0])

    def compress(self, x: torch.Tensor, quality: int) -> tuple[list[bytes], tuple[int, int]]:
        """Padded image batch of one -> ([latent stream], latent shape)."""
        return self.encode_streams(self.analyse(x, quality), quality)

    def decompress(self, strings: list[bytes], shape: tuple[int, int], quality: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        return self.synthesize(self.decode_streams(strings, shape, quality), quality, device)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image, summed over latent elements (as latent diffusion does)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def diffusers_config(config: VAEConfig, sample_size: int = 256) -> dict:
    """The ``config.json`` diffusers' AutoencoderKL needs to rebuild this network."""
    n = len(config.block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.30.0",
        "act_fn": "silu",
        "block_out_channels": list(config.block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": config.latent_channels,
        "layers_per_block": config.layers_per_block,
        "norm_num_groups": config.norm_num_groups,
        "sample_size": sample_size,
        "scaling_factor": config.scaling_factor,
        "shift_factor": config.shift_factor,
        "latents_mean": list(config.latents_mean) if config.latents_mean else None,
        "latents_std": list(config.latents_std) if config.latents_std else None,
        "mid_block_add_attention": False,
        "force_upcast": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
    }


def export_diffusers(model: KLAutoencoder, folder: str | Path) -> Path:
    """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` for diffusers.

    diffusers works on images in [-1, 1] and leaves latent scaling to its pipelines, which read
    ``latents_mean``/``latents_std``/``scaling_factor`` (SDXL style) or ``shift_factor``/
    ``scaling_factor`` (SD3 style) from the config; our ``encode``/``decode`` wrap the same
    network for images in [0, 1].
    """
    from safetensors.torch import save

    if any(ch % model.config.norm_num_groups for ch in model.config.block_out_channels):
        raise ValueError("diffusers needs every block width to be a multiple of norm_num_groups")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
             if not k.startswith("priors.")}
    # written by Python rather than safetensors' save_file, whose files are private (mode 0600)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(save(state))
    (folder / "config.json").write_text(json.dumps(diffusers_config(model.config), indent=2) + "\n")
    return folder
