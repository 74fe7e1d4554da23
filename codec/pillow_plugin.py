"""A Pillow plugin for .aec files, registered by ``import codec``.

    import codec
    from PIL import Image

    im = Image.open("photo.aec")        # reads the header only: size, mode, quality, model
    im.load()                           # decodes (torch and the weights load here, once)
    im.save("copy.aec", quality=60)     # encodes; icc_profile= and exif= as Pillow's own plugins

Opening is lazy, as in Pillow's own plugins (``WebPImagePlugin`` and friends): ``_open`` parses
the header and the metadata stream, and the pixels are decoded by a Python decoder on ``load()``.
The whole file is checked (CRC, streams, no bytes after its end) when it is decoded, or by
``verify()`` without decoding. Saving turns the image as its EXIF orientation says (the tag
reset), as ``aecodec compress`` does, and codes the current frame of an animation.
"""

from __future__ import annotations

from PIL import Image, ImageFile

from codec import AecodecError
from codec.format import bitstream

FORMAT = "AEC"


def _accept(prefix: bytes) -> bool:
    return prefix[: len(bitstream.MAGIC)] == bitstream.MAGIC


class AecImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "aecodec learned image codec"

    def _open(self) -> None:
        # the header (and the metadata, as PNG and WebP expose their chunks) now; the rest of the
        # file is parsed, checksum first, when it is verified or decoded: opening stays cheap
        head = self.fp.read(bitstream.HEADER_MAX)
        try:
            header, offset = bitstream.parse_header(head)
            info = {"quality": header.quality, "model": header.model}
            if header.metadata:
                info.update(bitstream.read_metadata_stream(self.fp, header, offset))
        except AecodecError as e:
            raise SyntaxError(str(e)) from None  # Pillow's signal for "not a valid file of this format"
        self._size = (header.width, header.height)
        self._mode = header.mode
        self.info.update(info)
        self.tile = [ImageFile._Tile("aec", (0, 0, *self.size), 0, None)]

    def verify(self) -> None:
        """Check the whole file (checksum, stream lengths) without decoding it: no torch loads."""
        if self.fp is None:
            raise RuntimeError("verify must be called directly after open")
        self.fp.seek(0)
        try:
            bitstream.parse(self.fp.read())
        except AecodecError as e:
            raise SyntaxError(f"broken .aec file ({e})") from None
        super().verify()


class AecDecoder(ImageFile.PyDecoder):
    """Decodes the whole file at once (the codec's own tiles keep memory bounded)."""

    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        from codec.api import decompress

        self.fd.seek(0)
        try:
            image = decompress(self.fd.read())
        except AecodecError as e:  # Pillow's readers raise OSError for damaged data
            raise OSError(f"cannot decode .aec file: {e}") from e
        self.set_as_raw(image.tobytes())
        return -1, 0


def _save(im: Image.Image, fp, filename: str | bytes) -> None:
    from codec.api import DEFAULT_QUALITY, compress
    from codec.image import ImageError

    quality = im.encoderinfo.get("quality")  # checked by compress as in the API: 60.7 is refused, not cut to 60
    effort = im.encoderinfo.get("effort", 0)  # cjxl's word; Pillow's WebP writer says method, AVIF's speed
    image = im.copy()  # the current frame
    for key in ("icc_profile", "exif"):  # as Pillow's plugins: the argument, else im.info
        value = im.encoderinfo.get(key, im.info.get(key))
        if isinstance(value, Image.Exif):
            value = value.tobytes()
        if value:
            image.info[key] = value
        else:
            image.info.pop(key, None)
    try:
        data = compress(image, DEFAULT_QUALITY if quality is None else quality, effort=effort)
    except ImageError as e:  # as Pillow's writers say "cannot write mode I;16 as JPEG"
        raise OSError(f"cannot write mode {im.mode} as {FORMAT}: {e}") from None
    fp.write(data)


Image.register_open(FORMAT, AecImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, ".aec")
Image.register_mime(FORMAT, "image/x-aec")
Image.register_decoder("aec", AecDecoder)
