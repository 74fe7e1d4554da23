"""The command line: outputs next to inputs or at -o, no clobbering without --force, one-line errors."""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec.format import bitstream
from codec import registry
from codec.format.bitstream import MAGIC
from codec.cli import main
from codec.weights import default_weights, load_weights, save_weights, weights_dir, weights_id
from conftest import make_image

RELEASED = Path(__file__).parent / "released"  # files written by earlier releases, as they shipped


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image(50, 30).save("a.png")
    make_image(20, 20, "L").save("b.jpg")
    return tmp_path


@pytest.mark.slow
def test_compress_then_decompress(folder, capsys):
    assert main(["compress", "a.png", "b.jpg", "-q", "40", "--device", "cpu"]) == 0
    assert (folder / "a.aec").exists() and (folder / "b.aec").exists()
    assert main(["decompress", "a.aec", "-o", "a_out.png", "--device", "cpu"]) == 0
    assert Image.open(folder / "a_out.png").size == (50, 30)
    os.mkdir("out")
    assert main(["decompress", "a.aec", "b.aec", "-o", "out", "--device", "cpu"]) == 0
    assert Image.open(folder / "out" / "b.png").mode == "L"


def test_info(folder, capsys):
    main(["compress", "a.png", "-q", "55", "-o", "x.aec"])
    capsys.readouterr()
    assert main(["info", "x.aec"]) == 0
    out = capsys.readouterr().out
    assert "quality     55" in out and "50x30 RGB" in out and "bpp" in out


@pytest.mark.slow
def test_existing_output_needs_force(folder, capsys):
    main(["compress", "a.png", "-q", "10"])
    before = (folder / "a.aec").read_bytes()
    assert main(["compress", "a.png", "-q", "90"]) == 1
    assert "exists" in capsys.readouterr().err
    assert (folder / "a.aec").read_bytes() == before
    assert main(["compress", "a.png", "-q", "90", "--force"]) == 0
    assert (folder / "a.aec").read_bytes() != before


def test_decompress_does_not_clobber_the_original(folder, capsys):
    main(["compress", "a.png"])
    original = (folder / "a.png").read_bytes()
    assert main(["decompress", "a.aec"]) == 1
    assert (folder / "a.png").read_bytes() == original


