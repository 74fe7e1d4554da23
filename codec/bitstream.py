"""The ``.aec`` container: a small versioned header, the entropy-coded streams, a CRC32.

Specified in ``docs/format.md``. Parsing checks every field, the total length and the checksum
before the caller allocates anything, so a hostile or damaged file costs nothing but an error.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from . import AecodecError, registry

MAGIC = b"\x89AEC"
VERSION = 2  # 2: streams coded with constriction's ANS (codec/entropy.py); 1: CompressAI's rANS
MAX_SIDE = 65_535
MAX_PIXELS = 1 << 26  # 67 megapixels: far beyond Kodak, far below what would exhaust memory
MAX_STREAMS = 8

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # image modes that round-trip
MODE_IDS = {v: k for k, v in MODES.items()}

# magic, version, model id, weights id (8 bytes of SHA-256), quality, mode, width, height, n streams
_FIXED = struct.Struct(">4sBB8sBBIIB")
_CRC = struct.Struct(">I")


class FormatError(AecodecError):
    """The bytes are not a valid ``.aec`` file (wrong magic, truncated, corrupted...)."""


@dataclass(frozen=True)
class Header:
    model_id: int
    weights_id: bytes  # first 8 bytes of the SHA-256 of the weights file that wrote it
    quality: int
    mode: str
    width: int
    height: int
    stream_lengths: tuple[int, ...]

    @property
    def model(self) -> str:
        """The name of the model that wrote the file (codec/registry.py)."""
        return registry.by_id(self.model_id).name

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("LA", "RGBA")


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialise a header and its streams; lengths are taken from ``streams``."""
    if not 1 + header.has_alpha <= len(streams) <= MAX_STREAMS:
        raise ValueError("wrong number of streams for this mode")
    fixed = _FIXED.pack(
        MAGIC, VERSION, header.model_id, header.weights_id, header.quality,
        MODE_IDS[header.mode], header.width, header.height, len(streams),
    )
    lengths = b"".join(struct.pack(">I", len(s)) for s in streams)
    body = fixed + lengths + b"".join(streams)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Validate and split a ``.aec`` file; raises :class:`FormatError` with a readable reason."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not an .aec file (wrong magic bytes)")
    if len(data) < _FIXED.size:
        raise FormatError("truncated file (header incomplete)")
    magic, version, model_id, weights_id, quality, mode_id, w, h, n = _FIXED.unpack_from(data)
    if version == 1:
        raise FormatError("format version 1 (written by aecodec 0.1, whose entropy decoder was not safe "
                          "against damaged files) is no longer read: decode it with aecodec 0.1 and re-encode")
    if version != VERSION:
        raise FormatError(f"unsupported format version {version} (this aecodec reads version {VERSION})")
    if registry.by_id(model_id) is None:
        raise FormatError(f"unknown model id {model_id}")
    if not 1 <= quality <= 100:
        raise FormatError(f"invalid quality {quality} in header")
    if mode_id not in MODES:
        raise FormatError(f"invalid image mode id {mode_id} in header")
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE) or w * h > MAX_PIXELS:
        raise FormatError(f"invalid image size {w}x{h} in header (limit {MAX_PIXELS} pixels)")
    mode = MODES[mode_id]
    # how many streams the model codes depends on its config: the decoder checks that count
    if not 1 + (mode in ("LA", "RGBA")) <= n <= MAX_STREAMS:
        raise FormatError(f"invalid stream count {n} for mode {mode}")
    offset = _FIXED.size + 4 * n
    if len(data) < offset + _CRC.size:
        raise FormatError("truncated file (header incomplete)")
    lengths = struct.unpack_from(f">{n}I", data, _FIXED.size)
    total = offset + sum(lengths) + _CRC.size
    if len(data) < total:
        raise FormatError(f"truncated file ({len(data)} bytes, header says {total})")
    if len(data) > total:
        raise FormatError(f"trailing data ({len(data) - total} bytes after the end of the file)")
    (crc,) = _CRC.unpack_from(data, total - _CRC.size)
    if zlib.crc32(data[: total - _CRC.size]) != crc:
        raise FormatError("checksum mismatch: the file is corrupted")
    streams, pos = [], offset
    for length in lengths:
        streams.append(bytes(data[pos : pos + length]))
        pos += length
    header = Header(model_id, weights_id, quality, mode, w, h, tuple(lengths))
    return header, streams


def pack_alpha(alpha: bytes) -> bytes:
    """Alpha is kept losslessly: deflate (zlib level 9) over the raw 8-bit plane."""
    return zlib.compress(alpha, 9)


def unpack_alpha(stream: bytes, width: int, height: int) -> bytes:
    """Inflate an alpha plane, refusing anything but exactly width*height bytes."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(stream, width * height + 1)
    except zlib.error as e:
        raise FormatError(f"corrupted alpha stream ({e})") from None
    if len(raw) != width * height or not d.eof:
        raise FormatError("corrupted alpha stream (wrong size)")
    return raw
