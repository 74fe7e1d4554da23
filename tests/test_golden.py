"""Golden conformance files: small .aec and latent files of the shipped models, and what they
decode to. A change to the decoder, the entropy coder or the weights cannot pass unnoticed.

    AECODEC_GENERATE_GOLDEN=1 python -m pytest tests/test_golden.py    # rewrite them

Regenerate only on purpose (new weights, a new format version), in the same commit, and say so.

What is checked, per file:
* the dequantised latent the entropy decoder returns: exactly (SHA-256), on any machine, since
  it is integers and fixed-point arithmetic;
* the decoded image: exactly, on a CPU of the kind that generated the files (same ATen
  capability); on another kind (AVX2 instead of AVX-512, say) MKL and PyTorch's vector kernels
  round a few sums differently, so a pixel may move by a level or two there.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load

from codec.format import bitstream
from codec.api import Codec
from conftest import make_image

GOLDEN = Path(__file__).parent / "golden"
GENERATE = os.environ.get("AECODEC_GENERATE_GOLDEN") == "1"
# name -> (model, width, height, mode, quality); quality None: a latent file
CASES = {
    "hp-64x48-rgb-q75.aec": ("hyperprior-gain", 64, 48, "RGB", 75),
    "hp-33x70-rgba-q20.aec": ("hyperprior-gain", 33, 70, "RGBA", 20),
    "hp-100x30-l-q95.aec": ("hyperprior-gain", 100, 30, "L", 95),
    "hp-17x9-la-q1.aec": ("hyperprior-gain", 17, 9, "LA", 1),
    "hp-130x70-rgb-q50.aec": ("hyperprior-gain", 130, 70, "RGB", 50),
    "cc-64x48-rgb-q75.aec": ("cc-hyperprior-gain", 64, 48, "RGB", 75),
    "cc-130x70-la-q10.aec": ("cc-hyperprior-gain", 130, 70, "LA", 10),
    "vae-64x48-rgb-q60.aec": ("vae-kl-f8", 64, 48, "RGB", 60),
    "vae-40x24-l-q100.aec": ("vae-kl-f8", 40, 24, "L", 100),
    "vae-25x30-rgba-q1.aec": ("vae-kl-f8", 25, 30, "RGBA", 1),
    "vae-48x32-rgb.safetensors": ("vae-kl-f8", 48, 32, "RGB", None),
    "vae-20x12-l.safetensors": ("vae-kl-f8", 20, 12, "L", None),
    "sc-64x48-rgb-q75.aec": ("space-channel", 64, 48, "RGB", 75),
    "sc-130x70-la-q10.aec": ("space-channel", 130, 70, "LA", 10),
    "sc-33x70-rgba-q100.aec": ("space-channel", 33, 70, "RGBA", 100),
}
_codecs: dict[str, Codec] = {}


def _codec(model: str) -> Codec:
    if model not in _codecs:
        _codecs[model] = Codec(device="cpu", model=model)
    return _codecs[model]


def _sha(t: torch.Tensor | bytes) -> str:
    data = t if isinstance(t, bytes) else t.detach().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def _decode(name: str, data: bytes) -> tuple[str, Image.Image]:
    """(hash of the decoded latent, decoded image) of a golden file."""
    model = CASES[name][0]
    codec = _codec(model)
    if name.endswith(".safetensors"):
        return _sha(st_load(data)["latent"]), codec.decode_latent(data)
    header, streams = bitstream.unpack(data)
    coded = streams[: len(streams) - header.has_alpha]
    latent = codec.model.decode_streams(coded, codec.model.latent_shape(header.height, header.width), header.quality)
    return _sha(latent.double()), codec.decompress(data)


def _generate() -> None:
    GOLDEN.mkdir(exist_ok=True)
    expected = {"capability": torch.backends.cpu.get_cpu_capability(), "files": {}}
    for i, (name, (model, w, h, mode, quality)) in enumerate(CASES.items()):
        image = make_image(w, h, mode, seed=100 + i)
        codec = _codec(model)
        data = codec.encode_latent(image) if quality is None else codec.compress(image, quality)
        (GOLDEN / name).write_bytes(data)
        latent_sha, decoded = _decode(name, data)
        png = name.rsplit(".", 1)[0] + ".decoded.png"
        decoded.save(GOLDEN / png)
        expected["files"][name] = {"latent_sha256": latent_sha, "decoded": png,
                                   "pixels_sha256": _sha(decoded.tobytes()), "weights_sha256": codec.weights_sha256}
    (GOLDEN / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if GENERATE:
    _generate()
EXPECTED = json.loads((GOLDEN / "expected.json").read_text()) if (GOLDEN / "expected.json").exists() else {}


def test_every_case_has_a_golden_file():
    assert sorted(EXPECTED.get("files", {})) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_file_decodes_as_recorded(name):
    entry = EXPECTED["files"][name]
    latent_sha, image = _decode(name, (GOLDEN / name).read_bytes())
    assert latent_sha == entry["latent_sha256"], "the entropy decoder or the weights changed"
    reference = Image.open(GOLDEN / entry["decoded"])
    reference.load()
    assert (image.mode, image.size) == (reference.mode, reference.size)
    if torch.backends.cpu.get_cpu_capability() == EXPECTED["capability"]:
        assert _sha(image.tobytes()) == entry["pixels_sha256"], "decoded pixels changed"
        assert np.array_equal(np.asarray(image), np.asarray(reference))
    else:  # another vector unit: sums rounded differently, a level or two at most
        diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
        assert diff.max() <= 2 and (diff == 0).mean() > 0.95
