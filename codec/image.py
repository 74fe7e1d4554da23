"""What an image must be for aecodec to code it, and reading one.

aecodec codes 8-bit images: L (grayscale), LA, RGB and RGBA. Palette, bilevel, CMYK and YCbCr
images are converted to the nearest of those; alpha is kept losslessly. 16-bit and float
images are refused rather than silently truncated.
"""

from __future__ import annotations

import contextlib
import io
import struct
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch loads only when pixels are converted (start-up stays fast)
    import torch

from codec import AecodecError
from codec.format.bitstream import MAX_PIXELS

# A pipe, device or standard input is read to memory up to this bound (8 bytes a pixel of the
# format's largest image: more than any image aecodec can code, or any file it writes), so
# /dev/zero or an endless pipe cannot fill the memory. Regular files go to Pillow unread.
MAX_INPUT_BYTES = 8 * MAX_PIXELS


# What Pillow's readers raise on a damaged file: a broken TIFF directory is a TypeError or an
# IndexError, a cut one an EOFError or struct.error, and so on
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error)


# what the benchmark and training read from a folder: every format Pillow reads that photos come in
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by extension), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageError(AecodecError, ValueError):
    """An input image cannot be read or is of a kind aecodec does not code (a ValueError, as
    the API's other bad arguments are)."""


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file ("-": standard input), applying its EXIF orientation.
    Pillow's own decompression-bomb guard applies here; the codec's size limit is checked in
    ``Codec.compress``. 16-bit and multi-frame images are refused: aecodec codes one 8-bit image."""
    with _opened(path) as im:
        im.load()
        return upright(im)


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (the tag then reset), as a viewer shows it.
    An EXIF block Pillow cannot parse leaves the image as it is, the block kept as it came:
    Pillow's WebP and JPEG writers save such an image too, rather than refusing it."""
    image.load()  # first, outside the try: damaged pixels are an error, not an EXIF problem
    try:
        return ImageOps.exif_transpose(image)
    except PILLOW_ERRORS:
        return image.copy()


def check_image(path: str | Path) -> tuple[tuple[int, int], str] | None:
    """Before any work: whether a file's header says an image aecodec can code, and if so its
    size and the mode it is coded in. Only the header is read; a pipe or standard input is
    checked when it is read (None)."""
    if str(path) != "-" and Path(path).is_file():
        with _opened(path) as im:
            return im.size, coded_mode(im)
    return None


@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """Pillow's lazily opened image, refused early if it is not one 8-bit image; Pillow's
    errors, here or while the caller decodes, become one-line ImageErrors."""
    if str(path) == "-" or (Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir()):
        source = io.BytesIO(read_bytes(path))  # a pipe or device: Pillow needs to seek
    else:
        source = path
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP (and refuses from 179 MP): the format's lower limit
            # refuses such an image anyway, in one line (api.check_codable)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if (n := frames(im)) > 1:
                    raise ImageError(f"image has {n} frames: aecodec codes still images (extract one first)")
                if deep := _deep_samples(im):  # 16-bit RGB: Pillow opens it as 8-bit RGB
                    raise _too_deep(deep)
                yield im
    except ImageError:  # ours, said already (a ValueError too, so before Pillow's below)
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file aecodec can read (PNG, JPEG, WebP, TIFF, BMP...)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large ({e})") from None
    except PILLOW_ERRORS as e:
        raise ImageError(f"cannot decode image ({e or type(e).__name__})") from None


def frames(image: Image.Image) -> int:
    """How many images ``image`` holds; a phone's JPEG with a preview or depth image beside the
    photo (MPO) counts as one, the photo (Pillow opens it at that frame)."""
    return 1 if image.format == "MPO" else getattr(image, "n_frames", 1)


def read_bytes(path: str | Path, check: Callable[[bytes], None] | None = None) -> bytes:
    """A file, device, pipe or "-" (standard input), read up to ``MAX_INPUT_BYTES``; ``check``
    is asked of the first 16 bytes before the rest is read (an .aec file's magic)."""
    if Path(path).is_dir() and str(path) != "-":
        raise IsADirectoryError(21, "is a folder, not a file")
    with (contextlib.nullcontext(sys.stdin.buffer) if str(path) == "-" else open(path, "rb")) as f:
        data = f.read(16)
        if check is not None:
            check(data)
        data += f.read(MAX_INPUT_BYTES + 1 - len(data))
    if len(data) > MAX_INPUT_BYTES:
        raise ImageError(f"too large (over {MAX_INPUT_BYTES:,} bytes: more than any file aecodec reads)")
    return data


def _deep_samples(im: Image.Image) -> str | None:
    """Whether Pillow will decode more than 8 bits a sample to 8 (its raw modes say ";16", or a
    PPM's maximum value is over 255), which aecodec refuses rather than silently truncates; if
    so, the file's own mode (a 16-bit grey+alpha PNG opens as RGBA but is LA)."""
    for tile in im.tile:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if ";16" in str(raw):
            own = str(raw).split(";")[0]  # "LA;16B" -> LA; "I;16B" (a grey PNG) keeps Pillow's I;16
            return own if own in ("LA", "RGB", "RGBA") else im.mode
        if tile[0] in ("ppm", "ppm_plain") and isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int):
            if args[1] > 255:
                return im.mode
    return None


def coded_mode(image: Image.Image) -> str:
    """The mode aecodec codes ``image`` in (L, LA, RGB or RGBA), from its header alone, so an
    image can be checked before anything decodes."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return mode
    if mode == "P":
        return "RGBA" if "transparency" in image.info or image.palette.mode == "RGBA" else "RGB"
    coded = {"1": "L", "PA": "RGBA", "La": "LA", "RGBa": "RGBA",
             "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
    if mode in ("I", "F") or mode.startswith("I;16"):
        raise _too_deep(mode)
    if mode not in coded:
        raise ImageError(f"image mode {mode} is not supported: aecodec codes 8-bit grayscale and colour images")
    return coded[mode]


def _too_deep(mode: str) -> ImageError:
    return ImageError(f"{mode} image with 16-bit or float samples: aecodec codes 8-bit images "
                      "(convert it to 8 bits first)")


def normalize(image: Image.Image) -> tuple[Image.Image, str]:
    """Convert to one of L / LA / RGB / RGBA; returns the image and the mode to restore."""
    mode = coded_mode(image)
    return (image if image.mode == mode else image.convert(mode)), mode


def split(image: Image.Image, mode: str) -> tuple[torch.Tensor, bytes | None]:
    """A (1, 3, H, W) float tensor in [0, 1] of the colour part, and the raw alpha plane."""
    import torch

    alpha = image.getchannel("A").tobytes() if mode in ("LA", "RGBA") else None
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous(), alpha


def merge(x: torch.Tensor, mode: str, alpha: bytes | None) -> Image.Image:
    """Inverse of :func:`split`: 8-bit image in ``mode`` from a (1, 3, H, W) tensor."""
    import torch

    a = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(np.ascontiguousarray(a), "RGB")
    if mode in ("L", "LA"):
        image = image.convert("L")
    if alpha is not None:
        image = image.convert("RGBA" if mode == "RGBA" else "LA")
        image.putalpha(Image.frombytes("L", image.size, alpha))
    return image

