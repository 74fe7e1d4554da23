"""Weights files: what is stored how (exact integers, float16, int8 encoder layers, CDF tables
without padding), and that a file whose tensors do not fit together is refused in one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from codec.ccmodel import CCConfig, ChannelConditional
from codec.exact import integer_scales
from codec.weights import WeightsError, load_weights, read_metadata, save_weights


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    model = ChannelConditional(CCConfig(N=16, M=24, slices=3, width=16))
    with torch.no_grad():
        for net in model.slice_nets:
            net.layers[-1].weight.normal_(0, 0.01)
    model.update(force=True)
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_weights(model, path)
    return model, path


def test_what_is_stored_how(small):
    model, path = small
    raw = load_file(path)
    assert raw["g_s.0.weight"].dtype == torch.float16
    assert raw["h_a.2.weight"].dtype == torch.int8 and raw["h_a.2.weight.int8_scale"].shape == (16, 1, 1, 1)
    assert raw["h_s.layers.0.weight"].dtype == torch.int16 and raw["slice_nets.2.layers.2.weight"].dtype == torch.int16
    lengths = model.gaussian_conditional._cdf_length
    assert raw["gaussian_conditional._quantized_cdf"].shape == (int(lengths.sum()),)  # padding not stored


def test_load_gives_back_the_model(small):
    model, path = small
    loaded, _ = load_weights(path)
    want = model.state_dict()
    exact = integer_scales(model)
    for name, t in loaded.state_dict().items():
        if name in exact:  # fixed point: the stored integers are the grid
            assert torch.equal(t, (want[name].double() * exact[name]).round().div(exact[name]).float()), name
        elif name.startswith("h_a.") and name.endswith(".weight"):  # int8: within half a step per channel
            step = want[name].abs().amax(dim=(1, 2, 3), keepdim=True) / 127
            assert ((t - want[name]).abs() <= step / 2 + 1e-7).all(), name
        elif name.startswith(("g_a.", "g_s.")):
            assert torch.equal(t, want[name].half().float()), name
        else:  # exact: the CDF tables, the entropy bottleneck
            assert torch.equal(t, want[name]), name


@pytest.mark.parametrize("damage", ["cdf-short", "cdf-length-zero", "int8-scale-missing", "int8-scale-shape"])
def test_tensors_that_do_not_fit_together_are_refused(small, tmp_path, damage):
    _, path = small
    raw = load_file(path)
    if damage == "cdf-short":
        raw["gaussian_conditional._quantized_cdf"] = raw["gaussian_conditional._quantized_cdf"][:-1]
    elif damage == "cdf-length-zero":
        raw["entropy_bottleneck._cdf_length"][0] = 0
    elif damage == "int8-scale-missing":
        del raw["h_a.0.weight.int8_scale"]
    else:
        raw["h_a.0.weight.int8_scale"] = raw["h_a.0.weight.int8_scale"][:3]
    bad = tmp_path / "bad.safetensors"
    save_file(raw, bad, metadata=read_metadata(path.read_bytes()))
    with pytest.raises(WeightsError, match="does not fit|not a valid"):
        load_weights(bad)
