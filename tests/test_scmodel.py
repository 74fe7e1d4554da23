"""The space-channel model: grown from model 3 it codes the same latent and pixels; coded in two
checkerboard passes it decodes exactly on any thread count and tile size; its files refuse damage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.api import Codec, pad_to_stride
from codec.format.bitstream import FormatError
from codec.models.cc import CCConfig, ChannelConditional
from codec.models.exact import FixedPointConvStack
from codec.models.hyperprior import conv
from codec.image import normalize, split
from codec.models.sc import SCConfig, SpaceChannel, anchors
from codec.train import main
from codec.weights import save_weights
from conftest import make_image


def _nudge(model: torch.nn.Module, prefix: str, seed: int = 0) -> torch.nn.Module:
    """Non-zero corrections in every slice network, as training would leave them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(prefix) and name.endswith("weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


@pytest.fixture(scope="module")
def small_cc():
    torch.manual_seed(0)
    cc = ChannelConditional(CCConfig(N=16, M=24, lambdas=(0.01, 0.05, 0.2), slices=3, width=16))
    cc = _nudge(cc, "latent_codec.slice_nets.")
    cc.update(force=True)
    return cc.eval()


@pytest.fixture(scope="module")
def sc_weights(small_cc, tmp_path_factory):
    sc = _nudge(SpaceChannel.grown_from(small_cc, extra=8), "latent_codec.slice_nets.", seed=1)
    sc.update(force=True)
    path = tmp_path_factory.mktemp("sc") / "sc.safetensors"
    save_weights(sc, path)
    return path


def _padded(width: int, height: int, seed: int) -> torch.Tensor:
    image, mode = normalize(make_image(width, height, seed=seed))
    return pad_to_stride(split(image, mode)[0], 64)


@pytest.mark.slow
def test_grown_from_model_3_it_codes_the_same_latent_and_pixels(small_cc):
    sc = SpaceChannel.grown_from(small_cc, extra=8).eval()
    sc.update(force=True)
    assert sc.config.slices == (8, 8, 8, 8) and sc.config.lambdas[:3] == small_cc.config.lambdas
    x = _padded(130, 70, seed=3)
    for position in (0.0, 1.0, 2.0):  # model 3's anchors sit at the same places on the longer axis
        q_old, q_new = 1 + position / 2 * 99, 1 + position / 3 * 99
        y_old, y_new = small_cc.analyse(x, q_old), sc.analyse(x, q_new)
        assert torch.equal(y_old, y_new[:, :24])
        old_streams, shape = small_cc.encode_streams(y_old, q_old)
        new_streams, new_shape = sc.encode_streams(y_new, q_new)
        assert new_shape == shape and len(new_streams) == len(old_streams) + 1
        assert new_streams[0] == old_streams[0]  # the side information, bit for bit
        decoded = sc.decode_streams(new_streams, shape, q_new)
        assert torch.equal(decoded[:, :24], small_cc.decode_streams(old_streams, shape, q_old))
        pixels = (sc.decompress(new_streams, shape, q_new) - small_cc.decompress(old_streams, shape, q_old)).abs()
        assert float(pixels.max()) * 255 < 1


def test_a_wider_synthesis_codes_the_same_bits_and_pixels(sc_weights, tmp_path):
    """g_s grown from 16 to 24 channels: the same streams, the same pixels to float rounding, and
    the new weights learn from the first step; the file records the width and reloads."""
    model = _nudge(Codec(sc_weights, device="cpu").model, "g_s.", seed=2)  # GDNs as training leaves them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("g_s.") and name.endswith(("beta", "gamma")):
                p.add_(torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    wide = model.with_synthesis_width(24).eval()
    wide.update(force=True)
    assert wide.config.N_s == 24 and wide.g_s[0].out_channels == 24 and wide.g_a[0].out_channels == 16
    x = _padded(96, 64, seed=5)
    streams, shape = model.compress(x, 70)
    assert wide.compress(x, 70) == (streams, shape)
    pixels = (wide.decompress(streams, shape, 70) - model.decompress(streams, shape, 70)).abs()
    assert float(pixels.max()) * 255 < 0.01
    wide.train()
    out = wide(x, torch.tensor([1.0]))
    ((out["x_hat"] - x) ** 2).mean().backward()
    assert float(wide.g_s[-1].weight.grad[16:].abs().sum()) > 0  # the zeros into the pixels move
    with pytest.raises(ValueError, match="not narrowed"):
        wide.with_synthesis_width(16)
    wider = wide.with_synthesis_width(32).eval()  # a widened model widens again
    assert float((wider.decompress(streams, shape, 70) - model.decompress(streams, shape, 70)).abs().max()) * 255 < 0.01
    save_weights(wide, tmp_path / "wide.safetensors")
    reloaded = Codec(tmp_path / "wide.safetensors", device="cpu").model
    assert reloaded.config.N_s == 24
    assert float((reloaded.decompress(streams, shape, 70) - model.decompress(streams, shape, 70)).abs().max()) * 255 < 1
    with pytest.raises(ValueError, match="N_s"):
        SCConfig(N=16, M=32, slices=(16, 16), N_s=8)


def test_exact_passes_split_the_first_layer_without_changing_a_bit():
    net = FixedPointConvStack([conv(12, 8, stride=1, kernel_size=3), conv(8, 6, stride=1, kernel_size=3)])
    x = torch.randn(1, 12, 9, 7) * 4
    assert torch.equal(net.exact(x), net.exact_rest(net.exact_first(x[:, :9]), x[:, 9:]))


def test_training_splits_the_first_layer_too_and_zeros_cost_only_the_bias():
    """Training's two checkerboard passes share the first layer's sums over the hyperprior and
    the earlier slices (float sums: equal to rounding), and the anchors' pass, whose own input is
    all zeros, adds only the bias; gradients flow through both parts."""
    net = FixedPointConvStack([conv(12, 8, stride=1, kernel_size=3), conv(8, 6, stride=1, kernel_size=3)])
    x = (torch.randn(1, 12, 9, 7, generator=torch.Generator().manual_seed(5)) * 4).requires_grad_(True)
    partial = net.first(x[:, :9])
    torch.testing.assert_close(net.rest(partial, x[:, 9:]), net(x), rtol=1e-4, atol=1e-3)
    zeros = torch.cat([x[:, :9], torch.zeros_like(x[:, 9:])], dim=1)
    torch.testing.assert_close(net.rest(partial, None), net(zeros), rtol=1e-4, atol=1e-3)
    net.rest(partial, x[:, 9:]).sum().backward()
    assert x.grad is not None and x.grad[:, :9].abs().sum() > 0 and x.grad[:, 9:].abs().sum() > 0


def test_the_checkerboard_alternates():
    a = anchors((5, 4))
    assert a.shape == (1, 1, 5, 4) and bool(a[0, 0, 0, 0]) and not bool(a[0, 0, 0, 1]) and int(a.sum()) == 10


@pytest.mark.slow
def test_round_trip_threads_and_tiles(sc_weights, monkeypatch):
    codec = Codec(sc_weights, device="cpu")
    assert codec.model.NAME == "space-channel" and codec.model.num_streams == 5
    image = make_image(300, 200, seed=9)
    torch.set_num_threads(1)
    data = codec.compress(image, 80)
    one = np.asarray(codec.decompress(data))
    torch.set_num_threads(2)
    assert codec.compress(image, 80) == data
    assert np.array_equal(np.asarray(codec.decompress(data)), one)
    # tiles smaller than the latent, and so each slice network's own sums over the hyperprior,
    # where one tile shares them (SpaceChannelContext._hyper_sums)
    monkeypatch.setattr(codec.model.latent_codec, "TILE", 8)
    monkeypatch.setattr(codec.model, "TILE", 128)
    assert codec.compress(image, 80) == data
    assert np.array_equal(np.asarray(codec.decompress(data)), one)
    # what the decoder rebuilds is what the encoder rounded: within half a step of the latent
    x = _padded(300, 200, seed=9)
    y = codec.model.analyse(x, 80)
    streams, shape = codec.model.encode_streams(y, 80)
    assert float((codec.model.decode_streams(streams, shape, 80) - y.double()).abs().max()) <= 0.5


def test_a_damaged_slice_stream_is_refused(sc_weights):
    model = Codec(sc_weights, device="cpu").model
    streams, shape = model.compress(_padded(96, 64, seed=2), 90)
    for damaged in (streams[2][:-4], streams[2] + b"\0\0\0\1", b"\xff" * 12):
        with pytest.raises(FormatError, match="corrupted"):
            model.decompress([*streams[:2], damaged, *streams[3:]], shape, 90)


def test_config_is_checked():
    with pytest.raises(ValueError, match="add up"):
        SCConfig(N=8, M=16, slices=(4, 4))
    with pytest.raises(ValueError, match="slices"):
        SCConfig(N=8, M=17 * 2, slices=(2,) * 17)


@pytest.mark.slow
def test_train_sc_grown_from_a_cc_run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        make_image(80, 72, seed=i).save(data / f"{i}.png")
    common = ["--data", str(data), "--val", str(data), "--patch-size", "64", "--batch-size", "2",
              "--val-every", "2", "--device", "cpu", "--precision", "fp32"]
    main(["fit", *common, "--steps", "2", "--model", "cc", "--N", "16", "--M", "24", "--slices", "3",
          "--cc-width", "16", "--out", str(tmp_path / "cc")])
    main(["fit", *common, "--steps", "4", "--model", "sc", "--resume", str(tmp_path / "cc" / "last.pt"),
          "--top-share", "0.5", "--slice-lr", "1e-3", "--out", str(tmp_path / "sc"), "--ema", "0.9"])
    ckpt = torch.load(tmp_path / "sc" / "last.pt", weights_only=False)
    assert ckpt["kind"] == "sc" and ckpt["step"] == 4 and list(ckpt["config"]["slices"]) == [8, 8, 8, 128]
    assert len(ckpt["config"]["lambdas"]) == 8  # the cc run's seven anchors and one above
    main(["export", str(tmp_path / "sc" / "last.pt"), str(tmp_path / "sc.safetensors"), "--ema"])
    codec = Codec(tmp_path / "sc.safetensors", device="cpu")
    image = make_image(40, 30)
    assert codec.decompress(codec.compress(image, 100)).size == (40, 30)
    main(["fit", *common, "--steps", "2", "--init", str(tmp_path / "sc.safetensors"), "--synthesis-width", "24",
          "--out", str(tmp_path / "wide")])
    assert torch.load(tmp_path / "wide" / "last.pt", weights_only=False)["config"]["N_s"] == 24
    with pytest.raises(SystemExit, match="not narrowed"):
        main(["fit", *common, "--steps", "4", "--resume", str(tmp_path / "wide" / "last.pt"),
              "--synthesis-width", "16", "--out", str(tmp_path / "narrow")])
