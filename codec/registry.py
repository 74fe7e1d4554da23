"""The one list of codec models: id (in files), name (in the API), short name (on the command
line), class, and shipped weights file. Importing it costs nothing: classes load on first use.

A model is a class that provides what :class:`CodecModel` states; register it with
:func:`register` (the built-in ones are below) and the container, weights files, API, CLI,
training and benchmark all know it: nothing else is edited (``tests/test_registry.py`` registers
a tiny third model from the test itself).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class CodecModel(Protocol):
    """What a codec model provides (an ``nn.Module``; a ``CompressionModel`` for the
    ``update()`` that builds its CDF tables)."""

    MODEL_ID: ClassVar[int]  # in every .aec header: 1..255, unique (given by @registry.bind, from the entry)
    NAME: ClassVar[str]  # in the API and weights files (likewise)
    CONFIG: ClassVar[type]  # dataclass with to_dict() / from_dict(), stored in the weights file
    FP16_PREFIXES: ClassVar[tuple[str, ...]]  # state-dict prefixes stored as float16 (the big transforms)
    # optional: INT8_PREFIXES, weights stored as int8 (encoder-only or small float corrections; codec/weights.py);
    # optional: submodel(name), a registered model this one contains, so one file ships both
    # optional: upgrade_names(state) -> state, the tensor names of earlier releases' files -> today's
    device_parts: ClassVar[tuple[str, ...]]  # submodules that run on the chosen device; the rest stays on CPU
    config: Any

    @property
    def padding(self) -> int:
        """The image is padded (edge-replicated) to a multiple of this before coding."""

    @property
    def num_streams(self) -> int:
        """How many entropy-coded streams a file of this model holds (from its config)."""

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial shape of the first coded latent for an image of this size: what
        :meth:`decode_streams` is given."""

    def analyse(self, x, quality: int): ...  # padded image (1, 3, H, W) in [0, 1] -> latent
    # optional: transform(x) and at_quality(features, quality), the two halves of analyse (the
    # quality-free transform once, then each quality cheaply: the --target-size search uses them)

    def encode_streams(self, y, quality: int) -> tuple[list[bytes], tuple[int, int]]: ...

    def decode_streams(self, strings: list[bytes], shape: tuple[int, int], quality: int): ...

    def synthesize(self, y_hat, quality: int, device="cpu"): ...  # -> padded image in [0, 1], (1, 3, H, W)

    def compress(self, x, quality: int) -> tuple[list[bytes], tuple[int, int]]:
        """analyse, then encode_streams (what the API calls)."""

    def decompress(self, strings: list[bytes], shape: tuple[int, int], quality: int, device="cpu"):
        """decode_streams, then synthesize (what the API calls)."""


# Files outlive releases (docs/cli.md, "Files that outlive releases"): every release from 0.15.0 on
# decodes the files of every release since, because each released weights file stays in the
# weights folder, byte for byte (git stores an unchanged file once), found by the 8-byte id every
# .aec header holds. A release that replaces a shipped file keeps the old one under the name given
# here (``git mv``, then the new file takes the shipped name) and adds the new file's id.
RELEASED_WEIGHTS: dict[str, tuple[str, str]] = {  # weights id -> (first release, file in the weights folder)
    "17f1beb8c8817404": ("aecodec 0.15.0", "aecodec-cc.safetensors"),  # cc, and the hyperprior inside it
    "3e8a3fbfea39984c": ("aecodec 0.1.0", "aecodec-vae-f8-0.1.0.safetensors"),  # the f8 VAE of 0.1.0-0.16.0
    "eb34b7970f5ed215": ("aecodec 0.17.0", "aecodec-vae-f8-0.17.0.safetensors"),  # the f8 VAE that keeps every hue
    "02aa3de9d3bd31e7": ("aecodec 0.18.0", "aecodec-sc-0.18.0.safetensors"),  # space-channel
    "728a5b2f2ea83a3c": ("aecodec 0.19.0", "aecodec-sc.safetensors"),  # space-channel, the wider synthesis
    "597bb32c481f45f7": ("aecodec 0.20.0", "aecodec-vae-f8.safetensors"),  # the deeper f8 VAE
}

# Weights of releases before that policy, whose files this release cannot decode: each id names
# its release and the last git revision of it, whose source decodes them (info and decompress say
# so without loading torch).
PAST_WEIGHTS: dict[str, tuple[str, str]] = {  # weights id -> (release, git revision)
    "71cc861f10712727": ("aecodec 0.2.0", "b750ba4"),  # hyperprior-gain
    "7f0d3914ba2f67a5": ("aecodec 0.3.0", "dc4263b"),  # hyperprior-gain (aecodec-hp.safetensors)
    "2f9db684f2495987": ("aecodec 0.3.0", "dc4263b"),  # cc-hyperprior-gain
    "d975257e56c8d8c1": ("aecodec 0.4.0", "91db2db"),  # cc-hyperprior-gain, and the hyperprior inside it
    "dc591943746a8894": ("aecodec 0.5.0", "a63e79e"),  # from here on: the same
    "295cd2dae3a9002a": ("aecodec 0.6.0", "a936a49"),
    "5c548cb32076c783": ("aecodec 0.7.0", "46733bf"),
    "cd551c7aaabed957": ("aecodec 0.8.0", "90c84bf"),
    "855d16362f8f2b88": ("aecodec 0.9.0", "3d43896"),
    "0a4f82ef30e252f9": ("aecodec 0.10.0", "cc1d41d"),
    "d02e906dc3d64a0d": ("aecodec 0.11.0", "6741169"),
    "6ecb39a0854e110b": ("aecodec 0.12.0", "636a6d5"),
    "d37441f475e6a216": ("aecodec 0.13.0", "3069e48"),
    "4f295273f8260298": ("aecodec 0.14.0", "91b2017"),
}


