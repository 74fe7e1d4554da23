"""Files from strangers: no crash, no out-of-bounds read, the same answer every time, and
memory that does not grow with the image (tiles)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from codec import api
from codec.format import bitstream, entropy
from codec.models import tiles
from codec.api import Codec, CodecError, FormatError
from codec.cli import main
from codec.registry import PAST_WEIGHTS
from codec.weights import read_metadata
from conftest import make_image, psnr

ROOT = Path(__file__).resolve().parent.parent


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("fuzz", ROOT / "tools" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


@pytest.fixture(scope="module")
def vae_codec():
    return Codec(device="cpu", model="vae-kl-f8")


def _reseal(fixed: bytes, streams: list[bytes]) -> bytes:
    """A file with these streams and a valid CRC, so the damage reaches the decoder."""
    return fuzz._join(fixed, streams)


def _decode_twice(codec: Codec, data: bytes) -> None:
    """Either a clean refusal, or the same pixels twice."""
    try:
        first = np.asarray(codec.decompress(data))
    except (FormatError, CodecError):
        return
    assert np.array_equal(first, np.asarray(codec.decompress(data)))


@pytest.mark.slow
def test_fuzzed_files_never_crash_hang_or_differ():
    """A few hundred structure-aware mutations of real files of both models and of latent
    files, CRC recomputed, each decoded twice in a memory-capped worker process."""
    outcomes = fuzz.fuzz(300, seed=0, timeout=60)
    failures = {k: v for k, v in outcomes.items() if k.startswith("FAIL")}
    assert not failures, outcomes
    assert outcomes["ok (decoded, deterministic)"] > 10 and sum(outcomes.values()) == 300


def test_emptied_stream_is_corrupted_data(codec, vae_codec):
    for c in (codec, vae_codec):
        fixed, streams = fuzz._split(c.compress(make_image(96, 64), 75))
        for i in range(len(streams)):
            damaged = list(streams)
            damaged[i] = b""
            with pytest.raises(FormatError, match="corrupted"):
                c.decompress(_reseal(fixed, damaged))


def test_cut_and_grown_streams_are_refused(codec):
    fixed, (z, y) = fuzz._split(codec.compress(make_image(96, 64), 75))
    for damaged in ([z, y[: len(y) // 2 // 4 * 4]], [z, y + bytes(4)], [z, y + b"\x01\0\0\0"], [z[:-1], y]):
        with pytest.raises(FormatError, match="corrupted"):
            codec.decompress(_reseal(fixed, damaged))


def test_stream_from_another_file(codec):
    fixed, (z, y) = fuzz._split(codec.compress(make_image(96, 64, seed=1), 75))
    _, (z2, y2) = fuzz._split(codec.compress(make_image(96, 64, seed=2), 30))
    for streams in ([z, y2], [z2, y], [y, z]):
        _decode_twice(codec, _reseal(fixed, streams))


def test_tiny_file_declaring_a_large_image(codec):
    """38 bytes declaring 4096x4096 (37 in format version 1): refused as corrupted data, at once."""
    header = bitstream.Header(1, codec.weights_id, 75, "RGB", 4096, 4096, ())
    data = bitstream.pack(header, [b"", b""])
    assert len(data) == 38
    with pytest.raises(FormatError, match="corrupted"):
        codec.decompress(data)


def test_file_of_other_weights_is_refused_naming_the_model(codec, monkeypatch):
    """A file decodes only with the weights that wrote it; the message says where those are."""
    header, streams = bitstream.unpack(codec.compress(make_image(48, 40), 50))
    other = bitstream.pack(dataclasses.replace(header, weights_id=bytes(8)), streams)
    with pytest.raises(CodecError, match="written by hyperprior-gain weights 0000000000000000, not the loaded.*"
                                          "no release of aecodec ships: pass the weights file"):
        codec.decompress(other)
    # weights an earlier release shipped: the message names that release and its git revision
    assert codec.weights_id.hex() not in PAST_WEIGHTS
    monkeypatch.setitem(PAST_WEIGHTS, "00" * 8, ("aecodec 0.0.1", "abc1234"))
    with pytest.raises(CodecError, match=r"decode it with the source of aecodec 0.0.1 \(git revision abc1234"):
        codec.decompress(other)


@pytest.mark.slow
def test_pixel_limit_is_checked_before_any_work(codec):
    data = codec.compress(make_image(48, 40), 50)
    with pytest.raises(CodecError, match="48x40 .* over the decoding limit of 1000 pixels"):
        Codec(device="cpu", model="hyperprior-gain", max_pixels=1000).decompress(data)
    Codec(device="cpu", model="hyperprior-gain", max_pixels=None).decompress(data)  # None: up to the format's limit
    # a large declared image is refused by the limit, not decoded, however small the file
    big = bitstream.pack(bitstream.Header(1, codec.weights_id, 75, "RGB", 8000, 8000, ()), [b"\0" * 4, b"\0" * 4])
    with pytest.raises(CodecError, match="8000x8000"):
        codec.decompress(big)


@pytest.mark.slow
def test_pixel_limit_on_the_command_line(codec, tmp_path, capsys):
    src = tmp_path / "a.aec"
    src.write_bytes(codec.compress(make_image(48, 40), 50))
    assert main(["decompress", str(src), "--max-pixels", "100", "--device", "cpu"]) == 1
    assert "over the decoding limit of 100 pixels" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
    assert main(["decompress", str(src), "--max-pixels", "0", "--device", "cpu"]) == 0
    assert (tmp_path / "a.png").exists()


def test_version_1_files_are_refused_by_name(codec):
    body = bytearray(codec.compress(make_image(16, 16), 50)[:-4])
    body[4] = 1
    with pytest.raises(FormatError, match="version 1 .*aecodec 0.1"):
        codec.decompress(_reseal(bytes(body[:bitstream._FIXED.size]), fuzz._split(bytes(body) + b"\0" * 4)[1]))


def test_allocation_failure_says_out_of_memory(codec, monkeypatch):
    data = codec.compress(make_image(32, 24), 50)

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(codec.model, "decompress", fail)
    with pytest.raises(CodecError, match="out of memory decoding 32x24"):
        codec.decompress(data)


# --- latent files ---

def test_deeply_nested_latent_header(vae_codec):
    deep = b'{"__metadata__": {"format": "aecodec-latent-1"}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(FormatError, match="deeper"):
        vae_codec.decode_latent(len(deep).to_bytes(8, "little") + deep)
    huge = b'{"__metadata__": {"format": "aecodec-latent-1", "pad": "' + b"x" * 100_000 + b'"}}'
    with pytest.raises(FormatError, match="too large"):
        vae_codec.decode_latent(len(huge).to_bytes(8, "little") + huge)


def test_latent_header_with_an_infinite_width(vae_codec):
    header = b'{"__metadata__": {"format": "aecodec-latent-1", "width": Infinity, "height": 8, "mode": "RGB"}}'
    with pytest.raises(FormatError, match="not an aecodec latent file"):
        vae_codec.decode_latent(len(header).to_bytes(8, "little") + header)


def test_vae_decode_names_a_header_too_large_from_its_first_bytes(tmp_path, capsys, monkeypatch):
    huge = b'{"__metadata__": {"format": "aecodec-latent-1", "pad": "' + b"x" * 100_000 + b'"}}'
    (tmp_path / "huge.safetensors").write_bytes(len(huge).to_bytes(8, "little") + huge)
    monkeypatch.chdir(tmp_path)
    assert main(["vae", "decode", "huge.safetensors"]) == 1
    assert "too large (at most 65536)" in capsys.readouterr().err


def test_endless_inputs_are_read_up_to_a_bound(monkeypatch):
    from codec import image

    monkeypatch.setattr(image, "MAX_INPUT_BYTES", 4096)
    with pytest.raises(image.ImageError, match="too large \\(over 4,096 bytes"):
        image.read_bytes("/dev/zero")
    with pytest.raises(image.ImageError, match="too large"):
        image.read_image("/dev/zero")


def test_a_tiff_whose_second_directory_is_broken_is_one_error(tmp_path, codec):
    import io
    import struct

    from PIL import Image

    from codec.image import ImageError, check_image

    b = io.BytesIO()
    Image.new("RGB", (8, 8)).save(b, "TIFF")
    d = bytearray(b.getvalue())
    ifd = struct.unpack_from("<I", d, 4)[0]
    struct.pack_into("<I", d, ifd + 2 + 12 * struct.unpack_from("<H", d, ifd)[0], len(d))  # next directory
    d += struct.pack("<HHHIII", 1, 0x0103, 3, 1, 1, 0)  # ... one without width or height: Pillow's TypeError
    (tmp_path / "bad.tif").write_bytes(bytes(d))
    with pytest.raises(ImageError, match="cannot decode image"):
        check_image(tmp_path / "bad.tif")
    with pytest.raises(ImageError, match="cannot decode image"):
        codec.compress(Image.open(tmp_path / "bad.tif"))


def test_the_plain_kernel_switch_is_counted_across_threads():
    from codec.models.exact import plain_cpu_kernels

    before = torch.backends.mkldnn.enabled
    first, second = plain_cpu_kernels(), plain_cpu_kernels()  # as two threads' decodes would overlap
    first.__enter__()
    second.__enter__()
    try:
        first.__exit__(None, None, None)  # one done, the other still decoding
        assert torch.backends.mkldnn.enabled is False
    finally:
        second.__exit__(None, None, None)
    assert torch.backends.mkldnn.enabled == before


def test_latent_of_more_pixels_than_the_format_allows(vae_codec):
    """65535x1025 is above the 2^26-pixel limit that encoding enforces: refused on decoding too."""
    meta = read_metadata(vae_codec.encode_latent(make_image(16, 16)))
    data = st_save({"latent": torch.zeros(1, 4, 129, 8192)}, metadata={**meta, "width": "65535", "height": "1025"})
    with pytest.raises(FormatError, match="65535x1025"):
        vae_codec.decode_latent(data)
    meta_big = {**meta, "width": "8000", "height": "8000"}  # allowed by the format, over the default limit
    with pytest.raises(CodecError, match="over the decoding limit"):
        vae_codec.decode_latent(st_save({"latent": torch.zeros(1, 4, 1000, 1000)}, metadata=meta_big))


def test_json_depth_counts_brackets_outside_strings():
    from codec.format.tensors import _json_depth

    assert _json_depth(b'{"a": [1, {"b": "[[[["}]}') == 3
    assert _json_depth(b'"\\"[["') == 0


# --- the entropy coder ---

def test_entropy_coder_round_trips_escapes_and_refuses_leftovers(codec):
    tables = entropy.CdfTables.of(codec.model.latent_codec.gaussian_conditional)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(tables.length), 5000)
    values = np.round(rng.normal(0, 4, 5000) * (1 + idx / 8)).astype(np.int64)
    values[:20] = [0, -1, 1, 2**18, -(2**18), 300, -300, 5000, -5000, 77, *rng.integers(-9999, 9999, 10)]
    data = entropy.encode(values, idx, tables)
    assert np.array_equal(entropy.decode(data, idx, tables), values)
    with pytest.raises(FormatError, match="left over"):
        entropy.decode(data, idx[:-1], tables)
    with pytest.raises(FormatError):
        entropy.decode(data[:-1], idx, tables)
    with pytest.raises(ValueError, match="too far"):
        entropy.encode(np.array([2**20]), np.array([0]), tables)


# --- tiles ---

@pytest.mark.slow
def test_hyperprior_tiles_decode_exactly_as_one_pass(codec, monkeypatch):
    """A 300x200 image in 128-pixel tiles decodes to exactly the pixels of one pass."""
    image = make_image(300, 200, seed=4)
    data = codec.compress(image, 60)
    whole = np.asarray(codec.decompress(data))
    monkeypatch.setattr(codec.model, "TILE", 128)
    monkeypatch.setattr(codec.model.latent_codec, "TILE", 8)  # h_a, h_s in tiles of 8 latent units
    tiled = np.asarray(codec.decompress(data))
    assert np.array_equal(whole, tiled)
    # the encoder's tiles agree with one pass to float rounding: same size within a few bytes
    assert abs(len(codec.compress(image, 60)) - len(data)) < 16


def test_exact_tiles_equal_one_pass_for_a_local_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2, padding=2), torch.nn.ReLU(),
                              torch.nn.ConvTranspose2d(8, 2, 5, stride=2, padding=2, output_padding=1)).double()
    x = torch.randn(1, 3, 70, 90, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(tiles.exact(net, x, tile=16, halo=8), net(x), atol=1e-12, rtol=0)


@pytest.mark.slow
def test_vae_tiles_are_deterministic_and_seamless(vae_codec, monkeypatch):
    image = make_image(160, 96, seed=6)
    one_pass = vae_codec.decode_latent(vae_codec.encode_latent(image))
    monkeypatch.setattr(vae_codec.model, "TILE", 64)
    monkeypatch.setattr(vae_codec.model, "OVERLAP", 32)
    latent = vae_codec.encode_latent(image)
    assert latent == vae_codec.encode_latent(image)  # the same bytes: safetensors' header is written sorted
    tiled = vae_codec.decode_latent(latent)
    assert np.array_equal(np.asarray(tiled), np.asarray(vae_codec.decode_latent(latent)))
    assert psnr(one_pass, tiled) > 25  # GroupNorm sees tiles, not the image: close, not equal


@pytest.mark.slow
@pytest.mark.parametrize("size", [(96, 64), (256, 192)])
def test_vae_does_not_depend_on_the_thread_count(vae_codec, size):
    """Latents and decoded pixels are the same with 1 and 2 threads (these sizes differed
    before MKL's strict mode: a 16x24 map of 128 channels split its sums across threads)."""
    image = make_image(*size, seed=8)
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        latent = vae_codec.encode_latent(image)
        results.append((st_load(latent)["latent"], np.asarray(vae_codec.decode_latent(latent)),
                        np.asarray(vae_codec.decompress(vae_codec.compress(image, 60)))))
    assert torch.equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1]) and np.array_equal(results[0][2], results[1][2])


def test_default_limit_is_documented_in_the_api():
    assert api.MAX_DECODE_PIXELS == 50_000_000 <= bitstream.MAX_PIXELS


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_device_is_refused_from_its_first_bytes():
    """`aecodec info /dev/zero` once read 512 MB before saying it was too large; the magic is
    asked of the first bytes."""
    from codec.image import read_bytes

    with pytest.raises(FormatError, match="not an .aec file"):
        read_bytes("/dev/zero", bitstream.check_magic)
    assert main(["info", "/dev/zero"]) == 1
