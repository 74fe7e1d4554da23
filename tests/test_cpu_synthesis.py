"""The decoder's CPU synthesis computes ``g_s``'s own maths: the layers' result up to
rounding, the same bits on any thread count, and ``g_s`` itself for a stack it does not know."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from codec.models import cpu_synthesis
from codec.models.hyperprior import synthesis


def trained_like(g_s: nn.Sequential, seed: int = 0) -> nn.Sequential:
    """``g_s`` with random weights and GDN parameters away from their initial values, so every
    term (bias, beta, gamma off the diagonal) takes part."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in g_s.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return g_s.eval()


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 4)])
def test_equals_the_layers_to_rounding(size):
    """In float64, so the only difference is the summation order's rounding."""
    g_s = trained_like(synthesis(24, 32)).double()
    y = torch.randn(1, 32, *size, dtype=torch.float64) * 3
    with torch.no_grad():
        expected = g_s(y)
        got = cpu_synthesis.for_decoding(g_s)(y)
    assert got.shape == expected.shape == (1, 3, 16 * size[0], 16 * size[1])
    assert torch.allclose(got, expected, atol=1e-12, rtol=0), (got - expected).abs().max()


def test_same_bits_on_one_thread_and_two():
    g_s = trained_like(synthesis(32, 48), seed=1)
    y = torch.randn(1, 48, 6, 9) * 3
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                results.append(cpu_synthesis.for_decoding(g_s)(y))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*results)


def test_an_unknown_stack_is_left_as_it_is():
    other = nn.Sequential(nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1),
                          nn.ConvTranspose2d(8, 3, 5, stride=2, padding=2, output_padding=1))
    assert cpu_synthesis.for_decoding(other) is other
