"""The ``.aec`` container: a small versioned header, the entropy-coded streams, a CRC32.

Specified in ``docs/format.md``. Parsing checks every field, the total length and the checksum
before the caller allocates anything, so a hostile or damaged file costs nothing but an error.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from codec import AecodecError, CodecError, registry

MAGIC = b"\x89AEC"
VERSION = 2  # 2: streams coded with constriction's ANS (codec/format/entropy.py); 1: CompressAI's rANS
MAX_SIDE = 65_535
MAX_PIXELS = 1 << 26  # 67 megapixels: far beyond Kodak, far below what would exhaust memory
MAX_STREAMS = 8
DEFAULT_MAX_DECODE_PIXELS = 50_000_000  # codec.api.MAX_DECODE_PIXELS, --max-pixels: as Pillow's MAX_IMAGE_PIXELS

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # image modes that round-trip
MODE_IDS = {v: k for k, v in MODES.items()}

MAX_METADATA = 16 << 20  # bytes of ICC profile + EXIF a file may carry
FLAG_METADATA = 1  # flags bit 0: the last stream is metadata (ICC profile, EXIF)
FLAG_CENTRED = 2  # flags bit 1: the image sits in the middle of its padded canvas, not at its top left
_METADATA_TAGS = {b"ICCP": "icc_profile", b"EXIF": "exif"}  # stream tag -> Pillow's im.info key
EXIF_PREFIX = b"Exif\x00\x00"

# magic, version, model id, weights id (8 bytes of SHA-256), quality, mode, flags, width, height, n streams
_FIXED = struct.Struct(">4sBB8sBBBIIB")
FIXED_HEADER = _FIXED  # public for tools that take files apart field by field (tools/fuzz.py)
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
    metadata: bool = False  # a metadata stream (ICC profile, EXIF) comes last
    centred: bool = False  # the padding is split between both sides (since 0.16.0), else right and bottom only

    def origin(self, padded_height: int, padded_width: int) -> tuple[int, int]:
        """Where the image starts (top, left) in the decoded canvas of a model that padded it to
        this size: the padding split evenly (the extra pixel after), or all of it after."""
        if not self.centred:
            return 0, 0
        return (padded_height - self.height) // 2, (padded_width - self.width) // 2

    @property
    def model(self) -> str:
        """The name of the model that wrote the file (codec/registry.py)."""
        return registry.by_id(self.model_id).name

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("LA", "RGBA")


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialise a header and its streams; lengths are taken from ``streams``."""
    if not 1 + header.has_alpha + header.metadata <= len(streams) <= MAX_STREAMS:
        raise ValueError("wrong number of streams for this mode")
    fixed = _FIXED.pack(
        MAGIC, VERSION, header.model_id, header.weights_id, header.quality,
        MODE_IDS[header.mode], FLAG_METADATA * header.metadata | FLAG_CENTRED * header.centred,
        header.width, header.height, len(streams),
    )
    lengths = b"".join(struct.pack(">I", len(s)) for s in streams)
    body = fixed + lengths + b"".join(streams)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Validate and split a ``.aec`` file; raises :class:`FormatError` with a readable reason."""
    header, offset = parse_header(data)
    total = offset + sum(header.stream_lengths) + _CRC.size
    if len(data) < total:
        raise FormatError(f"truncated file, or a damaged header ({len(data):,} bytes; the header says {total:,})")
    if len(data) > total:
        raise FormatError(f"trailing data, or a damaged header ({len(data) - total:,} bytes after the end "
                          "the header gives)")
    (crc,) = _CRC.unpack_from(data, total - _CRC.size)
    if zlib.crc32(data[: total - _CRC.size]) != crc:
        raise FormatError("checksum mismatch: the file is corrupted")
    streams, pos = [], offset
    for length in header.stream_lengths:
        streams.append(bytes(data[pos : pos + length]))
        pos += length
    return header, streams


@dataclass(frozen=True)
class AecFile:
    """A parsed ``.aec`` file (:func:`parse`): every check the container allows made once, in
    one place; what is left is the model's to decode."""

    header: Header
    streams: tuple[bytes, ...]  # the model's streams, in its order
    alpha: bytes | None  # the deflated alpha plane (LA, RGBA): inflated, size-checked, on decoding
    metadata: dict  # ICC profile and EXIF, as an ``im.info`` update


