"""Reading images into the modes aecodec codes, and writing files atomically.

aecodec codes 8-bit images: L (grayscale), LA, RGB and RGBA. Palette, bilevel, CMYK and YCbCr
images are converted to the nearest of those; alpha is kept losslessly. 16-bit and float
images are refused rather than silently truncated.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch loads only when pixels are converted (start-up stays fast)
    import torch

from . import AecodecError
from .bitstream import MAX_PIXELS

# A pipe, device or standard input is read to memory up to this bound (8 bytes a pixel of the
# format's largest image: more than any image aecodec can code, or any file it writes), so
# /dev/zero or an endless pipe cannot fill the memory. Regular files go to Pillow unread.
MAX_INPUT_BYTES = 8 * MAX_PIXELS
# What Pillow's readers raise on a damaged file: a broken TIFF directory is a TypeError or an
# IndexError, a cut one an EOFError or struct.error, and so on
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error)


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
    coded = {"1": "L", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
    if mode in ("I", "F") or mode.startswith("I;16"):
        raise _too_deep(mode)
    if mode not in coded:
        raise ImageError(f"image mode {mode} is not supported: aecodec codes 8-bit grayscale and colour images")
    return coded[mode]


def _too_deep(mode: str) -> ImageError:
    return ImageError(f"{mode} image with 16-bit or float samples: aecodec codes 8-bit images (convert it to 8 bits first)")


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


# decompress -o NAME.EXT: the formats an output may be written in (Pillow's writers)
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
                  ".tiff": "TIFF", ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM"}


def output_format(path: str | Path) -> str:
    """The image format an output path asks for: its extension's; PNG for "-" (standard
    output) and for a device or pipe named without one (``-o /dev/null`` to time a decode)."""
    if str(path) == "-" or (not Path(path).suffix and is_special(Path(path))):
        return "PNG"
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown output format {Path(path).suffix or '(no extension)'!r} "
                         f"(use {', '.join(sorted(set(OUTPUT_FORMATS)))})")
    return fmt


NO_ALPHA = ("JPEG", "BMP", "PPM")  # Pillow writes RGBA to BMP and PPM, silently without its alpha
METADATA = {"icc_profile": "ICC profile", "exif": "EXIF"}
WITH_METADATA = ("PNG", "JPEG", "WEBP", "TIFF")  # the formats that carry both


def dropped_metadata(image: Image.Image, fmt: str) -> list[str]:
    """What of the image's metadata ``fmt`` cannot carry (BMP, PPM: none of it), to be said."""
    return [] if fmt in WITH_METADATA else [name for key, name in METADATA.items() if image.info.get(key)]


def check_writable(path: str | Path, mode: str, metadata: dict | None = None) -> None:
    """Whether an output path's format holds an image of ``mode`` and its ``metadata`` (ICC
    profile, EXIF) without loss: asked before decoding, from the .aec header and metadata
    stream, so a refusal comes at once and never after the work."""
    fmt, suffix = output_format(path), Path(path).suffix.lower()
    if mode in ("LA", "RGBA") and fmt in NO_ALPHA:
        raise ImageError(f"{mode} image: {suffix} holds no alpha channel (write .png, .webp or .tif)")
    if suffix == ".pgm" and mode != "L":
        raise ImageError(f"{mode} image: .pgm holds grayscale only (write .ppm or .png)")
    if metadata:  # Pillow's writer is the judge (JPEG's 64 KB EXIF, TIFF parsing it): a 1x1 image asks it
        probe = Image.new(mode, (1, 1))
        probe.info.update(metadata)
        image_bytes(probe, fmt)


def image_bytes(image: Image.Image, fmt: str) -> bytes:
    """Encode a decoded image in memory: PNG losslessly, JPEG at quality 95 (4:4:4), WebP at
    quality 95 (lossy WebP is always 4:2:0)."""
    if fmt in NO_ALPHA and image.mode in ("LA", "RGBA"):
        raise ImageError(f"{fmt} has no alpha channel: write .png, .webp or .tif")
    options = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}.get(fmt, {})
    if fmt in WITH_METADATA:
        options.update({k: image.info[k] for k in METADATA if image.info.get(k)})
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt, **options)
    except SyntaxError as e:  # Pillow's TIFF writer parses the EXIF as TIFF; other formats copy it
        raise ImageError(f"cannot write {fmt}: the image's EXIF is not valid ({e}); "
                         f"write .png, .jpg or .webp, which carry it as it is") from None
    except ValueError as e:  # "EXIF data is too long" (JPEG holds 64 KB in one segment)
        raise ImageError(f"cannot write {fmt}: {e}") from None
    return buf.getvalue()


def is_special(path: Path) -> bool:
    """A character device or pipe (/dev/stdout, /dev/null, a FIFO): written in place, never renamed over."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _is_terminal(path: Path) -> bool:
    """Whether a character device (/dev/stdout, /dev/tty) is a terminal; opening one to ask has
    no effect (O_NOCTTY), and pipes, files and missing paths are not asked."""
    try:
        if not stat.S_ISCHR(path.stat().st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def resolve(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop as a one-line ImageError (Python 3.11 raises
    RuntimeError, 3.13 OSError)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        raise ImageError(f"{path} is a symlink loop") from None


def check_output(path: str | Path, force: bool) -> None:
    """Before any work: can ``path`` be written (atomically, without clobbering)? Standard
    output is refused when it is a terminal (binary would fill the screen), as gzip does,
    unless ``force``; a folder is tried by creating (and removing) the temporary file the
    write would use, since permissions alone do not say (read-only mounts, /proc, root)."""
    if (sys.stdout.isatty() if str(path) == "-" else _is_terminal(Path(path))) and not force:
        raise ImageError("not writing binary data to a terminal: redirect standard output, "
                         "or give -o FILE (--force writes it anyway)")
    if str(path) == "-" or is_special(Path(path)):
        return
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"output {path} is a folder")
    if path.exists() and stat.S_ISBLK(path.stat().st_mode):
        raise ImageError(f"output {path} is a block device")
    if (path.exists() or path.is_symlink()) and not force:
        raise ImageError(f"output {path} exists (use --force to overwrite)")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise ImageError(f"output folder {path.parent} {what}")
    folder = (resolve(path) if path.is_symlink() else path).parent  # where write_output's file goes
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ImageError(f"cannot write in {folder}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def write_output(path: str | Path, data: bytes, force: bool = False) -> None:
    """Write an output: to stdout for "-", in place for devices and pipes, otherwise atomically
    (a symlink's target is written, the link kept). Errors name ``path``, not a temporary file."""
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(path)
    if is_special(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    target = resolve(path) if path.is_symlink() else path
    try:
        write_atomic(target, data, force)
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise ImageError(f"output {path} exists (use --force to overwrite)") from None
        raise ImageError(f"cannot write {path}: {e.strerror or e}") from None


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
        # mkstemp makes 0600: give a new file the usual permissions, a replaced one its own
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
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
