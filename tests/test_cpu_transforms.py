"""The CPU kernels for coding compute ``g_a``'s and ``g_s``'s own maths: the layers' result up to
rounding, the same bits on any thread count, and the stack itself where they do not know it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from codec.models import cpu_transforms
from codec.models.hyperprior import analysis, synthesis


def trained_like(net: nn.Sequential, seed: int = 0) -> nn.Sequential:
    """``net`` with random weights and GDN parameters away from their initial values, so every
    term (bias, beta, gamma off the diagonal) takes part."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 4)])
def test_synthesis_equals_the_layers_to_rounding(size):
    """In float64, so the only difference is the summation order's rounding."""
    g_s = trained_like(synthesis(24, 32)).double()
    y = torch.randn(1, 32, *size, dtype=torch.float64) * 3
    with torch.no_grad():
        expected = g_s(y)
        got = cpu_transforms.synthesis(g_s)(y)
    assert got.shape == expected.shape == (1, 3, 16 * size[0], 16 * size[1])
    assert torch.allclose(got, expected, atol=1e-12, rtol=0), (got - expected).abs().max()


@pytest.mark.parametrize("size", [(16, 16), (17, 33), (48, 20), (1, 5)])
def test_analysis_equals_the_layers_to_rounding(size):
    """Odd sizes too: every stride-2 layer rounds its output size up, as the padded convolution does."""
    g_a = trained_like(analysis(24, 32), seed=2).double()
    x = torch.rand(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        expected = g_a(x)
        got = cpu_transforms.analysis(g_a)(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-12, rtol=0), (got - expected).abs().max()


def test_same_bits_on_one_thread_and_two():
    g_a, g_s = trained_like(analysis(32, 48), seed=1), trained_like(synthesis(32, 48), seed=1)
    x = torch.rand(1, 3, 96, 144)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                y = cpu_transforms.analysis(g_a)(x)
                results.append((y, cpu_transforms.synthesis(g_s)(y)))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_an_unknown_stack_is_left_as_it_is():
    other = nn.Sequential(nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1),
                          nn.ConvTranspose2d(8, 3, 5, stride=2, padding=2, output_padding=1))
    assert cpu_transforms.synthesis(other) is other
    reflecting = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2),
                               nn.Conv2d(8, 8, 5, stride=2, padding=2, padding_mode="reflect"))
    assert cpu_transforms.analysis(reflecting) is reflecting


def test_the_vae_convolutions_as_nine_products_equal_the_layers():
    """A copy over the same weights: the VAE itself keeps its layers (training and export use them)."""
    from codec.models.vae import Decoder, Encoder, VAEConfig

    for net, shape in ((Decoder(VAEConfig()), (1, 4, 5, 7)), (Encoder(VAEConfig()), (1, 3, 41, 17))):
        net = trained_like(net, seed=3).double()
        threes = [m for m in net.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1)]
        fast = cpu_transforms.with_tap_convs(net)
        assert sum(type(m).__name__ == "_TapConv3x3" for m in fast.modules()) == len(threes) > 0
        assert all(type(m) is nn.Conv2d for m in threes)  # the original untouched
        x = torch.randn(*shape, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(fast(x), net(x), atol=1e-10, rtol=0)


def test_what_the_kernels_do_not_compute_runs_the_layers():
    """A batch of two, gradients on, a layer with a hook: each goes through the layers themselves."""
    g_a, g_s = trained_like(analysis(16, 24)), trained_like(synthesis(16, 24))
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(cpu_transforms.analysis(g_a)(x), g_a(x))
        y = g_a(x)
        assert torch.equal(cpu_transforms.synthesis(g_s)(y), g_s(y))
    one = y[:1].clone().requires_grad_(True)
    cpu_transforms.synthesis(g_s)(one).sum().backward()
    assert one.grad is not None and one.grad.abs().sum() > 0
    g_s[2].register_forward_hook(lambda module, inputs, output: output * 2)
    assert cpu_transforms.synthesis(g_s) is g_s
