"""Weights files: what is stored how (exact integers, float16, int8 encoder layers, CDF tables
without padding), and that a file whose tensors do not fit together is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from codec import weights
from codec.models.cc import CCConfig, ChannelConditional
from codec.models.exact import integer_scales
from codec.weights import WeightsError, load_weights, read_metadata, save_weights


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    model = ChannelConditional(CCConfig(N=16, M=24, slices=3, width=16, lrp=8))
    with torch.no_grad():
        for last in [net.layers[-1] for net in model.latent_codec.slice_nets] + [model.lrp[-1]]:
            last.weight.normal_(0, 0.01)
    model.update(force=True)
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_weights(model, path)
    return model, path


def test_what_is_stored_how(small):
    model, path = small
    raw = load_file(path)
    assert raw["g_s.0.weight"].dtype == torch.float16
    codec = "latent_codec."
    assert raw[codec + "h_a.2.weight"].dtype == torch.int8
    assert raw[codec + "h_a.2.weight.int8_scale"].shape == (16, 1, 1, 1)
    assert raw[codec + "lrp.4.weight"].dtype == torch.int8 and raw[codec + "lrp.4.bias"].dtype == torch.float32
    assert raw["latent_codec.h_s.layers.0.weight"].dtype == torch.int16
    assert raw["latent_codec.slice_nets.2.layers.2.weight"].dtype == torch.int16
    lengths = model.latent_codec.gaussian_conditional._cdf_length
    assert raw["latent_codec.gaussian_conditional._quantized_cdf"].shape == (int(lengths.sum()),)  # padding not stored


def test_load_gives_back_the_model(small):
    model, path = small
    loaded, _ = load_weights(path)
    want = model.state_dict()
    exact = integer_scales(model)
    for name, t in loaded.state_dict().items():
        if name in exact:  # fixed point: the stored integers are the grid
            assert torch.equal(t, (want[name].double() * exact[name]).round().div(exact[name]).float()), name
        elif name.startswith(model.INT8_PREFIXES) and name.endswith(".weight"):  # int8: within half a step per channel
            step = want[name].abs().amax(dim=(1, 2, 3), keepdim=True) / 127
            assert ((t - want[name]).abs() <= step / 2 + 1e-7).all(), name
        elif name.startswith(("g_a.", "g_s.")):
            assert torch.equal(t, want[name].half().float()), name
        else:  # exact: the CDF tables, the entropy bottleneck
            assert torch.equal(t, want[name]), name


def test_files_that_name_tensors_as_earlier_releases_load(small, tmp_path):
    """Up to 0.15.0 the latent codec's tensors sat at the top level (``h_a.0.weight``); such
    files, like the shipped one, load to the same model."""
    model, path = small
    raw = load_file(path)
    old = tmp_path / "old.safetensors"
    meta = read_metadata(path.read_bytes())
    save_file({k.removeprefix("latent_codec."): v for k, v in raw.items()}, old, metadata=meta)
    assert not any(k.startswith("latent_codec.") for k in load_file(old))
    now, then = load_weights(path)[0].state_dict(), load_weights(old)[0].state_dict()
    assert now.keys() == then.keys() and all(torch.equal(now[k], then[k]) for k in now)


def test_tensor_names_are_upgraded_once_and_never_mixed():
    from codec.models.hyperprior import upgrade_names

    old = {"g_a.0.weight": 1, "log_gain": 2, "h_a.0.weight": 3, "h_a.0.weight.int8_scale": 4}
    new = upgrade_names(old)
    codec = "latent_codec."
    assert list(new) == ["g_a.0.weight", "log_gain", codec + "h_a.0.weight", codec + "h_a.0.weight.int8_scale"]
    assert upgrade_names(new) == new
    with pytest.raises(ValueError, match="mixed"):
        upgrade_names({**new, "slice_nets.0.layers.0.weight": 5})


DAMAGE = ["cdf-short", "cdf-length-zero", "cdf-rows-mismatch", "cdf-table-huge", "cdf-junk-tables",
          "exact-as-float", "int8-scale-missing", "int8-scale-shape", "int8-scale-nan", "int8-scalar",
          "config-huge", "config-slices", "config-lrp", "config-no-lambdas", "config-nested", "config-overflow"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_tensors_that_do_not_fit_together_are_refused(small, tmp_path, damage):
    """Each is refused with one WeightsError: without the checks some load silently wrong, some
    allocate far more than the file holds, some end in a traceback."""
    _, path = small
    raw = {k.removeprefix("latent_codec."): v for k, v in load_file(path).items()}  # named as 0.15.0 stored them
    meta = read_metadata(path.read_bytes())
    cdf, lengths = "entropy_bottleneck._quantized_cdf", "entropy_bottleneck._cdf_length"
    if damage == "cdf-short":
        raw[cdf] = raw[cdf][:-1]
    elif damage == "cdf-length-zero":  # same total: only the row check sees it
        raw[lengths][1] += raw[lengths][0]
        raw[lengths][0] = 0
    elif damage == "cdf-rows-mismatch":  # a row more than there are offsets
        raw[lengths] = torch.cat([raw[lengths], torch.ones(1, dtype=raw[lengths].dtype)])
        raw[cdf] = torch.cat([raw[cdf], torch.zeros(1, dtype=raw[cdf].dtype)])
    elif damage == "cdf-table-huge":  # a 4 MB row makes a 16 rows x 4 MB padded table
        raw[lengths][0] += 2**20
        raw[cdf] = torch.cat([raw[cdf], torch.zeros(2**20, dtype=raw[cdf].dtype)])
    elif damage == "cdf-junk-tables":  # names the model has not: refused before they are expanded
        for i in range(4):
            raw[f"junk{i}._quantized_cdf"] = raw[cdf].clone()
            raw[f"junk{i}._offset"] = raw["entropy_bottleneck._offset"].clone()
            raw[f"junk{i}._cdf_length"] = raw[lengths].clone()
    elif damage == "exact-as-float":  # the fixed-point grid is what makes decoding exact
        raw["h_s.layers.0.weight"] = raw["h_s.layers.0.weight"].float()
    elif damage == "int8-scale-missing":
        del raw["h_a.0.weight.int8_scale"]
    elif damage == "int8-scale-shape":  # would broadcast: one scale for every channel
        raw["h_a.0.weight.int8_scale"] = raw["h_a.0.weight.int8_scale"][:1]
    elif damage == "int8-scale-nan":
        raw["h_a.0.weight.int8_scale"][0] = float("nan")
    elif damage == "int8-scalar":
        raw["h_a.0.weight"], raw["h_a.0.weight.int8_scale"] = torch.tensor(3, dtype=torch.int8), torch.tensor(1.0)
    elif damage == "config-huge":  # a 10^5-channel model would take tens of GB before any tensor is compared
        meta["config"] = meta["config"].replace('"N": 16', '"N": 100000')
    elif damage == "config-slices":  # 100 slice networks, each wider than the last
        meta["config"] = meta["config"].replace('"M": 24', '"M": 400').replace('"slices": 3', '"slices": 100')
    elif damage == "config-lrp":  # a residual prediction of 10^6 channels
        meta["config"] = meta["config"].replace('"lrp": 8', '"lrp": 1000000')
    elif damage == "config-no-lambdas":
        meta["config"] = meta["config"].replace('"lambdas": [', '"lambdas": [], "x": [')
    elif damage == "config-nested":  # a JSON string inside the metadata: deeper than Python's recursion
        meta["config"] = "[" * 100_000
    else:
        meta["config"] = meta["config"].replace('"N": 16', '"N": 1e400')
    bad = tmp_path / "bad.safetensors"
    save_file(raw, bad, metadata=meta)
    # a config is refused for what it says, before a model of its size is built
    reason = {"config-huge": "N=100000", "config-slices": "slices=100", "config-lrp": "lrp=1000000",
              "config-no-lambdas": "lambdas: 2..64",
              "cdf-junk-tables": "unexpected tensor .*junk0", "exact-as-float": "not stored as exact"}.get(damage, "")
    with pytest.raises(WeightsError, match=f"(does not fit|not a valid).*{reason}"):
        load_weights(bad)


@pytest.mark.parametrize("change", [{"latents_std": [0, 1, 1, 1]}, {"latents_std": ["x", 1, 1, 1]},
                                    {"scaling_factor": "abc"}, {"block_out_channels": [4096] * 4}])
def test_a_vae_config_out_of_range_is_refused(tmp_path, change):
    """Values the VAE would only trip over while coding are refused when the file loads."""
    from codec.models.vae import KLAutoencoder, VAEConfig

    model = KLAutoencoder(VAEConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                                    latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4))
    model.update(force=True)
    save_weights(model, tmp_path / "vae.safetensors")
    load_weights(tmp_path / "vae.safetensors")  # as saved: fine
    raw = load_file(tmp_path / "vae.safetensors")
    meta = read_metadata((tmp_path / "vae.safetensors").read_bytes())
    meta["config"] = json.dumps({**json.loads(meta["config"]), **change})
    save_file(raw, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(WeightsError, match="not a valid"):
        load_weights(tmp_path / "bad.safetensors")


def test_an_unknown_model_name_is_a_weights_error():
    with pytest.raises(WeightsError, match="unknown model 'bogus'"):
        load_weights(None, "bogus")


@pytest.mark.slow
def test_damaged_headers_load_or_fail_with_a_weights_error(small, tmp_path):
    """Random bytes changed in the JSON header (names, dtypes, shapes, offsets, config): every
    file either loads or is refused with a WeightsError, never anything else."""
    _, path = small
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.safetensors"
    refused = 0
    for _ in range(150):
        b = bytearray(data)
        for i in rng.integers(8, 8 + n, size=rng.integers(1, 4)):
            b[i] = int(rng.choice([rng.integers(32, 127), ord("9"), ord("["), ord('"')]))
        bad.write_bytes(bytes(b))
        try:
            load_weights(bad)
        except WeightsError:
            refused += 1
    assert refused > 50  # most damage is seen


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused_before_it_is_read():
    """--weights /dev/zero once read until memory ran out; now it is not read at all."""
    with pytest.raises(WeightsError, match="not a regular file"):
        load_weights("/dev/zero")


def test_a_file_larger_than_any_weights_is_refused_unread(small, tmp_path, monkeypatch):
    _, path = small
    monkeypatch.setattr(weights, "MAX_WEIGHTS_BYTES", path.stat().st_size - 1)
    with pytest.raises(WeightsError, match="larger than any weights file"):
        load_weights(path)


def test_the_space_channel_model_stores_its_encoder_in_int8_and_loads_earlier_float16_files(tmp_path, monkeypatch):
    """g_a, encoder-only, is int8 from the files after 0.18.0 on; 0.18.0's float16 g_a still loads."""
    from codec.models.sc import SCConfig, SpaceChannel

    torch.manual_seed(0)
    model = SpaceChannel(SCConfig(N=16, M=24, slices=(8, 16), width=16, hyper=(16, 16)))
    model.update(force=True)
    save_weights(model, tmp_path / "new.safetensors")
    raw = load_file(tmp_path / "new.safetensors")
    assert raw["g_a.0.weight"].dtype == torch.int8 and raw["g_a.1.beta"].dtype == torch.float16
    assert raw["g_s.0.weight"].dtype == torch.float16  # the decoder's transform is not rounded further
    monkeypatch.setattr(SpaceChannel, "INT8_PREFIXES", ("latent_codec.h_a.",))  # as 0.18.0 stored it
    save_weights(model, tmp_path / "old.safetensors")
    assert load_file(tmp_path / "old.safetensors")["g_a.0.weight"].dtype == torch.float16
    monkeypatch.undo()
    new, _ = load_weights(tmp_path / "new.safetensors")
    old, _ = load_weights(tmp_path / "old.safetensors")
    for name, t in old.state_dict().items():
        if name.startswith("g_a.") and name.endswith(".weight"):  # within half a step of the trained value
            want = model.state_dict()[name]
            step = want.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
            assert ((new.state_dict()[name] - want).abs() <= step / 2 + 1e-7).all(), name
            assert torch.equal(t, want.half().float()), name
        else:
            assert torch.equal(new.state_dict()[name], t), name
