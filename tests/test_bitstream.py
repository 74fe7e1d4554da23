"""Every damaged or hostile file is refused with a clear error before anything is allocated."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, UnidentifiedImageError

from codec.format import bitstream
from codec.api import CodecError
from codec.format.bitstream import FormatError, Header
from conftest import make_image


@pytest.fixture(scope="module")
def good(codec) -> bytes:
    return codec.compress(make_image(70, 40, "RGBA"), quality=40)


def _with_crc(body: bytes) -> bytes:
    """Re-seal a tampered body with a valid checksum, so the field check itself is tested."""
    return body + struct.pack(">I", zlib.crc32(body))


def test_header_round_trip(good):
    header, streams = bitstream.unpack(good)
    assert (header.width, header.height, header.mode, header.quality) == (70, 40, "RGBA", 40)
    assert header.model == "hyperprior-gain" and len(streams) == 3
    assert header.centred and header.origin(64, 128) == (12, 29)  # the padding split, the extra pixel after
    assert bitstream.pack(header, streams) == good


def test_flags_beyond_metadata_and_centred_are_refused(good):
    body = bytearray(good[:-4])
    body[16] |= 4  # bit 2: no meaning yet
    with pytest.raises(FormatError, match="unknown flags 0x06"):
        bitstream.unpack(_with_crc(bytes(body)))


def test_wrong_magic(good):
    with pytest.raises(FormatError, match="magic"):
        bitstream.unpack(b"GIF89a" + good[6:])


def test_empty_file():
    with pytest.raises(FormatError, match="empty file, not an .aec file"):
        bitstream.unpack(b"")


def test_unknown_version(good):
    with pytest.raises(FormatError, match="version 7"):
        bitstream.unpack(_with_crc(good[:4] + b"\x07" + good[5:-4]))


@pytest.mark.parametrize("cut", [5, 20, 30, 40, -200, -5, -1])
def test_truncated(good, cut):
    with pytest.raises(FormatError, match="truncated"):
        bitstream.unpack(good[:cut])


def test_trailing_bytes(good):
    with pytest.raises(FormatError, match="trailing"):
        bitstream.unpack(good + b"\0")


def test_lowered_stream_count_names_the_header(good):
    n_at = bitstream._FIXED.size - 1  # the stream count: the fixed header's last byte
    bad = good[:n_at] + bytes([good[n_at] - 1]) + good[n_at + 1 :]
    with pytest.raises(FormatError, match="trailing data, or a damaged header"):
        bitstream.unpack(bad)


def test_every_flipped_byte_is_caught(good):
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x10
        with pytest.raises(FormatError):
            bitstream.unpack(bytes(bad))


def test_billion_pixel_header_is_refused_before_allocation():
    header = Header(1, b"\0" * 8, 50, "RGB", 40_000, 25_000, ())
    fake = bitstream.pack(header, [b"z", b"y"])  # a valid checksum, a lying size
    with pytest.raises(FormatError, match="invalid image size 40000x25000"):
        bitstream.unpack(fake)


def test_bad_fields_with_valid_checksum(good):
    body = bytearray(good[:-4])
    body[14] = 0  # quality 0
    with pytest.raises(FormatError, match="quality"):
        bitstream.unpack(_with_crc(bytes(body)))
    body = bytearray(good[:-4])
    body[15] = 9  # mode id 9
    with pytest.raises(FormatError, match="mode"):
        bitstream.unpack(_with_crc(bytes(body)))
    body = bytearray(good[:-4])
    body[5] = 200  # model id
    with pytest.raises(FormatError, match="model"):
        bitstream.unpack(_with_crc(bytes(body)))


def test_corrupt_alpha_stream_is_refused():
    with pytest.raises(FormatError, match="alpha"):
        bitstream.unpack_alpha(b"not zlib", 4, 4)
    with pytest.raises(FormatError, match="alpha"):
        bitstream.unpack_alpha(bitstream.pack_alpha(b"\0" * 15), 4, 4)
    with pytest.raises(FormatError, match="alpha"):  # bytes after the end of the deflate stream
        bitstream.unpack_alpha(bitstream.pack_alpha(b"\0" * 16) + b"junk", 4, 4)


def test_a_metadata_stream_over_the_limit_is_refused_from_the_header(codec):
    """Pillow's plugin reads the metadata when it opens a file: a 62-byte file must not make it
    allocate the 4 GB its length table claims."""
    image = make_image(16, 16)
    image.info["icc_profile"] = b"an ICC profile"
    data = codec.compress(image, 40)
    header, offset = bitstream.parse_header(data)
    body = bytearray(data[:offset])
    struct.pack_into(">I", body, offset - 4, 0xFFFFFFFF)  # the last stream's length: the metadata's
    with pytest.raises(FormatError, match="metadata stream \\(too large\\)"):
        bitstream.parse_header(bytes(body))
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(bytes(body)))


def test_metadata_streams_round_trip_and_malformed_ones_are_refused():
    info = {"icc_profile": b"profile", "exif": b"Exif\0\0II*\0"}
    assert bitstream.unpack_metadata(bitstream.pack_metadata(info)) == info
    with pytest.raises(FormatError, match="empty"):  # the flag with nothing behind it: never written
        bitstream.unpack_metadata(b"")
    with pytest.raises(FormatError, match="truncated"):
        bitstream.unpack_metadata(bitstream.pack_metadata(info)[:5])
    with pytest.raises(FormatError, match="repeated"):
        bitstream.unpack_metadata(bitstream.pack_metadata(info) * 2)


def test_other_weights_are_refused(codec, good):
    body = bytearray(good[:-4])
    body[6:14] = b"\xff" * 8
    with pytest.raises(CodecError, match="weights"):
        codec.decompress(_with_crc(bytes(body)))
