"""The f8 VAE: shapes, the KL term, latent files, the .aec path and the training mode.

A tiny VAE is trained for a few steps and exported (calibration and priors included) once per
session, so these tests exercise the real script and stay independent of the shipped weights.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from codec.format import bitstream
from codec.api import Codec, CodecError, FormatError
from codec.cli import main as cli
from codec.train import main as train
from codec.models.vae import KLAutoencoder, VAEConfig, kl_divergence
from codec.weights import read_metadata, weights_info
from conftest import make_image, psnr

TINY = ["--channels", "16,16,32,32", "--layers-per-block", "1"]


@pytest.fixture(scope="session")
def vae_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    data = root / "data"
    data.mkdir()
    for i in range(3):
        make_image(72, 64, seed=i).save(data / f"{i}.png")
    run = root / "run"
    train(["fit", "--model", "vae", *TINY, "--data", str(data), "--val", str(data), "--out", str(run),
           "--patch-size", "32", "--batch-size", "2", "--steps", "3", "--val-every", "2", "--device", "cpu"])
    weights = root / "vae.safetensors"
    train(["export", str(run / "best.pt"), str(weights), "--data", str(data), "--calib-crops", "8",
           "--calib-size", "32", "--prior-iters", "20"])
    return weights


@pytest.fixture(scope="session")
def vae(vae_weights):
    return Codec(vae_weights, device="cpu")


@pytest.mark.parametrize("h,w", [(1, 1), (13, 7), (33, 65), (64, 48)])
def test_latent_is_four_channels_at_one_eighth(h, w):
    model = KLAutoencoder(VAEConfig(block_out_channels=(16, 16, 32, 32)))
    assert model.stride == 8
    x = torch.rand(1, 3, -(-h // 8) * 8, -(-w // 8) * 8)
    out = model(x)
    assert out["mean"].shape == (1, 4, -(-h // 8), -(-w // 8)) == out["logvar"].shape
    assert out["x_hat"].shape == x.shape


def test_kl_term():
    zero = torch.zeros(2, 4, 3, 3)
    assert torch.allclose(kl_divergence(zero, zero), torch.zeros(2))  # the posterior is the prior
    mean = torch.full((1, 4, 3, 3), 2.0)
    # KL(N(2, 1) || N(0, 1)) = 2 per element, 36 elements
    assert math.isclose(float(kl_divergence(mean, zero[:1])), 72.0, rel_tol=1e-6)
    logvar = torch.full((1, 4, 3, 3), math.log(4.0))  # KL(N(0, 4) || N(0, 1)) = (4 - 1 - ln 4) / 2
    assert math.isclose(float(kl_divergence(zero[:1], logvar)), 36 * (3 - math.log(4)) / 2, rel_tol=1e-6)


def test_the_chroma_weight_weighs_colour_errors_against_luma():
    """--chroma-weight W: an error along a colour axis costs W times a luma error of the same
    energy; W 1 is the plain RGB error."""
    from codec.train.vae import vae_loss

    class Echo(torch.nn.Module):  # reconstructs x + a fixed error, with a zero KL
        def __init__(self, error):
            super().__init__()
            self.error = error

        def forward(self, x, sample=True):
            zeros = torch.zeros(x.shape[0], 4, 1, 1)
            return {"x_hat": x + self.error, "mean": zeros, "logvar": zeros}

    x = torch.full((1, 3, 8, 8), 0.5)
    luma = torch.tensor([1.0, 1.0, 1.0])[None, :, None, None] * 0.1 / 3**0.5
    green = torch.tensor([1.0, -2.0, 1.0])[None, :, None, None] * 0.1 / 6**0.5  # same energy, green-magenta
    cost = {(name, w): float(vae_loss(Echo(e), x, 0.0, chroma_weight=w)["loss"])
            for name, e in (("luma", luma), ("green", green)) for w in (1.0, 8.0)}
    assert cost["luma", 1.0] == pytest.approx(cost["green", 1.0]) == pytest.approx(0.01 / 3)
    assert cost["luma", 8.0] == pytest.approx(cost["luma", 1.0])
    assert cost["green", 8.0] == pytest.approx(8 * cost["green", 1.0])


def test_sampling_only_in_training():
    torch.manual_seed(0)
    model = KLAutoencoder(VAEConfig(block_out_channels=(16, 16, 32, 32)))
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(model(x, sample=False)["x_hat"], model(x, sample=False)["x_hat"])
    assert not torch.equal(model(x, sample=True)["x_hat"], model(x, sample=True)["x_hat"])


@pytest.mark.parametrize("size,mode", [((1, 1), "RGB"), ((13, 7), "RGB"), ((65, 33), "L")])
def test_latent_round_trip(vae, size, mode):
    image = make_image(*size, mode=mode)
    data = vae.encode_latent(image)
    latent = st_load(data)["latent"]
    assert latent.shape == (1, 4, -(-size[1] // 8), -(-size[0] // 8)) and latent.dtype == torch.float32
    out = vae.decode_latent(data)
    assert out.size == size and out.mode == mode


def test_latent_files_apply_exif_orientation_as_compress_does(vae):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a viewer shows it 16x24
    buf = io.BytesIO()
    make_image(24, 16).save(buf, "JPEG", exif=exif)
    assert vae.decode_latent(vae.encode_latent(Image.open(buf))).size == (16, 24)


def test_latent_file_is_checked(vae, tmp_path):
    data = vae.encode_latent(make_image(24, 16))
    with pytest.raises(FormatError):
        vae.decode_latent(b"not a latent file")
    for header in (b"[1, 2]", b'{"__metadata__": [1]}'):  # valid JSON, but not an object
        with pytest.raises(FormatError, match="not an aecodec latent"):
            vae.decode_latent(len(header).to_bytes(8, "little") + header)
    with pytest.raises(FormatError):  # a 24x16 image has a 3x2 latent, not 3x3
        vae.decode_latent(st_save({"latent": torch.zeros(1, 4, 3, 3)}, metadata=_meta(data)))
    with pytest.raises(FormatError, match="float16, bfloat16, float32 or float64"):
        vae.decode_latent(st_save({"latent": torch.zeros(1, 4, 2, 3, dtype=torch.float8_e4m3fn)}, metadata=_meta(data)))
    with pytest.raises(FormatError, match="NaN or infinite"):
        vae.decode_latent(st_save({"latent": torch.full((1, 4, 2, 3), math.nan)}, metadata=_meta(data)))
    with pytest.raises(CodecError, match="weights"):
        other = {**_meta(data), "weights_sha256": "0" * 64}
        vae.decode_latent(st_save({"latent": torch.zeros(1, 4, 2, 3)}, metadata=other))
    with pytest.raises(CodecError, match="alpha"):
        vae.encode_latent(make_image(8, 8, "RGBA"))


def _meta(data: bytes) -> dict:
    return read_metadata(data)


def test_aec_path_and_quality(vae):
    image = make_image(48, 40)
    sizes = []
    for q in (1, 50, 100):
        data = vae.compress(image, q)
        header = bitstream.unpack(data)[0]
        assert header.model == "vae-kl-f8" and header.stream_lengths.__len__() == 1
        out = vae.decompress(data)
        assert out.size == image.size
        sizes.append(len(data))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert vae.compress(image, 60) == vae.compress(image, 60)  # deterministic
    rgba = make_image(20, 12, "RGBA")
    assert vae.decompress(vae.compress(rgba, 70)).getchannel("A").tobytes() == rgba.getchannel("A").tobytes()


def test_wrong_model_is_refused(vae, codec):
    data = vae.compress(make_image(16, 16), 50)
    with pytest.raises(CodecError, match="vae-kl-f8"):
        codec.decompress(data)
    with pytest.raises(CodecError, match="latents need the VAE"):
        codec.encode_latent(make_image(8, 8))


@pytest.mark.slow
def test_cli_model_vae_and_latents(vae_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = make_image(40, 24)
    image.save("a.png")
    w = ["--weights", str(vae_weights), "--device", "cpu"]
    assert cli(["compress", "--model", "vae", "a.png", *w]) == 0
    assert cli(["decompress", "a.aec", "-o", "b.png", *w]) == 0  # the header says which model
    assert cli(["vae", "encode", "a.png", *w]) == 0
    assert cli(["vae", "encode", "a.png", *w]) == 1  # no clobbering
    assert cli(["vae", "decode", "a.safetensors", "-o", "c.png", *w]) == 0
    from PIL import Image

    assert Image.open("c.png").size == (40, 24)
    assert cli(["vae", "decode", "a.png", "-o", "d.png", *w]) == 1  # not a latent file
    assert cli(["vae", "decode", "a.safetensors", "-o", "d.pgm", *w]) == 1  # colour: refused, not made gray
    assert cli(["vae", "export-diffusers", "hf", "--weights", str(vae_weights)]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["latent_channels"] == 4
    tensors = st_load((tmp_path / "hf" / "diffusion_pytorch_model.safetensors").read_bytes())
    assert "encoder.conv_in.weight" in tensors and not any(k.startswith("priors.") for k in tensors)
    assert cli(["vae", "export-diffusers", "hf", "--weights", str(vae_weights)]) == 1  # not empty
    mode = (tmp_path / "hf" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777
    assert mode == (tmp_path / "hf" / "config.json").stat().st_mode & 0o777  # readable as config.json is
    capsys.readouterr()
    assert cli(["vae", "export-diffusers", "typo/hf", "--weights", str(vae_weights)]) == 1  # no new tree
    assert cli(["vae", "export-diffusers", "a.png", "--weights", str(vae_weights)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"aecodec: error: output folder {tmp_path / 'typo'} does not exist",
        "aecodec: error: a.png exists and is not a folder"]
    assert not (tmp_path / "typo").exists()


@pytest.mark.slow
def test_training_improves_reconstruction(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    make_image(64, 64, seed=3).save(data / "0.png")
    args = ["fit", "--model", "vae", *TINY, "--data", str(data), "--val", str(data), "--out", str(tmp_path / "r"),
            "--patch-size", "32", "--batch-size", "4", "--lr", "2e-3", "--val-every", "1", "--device", "cpu"]
    train([*args, "--steps", "1"])
    first = torch.load(tmp_path / "r" / "last.pt", weights_only=False)["best"]
    train([*args, "--steps", "40", "--val-every", "40", "--resume", str(tmp_path / "r" / "last.pt")])
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["best"] < first


def test_a_deepened_vae_reconstructs_as_before_and_then_learns(tmp_path):
    """More resnets per block start as identities (bit for bit the same output); training from
    a weights file with --layers-per-block 2 deepens it and moves the new blocks."""
    torch.manual_seed(0)
    small = KLAutoencoder(VAEConfig(block_out_channels=(16, 16, 32, 32))).eval()
    deep = small.deepened(2).eval()
    assert deep.config.layers_per_block == 2 and len(deep.decoder.up_blocks[0].resnets) == 3
    x = torch.rand(2, 3, 40, 24)
    with torch.no_grad():
        assert torch.equal(deep.encode(x)[0], small.encode(x)[0])
        assert torch.equal(deep(x, sample=False)["x_hat"], small(x, sample=False)["x_hat"])
    with pytest.raises(ValueError, match="cannot deepen"):
        deep.deepened(1)

    data = tmp_path / "d"
    data.mkdir()
    make_image(64, 64, seed=4).save(data / "0.png")
    run = tmp_path / "run"
    train(["fit", "--model", "vae", *TINY, "--data", str(data), "--val", str(data), "--out", str(run),
           "--patch-size", "32", "--batch-size", "2", "--steps", "1", "--val-every", "1", "--device", "cpu"])
    train(["fit", "--model", "vae", "--layers-per-block", "2", "--resume", str(run / "last.pt"), "--data", str(data),
           "--val", str(data), "--out", str(tmp_path / "deep"), "--patch-size", "32", "--batch-size", "2",
           "--steps", "3", "--val-every", "3", "--device", "cpu"])
    ckpt = torch.load(tmp_path / "deep" / "last.pt", weights_only=False)
    assert ckpt["config"]["layers_per_block"] == 2
    assert ckpt["model"]["decoder.up_blocks.3.resnets.2.conv2.weight"].abs().sum() > 0
    for bad in ("0", "5"):  # diffusers' range: 1 to 4
        with pytest.raises(SystemExit):
            train(["fit", "--model", "vae", "--layers-per-block", bad, "--data", str(data), "--val", str(data),
                   "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit, match="deepened, not cut"):
        train(["fit", "--model", "vae", "--layers-per-block", "1", "--resume", str(tmp_path / "deep" / "last.pt"),
               "--data", str(data), "--val", str(data), "--out", str(tmp_path / "cut"), "--steps", "4",
               "--device", "cpu"])


def test_diffusers_export_loads(vae_weights, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from codec.weights import load_weights

    model, _ = load_weights(vae_weights)
    folder = tmp_path / "hf"
    assert cli(["vae", "export-diffusers", str(folder), "--weights", str(vae_weights)]) == 0
    theirs = diffusers.AutoencoderKL.from_pretrained(folder).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        mean, _ = model.encode(x)
        ref = model.decode(mean)
        dist = theirs.encode(2 * x - 1).latent_dist
        out = (theirs.decode(dist.mean).sample + 1) / 2
    assert torch.allclose(dist.mean, mean, atol=1e-4) and torch.allclose(out, ref, atol=1e-4)
    assert theirs.config.scaling_factor == model.config.scaling_factor
    assert tuple(theirs.config.latents_mean) == model.config.latents_mean
    assert tuple(theirs.config.latents_std) == model.config.latents_std


def test_a_deepened_vae_exports_to_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from codec.models.vae import export_diffusers

    torch.manual_seed(0)
    deep = KLAutoencoder(VAEConfig(block_out_channels=(16, 16, 32, 32))).deepened(2).eval()
    with torch.no_grad():  # the new blocks as training leaves them, not identities
        for p in deep.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    export_diffusers(deep, tmp_path / "hf")
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.layers_per_block == 2
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        mean, _ = deep.encode(x)
        out = (theirs.decode(theirs.encode(2 * x - 1).latent_dist.mean).sample + 1) / 2
        assert torch.allclose(out, deep.decode(mean), atol=1e-4)


def test_latents_are_normalised_per_channel(vae, vae_weights):
    """Export measures each channel's mean and std on training crops, so that the scaled
    calibration latents are centred with unit variance, channel by channel."""
    config = vae.model.config
    assert len(config.latents_mean) == len(config.latents_std) == config.latent_channels
    info = weights_info(vae_weights)
    assert all(abs(m) < 1e-4 for m in info["scaled_channel_mean"])
    assert all(abs(s - 1) < 1e-3 for s in info["scaled_channel_std"])
    z = torch.randn(1, 4, 3, 5)
    assert torch.allclose(vae.model.unscale(vae.model.scale(z)), z, atol=1e-5)
    meta = read_metadata(vae.encode_latent(make_image(16, 16)))
    assert json.loads(meta["latents_std"]) == list(config.latents_std)


def test_shipped_vae_weights():
    """The shipped VAE loads by name, carries its per-channel latent statistics, and reconstructs
    this synthetic image better than an untrained network would (about 12 dB; the shipped
    weights give 16.4)."""
    vae = Codec(model="vae-kl-f8", device="cpu")
    config = vae.model.config
    assert len(config.latents_mean) == len(config.latents_std) == 4
    assert len(vae.model.priors) == len(config.codec_steps)
    image = make_image(64, 48)
    assert psnr(image, vae.decode_latent(vae.encode_latent(image))) > 15
    data = vae.compress(image, 100)
    assert psnr(image, vae.decompress(data)) > 15 and 8 * len(data) / (64 * 48) < 1


def test_the_colour_error_is_cie76_in_cielab():
    from codec.metrics import chart_errors, color_checker_chart, delta_e76

    assert abs(float(delta_e76([255, 255, 255], [0, 0, 0])) - 100) < 1e-3  # L* from 100 to 0
    assert float(delta_e76([30, 200, 40], [30, 200, 40])) == 0
    chart = color_checker_chart(16)
    assert chart.shape == (64, 96, 3) and np.all(chart_errors(chart, 16) < 1e-9)


def test_the_default_codec_keeps_every_hue():
    from codec.metrics import chart_errors, color_checker_chart

    codec = Codec(device="cpu")
    chart = Image.fromarray(color_checker_chart())
    errors = chart_errors(codec.decompress(codec.compress(chart, 75)))
    assert errors.mean() <= 4 and errors.max() <= 10


def test_the_shipped_vae_keeps_every_hue():
    """A colour checker through a latent file and through the codec at the default quality: CIE76
    mean at most 4, no patch above 10 (the VAE of 0.1.0-0.16.0: mean 20.4, magenta 56.1)."""
    from codec.metrics import chart_errors, color_checker_chart

    vae = Codec(device="cpu", model="vae-kl-f8")
    chart = Image.fromarray(color_checker_chart())
    for decoded in (vae.decode_latent(vae.encode_latent(chart)), vae.decompress(vae.compress(chart, 75))):
        errors = chart_errors(decoded)
        assert errors.mean() <= 4 and errors.max() <= 10


def test_turning_hues_keeps_luma_and_colourfulness():
    """--hue-turn: a turned crop keeps its luma and its distance from grey, at a new hue."""
    from codec.train.vae import OPPONENT, turn_hues

    x = torch.tensor([0.3, 0.6, 0.4])[None, :, None, None].repeat(4, 1, 2, 2)  # a mid green, in range after turns
    turned = turn_hues(x, 1.0, torch.Generator().manual_seed(0))
    before, after = (torch.einsum("oc,bchw->bohw", OPPONENT, t) for t in (x, turned))
    assert torch.allclose(after[:, 0], before[:, 0], atol=1e-6)
    assert torch.allclose(after[:, 1:].norm(dim=1), before[:, 1:].norm(dim=1), atol=1e-6)
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.equal(turn_hues(x, 0.0, torch.Generator().manual_seed(0)), x)
