"""The model interface is real: a tiny third model, registered here and nowhere else, goes
through the API, the command line, the container, the weights files, training and the benchmark
unchanged."""

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


class TinyTraining:
    """The tiny model's training pieces (codec/train/rd.py has the real models'): plain MSE plus
    the prior's rate, every parameter at --lr, the quantiles on their own."""

    def __init__(self, args):
        self.args = args

    def build(self, cls, start):
        return (start if start is not None else cls()), "same"

    def loss(self, model, x, generator, net=None):
        y = model.enc(x)
        y_hat, likelihoods = model.prior(y)
        mse = ((model.dec(y_hat) - x) ** 2).mean()
        bpp = -torch.log2(likelihoods).sum() / (x.shape[0] * x.shape[-2] * x.shape[-1])
        return {"loss": bpp + 100 * mse, "mse": mse}

    def validation(self, model, x):
        return {k: float(v) for k, v in self.loss(model, x, None).items()}

    def describe(self, model):
        return f"{model.config.channels} channels"

    def groups(self, model):
        named = list(model.named_parameters())
        return ([{"params": [p for n, p in named if not n.endswith("quantiles")], "lr": self.args.lr, "name": "all"}],
                [p for n, p in named if n.endswith("quantiles")])

    def export(self, ckpt, info):
        model = TinyCodec(TinyConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
        return model


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    registry.register(ModelEntry(200, "tiny-test", "tiny", f"{__name__}:TinyCodec", "tiny.safetensors",
                                 label="tiny test model", trainer=f"{__name__}:TinyTraining"))
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


@pytest.mark.slow
def test_tiny_model_trains_through_train_fit_and_is_benchmarked(tiny_weights, tmp_path):
    from codec import bench
    from codec.train import main as train

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        make_image(72, 64, seed=i).save(data / f"{i}.png")
    train(["fit", "--model", "tiny", "--data", str(data), "--val", str(data), "--out", str(tmp_path / "run"),
           "--steps", "3", "--val-every", "3", "--patch-size", "32", "--batch-size", "2", "--device", "cpu",
           "--precision", "fp32", "--ema", "0.9"])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["kind"] == "tiny" and ckpt["step"] == 3
    train(["export", str(tmp_path / "run" / "last.pt"), str(tmp_path / "tiny.safetensors"), "--ema"])
    out = tmp_path / "bench"
    assert bench.main([str(data), "--quick", "--codecs", "aecodec-tiny", "--device", "cpu",
                       "--tiny-weights", str(tmp_path / "tiny.safetensors"), "--out", str(out)]) == 0
    assert (out / "aecodec-tiny.json").exists() and "tiny test model" in (out / "summary.md").read_text()
