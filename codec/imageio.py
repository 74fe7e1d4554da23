"""Reading images into the modes aecodec codes, and writing files atomically.

aecodec codes 8-bit images: L (grayscale), LA, RGB and RGBA. Palette, bilevel, CMYK and YCbCr
images are converted to the nearest of those; alpha is kept losslessly. 16-bit and float
images are refused rather than silently truncated.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import AecodecError


class ImageError(AecodecError):
    """An input image cannot be read or is of a kind aecodec does not code."""


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, applying its EXIF orientation. Pillow's own
    decompression-bomb guard applies here; the codec's size limit is checked in ``Codec.compress``."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file aecodec can read (PNG, JPEG, WebP, TIFF, BMP...)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot decode image ({e})") from None


def normalize(image: Image.Image) -> tuple[Image.Image, str]:
    """Convert to one of L / LA / RGB / RGBA; returns the image and the mode to restore."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image, mode
    if mode == "1":
        return image.convert("L"), "L"
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        target = "RGBA" if has_alpha else "RGB"
        return image.convert(target), target
    if mode == "PA":
        return image.convert("RGBA"), "RGBA"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB"), "RGB"
    if mode == "La":
        return image.convert("LA"), "LA"
    if mode == "RGBa":
        return image.convert("RGBA"), "RGBA"
    raise ImageError(f"image mode {mode} is not supported: aecodec codes 8-bit grayscale and colour images")


def split(image: Image.Image, mode: str) -> tuple[torch.Tensor, bytes | None]:
    """A (1, 3, H, W) float tensor in [0, 1] of the colour part, and the raw alpha plane."""
    alpha = image.getchannel("A").tobytes() if mode in ("LA", "RGBA") else None
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous(), alpha


def merge(x: torch.Tensor, mode: str, alpha: bytes | None) -> Image.Image:
    """Inverse of :func:`split`: 8-bit image in ``mode`` from a (1, 3, H, W) tensor."""
    a = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(np.ascontiguousarray(a), "RGB")
    if mode in ("L", "LA"):
        image = image.convert("L")
    if alpha is not None:
        image = image.convert("RGBA" if mode == "RGBA" else "LA")
        image.putalpha(Image.frombytes("L", image.size, alpha))
    return image


def write_atomic(path: str | Path, data: bytes, force: bool = False) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see a partial
    file; refuse to replace an existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite)")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        if not force and path.exists():  # appeared while we were writing
            raise FileExistsError(f"{path} exists (use --force to overwrite)")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG in memory (so it can be written atomically)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
