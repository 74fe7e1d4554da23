"""Encoder effort: the search finds a file of lower rate-distortion cost, which the unchanged
decoder reads; the same input gives the same bytes; only the rate-distortion models search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.api import Codec, CodecError
from codec.cli import main
from codec.models import refine
from codec.models.cc import CCConfig, ChannelConditional
from conftest import make_image


@pytest.fixture(scope="module")
def codec():
    return Codec(device="cpu")  # the default model


def _cost(codec: Codec, image, data: bytes, quality: int) -> float:
    """What the search lowers, measured on the file: bits per pixel + lambda * 255^2 * MSE."""
    decoded = np.asarray(codec.decompress(data), np.float64) / 255
    mse = float(((decoded - np.asarray(image, np.float64) / 255) ** 2).mean())
    lmbda = float(codec.model.lmbda(codec.model.position(quality).reshape(1)))
    return 8 * len(data) / (image.size[0] * image.size[1]) + lmbda * 255**2 * mse


@pytest.mark.slow
def test_a_searched_file_costs_less_and_decodes(codec, monkeypatch):
    monkeypatch.setitem(refine.EFFORTS, 1, 30)
    image = make_image(64, 64, seed=11)
    plain = codec.compress(image, 80)
    steps = []
    searched = codec.compress(image, 80, effort=1, progress=steps.append)
    assert len(steps) == 30 and searched != plain
    assert _cost(codec, image, searched, 80) < _cost(codec, image, plain, 80)
    assert codec.compress(image, 80, effort=1) == searched  # the same input, the same bytes


def test_effort_is_checked_and_is_for_the_rate_distortion_models(codec):
    image = make_image(16, 16)
    for bad in (-1, 5, 1.5, "2", True):
        with pytest.raises(CodecError, match="effort must be one of"):
            codec.compress(image, 50, effort=bad)
    vae = Codec(device="cpu", model="vae-kl-f8")
    with pytest.raises(CodecError, match="no latent search"):
        vae.compress(image, 50, effort=1)
    assert sorted(refine.EFFORTS) == list(range(5))  # the command line's --effort 0-4


@pytest.mark.slow
def test_effort_on_the_command_line_and_with_a_target(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(refine.EFFORTS, 2, 3)
    make_image(48, 40, seed=3).save(tmp_path / "a.png")
    assert main(["compress", str(tmp_path / "a.png"), "--effort", "2", "--device", "cpu"]) == 0
    assert main(["decompress", str(tmp_path / "a.aec"), "-o", str(tmp_path / "c.png"), "--device", "cpu"]) == 0
    assert main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.aec"), "--effort", "2",
                 "--target-size", "600", "--device", "cpu"]) == 0
    assert (tmp_path / "b.aec").stat().st_size <= 600
    with pytest.raises(SystemExit) as usage:  # a usage error, as argparse gives it
        main(["compress", str(tmp_path / "a.png"), "--effort", "5"])
    assert usage.value.code == 2 and "--effort: invalid choice: 5" in capsys.readouterr().err


def test_the_search_strides_further_at_the_top_qualities_and_shorter_in_long_searches():
    """Adam's step: the base up to q 80, three times it at q 100 (a high quality's latent spans
    many quantisation steps), halved from 100 steps on (a long search can afford small strides)."""
    base = refine.LEARNING_RATE
    assert refine.learning_rate(20, 25) == refine.learning_rate(80, 25) == base
    assert base < refine.learning_rate(90, 25) < refine.learning_rate(100, 25) == pytest.approx(3 * base)
    assert refine.learning_rate(100, 100) == pytest.approx(1.5 * base)


@pytest.mark.parametrize("odds", [0.0, 1.0, 2.0])
def test_the_relaxed_rounding_lies_between_floor_and_ceil_and_hardens_as_it_cools(odds):
    """Each value is drawn towards floor or ceil, nearer the nearer integer on average, and cold
    it is what rounding codes; the gradient reaches the value through its odds."""
    v = torch.tensor([2.1, 2.5, 2.9, -0.3]).repeat(2000).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    warm = refine.sga(v, 1.0, g, odds)
    assert bool(((warm >= torch.floor(v)) & (warm <= torch.ceil(v))).all())
    mean = warm.detach().reshape(-1, 4).mean(0)
    assert mean[0] < 2.5 < mean[2] and mean[3] > -0.5  # drawn towards the nearer integer
    warm.sum().backward()
    assert v.grad is not None and bool(v.grad.abs().sum() > 0)
    cold = refine.sga(v.detach(), 0.02, g, odds).reshape(-1, 4)
    assert torch.equal(cold[:, [0, 2, 3]].round(), torch.tensor([2.0, 3.0, 0.0]).expand(2000, 3))
    assert float((cold[:, [0, 2, 3]] - torch.tensor([2.0, 3.0, 0.0])).abs().max()) < 0.01


def test_long_searches_start_warmer_with_sga_plus_odds():
    assert refine.schedule(25) == refine.schedule(99) == (0.8, 0.0)
    assert refine.schedule(100) == (0.5, 0.0)  # level 3 as tuned with atanh
    start, odds = refine.schedule(refine.EFFORTS[4])
    assert start > 1.0 and odds > 0


def test_the_search_runs_a_copy_of_the_synthesis_that_computes_the_same_image(codec):
    """The search's g_s (channels_last, each GDN read off once into a matrix product) is a faster
    copy: the same pixels as the decoder's own layers, which it leaves as they were."""
    g_s = codec.model.g_s
    before = {k: v.clone() for k, v in g_s.state_dict().items()}
    fast = refine.search_synthesis(g_s)
    y = torch.randn(1, codec.model.config.M, 4, 6, generator=torch.Generator().manual_seed(3)) * 4
    with torch.no_grad():
        expected = g_s(y)
        got = fast(y.contiguous(memory_format=torch.channels_last))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert any(isinstance(layer, refine.FrozenGDN) for layer in fast)
    gdn = codec.model.g_a[1]  # a forward GDN too (g_s has the inverse ones)
    x = torch.randn(1, gdn.beta.shape[0], 5, 7, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(refine.FrozenGDN(gdn)(x.contiguous(memory_format=torch.channels_last)), gdn(x))
    assert all(torch.equal(v, before[k]) for k, v in g_s.state_dict().items())


def test_the_search_rates_each_value_under_the_contexts_of_the_values_it_codes(codec):
    """One random rounding per value, the checkerboard's anchors included: fed back unrounded, the
    latent the search would code gets the very probabilities the search charged for it."""
    model, g = codec.model, torch.Generator().manual_seed(5)
    y = torch.randn(1, model.config.M, 8, 12, generator=g) * 3
    drawn = []

    def quantise(v: torch.Tensor) -> torch.Tensor:
        drawn.append(refine.sga(v, 0.5, g))
        return drawn[-1]

    with torch.no_grad():
        z = model.side_information(y)
        y_hat, searched = model.latent_pass(y, quantise, z)
        z_hat = drawn[0] + model.latent_codec.entropy_bottleneck.quantiles[:, 0, 1].reshape(1, -1, 1, 1)
        _, again = model.latent_pass(y_hat, lambda v: v, z_hat)
    assert not torch.equal(y_hat, torch.round(y_hat))  # soft rounding: the test means something
    torch.testing.assert_close(again["z"], searched["z"])
    torch.testing.assert_close(again["y"], searched["y"])


def _latent(model, seed: int) -> torch.Tensor:
    """The latent of a small synthetic image at q 60."""
    image = torch.from_numpy(np.array(make_image(64, 64, seed=seed))).permute(2, 0, 1)[None].float() / 255
    return model.analyse(image, 60)


def test_the_search_leaves_the_context_networks_without_gradient_and_the_values_with_it(codec):
    """With ``contexts`` (the search's): the rate reaches each value through its own probability
    alone, not back through the context networks, which then cost no backward pass."""
    model = codec.model
    y = (torch.randn(1, model.config.M, 4, 4, generator=torch.Generator().manual_seed(6)) * 3).requires_grad_(True)
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    grads = {}
    try:
        for name, contexts in (("through the contexts", None), ("kept", {})):
            y.grad = None
            _, likelihoods = model.latent_pass(y, refine.hard, None, contexts)
            (-likelihoods["y"].log2().sum()).backward()
            grads[name] = y.grad.clone()
        assert grads["kept"].abs().sum() > 0
        assert not torch.allclose(grads["through the contexts"], grads["kept"])  # the contexts' share is gone
    finally:
        for p in trained:
            p.requires_grad_(True)


def _small_cc() -> ChannelConditional:
    """A small channel-conditional model whose slice networks predict something (they start at zero)."""
    torch.manual_seed(8)
    model = ChannelConditional(CCConfig(N=16, M=32, slices=4, width=16)).eval()
    with torch.no_grad():
        for net in model.latent_codec.slice_nets:
            net.layers[-1].weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("kind", ["sc", "cc"])
def test_fresh_contexts_are_the_contexts_of_training_and_coding(codec, kind):
    """Kept contexts, freshly made, are the ones made without keeping: each slice and each
    checkerboard pass keeps its own."""
    model = codec.model if kind == "sc" else _small_cc()
    y = _latent(model, seed=9)
    z = model.side_information(y)
    with torch.no_grad():
        made, made_likelihoods = model.latent_pass(y, refine.hard, z, None)
        kept, kept_likelihoods = model.latent_pass(y, refine.hard, z, {})
    torch.testing.assert_close(kept, made)
    torch.testing.assert_close(kept_likelihoods["y"], made_likelihoods["y"])


def test_kept_contexts_are_reused_until_cleared(codec):
    """The search refreshes the contexts every ``refine.REFRESH`` steps: in between, a change to the
    earlier slices leaves a later slice's probabilities as they were; cleared, they follow it."""
    model = codec.model
    y = _latent(model, seed=7)
    z = model.side_information(y)
    moved = y.clone()
    moved[:, 0] += 2  # the first slice
    start, size = model.latent_codec.slices[:2]
    later = slice(start, start + size)  # the second slice, coded in the context of the first
    with torch.no_grad():
        contexts: dict = {}
        _, before = model.latent_pass(y, refine.hard, z, contexts)
        _, kept = model.latent_pass(moved, refine.hard, z, contexts)
        contexts.clear()
        _, fresh = model.latent_pass(moved, refine.hard, z, contexts)
    torch.testing.assert_close(kept["y"][:, later], before["y"][:, later])
    assert not torch.allclose(fresh["y"][:, later], before["y"][:, later])


@pytest.mark.parametrize("layer", ["g_s.1", "g_a.1"])  # an inverse GDN and a forward one
def test_the_search_s_gdn_has_compressai_s_gradient(codec, layer):
    """FrozenGDN's own backward (fewer passes over the tensor than autograd's) is the derivative
    of CompressAI's GDN: the same gradient in float32, and float64's numerical check."""
    gdn = codec.model.get_submodule(layer)
    x = torch.randn(1, gdn.beta.shape[0], 5, 7, generator=torch.Generator().manual_seed(8)) * 3
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    grads = []
    for module, start in ((gdn, x), (refine.FrozenGDN(gdn), x.contiguous(memory_format=torch.channels_last))):
        start = start.clone().requires_grad_(True)
        (module(start) * weights).sum().backward()
        grads.append(start.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
    small = x[:, :, :2, :3].double().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(refine.FrozenGDN(gdn).double(), (small,))
