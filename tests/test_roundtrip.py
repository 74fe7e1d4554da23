"""Compress -> decompress keeps size and mode, for odd sizes and every supported mode."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from codec.image import ImageError, read_image
from conftest import make_image, psnr


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (65, 33), (64, 64), (130, 70)])
def test_odd_sizes_round_trip(codec, size):
    image = make_image(*size)
    out = codec.decompress(codec.compress(image, quality=75))
    assert out.size == size and out.mode == "RGB"


def test_reconstruction_is_close(codec):
    image = make_image(192, 128)
    out = codec.decompress(codec.compress(image, quality=90))
    assert psnr(image, out) > 28


def test_grayscale_stays_grayscale(codec):
    image = make_image(40, 30, "L")
    out = codec.decompress(codec.compress(image))
    assert out.mode == "L" and out.size == (40, 30)
    assert psnr(image, out) > 20


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_losslessly(codec, mode):
    image = make_image(37, 21, mode)
    out = codec.decompress(codec.compress(image, quality=50))
    assert out.mode == mode and out.size == image.size
    assert out.getchannel("A").tobytes() == image.getchannel("A").tobytes()


def test_palette_and_bilevel_images_are_converted(codec):
    pal = make_image(30, 20).convert("P")
    assert codec.decompress(codec.compress(pal)).mode == "RGB"
    bw = make_image(30, 20).convert("1")
    assert codec.decompress(codec.compress(bw)).mode == "L"


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF", "BMP", "PNG"])
def test_reads_common_formats(codec, tmp_path, fmt):
    path = tmp_path / f"in.{fmt.lower()}"
    make_image(48, 32).save(path, format=fmt)
    image = read_image(path)
    out = codec.decompress(codec.compress(image, quality=60))
    assert out.size == (48, 32)


def test_sixteen_bit_images_are_refused(codec):
    image = Image.fromarray(np.full((8, 8), 40000, np.uint16))
    with pytest.raises(ValueError, match="I;16 image with 16-bit or float samples"):
        codec.compress(image)


def _png16(path, width: int, height: int, colour_type: int, channels: int) -> None:
    """A 16-bit PNG (Pillow writes none with more than one channel): signature, IHDR, IDAT, IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\0" + bytes(range(2 * width * channels)) for _ in range(height))  # filter 0 rows
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type, channels, mode", [(4, 2, "LA"), (2, 3, "RGB"), (6, 4, "RGBA")])
def test_sixteen_bit_png_is_refused_naming_its_own_mode(tmp_path, colour_type, channels, mode):
    path = tmp_path / "deep.png"
    _png16(path, 6, 4, colour_type, channels)
    with pytest.raises(ImageError, match=f"^{mode} image with 16-bit or float samples"):
        read_image(path)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    make_image(40, 20).save(path, exif=exif)
    assert read_image(path).size == (20, 40)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        read_image(path)


@pytest.mark.slow
def test_module_level_api():
    from codec import api

    image = make_image(20, 10)
    buf = io.BytesIO(api.compress(image, quality=30, device="cpu"))
    assert api.decompress(buf.getvalue(), device="cpu").size == (20, 10)