@pytest.mark.slow
def test_bad_inputs_fail_cleanly_and_leave_nothing(folder, capsys):
    (folder / "junk.aec").write_bytes(b"\x89AEC\x01junk")
    (folder / "text.png").write_text("not an image")
    assert main(["decompress", "junk.aec", "-o", "j.png"]) == 1
    assert main(["compress", "text.png", "missing.png"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("aecodec: error:") for line in err), err
    assert len(err) == 3
    Path("cut.png").write_bytes(Path("a.png").read_bytes()[:300])  # its header passes the first checks
    assert main(["compress", "cut.png", "-o", "new/deeper/"]) == 1  # and no empty folders are left
    assert "cut.png: cannot decode image" in capsys.readouterr().err
    assert main(["compress", "cut.png", "-o", "x/../new/"]) == 1  # mkdir makes x too: it goes as well
    leftovers = {p.name for p in folder.iterdir()} - {"a.png", "b.jpg", "junk.aec", "text.png", "cut.png"}
    assert leftovers == set()
    Path("old").mkdir()
    assert main(["compress", "a.png", "cut.png", "-o", "y/../old/", "--device", "cpu"]) == 1
    assert not Path("y").exists() and [p.name for p in Path("old").iterdir()] == ["a.aec"]


def test_one_bad_file_does_not_stop_the_rest(folder):
    (folder / "text.png").write_text("not an image")
    assert main(["compress", "text.png", "a.png"]) == 1
    assert (folder / "a.aec").exists()


def test_usage_errors(folder, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compress", "a.png", "-q", "101"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["compress", "a.png", "b.jpg", "-o", "single.aec"])
    with pytest.raises(SystemExit):
        main(["compress", "a.png", "-o", "a.png"])
    err = capsys.readouterr().err  # each with the running command's usage line
    assert err.count("usage: aecodec compress") == 3 and "aecodec compress: error: " in err
    with pytest.raises(SystemExit):
        main(["vae", "decode", "a.safetensors", "b.safetensors", "-o", "one.png"])
    assert capsys.readouterr().err.startswith("usage: aecodec vae decode")


def test_every_help_page_says_what_it_was_given(capsys, monkeypatch):
    """argparse formats help with ``%``: an unescaped "3.7% larger" once printed argparse's own
    internals in the middle of ``compress --help``. And its wrapping split names at a hyphen."""
    import argparse
    import re

    from codec.bench import main as bench_main
    from codec.cli import build_parser

    def pages(parser):
        yield parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from pages(sub)

    def printed(run, argv):
        with pytest.raises(SystemExit):
            run(argv)
        return capsys.readouterr().out

    for columns in (80, 100, 120):  # argparse wraps to the terminal's width
        monkeypatch.setenv("COLUMNS", str(columns))
        helps = list(pages(build_parser()))
        helps += [printed(main, ["train", *command, "--help"]) for command in ([], ["fit"], ["export"])]
        helps.append(printed(bench_main, ["--help"]))  # python -m codec.bench parses its own
        assert len(helps) > 8 and "--synthesis-width" in helps[-3] and "--sc-weights" in helps[-1]
        for text in helps:
            assert "option_strings" not in text and "%(" not in text
            assert not re.search(r"[a-z]-\n\s+[a-z]", text), "a hyphenated name broken across lines"
    flat = " ".join(" ".join(helps).split())
    for entry in registry.MODELS.values():
        if entry.on_command_line and entry.about:
            assert " ".join(entry.about.split()) in flat


def test_every_output_clash_is_named_at_once(folder, capsys):
    for name in ("a.jpg", "b.png", "sub/b.png"):
        Path(name).parent.mkdir(exist_ok=True)
        make_image(8, 8).save(name)
    with pytest.raises(SystemExit) as e:
        main(["compress", "a.png", "a.jpg", "b.png", "sub/b.png", "-o", "out/"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "a.png and a.jpg would both be written to out/a.aec; b.png and sub/b.png would both be written to out/b.aec")
    assert not Path("out").exists()  # nothing made: a usage error comes before any work
    Path("kept").mkdir()  # a folder the user had is never removed, however -o spells it
    Path("cut.png").write_bytes(Path("a.png").read_bytes()[:300])
    assert main(["compress", "cut.png", "-o", "gone/../kept/"]) == 1
    assert Path("kept").is_dir()


def test_the_installed_command_ignores_ctrl_c_once_its_work_is_done(folder, monkeypatch):
    import signal

    from codec import cli

    monkeypatch.setattr(cli, "main", lambda: 3)
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as e:
            cli.run()
        assert e.value.code == 3 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_no_traceback_from_the_installed_command(folder):
    (folder / "bad.aec").write_bytes(b"nope")
    r = subprocess.run([sys.executable, "-m", "codec.cli", "decompress", "bad.aec"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "aecodec: error: bad.aec: not an .aec file (wrong magic bytes)"


def _release_of(path: Path) -> str:
    return "aecodec " + path.name.split("-")[1]


RELEASED_FILES = sorted(RELEASED.glob("aecodec-*.aec")) + sorted(RELEASED.glob("aecodec-*.safetensors"))
OUTLIVING = [p for p in RELEASED_FILES if p.with_name(p.name.rsplit(".", 1)[0] + ".decoded.png").exists()]


@pytest.mark.slow
@pytest.mark.parametrize("path", OUTLIVING, ids=lambda p: p.name)
def test_a_file_of_every_release_since_0_15_decodes(folder, path):
    """Files outlive releases: each released weights file stays, found by the id in the header."""
    out = folder / "out.png"
    cmd = ["vae", "decode"] if path.suffix == ".safetensors" else ["decompress"]
    assert main([*cmd, str(path), "-o", str(out), "--device", "cpu"]) == 0
    reference = np.asarray(Image.open(path.with_name(path.name.rsplit(".", 1)[0] + ".decoded.png")), dtype=np.int16)
    # exactly as released on the CPU kind of tests/golden; a level or two off on another vector unit
    assert np.abs(np.asarray(Image.open(out), dtype=np.int16) - reference).max() <= 2


def test_every_release_since_0_15_has_a_file_here():
    """Add a file of each new release to tests/released (the golden 64x48 files, as released)."""
    releases = {release for release, _ in registry.RELEASED_WEIGHTS.values()} - {"aecodec 0.1.0"}  # the VAE's
    assert releases <= {_release_of(p) for p in OUTLIVING}
    for wid, (_, name) in registry.RELEASED_WEIGHTS.items():  # byte for byte as released
        assert weights_id(weights_dir() / name) == wid, f"{name} changed: keep released weights files as they were"


@pytest.mark.parametrize("path", [p for p in RELEASED_FILES if p not in OUTLIVING], ids=lambda p: p.name)
def test_a_file_from_before_0_15_is_refused_naming_the_revision_that_decodes_it(folder, capsys, path):
    shutil.copy(path, "old.aec")
    release = _release_of(path)
    revision = next(rev for rel, rev in registry.PAST_WEIGHTS.values() if rel == release)
    assert main(["decompress", "old.aec", "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().endswith(f"decode it with the source of {release} "
                                                    f"(git revision {revision} of aecodec)")
    assert not (folder / "old.png").exists()
    assert main(["info", "old.aec"]) == 0  # info reads any header, and says so before a decode fails
    assert f"({release}'s: this release does not decode it; git revision {revision} of aecodec does)" \
        in capsys.readouterr().out


@pytest.mark.slow
def test_no_weights_means_no_torch(folder):
    """A file no weights decode, or not the --weights given, is refused from its header alone."""
    main(["compress", "a.png", "-o", "a.aec", "--device", "cpu"])
    header, streams = bitstream.unpack(Path("a.aec").read_bytes())
    Path("foreign.aec").write_bytes(bitstream.pack(dataclasses.replace(header, weights_id=b"\x01" * 8), streams))
    probe = ("import sys; from codec.cli import main; code = main(sys.argv[1:]); "
             "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=folder)

    r = run("decompress", "foreign.aec")
    assert r.returncode == 1 and "which no release of aecodec ships: pass the weights file that wrote it " \
        "with --weights" in r.stderr
    r = run("decompress", "a.aec", "-o", "x.png", "--weights", str(weights_dir() / "aecodec-vae-f8.safetensors"))
    release = registry.RELEASED_WEIGHTS[header.weights_id.hex()][0]  # the default model's
    assert r.returncode == 1 and f"without --weights, {release}'s shipped weights decode it" in r.stderr
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", 8200, 8200, 8, 2, 0, 0, 0)  # an 8200x8200 RGB PNG, its pixels cut short
    Path("huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
                                 + chunk(b"IEND", b""))
    r = run("compress", "huge.png")
    assert r.returncode == 1 and "8200x8200 is too large" in r.stderr
    for args in (["compress", "a.png", "-o", "a.aec"],  # an existing output
                 ["decompress", str(RELEASED / "aecodec-0.14.0-cc-64x48-q75.aec"), "-o", "x.png"]):
        r = run(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert not (folder / "x.png").exists()


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`aecodec info *.aec | head -2`: a closed pipe is no file's fault; no error line per file,
    no traceback from the interpreter's exit."""
    files = sorted(str(p) for p in RELEASED.glob("*.aec"))
    p = subprocess.Popen([sys.executable, "-m", "codec.cli", "info", *files], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    p.stdout.close()  # before the command writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1 and err == ""


@pytest.mark.slow
def test_the_hyperprior_inside_the_cc_weights_file(folder, capsys):
    """The hyperprior the channel-conditional file holds is no choice of compress any more (32%
    more bits for a 25% faster encode), but its files decode: any decompress reads the model from
    the file, with the shipped weights or that file named with --weights."""
    with pytest.raises(SystemExit) as e:
        main(["compress", "a.png", "--model", "hp"])
    assert e.value.code == 2 and "invalid choice: 'hp'" in capsys.readouterr().err
    from codec.api import Codec

    Path("hp.aec").write_bytes(Codec(device="cpu", model="hyperprior-gain").compress(Image.open("a.png"), 75))
    assert main(["info", "hp.aec"]) == 0 and "hyperprior-gain" in capsys.readouterr().out
    assert main(["decompress", "hp.aec", "-o", "hp.png", "--device", "cpu"]) == 0
    assert main(["decompress", "hp.aec", "-o", "hp2.png", "--weights", str(default_weights("hyperprior-gain")),
                 "--device", "cpu"]) == 0
    assert Image.open("hp.png").tobytes() == Image.open("hp2.png").tobytes()


@pytest.mark.slow
def test_a_weights_file_codes_with_its_own_model(folder, capsys):
    hp, _ = load_weights(model="hyperprior-gain")
    save_weights(hp, "hp-only.safetensors")  # a file holding just the hyperprior
    assert main(["compress", "a.png", "--weights", "hp-only.safetensors", "-o", "x.aec", "--device", "cpu"]) == 0
    assert main(["info", "x.aec"]) == 0 and "hyperprior-gain" in capsys.readouterr().out
    assert main(["decompress", "x.aec", "--weights", "hp-only.safetensors", "--device", "cpu"]) == 0
    # the shipped file holds the same hyperprior, but a file names its exact weights
    assert main(["decompress", "x.aec", "-o", "y.png", "--device", "cpu"]) == 1
    assert "which no release of aecodec ships: pass the weights file that wrote it with --weights" \
        in capsys.readouterr().err
    assert not (folder / "y.png").exists()


def test_one_missing_input_with_an_output_file_is_one_error(folder, capsys):
    assert main(["compress", "nothere.png", "-o", "x.aec"]) == 1
    assert capsys.readouterr().err.strip() == "aecodec: error: nothere.png: no such file"


@pytest.mark.slow
def test_compress_refuses_what_would_surprise(folder, capsys):
    with pytest.raises(SystemExit) as e:  # one way to choose the quality
        main(["compress", "a.png", "-q", "50", "--target-size", "2000"])
    assert e.value.code == 2
    assert "compress: error: give one of -q, --target-size and --target-psnr" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # .aec data in a file named like an image
        main(["compress", "a.png", "-o", "x.png"])
    assert main(["compress", "a.png", "-q", "20"]) == 0
    assert main(["compress", "a.aec", "-o", "again.aec"]) == 1  # re-coding loses quality twice
    assert "is an .aec file (decompress it first" in capsys.readouterr().err
    assert not (folder / "again.aec").exists()


@pytest.mark.slow
def test_a_target_no_quality_meets_is_said(folder, capsys):
    assert main(["compress", "a.png", "--target-size", "10", "-o", "s.aec", "--device", "cpu"]) == 0
    assert "q 1 (target 10 bytes not met: q 1 is the smallest)" in capsys.readouterr().err


@pytest.mark.slow
def test_an_output_that_cannot_hold_the_image_is_refused_before_decoding(folder, capsys, monkeypatch):
    make_image(24, 16, "RGBA").save("rgba.png")
    assert main(["compress", "rgba.png", "a.png", "--device", "cpu"]) == 0
    import codec.cli

    def no_model(*args, **kwargs):  # the refusal must come from the header, before any model loads
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(codec.cli, "_codec", no_model)
    for out in ("r.jpg", "r.bmp", "r.ppm", "r.pgm"):
        says = f"RGBA image: {out[1:]} holds no alpha channel"
        assert main(["decompress", "rgba.aec", "-o", out]) == 1
        assert says in capsys.readouterr().err and not Path(out).exists()
    assert main(["decompress", "a.aec", "-o", "a.pgm"]) == 1  # RGB: PGM would silently be colour
    assert ".pgm holds grayscale only" in capsys.readouterr().err and not Path("a.pgm").exists()


def test_outputs_that_cannot_be_written_fail_before_the_work(folder, capsys, monkeypatch):
    import codec.cli

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(codec.cli, "_codec", no_model)
    (folder / "text.png").write_text("a file, not a folder")
    assert main(["compress", "a.png", "-o", "text.png/"]) == 1
    assert "cannot create output folder text.png/" in capsys.readouterr().err
    os.symlink("loop.aec", "loop.aec")
    assert main(["compress", "a.png", "-o", "loop.aec", "--force"]) == 1
    assert "loop.aec is a symlink loop" in capsys.readouterr().err
    os.unlink("loop.aec")
    assert main(["compress", "a.png", "-o", "text.png/x.aec"]) == 1
    assert "output folder text.png is not a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere but into /proc
        os.mkdir("ro")
        os.chmod("ro", 0o500)
        assert main(["compress", "a.png", "-o", "ro/x.aec"]) == 1
        assert "cannot write in ro" in capsys.readouterr().err
    elif Path("/proc").is_dir():
        assert main(["compress", "a.png", "-o", "/proc/x.aec"]) == 1
        assert "cannot write in /proc" in capsys.readouterr().err
    assert {p.name for p in folder.iterdir()} <= {"a.png", "b.jpg", "text.png", "ro"}


class Terminal(io.StringIO):
    """Standard output as a terminal, with the binary layer ``write_output`` writes to."""

    def __init__(self):
        super().__init__()
        self.buffer = io.BytesIO()

    def isatty(self) -> bool:
        return True


@pytest.mark.slow
def test_binary_is_not_written_to_a_terminal(folder, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert main(["compress", "a.png", "-o", "-"]) == 1
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(Path("a.png").read_bytes())))
    assert main(["compress", "-"]) == 1  # standard input writes to standard output
    assert capsys.readouterr().err.count("not writing binary data to a terminal") == 2
    assert sys.stdout.buffer.getvalue() == b""
    assert main(["compress", "a.png", "-o", "-", "--force", "--device", "cpu"]) == 0
    assert sys.stdout.buffer.getvalue().startswith(MAGIC)  # what the user asked for


def test_a_folder_named_like_an_image_takes_outputs(folder):
    assert main(["compress", "a.png", "-o", "out.png/", "--device", "cpu"]) == 0
    assert (folder / "out.png" / "a.aec").is_file()


def test_what_decompress_is_given_instead_of_an_aec_file_is_named(folder, capsys):
    (folder / "empty.aec").write_bytes(b"")
    (folder / "lat.safetensors").write_bytes(len(b'{"a":1}').to_bytes(8, "little") + b'{"a":1}')
    assert main(["decompress", "empty.aec", "lat.safetensors", "-o", "out/"]) == 1
    err = capsys.readouterr().err
    assert "empty.aec: empty file" in err and "lat.safetensors: a safetensors file" in err


def test_images_aecodec_cannot_code_are_refused_before_the_model_loads(folder, capsys, monkeypatch):
    import codec.cli

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(codec.cli, "_codec", no_model)
    Image.new("I;16", (8, 8)).save("deep.png")
    assert main(["compress", "deep.png"]) == 1
    refused = ("aecodec: error: deep.png: I;16 image with 16-bit or float samples: aecodec codes 8-bit images "
               "(convert it to 8 bits first)")
    assert capsys.readouterr().err.strip().splitlines() == [refused]


def test_sizes_and_alpha_a_model_cannot_take_are_refused_from_the_header(folder, capsys, monkeypatch):
    import codec.cli

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(codec.cli, "_codec", no_model)
    Image.new("L", (70_000, 1)).save("wide.png")  # past the format's 65535-pixel side
    make_image(24, 16, "RGBA").save("rgba.png")
    assert main(["compress", "wide.png"]) == 1
    assert main(["vae", "encode", "rgba.png"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "aecodec: error: wide.png: image 70000x1 is too large (the format holds sides up to 65535 pixels, "
        "67,108,864 pixels in all)",
        "aecodec: error: rgba.png: latent files hold no alpha channel: convert the image to RGB first"]
    assert not Path("wide.aec").exists() and not Path("rgba.safetensors").exists()


def test_decoders_refuse_from_the_header_before_the_model_loads(folder, capsys, monkeypatch):
    assert main(["compress", "a.png", "--device", "cpu", "--quiet"]) == 0  # 50x30
    import codec.cli

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(codec.cli, "_codec", no_model)
    Path("notes.txt").write_text("not a latent")
    assert main(["decompress", "a.aec", "--max-pixels", "100", "-o", "big.png"]) == 1
    assert main(["vae", "decode", "notes.txt", "a.png", "a.aec"]) == 1
    assert main(["compress", "a.png", "--weights", "no-such.safetensors", "-o", "w.aec"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "aecodec: error: a.aec: image 50x30 (1500 pixels) is over the decoding limit of 100 pixels "
        "(raise it with --max-pixels, Codec(max_pixels=) or codec.api.MAX_DECODE_PIXELS)",
        "aecodec: error: notes.txt: not an aecodec latent file (written by aecodec vae encode)",
        "aecodec: error: a.png: not an aecodec latent file (written by aecodec vae encode)",
        "aecodec: error: a.aec: is an .aec file (decode it with aecodec decompress)",
        "aecodec: error: cannot read weights no-such.safetensors: No such file or directory"]
    assert not any(Path(p).exists() for p in ("big.png", "notes.png", "w.aec"))


@pytest.mark.slow
def test_pillow_s_decompression_bomb_warning_is_not_printed(folder, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns from 1000 pixels (a.png: 1500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["compress", "a.png", "--device", "cpu", "--quiet"]) == 0
    assert [str(w.message) for w in caught] == [] and capsys.readouterr().err == ""


def test_standard_input_is_not_read_from_a_terminal(folder, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert main(["info", "-"]) == 1
    assert main(["compress", "-", "-o", "x.aec"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    refused = "aecodec: error: -: not reading data from a terminal: pipe or redirect a file into standard input"
    assert err == [refused] * 2


def test_info_says_what_the_other_commands_say(folder, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["info", "nothere.aec", "-"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "aecodec: error: nothere.aec: no such file", "aecodec: error: -: empty file, not an .aec file"]


def test_a_bad_option_of_a_command_shows_that_command_s_usage(folder, capsys):
    with pytest.raises(SystemExit) as e:
        main(["decompress", "-q", "50", "x.aec"])  # a cwebp habit
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: aecodec decompress") and "unrecognized arguments: -q" in err
    for option, bad in (("--target-size", "0"), ("--target-size", "-5"), ("--target-size", "big"),
                        ("--target-psnr", "nan"), ("--target-psnr", "inf")):
        with pytest.raises(SystemExit):
            main(["compress", "a.png", option, bad])
        assert "compress: error: argument --target-" in capsys.readouterr().err


@pytest.mark.slow
def test_info_says_what_the_metadata_stream_holds(folder, capsys):
    Image.open("a.png").save("icc.png", icc_profile=b"\0" * 300)
    assert main(["compress", "icc.png", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["info", "icc.aec"]) == 0
    assert "metadata    ICC profile (" in capsys.readouterr().out
    assert main(["decompress", "icc.aec", "-o", "icc.bmp"]) == 0  # BMP carries no metadata: said, not silent
    assert main(["decompress", "icc.aec", "-o", "icc.tif"]) == 0
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["icc.aec -> icc.bmp: 50x30 RGB (without its ICC profile: BMP holds none)",
                    "icc.aec -> icc.tif: 50x30 RGB"]
    assert Image.open("icc.tif").info["icc_profile"] == b"\0" * 300


@pytest.mark.slow
def test_info_names_the_alpha_stream(folder, capsys):
    Image.open("a.png").convert("RGBA").save("t.png")
    Image.open("a.png").save("i.png", icc_profile=b"\0" * 300)
    Image.open("i.png").convert("RGBA").save("ti.png", icc_profile=b"\0" * 300)
    assert main(["compress", "t.png", "ti.png", "a.png", "--device", "cpu"]) == 0
    capsys.readouterr()
    for name, alpha, metadata in (("t", True, False), ("ti", True, True), ("a", False, False)):
        assert main(["info", f"{name}.aec"]) == 0
        out = capsys.readouterr().out
        lengths = [int(n) for n in out.split("(streams ")[1].split(")")[0].split(", ")]
        assert ("alpha       " in out) == alpha and ("metadata    " in out) == metadata
        if alpha:  # the alpha stream comes before the metadata one
            assert f"alpha       {lengths[-1 - metadata]} bytes (lossless)" in out


@pytest.mark.parametrize("path", ["pipe.png", "/dev/stdin"])
def test_an_input_that_is_no_regular_file_needs_an_output_name(folder, capsys, path):
    """As gzip: `aecodec compress /dev/stdin` would write /dev/stdin.aec, `<(cmd)` /dev/fd/63.aec."""
    os.mkfifo("pipe.png")  # never opened: the refusal comes first
    with pytest.raises(SystemExit) as e:
        main(["compress", path, "--device", "cpu"])
    assert e.value.code == 2 and f"{path} is not a regular file: name the output with -o" in capsys.readouterr().err
    assert not Path(path + ".aec").exists() and not Path(path).with_suffix(".aec").exists()


@pytest.mark.slow
def test_xmp_that_is_not_kept_is_said(folder, capsys):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>'
    make_image(40, 30).save("x.jpg", xmp=xmp)
    assert main(["compress", "x.jpg", "--device", "cpu"]) == 0
    assert "(XMP not kept: the file carries the ICC profile and EXIF only)" in capsys.readouterr().err
    assert main(["compress", "x.jpg", "-o", "s.aec", "--strip", "--device", "cpu"]) == 0
    assert "XMP" not in capsys.readouterr().err  # --strip asked for it
