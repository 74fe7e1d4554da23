"""The channel-conditional model: starts as the hyperprior it is made from, codes exactly on any
thread count and tile size, stores its slice networks as exact integers, and trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from codec.api import Codec, CodecError, pad_to_stride, read_header
from codec.models.cc import CCConfig, ChannelConditional
from codec.models.exact import integer_scales
from codec.image import normalize, split
from codec.train import main
from codec.weights import WeightsError, load_weights, save_weights
from conftest import make_image, psnr


def _nudge(model: ChannelConditional, seed: int = 0) -> ChannelConditional:
    """Give the slice networks and the residual prediction a non-zero correction, as training would."""
    g = torch.Generator().manual_seed(seed)
    layers = [layer for net in model.latent_codec.slice_nets for layer in net.layers]
    layers += [layer for layer in (model.lrp or []) if isinstance(layer, torch.nn.Conv2d)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.add_(torch.randn(layer.weight.shape, generator=g) * 0.01)
    return model


@pytest.fixture(scope="module")
def cc_weights(tmp_path_factory):
    hp, _ = load_weights(model="hyperprior-gain")
    model = _nudge(ChannelConditional.from_hyperprior(hp, lrp=16))
    model.update(force=True)
    path = tmp_path_factory.mktemp("cc") / "cc.safetensors"
    save_weights(model, path)
    return path


@pytest.mark.slow
def test_made_from_a_hyperprior_it_decodes_the_same_pixels(codec):
    cc = ChannelConditional.from_hyperprior(codec.model).eval()
    image, mode = normalize(make_image(130, 70, seed=3))
    x = pad_to_stride(split(image, mode)[0], 64)
    hp_streams, shape = codec.model.compress(x, 60)
    cc_streams, cc_shape = cc.compress(x, 60)
    assert len(cc_streams) == 1 + cc.config.slices and cc_shape == shape
    assert torch.equal(codec.model.decompress(hp_streams, shape, 60), cc.decompress(cc_streams, shape, 60))


@pytest.mark.slow
def test_round_trip_threads_and_tiles(cc_weights, monkeypatch):
    codec = Codec(cc_weights, device="cpu")
    assert codec.model.NAME == "cc-hyperprior-gain" and codec.model.num_streams == 5
    image = make_image(300, 200, seed=9)
    torch.set_num_threads(1)
    data = codec.compress(image, 70)
    one = np.asarray(codec.decompress(data))
    torch.set_num_threads(2)
    assert codec.compress(image, 70) == data
    assert np.array_equal(np.asarray(codec.decompress(data)), one)
    monkeypatch.setattr(codec.model, "TILE", 128)
    monkeypatch.setattr(codec.model.latent_codec, "TILE", 8)  # its networks' tiles too (latent units)
    assert np.array_equal(np.asarray(codec.decompress(data)), one)
    assert psnr(image, Image.fromarray(one)) > 24


def test_slice_networks_are_stored_as_exact_integers(cc_weights):
    model, _ = load_weights(cc_weights)
    scales = integer_scales(model)
    assert any(k.startswith("latent_codec.slice_nets.3.layers.2.") for k in scales)
    for name, scale in scales.items():
        t = model.state_dict()[name].double() * scale
        assert torch.equal(t, t.round())


@pytest.mark.slow
def test_a_residual_prediction_starts_at_zero_and_then_changes_the_pixels(cc_weights):
    """Added to trained weights it decodes exactly as they did; trained (nudged), it moves the
    latent the synthesis sees by under half a step, and so the pixels, but not the streams (it
    feeds no CDF table)."""
    model, _ = load_weights(cc_weights)
    plain = model.with_lrp(0).eval()
    grown = plain.with_lrp(8).eval()
    image, mode = normalize(make_image(96, 80, seed=4))
    x = pad_to_stride(split(image, mode)[0], 64)
    streams, shape = plain.compress(x, 40)
    assert grown.compress(x, 40)[0] == streams == model.compress(x, 40)[0]
    assert torch.equal(grown.decompress(streams, shape, 40), plain.decompress(streams, shape, 40))
    coded, refined = plain.decode_streams(streams, shape, 40), model.decode_streams(streams, shape, 40)
    assert coded.dtype == torch.float64  # exact; the prediction moves it by under half a step
    assert not torch.equal(refined.double(), coded) and (refined.double() - coded).abs().max() <= 0.5
    assert not torch.equal(model.decompress(streams, shape, 40), plain.decompress(streams, shape, 40))
    with pytest.raises(ValueError, match="lrp=-1"):
        CCConfig(lrp=-1)


def test_config_must_divide_the_latent():
    with pytest.raises(ValueError, match="multiple"):
        ChannelConditional(CCConfig(N=16, M=24, slices=5))


@pytest.mark.slow
def test_train_cc_from_a_hyperprior_run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        make_image(80, 72, seed=i).save(data / f"{i}.png")
    common = ["--data", str(data), "--val", str(data), "--patch-size", "64", "--batch-size", "2",
              "--val-every", "2", "--N", "16", "--M", "24", "--device", "cpu", "--precision", "fp32"]
    main(["fit", *common, "--steps", "2", "--out", str(tmp_path / "hp")])
    main(["fit", *common, "--steps", "4", "--model", "cc", "--slices", "3", "--cc-width", "16",
          "--resume", str(tmp_path / "hp" / "last.pt"), "--out", str(tmp_path / "cc"), "--ema", "0.9"])
    ckpt = torch.load(tmp_path / "cc" / "last.pt", weights_only=False)
    assert ckpt["kind"] == "cc" and ckpt["step"] == 4 and ckpt["config"]["slices"] == 3
    # a residual prediction grown on the run: Adam's count goes on for the old parameters (the
    # 2 cc steps + 2) and starts for the new ones; the average keeps what it had
    main(["fit", *common, "--steps", "10", "--lrp", "8", "--resume", str(tmp_path / "cc" / "last.pt"),
          "--out", str(tmp_path / "lrp"), "--ema", "0.9", "--keep", "2"])
    grown = torch.load(tmp_path / "lrp" / "last.pt", weights_only=False)
    assert grown["config"]["lrp"] == 8 and grown["step"] == 10 and grown["ema_n"] == 2 + 6
    assert sorted({int(s["step"]) for s in grown["opt"]["state"].values()}) == [6, 2 + 6]
    assert any(k.startswith("latent_codec.lrp.") for k in grown["ema"])
    # --keep 2: the checkpoints of the last two validations, to average at export
    assert sorted(f.name for f in (tmp_path / "lrp").glob("step-*.pt")) == ["step-10.pt", "step-8.pt"]
    main(["export", str(tmp_path / "lrp" / "step-10.pt"), str(tmp_path / "lrp.safetensors"), "--ema",
          "--average", str(tmp_path / "lrp" / "step-8.pt")])
    averaged = Codec(tmp_path / "lrp.safetensors", device="cpu").model
    earlier = torch.load(tmp_path / "lrp" / "step-8.pt", weights_only=False)
    mean = (grown["ema"]["log_gain"].double() + earlier["ema"]["log_gain"].double()) / 2
    assert averaged.config.lrp == 8 and torch.allclose(averaged.log_gain.double(), mean)
    main(["export", str(tmp_path / "lrp" / "last.pt"), str(tmp_path / "plain.safetensors"), "--ema", "--no-lrp"])
    plain = Codec(tmp_path / "plain.safetensors", device="cpu")
    assert plain.model.config.lrp == 0 and plain.decompress(plain.compress(make_image(40, 30), 50)).size == (40, 30)
    main(["export", str(tmp_path / "cc" / "last.pt"), str(tmp_path / "cc.safetensors")])
    codec = Codec(tmp_path / "cc.safetensors", device="cpu")
    image = make_image(40, 30)
    assert codec.decompress(codec.compress(image, 50)).size == (40, 30)
    # the ablation: the same transforms and hyperprior, without the slice corrections
    main(["export", str(tmp_path / "cc" / "last.pt"), str(tmp_path / "hp.safetensors"), "--as-hyperprior"])
    hp = Codec(tmp_path / "hp.safetensors", device="cpu")
    assert hp.model.NAME == "hyperprior-gain" and hp.decompress(hp.compress(image, 50)).size == (40, 30)
    for name, t in hp.model.state_dict().items():
        assert torch.equal(t, codec.model.state_dict()[name]), name



@pytest.mark.slow
def test_one_file_holds_both_models(cc_weights, tmp_path):
    """The hyperprior ships inside the channel-conditional file: ``--model hp`` reads it
    without the slice networks, and its files name the same weights."""
    cc = Codec(cc_weights, device="cpu")
    hp = Codec(cc_weights, device="cpu", model="hyperprior-gain")
    assert hp.model.NAME == "hyperprior-gain" and hp.weights_id == cc.weights_id
    for name, t in hp.model.state_dict().items():
        assert torch.equal(t, cc.model.state_dict()[name]), name
    image = make_image(64, 40)
    data = hp.compress(image, 50)
    assert read_header(data).model == "hyperprior-gain"
    assert psnr(image, hp.decompress(data)) > 22
    with pytest.raises(CodecError, match="written by model hyperprior-gain"):
        cc.decompress(data)
    hp_only = tmp_path / "hp.safetensors"
    save_weights(hp.model, hp_only)
    with pytest.raises(WeightsError, match="holds model hyperprior-gain, not cc-hyperprior-gain"):
        load_weights(hp_only, "cc-hyperprior-gain")