def parse(data: bytes) -> AecFile:
    """Bytes -> a parsed file: header, lengths, checksum, the metadata stream; the streams in
    the order a file holds them (the model's, then alpha, then metadata), worked out here only."""
    header, streams = unpack(data)
    metadata = unpack_metadata(streams.pop()) if header.metadata else {}
    alpha = streams.pop() if header.has_alpha else None
    if not streams:
        raise FormatError(f"invalid stream count {len(header.stream_lengths)} for mode {header.mode}")
    return AecFile(header, tuple(streams), alpha, metadata)


def read_metadata_stream(fp, header: Header, offset: int) -> dict:
    """The metadata stream of a file whose header was parsed (``offset``: where its streams
    start), read from ``fp`` alone: Pillow's plugin shows it on opening, before the pixels."""
    fp.seek(offset + sum(header.stream_lengths[:-1]))  # the last stream
    stream = fp.read(header.stream_lengths[-1])
    if len(stream) != header.stream_lengths[-1]:
        raise FormatError("truncated file")
    return unpack_metadata(stream)


def write(header: Header, streams: list[bytes], alpha: bytes | None, metadata: bytes) -> bytes:
    """Inverse of :func:`parse`: the model's streams, the deflated alpha plane (or None) and the
    packed metadata (or empty); the header's metadata flag follows ``metadata``."""
    header = Header(header.model_id, header.weights_id, header.quality, header.mode, header.width, header.height,
                    (), bool(metadata), header.centred)
    return pack(header, [*streams, *([alpha] if alpha is not None else []), *([metadata] if metadata else [])])


def check_magic(data: bytes) -> None:
    """Whether ``data`` starts as an .aec file does: asked of a file's first bytes before the
    rest is read (``aecodec info /dev/zero`` says so at once)."""
    if not data:
        raise FormatError("empty file, not an .aec file")
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not an .aec file (wrong magic bytes)")


def parse_header(data: bytes) -> tuple[Header, int]:
    """Validate the header and the stream-length table at the start of ``data`` (the rest of the
    file may be absent: Pillow's plugin opens lazily); returns it and where the streams start."""
    check_magic(data)
    if len(data) < _FIXED.size:
        raise FormatError("truncated file (header incomplete)")
    magic, version, model_id, weights_id, quality, mode_id, flags, w, h, n = _FIXED.unpack_from(data)
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
    if flags & ~(FLAG_METADATA | FLAG_CENTRED):
        raise FormatError(f"unknown flags {flags:#04x} in header")
    mode = MODES[mode_id]
    metadata = bool(flags & FLAG_METADATA)
    # how many streams the model codes depends on its config: the decoder checks that count
    if not 1 + (mode in ("LA", "RGBA")) + metadata <= n <= MAX_STREAMS:
        raise FormatError(f"invalid stream count {n} for mode {mode}")
    offset = _FIXED.size + 4 * n
    if len(data) < offset:
        raise FormatError("truncated file (header incomplete)")
    lengths = struct.unpack_from(f">{n}I", data, _FIXED.size)
    if metadata and lengths[-1] > MAX_METADATA:  # checked before anyone reads (or allocates) that much
        raise FormatError("corrupted metadata stream (too large)")
    return Header(model_id, weights_id, quality, mode, w, h, tuple(lengths), metadata,
                  bool(flags & FLAG_CENTRED)), offset


HEADER_MAX = _FIXED.size + 4 * MAX_STREAMS  # bytes that always hold a header and its length table


def pack_metadata(info: dict) -> bytes:
    """The metadata stream: for each of the ICC profile and the EXIF block that ``info``
    (Pillow's ``im.info``) holds, a 4-byte tag, a u32 length and the bytes (EXIF with the
    "Exif" prefix JPEG stores it with; Pillow's PNG and WebP writers take it either way)."""
    out = b""
    for tag, key in _METADATA_TAGS.items():
        value = bytes(info.get(key) or b"")
        if key == "exif" and value and not value.startswith(EXIF_PREFIX):
            value = EXIF_PREFIX + value  # WebP and PNG give it bare; JPEG's APP1 needs the prefix
        if value:
            out += tag + struct.pack(">I", len(value)) + value
    if len(out) > MAX_METADATA:
        raise ValueError(f"metadata of {len(out)} bytes is over the limit of {MAX_METADATA}")
    return out


