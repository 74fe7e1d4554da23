"""The model interface is real: a tiny third model, registered here and nowhere else, goes
through the API, the command line, the container and the weights files unchanged."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from codec.format import entropy
from codec import registry
from codec.api import Codec, read_header
from codec.models.hyperprior import (  # CompressAI's, through codec/models/lean_imports.py
    CompressionModel,
    EntropyBottleneck,
)
from codec.cli import main
from codec.registry import CodecModel, ModelEntry
from codec.weights import load_weights, save_weights
from conftest import make_image, psnr


@dataclass(frozen=True)
class TinyConfig:
    channels: int = 6

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TinyConfig:
        return cls(**d)


class TinyCodec(CompressionModel):
    """4x4 blocks -> a few channels, rounded and coded with a factorised prior."""

    MODEL_ID = 200
    NAME = "tiny-test"
    CONFIG = TinyConfig
    FP16_PREFIXES = ("enc.", "dec.")
    device_parts = ("enc", "dec")
    padding = 4
    num_streams = 1

    def __init__(self, config: TinyConfig | None = None):
        super().__init__()
        self.config = config or TinyConfig()
        c = self.config.channels
        self.enc = nn.Conv2d(3, c, 4, stride=4)
        self.dec = nn.ConvTranspose2d(c, 3, 4, stride=4)
        self.prior = EntropyBottleneck(c)
        with torch.no_grad():  # block means and their inverse, so it codes something sensible
            self.enc.weight.zero_()
            self.dec.weight.zero_()
            for i in range(3):
                self.enc.weight[i, i] = 1 / 16 * 255 / 4
                self.dec.weight[i, i] = 4 / 255
            self.enc.bias.zero_()
            self.dec.bias.zero_()

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        return -(-height // 4), -(-width // 4)

    def analyse(self, x: torch.Tensor, quality: int) -> torch.Tensor:
        return self.enc(x).detach().cpu()

    def encode_streams(self, y: torch.Tensor, quality: int) -> tuple[list[bytes], tuple[int, int]]:
        return [entropy.encode_factorized(self.prior, y)[0]], tuple(y.shape[-2:])

    def decode_streams(self, strings: list[bytes], shape: tuple[int, int], quality: int) -> torch.Tensor:
        return entropy.decode_factorized(self.prior, strings[0], shape)

    def synthesize(self, y: torch.Tensor, quality: int, device="cpu") -> torch.Tensor:
        return self.dec(y.to(device)).detach().clamp(0, 1)

    def compress(self, x: torch.Tensor, quality: int):
        return self.encode_streams(self.analyse(x, quality), quality)

    def decompress(self, strings, shape, quality, device="cpu"):
        return self.synthesize(self.decode_streams(strings, shape, quality), quality, device)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    registry.register(ModelEntry(200, "tiny-test", "tiny", f"{__name__}:TinyCodec", "tiny.safetensors"))
    model = TinyCodec()
    with torch.no_grad():  # a prior wide enough for 0..63
        model.prior.quantiles.copy_(torch.tensor([-10.0, 32.0, 75.0]).repeat(6, 1, 1))
    model.update(force=True)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_weights(model, path)
    yield path
    registry.unregister("tiny-test")


def test_tiny_model_follows_the_interface(tiny_weights):
    model, _ = load_weights(tiny_weights)
    assert isinstance(model, TinyCodec) and isinstance(model, CodecModel)
    assert model.enc.weight.dtype == torch.float32  # stored as float16, loaded as float32


def test_tiny_model_round_trips_through_the_api(tiny_weights):
    codec = Codec(weights=tiny_weights, device="cpu")
    for mode in ("RGB", "RGBA", "L"):
        image = make_image(37, 22, mode)
        data = codec.compress(image, 50)
        header = read_header(data)
        assert (header.model, header.model_id, header.mode) == ("tiny-test", 200, mode)
        out = codec.decompress(data)
        assert out.size == image.size and out.mode == mode
        assert psnr(image.convert("RGB"), out.convert("RGB")) > 18  # 4x4 block means


def test_tiny_model_round_trips_through_the_command_line(tiny_weights, tmp_path, capsys):
    src = tmp_path / "a.png"
    make_image(40, 28).save(src)
    assert main(["compress", str(src), "--weights", str(tiny_weights), "--device", "cpu"]) == 0
    assert main(["info", str(tmp_path / "a.aec")]) == 0
    assert "tiny-test (id 200)" in capsys.readouterr().out
    assert main(["decompress", str(tmp_path / "a.aec"), "-o", str(tmp_path / "b.png"),
                 "--weights", str(tiny_weights), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "b.png").size == (40, 28)


def test_a_model_without_shipped_weights_says_what_to_do(tmp_path, capsys):
    from codec.weights import WeightsError

    registry.register(ModelEntry(201, "untrained-test", "untrained", f"{__name__}:TinyCodec", None))
    try:
        with pytest.raises(WeightsError, match="no weights ship for model untrained-test yet.*--weights FILE"):
            Codec(device="cpu", model="untrained-test")
        make_image(16, 16).save(tmp_path / "a.png")
        assert main(["compress", str(tmp_path / "a.png"), "--model", "untrained", "--device", "cpu"]) == 1
        assert "no weights ship for model untrained-test" in capsys.readouterr().err
    finally:
        registry.unregister("untrained-test")


def test_registry_refuses_clashes():
    with pytest.raises(ValueError, match="clashes"):
        registry.register(ModelEntry(1, "other", "other", "x:y", "x.safetensors"))
    with pytest.raises(ValueError, match="1..255"):
        registry.register(ModelEntry(256, "other", "other", "x:y", "x.safetensors"))


def test_built_in_models_follow_the_interface(codec):
    assert isinstance(codec.model, CodecModel)
    for entry in registry.MODELS.values():
        assert entry.cls.MODEL_ID == entry.model_id and entry.cls.NAME == entry.name
    assert codec.model.latent_shape(65, 64) == (2, 1) and codec.model.num_streams == 2
    assert np.all(np.array(codec.model.padding) > 0)
