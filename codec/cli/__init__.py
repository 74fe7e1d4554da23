"""The ``aecodec`` command line: compress, decompress, info, vae, train, bench.

Every failure is one line on stderr and a non-zero exit status; outputs are written
atomically and never replace an existing file without ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import signal
import sys
from pathlib import Path

EPILOG = """examples:
  aecodec compress photo.png                 writes photo.aec (quality 75)
  aecodec compress -q 30 a.jpg b.png         several images, one model load
  aecodec decompress photo.aec -o out.png    restores a PNG of the original size and mode
  aecodec info photo.aec                     what the header says
  aecodec compress --model vae photo.png     code with the f8 VAE instead (decompress as usual)
  aecodec vae encode photo.png               photo.safetensors: the VAE's scaled latent
  aecodec vae decode photo.safetensors -o back.png
  aecodec vae export-diffusers hf-vae        a folder diffusers.AutoencoderKL loads
"""

from codec import helptext, registry  # noqa: E402


class UsageError(Exception):
    """Bad combination of command-line arguments."""


def _is_folder(out: str) -> bool:
    """Whether ``-o`` names a folder: an existing one, or any path ending in /."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def _missing_folders(out: str | None) -> list[Path]:
    """The folders an ``-o`` folder path would create, deepest first (so they can go again):
    each missing prefix of the path as given ("x/../new/" makes x as well as new), resolved.
    A prefix whose resolved folder exists is not listed: "x/../old/" can never list old."""
    if not out or out == "-" or not _is_folder(out):
        return []
    parts, missing = Path(out).parts, set()
    try:
        for i in range(1, len(parts) + 1):
            prefix = Path(*parts[:i])
            if prefix.name != ".." and not prefix.exists() and not prefix.resolve().exists():
                missing.add(prefix.resolve())
    except (OSError, RuntimeError):  # a symlink loop: said when the folder is made
        return []
    return sorted(missing, key=lambda path: len(path.parts), reverse=True)


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders -o created (deepest first) that nothing was written to: no output."""
    for folder in folders:
        with contextlib.suppress(OSError):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _outputs(inputs: list[str], out: str | None, suffix: str) -> list[str]:
    """Output path per input: next to it with ``suffix``, or ``-o``: a file for one input, a
    folder (an existing one, or any path ending in /), or "-" for standard output."""
    from codec.image import ImageError
    from codec.cli.files import resolve

    if "-" in inputs and len(inputs) > 1:
        raise UsageError("standard input (-) can only be the only input")
    if out is None:
        if inputs == ["-"]:
            return ["-"]
        for p in inputs:  # as gzip: a device or pipe (/dev/stdin, <(cmd)) has no place beside it to write to
            if p != "-" and (not Path(p).is_file() or Path(p).parent.resolve().parts[1:2] in (("dev",), ("proc",))):
                raise UsageError(f"{p} is not a regular file: name the output with -o")
        paths = [str(Path(p).with_suffix(suffix)) for p in inputs]
    elif _is_folder(out):
        paths = [str(Path(out) / ("stdin" + suffix if p == "-" else Path(p).with_suffix(suffix).name)) for p in inputs]
    elif len(inputs) == 1:
        paths = [out]
    else:
        raise UsageError("-o must be a folder (existing, or ending in /) when there are several inputs")
    seen: dict[Path, str] = {}
    clashes = []  # all of them at once: one run to learn what to rename
    for src, dst in zip(inputs, paths):
        if dst == "-":
            continue
        key = resolve(Path(dst))
        if key in seen:
            clashes.append(f"{seen[key]} and {src} would both be written to {dst}")
        elif src != "-" and key == resolve(Path(src)):
            clashes.append(f"output {dst} would replace its own input")
        seen.setdefault(key, src)
    if clashes:
        raise UsageError("; ".join(clashes))
    if out is not None and _is_folder(out):  # made only now: a clash is a usage error, before any work
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ImageError(f"cannot create output folder {out}: {_message(e)}") from None
    return paths


def _check_inputs(inputs: list[str], check) -> tuple[list[str], int]:
    """Before any work: every input exists, is a file, and passes ``check(path)``; each problem
    is reported in one line. Returns the inputs that can go ahead, and the failures."""
    known, ok, failed = _known_errors(), [], 0
    for src in inputs:
        try:
            if src == "-" and sys.stdin.isatty():  # as gzip: the wait would look like a hang
                raise ValueError("not reading data from a terminal: pipe or redirect a file into standard input")
            if src != "-":
                path = Path(src)
                if path.is_dir():
                    raise ValueError("is a folder, not a file")
                if not path.exists():
                    raise ValueError("no such file")
                check(path)
            ok.append(src)
        except known as e:
            print(f"aecodec: error: {src}: {_message(e)}", file=sys.stderr)
            failed += 1
    return ok, failed


def _plan(args: argparse.Namespace, suffix: str, check=lambda path: None) -> tuple[list[tuple[str, str]], int]:
    """Inputs, then outputs, all checked before any work (nothing is loaded or coded for an
    output that cannot be written). Returns the (input, output) pairs to do, and the failures."""
    from codec.cli.files import check_output

    out = args.output
    if out and out != "-" and len(args.inputs) > 1 and not _is_folder(out):
        raise UsageError("-o must be a folder (existing, or ending in /) when there are several inputs")
    inputs, failed = _check_inputs(args.inputs, check)
    if not inputs:  # each failure is already said
        return [], failed
    known, pairs = _known_errors(), []
    for src, dst in zip(inputs, _outputs(inputs, args.output, suffix)):
        try:
            check_output(dst, args.force)
            pairs.append((src, dst))
        except known as e:
            print(f"aecodec: error: {src}: {_message(e)}", file=sys.stderr)
            failed += 1
    return pairs, failed


def _codec(args: argparse.Namespace, model: str | None = None, weights: str | Path | None = None):
    """The Codec for ``weights`` (default ``--weights``, else the shipped weights of ``model``)."""
    from codec.api import Codec

    model = model or (registry.by_short(args.model).name if getattr(args, "model", None) else None)
    return Codec(weights=weights or args.weights, device=args.device, model=model, max_pixels=_max_pixels(args))


def _max_pixels(args: argparse.Namespace) -> int | None:
    """--max-pixels as a number of pixels: the default limit unless given, None for the format's alone (0)."""
    from codec.format.bitstream import DEFAULT_MAX_DECODE_PIXELS

    limit = getattr(args, "max_pixels", None)
    return DEFAULT_MAX_DECODE_PIXELS if limit is None else (limit or None)


