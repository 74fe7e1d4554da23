"""The Python API: ``Codec(...).compress(image) -> bytes`` and ``.decompress(bytes) -> Image``.

    from PIL import Image
    from codec.api import Codec

    codec = Codec()                                   # shipped weights, CUDA if present
    data = codec.compress(Image.open("kodim01.png"), quality=75)
    Image.Image.save(codec.decompress(data), "restored.png")

The analysis and synthesis transforms run on the chosen device; everything that decides the
rANS tables runs on CPU in exact arithmetic (see ``codec/model.py``), so a file written on any
device, with any thread count, decodes the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from . import bitstream
from .bitstream import FormatError, Header
from .imageio import merge, normalize, split
from .weights import load_weights

MODEL_ID = 1  # bitstream.MODELS[1] == "hyperprior-gain"
DEFAULT_QUALITY = 75


class CodecError(Exception):
    """A request the codec cannot carry out (bad quality, wrong weights, no CUDA...)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CodecError("CUDA was requested but is not available (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise CodecError(f"unsupported device {device}")
    return device


class Codec:
    """A loaded model, ready to code many images (load once, reuse)."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.model, digest = load_weights(weights)
        self.weights_sha256 = digest
        self.weights_id = bytes.fromhex(digest[:16])
        # Only the heavy transforms move; entropy models, h_s and gains stay on CPU.
        for part in (self.model.g_a, self.model.h_a, self.model.g_s):
            part.to(self.device)

    def compress(self, image: Image.Image, quality: int = DEFAULT_QUALITY) -> bytes:
        """Code a PIL image to the bytes of a complete ``.aec`` file."""
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise CodecError(f"quality must be an integer from 1 to 100, got {quality!r}")
        image, mode = normalize(image)
        w, h = image.size
        if w > bitstream.MAX_SIDE or h > bitstream.MAX_SIDE or w * h > bitstream.MAX_PIXELS:
            raise CodecError(f"image {w}x{h} is too large (limit {bitstream.MAX_PIXELS} pixels)")
        x, alpha = split(image, mode)
        x = _pad(x.to(self.device), self.model.stride)
        streams, _ = self.model.compress(x, quality)
        if alpha is not None:
            streams.append(bitstream.pack_alpha(alpha))
        header = Header(MODEL_ID, self.weights_id, quality, mode, w, h, ())
        return bitstream.pack(header, streams)

    def decompress(self, data: bytes) -> Image.Image:
        """Decode the bytes of an ``.aec`` file to a PIL image of the original size and mode."""
        header, streams = bitstream.unpack(data)
        self.check_weights(header)
        alpha = None
        if header.has_alpha:
            alpha = bitstream.unpack_alpha(streams[2], header.width, header.height)
        s = self.model.stride
        z_shape = (-(-header.height // s), -(-header.width // s))
        try:
            x = self.model.decompress(streams[:2], z_shape, header.quality, self.device)
        except (ValueError, RuntimeError) as e:  # rANS decoder rejects the stream
            raise FormatError(f"corrupted entropy-coded data ({e})") from None
        x = x[..., : header.height, : header.width]
        return merge(x, header.mode, alpha)

    def check_weights(self, header: Header) -> None:
        """A file decodes only with the exact weights that wrote it."""
        if header.weights_id != self.weights_id:
            raise CodecError(
                f"file was written with weights {header.weights_id.hex()}, "
                f"but the loaded weights are {self.weights_id.hex()}"
            )


def read_header(data: bytes) -> Header:
    """Parse and validate a file's header (and checksum) without decoding it."""
    return bitstream.unpack(data)[0]


def _pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Replicate-pad to a multiple of ``stride`` (edges cost fewer bits than zeros)."""
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


_default: dict[str, Codec] = {}


def compress(image: Image.Image, quality: int = DEFAULT_QUALITY, device: str = "auto") -> bytes:
    """One-call compression with the shipped weights (the model is loaded once per process)."""
    return _codec(device).compress(image, quality)


def decompress(data: bytes, device: str = "auto") -> Image.Image:
    """One-call decompression with the shipped weights."""
    return _codec(device).decompress(data)


def _codec(device: str) -> Codec:
    if device not in _default:
        _default[device] = Codec(device=device)
    return _default[device]
