"""The command line's outputs: formats by extension, what each can hold, and writing without
clobbering (atomically, never a partial file; standard output, devices and pipes in place)."""

from __future__ import annotations

import io
import os
import stat
import sys
import tempfile
from pathlib import Path

from PIL import Image

from codec.files import write_atomic
from codec.image import ImageError

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