def _run_each(pairs, work, failed: int = 0) -> int:
    """Apply ``work(src, dst)`` to every pair, reporting failures one line each; the rest go on."""
    known = _known_errors()
    for src, dst in pairs:
        try:
            work(src, dst)
        except BrokenPipeError:  # the reader went away (| head): no fault of this file, nor the next
            raise
        except known as e:
            print(f"aecodec: error: {src}: {_message(e)}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _say(args: argparse.Namespace, line: str) -> None:
    """The per-file result line, on stderr (stdout may carry the data), unless --quiet."""
    if not args.quiet:
        print(line, file=sys.stderr, flush=True)


def _refuse_image_output(out: str | None, writes: str) -> None:
    """-o photo.png on an encoder is a slip for decompress: refused before any work."""
    from codec.cli.files import OUTPUT_FORMATS

    if out and out != "-" and not _is_folder(out) and Path(out).suffix.lower() in OUTPUT_FORMATS:
        raise UsageError(f"-o {out}: {writes}, not {Path(out).suffix}")


def cmd_compress(args: argparse.Namespace) -> int:
    given = [o for o, v in (("-q", args.quality), ("--target-size", args.target_size),
                            ("--target-psnr", args.target_psnr)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"give one of -q, --target-size and --target-psnr, not {' and '.join(given)}")
    if args.quality is None:
        args.quality = 75
    if not 1 <= args.quality <= 100:
        raise UsageError(f"quality must be from 1 to 100, got {args.quality}")
    _refuse_image_output(args.output, "compress writes .aec files")
    pairs, failed = _plan(args, ".aec", _check_codable)
    if not pairs:
        return 1
    from tqdm import tqdm

    from codec.cli.files import write_output
    from codec.image import read_image
    from codec.metrics import PSNR_SPACES

    codec = _codec(args)
    codec.max_pixels = None  # -v and --target-psnr decode what this command itself wrote

    def work(src: str, dst: str) -> None:
        image = read_image(src)
        # a search (--effort) takes a while: a progress bar on a terminal, the result line otherwise
        bar = tqdm(desc=f"{src}: effort {args.effort}", unit=" steps", leave=False, file=sys.stderr,
                   disable=not args.effort or args.quiet or not sys.stderr.isatty())
        with bar:
            if args.target_size is not None or args.target_psnr is not None:
                data, quality = codec.compress_to(image, args.target_size, args.target_psnr, strip=args.strip,
                                                  psnr_of=args.psnr_space, effort=args.effort, progress=bar.update)
            else:
                data = codec.compress(image, args.quality, strip=args.strip, effort=args.effort, progress=bar.update)
                quality = args.quality
        write_output(dst, data, force=args.force)
        w, h = image.size
        line = f"{src} -> {dst}: {len(data):,} bytes, {8 * len(data) / (w * h):.3f} bpp, q {quality}"
        if args.verbose or (args.target_psnr is not None and quality == 100):
            db = PSNR_SPACES[args.psnr_space](image.convert("RGB"), codec.decompress(data).convert("RGB"))
            line += f", PSNR-{args.psnr_space.upper()} {db:.2f} dB"
            if args.target_psnr is not None and db < args.target_psnr:
                line += f" (target {args.target_psnr} dB not reached: q 100 is the best)"
        if args.target_size is not None and len(data) > args.target_size:
            line += f" (target {args.target_size:,} bytes not met: q 1 is the smallest)"
        if not args.strip and {"xmp", "XML:com.adobe.xmp"} & image.info.keys():  # Pillow: JPEG/WebP, PNG
            line += " (XMP not kept: the file carries the ICC profile and EXIF only)"
        _say(args, line)

    return _run_each(pairs, work, failed)


def _check_format(out: str | None) -> None:
    """An output extension with no image writer is a usage error, found before any work."""
    from codec.image import ImageError
    from codec.cli.files import output_format

    if out and not _is_folder(out):
        try:
            output_format(out)
        except ImageError as e:
            raise UsageError(str(e)) from None


def _is_aec(path: Path) -> bool:
    """Whether a regular file starts like an .aec file (a pipe is checked when it is read)."""
    from codec.format.bitstream import MAGIC

    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _check_aec(path: Path) -> None:
    """decompress takes .aec files: say what else a file is when that is plain from its start."""
    if not path.is_file() or _is_aec(path):
        return
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise ValueError("empty file, not an .aec file")
    if len(head) == 9 and head[8:] == b"{":  # safetensors: an 8-byte header length, then JSON
        raise ValueError("a safetensors file, not an .aec file (a VAE latent decodes with aecodec vae decode)")
    raise ValueError("not an .aec file (wrong magic bytes)")


def _check_not_aec(path: Path, hint: str = "decompress it first to re-code it on purpose") -> None:
    """compress and vae decode do not take .aec files: say what does, rather than fail on its bytes."""
    if _is_aec(path):
        raise ValueError(f"is an .aec file ({hint})")


def _check_codable(path: Path, alpha: bool = True) -> None:
    """compress and vae encode: an image whose header says aecodec can code it (size, mode and,
    for the VAE, no alpha), so a bad input is named before the model loads and anything decodes."""
    from codec.image import check_image

    _check_not_aec(path)
    header = check_image(path)
    if header is not None:
        from codec.format.bitstream import check_codable

        check_codable(*header, alpha=alpha)


def _check_latent(path: Path) -> None:
    """vae decode takes latent files: what is plainly something else is named at once, before
    torch loads; a safetensors file's header is checked in full (a pipe: when it is read)."""
    _check_not_aec(path, "decode it with aecodec decompress")
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:] != b"{":  # safetensors: an 8-byte header length, then JSON
        raise ValueError("not an aecodec latent file (written by aecodec vae encode)")
    from codec.format.bitstream import MAX_LATENT_HEADER, read_latent_header

    with open(path, "rb") as f:
        read_latent_header(f.read(8 + MAX_LATENT_HEADER))


def cmd_decompress(args: argparse.Namespace) -> int:
    from codec.cli.files import output_format

    _check_format(args.output)
    pairs, failed = _plan(args, ".png", _check_aec)
    if not pairs:
        return 1
    from codec.cli.files import check_writable, dropped_metadata, image_bytes, write_output
    from codec.format.bitstream import check_decode_size, check_magic, parse
    from codec.image import read_bytes
    from codec.weights import weights_for

    codecs: dict = {}  # (weights file, model) -> Codec: each file names the weights and model that wrote it

    def work(src: str, dst: str) -> None:
        file = parse(read_bytes(src, check_magic))
        header = file.header  # all from the parsed file, before torch or any model loads
        check_writable(dst, header.mode, file.metadata)
        check_decode_size(header.width, header.height, _max_pixels(args))
        weights = weights_for(header.weights_id.hex(), args.weights)
        key = (str(weights), header.model)
        if key not in codecs:
            codecs[key] = _codec(args, header.model, weights)
        image = codecs[key].decompress(file)
        fmt = output_format(dst)
        write_output(dst, image_bytes(image, fmt), force=args.force)
        dropped = dropped_metadata(image, fmt)
        _say(args, f"{src} -> {dst}: {image.size[0]}x{image.size[1]} {image.mode}"
             + (f" (without its {' and '.join(dropped)}: {fmt} holds none)" if dropped else ""))

    return _run_each(pairs, work, failed)


def cmd_info(args: argparse.Namespace) -> int:
    # the container alone: no torch, answers at once
    from codec import registry
    from codec.cli.files import METADATA
    from codec.format.bitstream import check_magic, parse
    from codec.image import read_bytes

    def work(src: str, _dst: None) -> None:
        data = read_bytes(src, check_magic)
        file = parse(data)
        h = file.header
        px = h.width * h.height
        print(f"{src}:")
        print(f"  model       {h.model} (id {h.model_id})")
        wid = h.weights_id.hex()
        if wid in registry.RELEASED_WEIGHTS:
            whose = f" ({registry.RELEASED_WEIGHTS[wid][0]}'s, shipped with this release)"
        elif wid in registry.PAST_WEIGHTS:  # before files outlived releases
            release, revision = registry.PAST_WEIGHTS[wid]
            whose = f" ({release}'s: this release does not decode it; git revision {revision} of aecodec does)"
        else:
            whose = " (not shipped by any release: decode it with --weights and the file that wrote it)"
        print(f"  weights     {wid}{whose}")
        print(f"  quality     {h.quality}")
        print(f"  size        {h.width}x{h.height} {h.mode}")
        print(f"  bytes       {len(data)} (streams {', '.join(map(str, h.stream_lengths))})")
        if file.alpha is not None:  # deflated, lossless
            print(f"  alpha       {len(file.alpha)} bytes (lossless)")
        if h.metadata:  # say what it is, since it can outweigh the pixels
            kept = [METADATA[k] for k in file.metadata]
            print(f"  metadata    {' and '.join(kept)} ({h.stream_lengths[-1]} bytes; "
                  "aecodec compress --strip drops it)")
        print(f"  bpp         {8 * len(data) / px:.4f}")

    inputs, failed = _check_inputs(args.inputs, _check_aec)
    return _run_each([(p, None) for p in inputs], work, failed)


def cmd_vae_encode(args: argparse.Namespace) -> int:
    _refuse_image_output(args.output, "vae encode writes latent .safetensors files")
    pairs, failed = _plan(args, ".safetensors", lambda path: _check_codable(path, alpha=False))
    if not pairs:
        return 1
    from codec.image import read_image
    from codec.cli.files import write_output

    codec = _codec(args, "vae-kl-f8")

    def work(src: str, dst: str) -> None:
        image = read_image(src)
        data = codec.encode_latent(image)
        write_output(dst, data, force=args.force)
        _say(args, f"{src} -> {dst}: {image.size[0]}x{image.size[1]}, {len(data):,} bytes")

    return _run_each(pairs, work, failed)


def cmd_vae_decode(args: argparse.Namespace) -> int:
    from codec.cli.files import output_format

    _check_format(args.output)
    pairs, failed = _plan(args, ".png", _check_latent)
    if not pairs:
        return 1
    from codec.format.bitstream import check_decode_size, read_latent_header
    from codec.cli.files import check_writable, image_bytes, write_output
    from codec.image import read_bytes

    from codec.weights import weights_for

    load = functools.cache(lambda path: _codec(args, "vae-kl-f8", path))  # once per weights file

    def work(src: str, dst: str) -> None:
        data = read_bytes(src)
        header = read_latent_header(data)
        check_writable(dst, header["mode"])  # before the model loads or anything decodes
        check_decode_size(header["width"], header["height"], _max_pixels(args))
        weights = weights_for(str(header.get("weights_sha256"))[:16], args.weights)  # before torch loads
        image = load(weights).decode_latent(data)
        write_output(dst, image_bytes(image, output_format(dst)), force=args.force)
        _say(args, f"{src} -> {dst}: {image.size[0]}x{image.size[1]} {image.mode}")

    return _run_each(pairs, work, failed)


def cmd_vae_export(args: argparse.Namespace) -> int:
    from codec.models.vae import export_diffusers
    from codec.weights import load_weights

    out = Path(args.folder)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} exists and is not empty (use --force to overwrite)")
    if not out.absolute().parent.is_dir():  # as every other output: a typo makes no new tree
        raise FileNotFoundError(f"output folder {out.absolute().parent} does not exist")
    model, digest = load_weights(args.weights, "vae-kl-f8")
    export_diffusers(model, out)
    print(f"wrote {out}/ (config.json, diffusion_pytorch_model.safetensors) from weights {digest[:16]}; "
          f"load it with diffusers.AutoencoderKL.from_pretrained({str(out)!r})")
    return 0


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input or environment, as opposed to bugs (imported late, so
    that ``--help`` does not load torch)."""
    from codec import AecodecError

    return (AecodecError, OSError, ValueError)


def _message(e: BaseException) -> str:
    """The reason alone: the line already names the file."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e) or type(e).__name__


