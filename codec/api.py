"""The Python API: ``Codec(...).compress(image) -> bytes`` and ``.decompress(bytes) -> Image``.

    from PIL import Image
    from codec.api import Codec

    coder = Codec()                                   # shipped weights, CUDA if present
    data = coder.compress(Image.open("kodim01.png"), quality=75)
    Image.Image.save(coder.decompress(data), "restored.png")

    Codec(model="vae-kl-f8")                          # the f8 VAE (codec/models/vae.py) as a codec

The analysis and synthesis transforms run on the chosen device; everything that decides the
rANS tables runs on CPU in exact arithmetic (see ``codec/models/hyperprior.py``), or is a fixed table (the
VAE's prior), so a file written on any device, with any thread count, decodes the same way.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from codec import AecodecError, CodecError, registry  # noqa: F401 (CodecError: public here)
from codec.format import bitstream
from codec.format.bitstream import (  # noqa: F401 (public here)
    LATENT_FORMAT,
    MAX_LATENT_HEADER,
    AecFile,
    FormatError,
    Header,
    check_codable,
)
from codec.image import PILLOW_ERRORS, ImageError, frames, merge, normalize, split, upright
from codec.registry import DEFAULT_MODEL
from codec.weights import WeightsError, load_weights, safetensors_bytes, weights_for

DEFAULT_QUALITY = 75
# Like Pillow's Image.MAX_IMAGE_PIXELS: files that declare more are refused before any work
# (None: up to the format's own limit, bitstream.MAX_PIXELS). 50 MP is past today's common
# cameras; decoding in tiles keeps memory bounded at any size, this bounds the time.
MAX_DECODE_PIXELS: int | None = bitstream.DEFAULT_MAX_DECODE_PIXELS
LATENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # an edited latent may be any


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise CodecError(f"unknown device {device!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CodecError("CUDA was requested but is not available (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise CodecError(f"unsupported device {device}")
    return device


def check_decode_size(width: int, height: int, max_pixels: int | None = -1) -> None:
    """Refuse to decode an image of more than ``max_pixels`` (-1: MAX_DECODE_PIXELS, read at the
    call; None: no limit but the format's), as Pillow's MAX_IMAGE_PIXELS guards its decoders."""
    bitstream.check_decode_size(width, height, MAX_DECODE_PIXELS if max_pixels == -1 else max_pixels)


def _check_image(image: object) -> None:
    """A path or an array is a common first try: say what to pass instead of failing inside Pillow.
    An animation is refused, as the CLI refuses it, rather than cut to its current frame."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__} "
                        "(open a file with PIL.Image.open, an array with PIL.Image.fromarray)")
    try:
        count = frames(image)  # a damaged TIFF's next directory raises here
    except PILLOW_ERRORS as e:
        raise ImageError(f"cannot decode image ({e or type(e).__name__})") from None
    if count > 1:
        raise CodecError(f"image has {count} frames: aecodec codes still images "
                         "(pass one frame: image.seek(i); image.copy())")


def _whole(x: object) -> bool:
    """An integer, numpy's too; not a bool (True is no quality, no size) nor a float like 60.0."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_quality(quality: object) -> int:
    """An integer from 1 to 100; 60.7 and True are refused, not cut."""
    if not (_whole(quality) and 1 <= quality <= 100):
        raise CodecError(f"quality must be an integer from 1 to 100, got {quality!r} ({type(quality).__name__})")
    return int(quality)


def _as_bytes(data: object) -> bytes:
    """The bytes of a file (bytes, bytearray or memoryview); a path is a common first try."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the bytes of a file, got {type(data).__name__} "
                        "(read it first: pathlib.Path(name).read_bytes())")
    return bytes(data)


@dataclass
class _Prepared:
    """An image ready to code: one call to ``file(quality, latent)`` per quality tried."""

    codec: Codec
    image: Image.Image  # normalised (RGB, RGBA, L or LA)
    x: torch.Tensor  # padded colour, on the codec's device
    mode: str
    width: int
    height: int
    alpha: bytes | None  # deflated
    metadata: bytes  # packed; empty: none

    def file(self, quality: int, latent: torch.Tensor, side: torch.Tensor | None = None) -> bytes:
        """The file of a latent (and side information, where the encoder searched it too)."""
        codec = self.codec
        streams, _ = (codec.model.encode_streams(latent, quality) if side is None
                      else codec.model.encode_streams(latent, quality, side))
        header = Header(codec.model.MODEL_ID, codec.weights_id, quality, self.mode, self.width, self.height, (),
                        centred=True)
        return bitstream.write(header, streams, self.alpha, self.metadata)