def unpack_metadata(stream: bytes) -> dict:
    """Inverse of :func:`pack_metadata`, as an ``im.info`` update; refuses anything malformed."""
    if len(stream) > MAX_METADATA:
        raise FormatError("corrupted metadata stream (too large)")
    if not stream:  # the writer sets the flag only when it has something to keep
        raise FormatError("corrupted metadata stream (empty)")
    info, pos = {}, 0
    while pos < len(stream):
        if pos + 8 > len(stream):
            raise FormatError("corrupted metadata stream (truncated entry)")
        tag, length = stream[pos : pos + 4], struct.unpack_from(">I", stream, pos + 4)[0]
        if tag not in _METADATA_TAGS or _METADATA_TAGS[tag] in info or pos + 8 + length > len(stream):
            raise FormatError("corrupted metadata stream (unknown, repeated or overlong entry)")
        info[_METADATA_TAGS[tag]] = bytes(stream[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return info


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
    if len(raw) != width * height or not d.eof or d.unused_data:
        raise FormatError("corrupted alpha stream (wrong size)")
    return raw


# --- limits an image or a file must meet: known from headers, before any model loads ---
def check_codable(size: tuple[int, int], mode: str, alpha: bool = True) -> tuple[int, int]:
    """Whether the format can hold an image of this size and coded mode (``alpha``: whether the
    model keeps an alpha channel). A header tells both, so the CLI checks before a model loads."""
    w, h = size
    if w == 0 or h == 0:
        raise CodecError(f"image {w}x{h} has no pixels")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise CodecError(f"image {w}x{h} is too large (the format holds sides up to {MAX_SIDE} pixels, "
                         f"{MAX_PIXELS:,} pixels in all)")
    if not alpha and mode in ("LA", "RGBA"):
        raise CodecError("latent files hold no alpha channel: convert the image to RGB first")
    return w, h


def check_decode_size(width: int, height: int, limit: int | None) -> None:
    """Refuse to decode an image of more than ``limit`` pixels (None: the format's limit alone)."""
    if limit is not None and width * height > limit:
        raise CodecError(f"image {width}x{height} ({width * height} pixels) is over the decoding limit "
                         f"of {limit} pixels (raise it with --max-pixels, Codec(max_pixels=) "
                         "or codec.api.MAX_DECODE_PIXELS)")


# --- latent files (the VAE's, codec.api.Codec.encode_latent): safetensors with this metadata ---
LATENT_FORMAT = "aecodec-latent-1"
MAX_LATENT_HEADER = 64 * 1024  # bytes of safetensors JSON header a latent file may have
MAX_JSON_DEPTH = 8  # nesting of that header: a latent file's is 3 deep


def read_latent_header(data: bytes) -> dict:
    """The metadata of a latent file, its size and mode checked (no tensor is loaded): what
    ``decode_latent`` will make, known before the work."""
    try:
        from codec.format.tensors import read_metadata  # safetensors' header, parsed without torch

        meta = read_metadata(bytes(data), max_header=MAX_LATENT_HEADER, max_depth=MAX_JSON_DEPTH)
        if meta.get("format") != LATENT_FORMAT:
            raise FormatError("not an aecodec latent file")
        w, h, mode = int(meta["width"]), int(meta["height"]), meta["mode"]
    except (ValueError, KeyError, TypeError, OverflowError) as e:  # JSONDecodeError is a ValueError; int(Infinity)
        raise FormatError(f"not an aecodec latent file ({e})" if "header" in str(e)
                          else "not an aecodec latent file") from None
    if (mode not in ("L", "RGB") or not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE)
            or w * h > MAX_PIXELS):
        raise FormatError(f"invalid size {w}x{h} or mode {mode!r} in latent file")
    return {**meta, "width": w, "height": h}