def _pixels(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def _positive(kind: type):
    """An argparse type: a finite number of ``kind`` above 0 (a target of 0 bytes or -5 dB is a typo)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {text!r}") from None
        if not (value > 0 and math.isfinite(value)):  # also refuses nan
            what = "a whole number" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {what} above 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = helptext.Parser(
        prog="aecodec",
        description="A learned image codec: writes compact .aec files and restores PNGs.",
        epilog=EPILOG,
        formatter_class=helptext.RawDescription,
    )
    from codec import __version__

    p.add_argument("-V", "--version", action="version", version=f"aecodec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, outputs: bool = True, decodes: bool = False,
               verbose: bool = False) -> None:
        if outputs:
            sp.add_argument("-o", "--output", metavar="OUT",
                            help="output file (one input; - for standard output), or a folder (existing, or "
                            "ending in /)" + ("; the extension picks the format: .png (default), .tif, .bmp, "
                                              ".ppm/.pgm losslessly, .jpg at quality 95 (4:4:4), .webp at quality 95; "
                                              "PNG to - and to a device without one (/dev/null)"
                                              if decodes else ""))
            sp.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
            if verbose:
                sp.add_argument("-v", "--verbose", action="store_true",
                                help="add the PSNR to the result line (costs a decode)")
            sp.add_argument("--quiet", action="store_true", help="no result line per file (errors still show)")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the transforms run (default: auto = CUDA if present)")
        sp.add_argument("--weights", metavar="FILE", help="weights file (default: the shipped weights)")
        if decodes:
            sp.add_argument("--max-pixels", type=_pixels, metavar="N",
                            help="refuse images of more than N pixels before decoding (default: 50000000, "
                            "like Pillow's MAX_IMAGE_PIXELS; 0: up to the format's limit of 67108864)")

    c = sub.add_parser("compress", help="images -> .aec files",
                       description="Compress images (PNG, JPEG, WebP, TIFF, BMP) to .aec files, "
                       "written next to each input as NAME.aec unless -o is given. Grayscale stays "
                       "grayscale; an alpha channel is kept losslessly.")
    c.add_argument("inputs", nargs="+", metavar="IMG", help="images to compress (- for standard input)")
    c.add_argument("-q", "--quality", type=int,
                   help="1-100, higher is better and bigger (default: 75). Not JPEG's scale: on photos q 100 "
                   "is about 1.8 bpp and 37 dB PSNR on Kodak, the model's ceiling; for more fidelity than that, use "
                   "JPEG XL or WebP")
    default = registry.MODELS[registry.DEFAULT_MODEL].short
    c.add_argument("-m", "--model", choices=[default] + [e.short for e in registry.MODELS.values()
                                                         if e.short != default and e.on_command_line],
                   help="; ".join(f"{e.short}: {e.about}".replace("%", "%%") for e in sorted(registry.MODELS.values(),
                                                                          key=lambda e: e.short != default)
                                  if e.on_command_line)
                   + ". With --weights: the file's own model unless given")
    c.add_argument("--strip", action="store_true",
                   help="drop the ICC profile and EXIF (kept by default, and restored by decompress)")
    c.add_argument("--target-size", type=_positive(int), metavar="BYTES",
                   help="instead of -q: the highest quality whose file fits in BYTES (like cwebp -size; the "
                   "analysis runs once, then each quality tried is only entropy coded); q 1 if none does, and the "
                   "result line says so")
    c.add_argument("--target-psnr", type=_positive(float), metavar="DB",
                   help="instead of -q: the lowest quality that reaches DB of PSNR, by default PSNR-RGB "
                   "(over the R, G and B samples, as -v reports); q 100 if none does, and the result line says so")
    c.add_argument("--effort", type=int, choices=range(5), default=0, metavar="0-4",  # refine.EFFORTS
                   help="encoder effort, as cjxl -e: 0 (default) codes the analysis transform's latent at once; "
                   "1-4 search it for a smaller file at the same quality, slower with each level (on 2 CPU threads "
                   "about 100 s a photo at 3, 25 minutes at 4). The files decode as any other")
    c.add_argument("--psnr-space", choices=["rgb", "yuv420"], default="rgb",  # metrics.PSNR_SPACES
                   help="the PSNR that --target-psnr and -v mean: rgb (default), or yuv420, over YCbCr 4:2:0 "
                   "samples as cwebp's -psnr measures it (luma weighs more: the same number needs fewer bytes)")
    common(c, verbose=True)
    c.set_defaults(func=cmd_compress, parser=c)

    d = sub.add_parser("decompress", help=".aec files -> PNG",
                       description="Restore .aec files to PNG images of the original size and mode, "
                       "written as NAME.png unless -o is given.")
    d.add_argument("inputs", nargs="+", metavar="FILE.aec", help=".aec files (- for standard input)")
    common(d, decodes=True)
    d.set_defaults(func=cmd_decompress, parser=d)

    i = sub.add_parser("info", help="print an .aec file's header",
                       description="Print the model, weights, quality, size and bits per pixel of .aec files.")
    i.add_argument("inputs", nargs="+", metavar="FILE.aec",
                   help=".aec files (- for standard input); nothing is decoded")
    i.set_defaults(func=cmd_info, parser=i)

    v = sub.add_parser("vae", help="images <-> VAE latents (for latent diffusion)",
                       description="The KL-regularised f8 autoencoder: 4 latent channels at H/8 x W/8, "
                       "scaled to about unit variance. A latent file is safetensors: tensor 'latent' "
                       "(1 x 4 x H/8 x W/8, float32) plus the metadata decoding needs.")
    vsub = v.add_subparsers(dest="vae_command", required=True, metavar="ACTION")
    ve = vsub.add_parser("encode", help="images -> latent files (NAME.safetensors)",
                         description="Encode images (RGB or grayscale) to scaled latents, written as "
                         "NAME.safetensors unless -o is given.")
    ve.add_argument("inputs", nargs="+", metavar="IMG",
                    help="images to encode, RGB or grayscale (- for standard input)")
    common(ve)
    ve.set_defaults(func=cmd_vae_encode, parser=ve)
    vd = vsub.add_parser("decode", help="latent files -> PNG",
                         description="Decode latent files to PNG images of the original size and mode.")
    vd.add_argument("inputs", nargs="+", metavar="LATENT",
                    help="latent files written by aecodec vae encode (- for standard input)")
    common(vd, decodes=True)
    vd.set_defaults(func=cmd_vae_decode, parser=vd)
    vx = vsub.add_parser("export-diffusers", help="write the VAE as a diffusers AutoencoderKL folder",
                         description="Write config.json and diffusion_pytorch_model.safetensors, which "
                         "diffusers.AutoencoderKL.from_pretrained(FOLDER) loads (images in [-1, 1]; "
                         "the config carries latents_mean, latents_std and scaling_factor).")
    vx.add_argument("folder", metavar="FOLDER")
    vx.add_argument("-f", "--force", action="store_true", help="write into a non-empty folder")
    vx.add_argument("--weights", metavar="FILE", help="VAE weights file (default: the shipped VAE weights)")
    vx.set_defaults(func=cmd_vae_export, parser=vx)

    # "aecodec train ..." is handed to python -m codec.train in main(), before this parser runs;
    # listed here so that --help shows it
    sub.add_parser("train", help="train or export weights (see: aecodec train --help)", add_help=False)

    try:
        from codec import bench
    except ImportError:  # the benchmark is optional at import time
        bench = None
    if bench is not None:
        bench.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # argparse cannot hand "--help" on to a sub-program; do it here
        from codec import train

        train.main(argv[1:], prog="aecodec train")
        return 0
    if argv[:1] in (["--version"], ["-V"]):  # answered without loading torch
        from codec import __version__

        print(f"aecodec {__version__}")
        return 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would name the top-level usage; the subcommand's is the useful one
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    known, made = _known_errors(), []

    try:
        weights = getattr(args, "weights", None)
        if weights and (Path(weights).is_dir() or not Path(weights).exists()):  # at once, not after torch loads
            raise ValueError(f"cannot read weights {weights}: "
                             + ("Is a directory" if Path(weights).is_dir() else "No such file or directory"))
        made = _missing_folders(getattr(args, "output", None))
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not in the interpreter's exit
        return code
    except UsageError as e:
        args.parser.error(str(e))  # exits 2 with the running command's usage line
    except BrokenPipeError:  # `aecodec info *.aec | head`: stop quietly, as cat does (Python's docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail too
        return 1
    except known as e:
        print(f"aecodec: error: {_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aecodec: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, full trace on request
        if os.environ.get("AECODEC_DEBUG"):
            raise
        print(f"aecodec: internal error: {type(e).__name__}: {e} (set AECODEC_DEBUG=1 for details)",
              file=sys.stderr)
        return 1
    finally:
        _remove_if_empty(made)


def run() -> None:
    """The installed command: main(), then exit. Once the work is done, Ctrl-C is ignored, so an
    interrupt while Python and torch shut down cannot print a traceback from their exit handlers."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)