class Codec:
    """A loaded model, ready to code many images (load once, reuse)."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "auto",
                 model: str | None = None, max_pixels: int | None = -1):
        """``weights``: a weights file, else the shipped file of ``model``. ``model``: the model
        to load, the file's own (default; without ``weights``, the default model) or one it
        contains ("hyperprior-gain" from a channel-conditional file). ``max_pixels``: the
        largest image this codec decodes (default ``MAX_DECODE_PIXELS`` as it is when decoding;
        None: the format's limit)."""
        self.device = resolve_device(device)
        if max_pixels is not None and not (_whole(max_pixels) and (max_pixels == -1 or max_pixels > 0)):
            raise CodecError(f"max_pixels must be a number of pixels above 0, -1 (MAX_DECODE_PIXELS) "
                             f"or None (the format's limit), got {max_pixels!r}")
        self.max_pixels = max_pixels
        if model is not None and model not in registry.MODELS:
            raise CodecError(f"unknown model {model!r} (choose from {', '.join(registry.MODELS)})")
        self.model, digest = load_weights(weights, model)
        self.weights_sha256 = digest
        self.weights_id = bytes.fromhex(digest[:16])
        # Only the heavy transforms move; the latent codec (h_a, h_s, the entropy models, the slice
        # networks) and the gains stay on CPU, so z and the CDF tables never depend on the device.
        for name in self.model.device_parts:
            getattr(self.model, name).to(self.device)

    def compress(self, image: Image.Image, quality: int = DEFAULT_QUALITY, strip: bool = False,
                 effort: int = 0, progress=None) -> bytes:
        """Code a PIL image to the bytes of a complete ``.aec`` file. Its ICC profile and EXIF
        (``image.info``) travel with it unless ``strip``; EXIF orientation is applied first.
        ``effort`` 0-4: 0 codes the analysis transform's latent; higher levels search it for a
        lower rate-distortion cost, slower (codec/models/refine.py); the decoder is the same.
        ``progress(n)`` is told of each search step done."""
        _check_image(image)
        quality = _check_quality(quality)
        iterations = self._effort(effort)
        prepared = self._prepare(image, strip)
        return prepared.file(quality, *self._searched(prepared, quality, iterations, progress))

    def _effort(self, effort: object) -> int:
        """The search iterations of an effort level (checked)."""
        from codec.models.refine import EFFORTS

        if not (_whole(effort) and effort in EFFORTS):
            raise CodecError(f"effort must be one of {', '.join(map(str, EFFORTS))}, got {effort!r}")
        if effort and not hasattr(self.model, "latent_pass"):
            raise CodecError(f"model {self.model.NAME} has no latent search: effort is for the rate-distortion models")
        return EFFORTS[effort]

    def _searched(self, prepared: _Prepared, quality: int, iterations: int, progress=None,
                  latent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The latent to code, and the side information where the search chose it (else None)."""
        y = self.model.analyse(prepared.x, quality) if latent is None else latent
        if not iterations:
            return y, None
        from codec.models.refine import search

        return search(self.model, prepared.x, y, quality, iterations, progress=progress)

    def _prepare(self, image: Image.Image, strip: bool) -> _Prepared:
        """What every quality's file of ``image`` shares: the padded pixels, alpha, metadata."""
        image = upright(image)  # the orientation a viewer shows (EXIF's tag reset)
        info = dict(image.info)
        if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):  # converted to RGB below: its profile no longer fits
            info.pop("icc_profile", None)
        try:
            metadata = b"" if strip else bitstream.pack_metadata(info)
        except ValueError as e:  # over the format's limit
            raise CodecError(f"{e}: code it without (strip=True, aecodec compress --strip)") from None
        image, mode = normalize(image)
        w, h = check_codable(image.size, mode)
        x, alpha = split(image, mode)
        x = pad_to_stride(x.to(self.device), self.model.padding, centred=True)
        return _Prepared(self, image, x, mode, w, h, None if alpha is None else bitstream.pack_alpha(alpha), metadata)

    def compress_to(self, image: Image.Image, max_bytes: int | None = None,
                    min_psnr: float | None = None, strip: bool = False,
                    psnr_of: str = "rgb", effort: int = 0, progress=None) -> tuple[bytes, int]:
        """Search the quality axis (bytes and PSNR grow with quality) for the highest quality
        whose file fits in ``max_bytes``, or the lowest that reaches ``min_psnr`` dB; returns the
        file and its quality. Falls back to quality 1 (or 100) when no quality meets the target
        (compare the result with the target to tell, as ``aecodec compress`` does).

        The analysis transform runs once: each quality tried costs the entropy coding (and, for
        a PSNR, one decode), and the file found is the one ``compress`` writes at that quality.
        ``psnr_of``: "rgb" (PSNR over the RGB samples, as ``aecodec compress -v`` and the
        benchmark report it) or "yuv420" (over YCbCr 4:2:0 samples, as cwebp's ``-psnr``).
        ``effort``: the quality is searched at effort 0, then the latent at the quality found;
        the searched file is kept if it still meets the target (else the effort-0 file)."""
        from codec.metrics import PSNR_SPACES

        _check_image(image)
        if (max_bytes is None) == (min_psnr is None):
            raise CodecError("give exactly one of max_bytes and min_psnr")
        if max_bytes is not None and not (_whole(max_bytes) and max_bytes >= 1):
            raise CodecError(f"max_bytes must be a whole number of bytes above 0, got {max_bytes!r}")
        if min_psnr is not None and not (isinstance(min_psnr, numbers.Real) and not isinstance(min_psnr, bool)
                                         and 0 < min_psnr < math.inf):  # True is not 1 dB
            raise CodecError(f"min_psnr must be a finite number of dB above 0, got {min_psnr!r}")
        measure = PSNR_SPACES.get(psnr_of)
        if measure is None:
            raise CodecError(f"psnr_of must be one of {', '.join(map(repr, PSNR_SPACES))}, got {psnr_of!r}")
        iterations = self._effort(effort)
        prepared = self._prepare(image, strip)
        model = self.model
        if hasattr(model, "transform"):  # g_a once; each quality only scales and codes its latent
            features = model.transform(prepared.x)
            latent = lambda q: model.at_quality(features, q)  # noqa: E731
        else:
            latent = lambda q: model.analyse(prepared.x, q)  # noqa: E731
        reference = prepared.image.convert("RGB")
        tried: dict[int, bytes] = {}
        measured: dict[int, float] = {}

        def file_psnr(data: bytes) -> float:
            return measure(reference, self._decompress(bitstream.parse(data), None).convert("RGB"))  # ours: any size

        def value(q: int) -> float:  # grows with q: log of the file's size, or its PSNR; each q coded once
            if q not in measured:
                tried[q] = data = prepared.file(q, latent(q))
                measured[q] = math.log(len(data)) if max_bytes is not None else file_psnr(data)
            return measured[q]

        if max_bytes is not None:  # the highest quality that fits
            k = search_quality(value, math.log(max_bytes), slope=0.026, inclusive=True)
            q = max(k, 1)
        else:  # the lowest quality that reaches the PSNR
            q = min(search_quality(value, float(min_psnr), slope=0.11, inclusive=False) + 1, 100)
        found = tried.get(q) or prepared.file(q, latent(q))
        if iterations:  # the effort once, at the quality found; kept where it still meets the target
            searched = prepared.file(q, *self._searched(prepared, q, iterations, progress, latent(q)))
            meets = (len(searched) <= max(max_bytes, len(found)) if max_bytes is not None else
                     file_psnr(searched) >= min(float(min_psnr), value(q)))
            found = searched if meets else found
        return found, q

    def decompress(self, data: bytes | AecFile) -> Image.Image:
        """Decode an ``.aec`` file (its bytes, or as :func:`codec.format.bitstream.parse` gave it)
        to a PIL image of the original size and mode."""
        return self._decompress(data if isinstance(data, AecFile) else bitstream.parse(_as_bytes(data)),
                                self.max_pixels)

    def _decompress(self, file: AecFile, max_pixels: int | None) -> Image.Image:
        header = file.header
        self.check_weights(header)
        check_decode_size(header.width, header.height, max_pixels)
        if len(file.streams) != self.model.num_streams:
            raise FormatError(f"invalid stream count {len(header.stream_lengths)} for mode {header.mode} "
                              f"and model {header.model}")
        shape = self.model.latent_shape(header.height, header.width)
        with _out_of_memory(header.width, header.height):
            alpha = None if file.alpha is None else bitstream.unpack_alpha(file.alpha, header.width, header.height)
            x = self.model.decompress(list(file.streams), shape, header.quality, self.device)
            top, left = header.origin(*x.shape[-2:])
            image = merge(x[..., top : top + header.height, left : left + header.width], header.mode, alpha)
        image.info.update(file.metadata)
        return image

    def check_size(self, width: int, height: int) -> None:
        """Refuse an image over the decoding pixel limit before any work is done."""
        check_decode_size(width, height, self.max_pixels)

    def check_weights(self, header: Header) -> None:
        """A file decodes only with the exact weights that wrote it."""
        if header.model_id != self.model.MODEL_ID:
            raise CodecError(f"file was written by model {header.model}, but the loaded weights are "
                             f"model {self.model.NAME} (codec.api.decompress picks the model a file names)")
        wid = header.weights_id.hex()
        if wid != self.weights_id.hex():
            why = ("codec.api.decompress finds the released weights that wrote it" if wid in registry.RELEASED_WEIGHTS
                   else "it was written by " + registry.unknown_weights(wid))
            raise CodecError(f"file was written by {header.model} weights {wid}, not the loaded ones "
                             f"({self.weights_id.hex()}): {why}")

    # --- latents (the VAE only) ---
    def encode_latent(self, image: Image.Image) -> bytes:
        """An image -> a safetensors file holding its scaled latent (1 x 4 x H/8 x W/8, float32)
        and what decoding needs: the original size and mode, the factors, the weights' hash."""
        _check_image(image)
        vae = self._vae()
        image, mode = normalize(upright(image))
        w, h = check_codable(image.size, mode, alpha=False)
        x, _ = split(image, mode)
        latent = vae.encode_scaled(pad_to_stride(x.to(self.device), vae.padding)).float().cpu().contiguous()
        meta = {"format": LATENT_FORMAT, "model": vae.NAME, "weights_sha256": self.weights_sha256,
                "width": str(w), "height": str(h), "mode": mode,
                **{k: json.dumps(getattr(vae.config, k))
                   for k in ("scaling_factor", "shift_factor", "latents_mean", "latents_std")}}
        return safetensors_bytes({"latent": latent}, meta)

    def decode_latent(self, data: bytes) -> Image.Image:
        """A latent file written by ``encode_latent`` (or edited: any finite values) -> an image."""
        data = _as_bytes(data)
        vae = self._vae()
        meta = read_latent_header(data)
        w, h, mode = meta["width"], meta["height"], meta["mode"]
        if meta.get("weights_sha256") != self.weights_sha256:
            raise CodecError(f"latent was made with weights {str(meta.get('weights_sha256'))[:16]}, "
                             f"but the loaded weights are {self.weights_sha256[:16]}")
        self.check_size(w, h)
        try:  # safetensors checks that the tensor's declared size matches the bytes it holds
            latent = st_load(data)["latent"]
        except (KeyError, SafetensorError):
            raise FormatError("not an aecodec latent file") from None
        expected = (1, vae.config.latent_channels, *vae.latent_shape(h, w))
        if tuple(latent.shape) != expected or latent.dtype not in LATENT_DTYPES:
            raise FormatError(f"latent of shape {tuple(latent.shape)} and type {latent.dtype} does not fit "
                              f"a {w}x{h} image (expected {expected}, float16, bfloat16, float32 or float64)")
        if not torch.isfinite(latent).all():
            raise FormatError("latent holds NaN or infinite values")
        with _out_of_memory(w, h):
            x = vae.decode_scaled(latent.float().to(self.device))
            return merge(x[..., :h, :w], mode, None)

    def _vae(self):
        """The loaded model, if it makes latent files (has encode_scaled / decode_scaled)."""
        if not hasattr(self.model, "encode_scaled"):
            raise CodecError(f"latents need the VAE, but the loaded weights are model {self.model.NAME}")
        return self.model


def search_quality(value, target: float, slope: float, inclusive: bool) -> int:
    """The last quality k in 0..100 that is still below ``target`` (``value(k) <= target`` if
    ``inclusive``, else ``<``), for a ``value(q)`` that grows with q (0: none is). A secant search:
    each probe goes where the two measured values nearest the target (before there are two: the
    first and ``slope``, value per quality step) say the target lies, on the side of it not yet
    known; two probes that fail to halve the interval are followed by a bisection. About three
    calls of ``value`` where bisecting 1..100 takes seven."""
    below = (lambda v: v <= target) if inclusive else (lambda v: v < target)
    lo, hi = 0, 101  # lo is below the target (or 0), hi is not (or 101): the answer is in lo..hi-1
    seen: dict[int, float] = {}
    q, slow = 50, 0
    while True:
        q = min(max(q, lo + 1), hi - 1)
        seen[q] = value(q)
        width = hi - lo
        lo, hi = (q, hi) if below(seen[q]) else (lo, q)
        if hi - lo <= 1:
            return lo
        slow = slow + 1 if hi - lo > width / 2 else 0
        if slow >= 2:  # the secant creeps (a curve far from straight): halve the interval instead
            q, slow = (lo + hi) // 2, 0
            continue
        near = sorted(seen, key=lambda p: abs(seen[p] - target))[:2]
        a, b = (near[0], near[1]) if len(near) == 2 and seen[near[0]] != seen[near[1]] else (near[0], None)
        step = slope if b is None else (seen[b] - seen[a]) / (b - a)
        x = a + (target - seen[a]) / step if step > 0 else (lo + hi) / 2  # where value(x) = target
        q = math.floor(x)
        if q in seen:  # its side is known: the boundary's other side is what is left to learn
            q = q + 1 if below(seen[q]) else q - 1


def read_latent_header(data: bytes) -> dict:
    """The metadata of a latent file, its size and mode checked (no tensor is loaded): what
    ``decode_latent`` will make, known before the work."""
    return bitstream.read_latent_header(_as_bytes(data))


@contextmanager
def _out_of_memory(width: int, height: int) -> Iterator[None]:
    """A failed allocation is reported as what it is, not as damaged data or a RuntimeError."""
    try:
        yield
    except MemoryError:
        raise CodecError(f"out of memory decoding {width}x{height}") from None
    except RuntimeError as e:  # torch's allocators (CPU and CUDA) raise RuntimeError subclasses
        if "memory" in str(e).lower() or "alloc" in str(e).lower():
            raise CodecError(f"out of memory decoding {width}x{height}") from None
        raise CodecError(f"cannot decode {width}x{height}: {e}") from None


def read_header(data: bytes) -> Header:
    """Parse and validate a file's header (and checksum) without decoding it."""
    return bitstream.unpack(_as_bytes(data))[0]


def pad_to_stride(x: torch.Tensor, stride: int, centred: bool = False) -> torch.Tensor:
    """Replicate-pad to a multiple of ``stride`` (edges cost fewer bits than zeros): after the
    image, or split between both sides (``centred``: every edge of the image then lies inside
    the canvas, away from the transforms' zero-padded borders, and decodes as well as the
    interior; bitstream.Header.origin finds it again)."""
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if ph == 0 and pw == 0:
        return x
    top, left = (ph // 2, pw // 2) if centred else (0, 0)
    return F.pad(x, (left, pw - left, top, ph - top), mode="replicate")


_default: dict[tuple[str, str], Codec] = {}


def compress(image: Image.Image, quality: int = DEFAULT_QUALITY, device: str = "auto",
             model: str = DEFAULT_MODEL, effort: int = 0) -> bytes:
    """One-call compression with shipped weights (each model is loaded once per process)."""
    return codec_for(model, device).compress(image, quality, effort=effort)


def decompress(data: bytes | AecFile, device: str = "auto") -> Image.Image:
    """One-call decompression with the released weights that wrote ``data`` (any release from
    0.15.0 on: ``registry.RELEASED_WEIGHTS``)."""
    file = data if isinstance(data, AecFile) else bitstream.parse(_as_bytes(data))
    try:
        path = weights_for(file.header.weights_id.hex())
    except WeightsError as e:
        raise CodecError(str(e)) from None
    return codec_for(file.header.model, device, path).decompress(file)


def codec_for(model: str, device: str = "auto", weights: Path | None = None) -> Codec:
    """A shared Codec with ``weights`` (default: the shipped weights of ``model``), loaded on first use."""
    key = (model, str(device), str(weights))
    if key not in _default:
        _default[key] = Codec(weights=weights, device=device, model=model)
    return _default[key]