def past_release(weights_id: str) -> str | None:
    """For a file of a release before 0.15.0: where it decodes (None for any other id)."""
    if weights_id not in PAST_WEIGHTS:
        return None
    release, revision = PAST_WEIGHTS[weights_id]
    return (f"{release}'s weights ({weights_id}), which releases from 0.15.0 on do not decode: "
            f"decode it with the source of {release} (git revision {revision} of aecodec)")


def unknown_weights(weights_id: str) -> str:
    """Why no shipped weights decode a file, and what to do (no torch needed to say it)."""
    return past_release(weights_id) or (
        f"weights {weights_id}, which no release of aecodec ships: pass the weights file that wrote it "
        "with --weights FILE (Codec(weights=FILE) in Python)")


@dataclass(frozen=True)
class ModelEntry:
    model_id: int
    name: str
    short: str  # the command line's --model choice
    target: str  # "module:Class", imported on first use
    weights_file: str | None  # shipped file name in the weights folder (may hold a model containing this
    # one); None: none ships yet (--weights FILE)
    on_command_line: bool = True  # a choice of ``aecodec compress --model`` (its files decode either way)
    about: str = ""  # what it is, for the command line's help
    label: str = ""  # in the benchmark's tables and plots (default: "aecodec " + name)
    qualities: tuple[int, ...] = ()  # the benchmark's qualities, and its --quick ones (default: the benchmark's)
    quick: tuple[int, ...] = ()
    trainer: str = ""  # "module:Class": its training pieces (codec/train/rd.py), imported on first use

    @property
    def trainer_cls(self) -> type:
        module, _, cls = self.trainer.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def bench_key(self) -> str:
        """The benchmark's name for it (its result file): "aecodec-SHORT"; the hyperprior, the first
        model, is plain "aecodec"."""
        return "aecodec" if self.short == "hp" else f"aecodec-{self.short}"

    @property
    def cls(self) -> type:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


MODELS: dict[str, ModelEntry] = {}  # by name


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model; ids, names and short names must be new."""
    for other in MODELS.values():
        if entry.model_id == other.model_id or entry.name == other.name or entry.short == other.short:
            raise ValueError(f"model {entry.name!r} clashes with registered model {other.name!r}")
    if not 1 <= entry.model_id <= 255:
        raise ValueError("model ids are 1..255 (one byte in the header)")
    MODELS[entry.name] = entry
    return entry


def bind(cls: type) -> type:
    """Class decorator: a model class's id and name (``MODEL_ID``, ``NAME``), taken from its entry
    here (found by ``module:Class``), so that each is written once, in this file."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    entry = next((e for e in MODELS.values() if e.target == target), None)
    if entry is None:
        raise ValueError(f"{target} is not a registered model")
    cls.MODEL_ID, cls.NAME = entry.model_id, entry.name
    return cls


def unregister(name: str) -> None:
    MODELS.pop(name, None)


def by_id(model_id: int) -> ModelEntry | None:
    return next((e for e in MODELS.values() if e.model_id == model_id), None)


def by_short(short: str) -> ModelEntry:
    return next(e for e in MODELS.values() if e.short == short)


RD_TRAINING = "codec.train.rd:RateDistortion"  # the rate-distortion models' training pieces
# The hyperprior ships inside the channel-conditional file (ChannelConditional.submodel).
# The hyperprior inside the cc file is not offered by compress since 0.16.0: it needs about 32% more
# bits (BD-rate on Kodak) for a 25% faster encode, a trade no user is better served by. Its files
# decode, the API, training and the benchmark keep it (it is what cc grew from).
register(ModelEntry(1, "hyperprior-gain", "hp", "codec.models.hyperprior:GainHyperprior", "aecodec-cc.safetensors",
                    on_command_line=False, label="aecodec", trainer=RD_TRAINING))
register(ModelEntry(2, "vae-kl-f8", "vae", "codec.models.vae:KLAutoencoder", "aecodec-vae-f8.safetensors",
                    about="the f8 VAE's quantised latent (low rates only, and a ceiling near 24 dB: strong colours "
                    "and fine detail come back approximate)",
                    label="aecodec VAE f8", qualities=(1, 34, 67, 100), quick=(1, 100),
                    trainer="codec.train.vae:VAETraining"))  # a narrow, low rate range
register(ModelEntry(3, "cc-hyperprior-gain", "cc", "codec.models.cc:ChannelConditional", "aecodec-cc.safetensors",
                    about="the channel-conditional model (0.3.0-0.17.0's default: 6.5% larger files than sc's, "
                    "about 2x faster to decode)",
                    label="aecodec channel-conditional", trainer=RD_TRAINING))
register(ModelEntry(4, "space-channel", "sc", "codec.models.sc:SpaceChannel", "aecodec-sc.safetensors",
                    about="the space-channel model (the default: the smallest files, and the highest quality)",
                    label="aecodec space-channel", trainer=RD_TRAINING))
DEFAULT_MODEL = "space-channel"  # the best rate-distortion (docs/performance.md)
