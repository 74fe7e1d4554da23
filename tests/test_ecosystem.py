"""aecodec among the tools people already use: Pillow's Image.open / save, pipes, metadata,
outputs checked before any work, a result line per file, target size and PSNR."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from codec import api, cli  # importing the package registers the Pillow plugin
from codec import pillow_plugin as codec_plugin
from codec.api import Codec, read_header
from codec import AecodecError
from codec.cli import main
from codec.cli.files import check_writable
from conftest import make_image, psnr

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image(50, 30).save("a.png")
    return tmp_path


ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # made once: it holds a time


def _icc() -> bytes:
    return ICC


# --- Pillow ---

@pytest.mark.slow
def test_pillow_opens_lazily_and_decodes_on_load(codec, tmp_path):
    path = tmp_path / "x.aec"
    path.write_bytes(codec.compress(make_image(40, 24, "RGBA"), 60))
    script = ("import sys, codec; from PIL import Image; im = Image.open(sys.argv[1]); "
              "print(im.format, im.size, im.mode, 'torch' in sys.modules); im.load(); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["AEC (40, 24) RGBA False", "True"]
    im = Image.open(path)
    assert np.array_equal(np.asarray(im), np.asarray(codec.decompress(path.read_bytes())))


@pytest.mark.slow
def test_pillow_saves_with_quality_and_metadata(tmp_path):
    image = make_image(64, 48)
    exif = Image.Exif()
    exif[0x010E] = "a description"
    image.save(tmp_path / "y.aec", quality=30, icc_profile=_icc(), exif=exif)
    back = Image.open(tmp_path / "y.aec")
    assert back.info["quality"] == 30 and back.info["icc_profile"] == _icc()
    assert back.getexif()[0x010E] == "a description"
    assert psnr(image, back.convert("RGB")) > 20


def test_errors_are_the_ones_pillow_users_catch(codec, tmp_path):
    """A damaged file is an OSError on load and a bad quality a ValueError, as with Pillow's own
    formats; a path where an image belongs is a TypeError that says what to pass."""
    data = codec.compress(make_image(40, 24), 60)
    (tmp_path / "cut.aec").write_bytes(data[:-20])
    im = Image.open(tmp_path / "cut.aec")  # the header is whole: opening works, decoding cannot
    with pytest.raises(OSError, match="cannot decode .aec file: truncated file"):
        im.load()
    for bad in (0, 60.7, True):  # as the API: never silently cut to an integer
        with pytest.raises(ValueError, match="quality must be an integer from 1 to 100"):
            make_image(8, 8).save(tmp_path / "q.aec", quality=bad)
    assert not (tmp_path / "q.aec").exists()  # Pillow removes the file it opened
    with pytest.raises(TypeError, match="expected a PIL image, got str"):
        codec.compress("photo.png")
    with pytest.raises(TypeError, match="expected the bytes of a file, got PosixPath"):
        codec.decompress(tmp_path / "cut.aec")
    with pytest.raises(TypeError, match="expected the bytes of a file, got str"):
        api.decompress("photo.aec")
    with pytest.raises(ValueError, match="max_pixels must be a number of pixels above 0"):
        Codec(max_pixels=0)
    with pytest.raises(ValueError, match="max_bytes must be a whole number of bytes above 0"):
        codec.compress_to(make_image(8, 8), max_bytes=-5)
    with pytest.raises(ValueError, match="min_psnr must be a finite number of dB above 0, got True"):
        codec.compress_to(make_image(8, 8), min_psnr=True)
    assert read_header(codec.compress(make_image(8, 8), np.int64(60))).quality == 60  # numpy's integers are integers
    with pytest.raises(ValueError, match="quality must be an integer"):
        codec.compress(make_image(8, 8), np.True_)
    with pytest.raises(ValueError, match="image 0x0 has no pixels"):
        codec.compress(Image.new("RGB", (0, 0)))
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Codec(device="tpu")


def test_pillow_verify_checks_the_whole_file_without_decoding_it(codec, tmp_path, monkeypatch):
    data = codec.compress(make_image(40, 24), 60)

    def no_decoding(*args):
        raise AssertionError("verify decoded the file")

    monkeypatch.setattr(codec_plugin.AecDecoder, "decode", no_decoding)
    (tmp_path / "ok.aec").write_bytes(data)
    Image.open(tmp_path / "ok.aec").verify()
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF  # in the last stream: the header still parses, so opening works
    (tmp_path / "bad.aec").write_bytes(bytes(damaged))
    with pytest.raises(SyntaxError, match="checksum mismatch"):
        Image.open(tmp_path / "bad.aec").verify()


def test_an_animation_is_refused_by_the_api_and_saved_as_its_current_frame_by_pillow(codec, tmp_path):
    frames = [Image.new("RGB", (16, 16), (i * 100, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    anim = Image.open(tmp_path / "anim.gif")
    with pytest.raises(ValueError, match="image has 3 frames"):
        codec.compress(anim)
    anim.seek(1)
    anim.save(tmp_path / "frame1.aec", quality=90)  # as Pillow's JPEG writer does
    red = np.asarray(Image.open(tmp_path / "frame1.aec").convert("RGB"))[..., 0]
    assert abs(red.mean() - 100) < 10


def test_pillow_save_of_a_mode_aecodec_cannot_code_is_an_oserror(tmp_path):
    with pytest.raises(OSError, match="cannot write mode I;16 as AEC"):
        Image.new("I;16", (8, 8)).save(tmp_path / "deep.aec")


def test_damaged_pixels_are_an_error_not_an_exif_problem(codec):
    buf = io.BytesIO()
    make_image(64, 48).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[data.find(b"IDAT") + 40] ^= 0xFF  # inside the deflate stream
    with pytest.raises(OSError, match="broken data stream"):
        codec.compress(Image.open(io.BytesIO(bytes(data))), 50)


@pytest.mark.slow
def test_a_phone_jpeg_with_a_preview_beside_the_photo_is_coded_as_the_photo(folder, codec):
    photo, preview = Image.new("RGB", (32, 16), (200, 0, 0)), Image.new("RGB", (8, 4), (0, 200, 0))
    photo.save("phone.jpg", "MPO", save_all=True, append_images=[preview])
    assert Image.open("phone.jpg").n_frames == 2  # what Pillow sees: two frames
    assert main(["compress", "phone.jpg", "--quiet"]) == 0
    back = Image.open("phone.aec").convert("RGB")
    assert back.size == (32, 16) and abs(np.asarray(back)[..., 0].mean() - 200) < 10
    assert codec.compress(Image.open("phone.jpg"), 50)


@pytest.mark.slow
def test_an_exif_block_pillow_cannot_parse_does_not_stop_coding(folder, codec):
    make_image(16, 16).save("odd.png", exif=b"not-a-tiff-block")
    back = codec.decompress(codec.compress(Image.open("odd.png"), 50))  # coded as it is, the block kept
    assert back.size == (16, 16) and back.info["exif"].endswith(b"not-a-tiff-block")
    assert main(["compress", "odd.png", "--quiet"]) == 0
    assert main(["decompress", "odd.aec", "-o", "odd.jpg", "--quiet"]) == 0  # JPEG copies it
    assert main(["decompress", "odd.aec", "-o", "odd.tif", "--quiet"]) == 1  # TIFF must parse it: one line
    assert not Path("odd.tif").exists()
    with pytest.raises(AecodecError, match="cannot write TIFF"):  # asked from the file, before any decoding
        check_writable("odd.tif", "RGB", back.info)
    check_writable("odd.webp", "RGB", back.info)


# --- metadata through the command line ---

@pytest.mark.slow
def test_icc_and_exif_survive_compress_and_decompress(folder):
    exif = Image.Exif()
    exif[0x010E] = "kept"
    make_image(40, 40).save("m.png", icc_profile=_icc(), exif=exif)
    assert main(["compress", "m.png", "--quiet"]) == 0
    assert read_header((folder / "m.aec").read_bytes()).metadata
    assert main(["decompress", "m.aec", "-o", "m2.png", "--quiet"]) == 0
    out = Image.open("m2.png")
    assert out.info["icc_profile"] == _icc() and out.getexif()[0x010E] == "kept"
    assert main(["compress", "m.png", "-o", "s.aec", "--strip", "--quiet"]) == 0
    assert not read_header((folder / "s.aec").read_bytes()).metadata


def test_api_applies_exif_orientation(codec):
    image = make_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a viewer shows it 20x40
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    assert codec.decompress(codec.compress(Image.open(buf), 50)).size == (20, 40)


def test_16_bit_and_animated_inputs_are_refused(folder, capsys):
    Image.new("I;16", (8, 8), 1000).save("deep.png")
    Path("deep.ppm").write_bytes(b"P6 4 4 65535\n" + bytes(4 * 4 * 6))  # Pillow opens it as 8-bit RGB
    frames = [Image.new("RGB", (8, 8), (i * 50, 0, 0)) for i in range(3)]
    frames[0].save("anim.gif", save_all=True, append_images=frames[1:])
    assert main(["compress", "deep.png", "deep.ppm", "anim.gif"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["aecodec: error: deep.png: I;16 image with 16-bit or float samples: aecodec codes 8-bit images "
                   "(convert it to 8 bits first)",
                   "aecodec: error: deep.ppm: RGB image with 16-bit or float samples: aecodec codes 8-bit images "
                   "(convert it to 8 bits first)",
                   "aecodec: error: anim.gif: image has 3 frames: aecodec codes still images (extract one first)"]


def test_encoders_refuse_an_image_extension_as_their_output(folder, capsys):
    with pytest.raises(SystemExit) as e:
        main(["vae", "encode", "a.png", "-o", "out.png"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("-o out.png: vae encode writes latent .safetensors files, not .png")
    assert not Path("out.png").exists()


@pytest.mark.slow
def test_compress_to_a_psnr_decodes_its_own_files_of_any_size(codec, monkeypatch):
    monkeypatch.setattr(api, "MAX_DECODE_PIXELS", 100)  # a program's own limit is for files from outside
    data, quality = codec.compress_to(make_image(24, 16), min_psnr=25)
    assert read_header(data).quality == quality


def test_metadata_over_the_format_limit_is_an_aecodec_error(codec):
    image = make_image(8, 8)
    image.info["icc_profile"] = bytes(16 << 20)
    with pytest.raises(AecodecError, match="over the limit .*strip=True"):
        codec.compress(image, 50)


# --- pipes and paths ---

@pytest.mark.slow
def test_pipe_round_trip_through_the_installed_command(folder):
    src = (folder / "a.png").read_bytes()
    enc = subprocess.run([sys.executable, "-m", "codec.cli", "compress", "-", "-o", "-", "--quiet"], input=src,
                         capture_output=True, cwd=ROOT, timeout=300)
    assert enc.returncode == 0 and enc.stdout[:4] == b"\x89AEC", enc.stderr
    dec = subprocess.run([sys.executable, "-m", "codec.cli", "decompress", "-", "-o", "-"], input=enc.stdout,
                         capture_output=True, cwd=ROOT, timeout=300)
    assert dec.returncode == 0 and Image.open(io.BytesIO(dec.stdout)).size == (50, 30)
    assert b"-> -" in dec.stderr  # the result line goes to stderr, the image to stdout


def test_outputs_are_checked_before_any_work(folder, monkeypatch, capsys):
    (folder / "a.aec").write_bytes(b"already here")
    monkeypatch.setattr(cli, "_codec", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["compress", "a.png"]) == 1
    assert "a.png: output a.aec exists" in capsys.readouterr().err
    assert main(["decompress", "a.png"]) == 1
    assert "not an .aec file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # usage error: before anything
        main(["decompress", "a.aec", "-o", "x.gif2"])


@pytest.mark.slow
def test_special_files_and_links_are_written_in_place(folder):
    os.symlink("/dev/null", "null.aec")
    assert main(["compress", "a.png", "-o", "null.aec", "--quiet"]) == 0
    assert os.path.islink("null.aec")  # not replaced by a regular file
    (folder / "real.aec").write_bytes(b"")
    os.symlink("real.aec", "link.aec")
    assert main(["compress", "a.png", "-o", "link.aec", "--force", "--quiet"]) == 0
    assert os.path.islink("link.aec") and (folder / "real.aec").read_bytes()[:4] == b"\x89AEC"
    assert main(["decompress", "real.aec", "-o", "/dev/null", "--quiet"]) == 0  # PNG, as to "-": a decode timed
    with pytest.raises(SystemExit):  # a regular file without an extension names no format
        main(["decompress", "real.aec", "-o", "noext"])


@pytest.mark.slow
def test_trailing_slash_is_a_folder_and_extension_picks_the_format(folder):
    assert main(["compress", "a.png", "-o", "new/", "--quiet"]) == 0
    assert (folder / "new" / "a.aec").is_file()
    assert main(["decompress", "new/a.aec", "-o", "a.jpg", "--quiet"]) == 0
    assert Image.open("a.jpg").format == "JPEG"
    assert main(["decompress", "new/a.aec", "-o", "a.webp", "--quiet"]) == 0
    assert Image.open("a.webp").format == "WEBP"


@pytest.mark.slow
def test_result_line_per_file(folder, capsys):
    assert main(["compress", "a.png", "-v"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("a.png -> a.aec: ") and " bytes, " in err and " bpp" in err and "PSNR" in err
    assert main(["decompress", "a.aec", "-o", "b.png", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_target_size_and_psnr(codec):
    image = make_image(96, 64, seed=2)
    sizes = {q: len(codec.compress(image, q)) for q in (1, 100)}
    target = (sizes[1] + sizes[100]) // 2
    data, q = codec.compress_to(image, max_bytes=target)
    assert len(data) <= target < len(codec.compress(image, q + 1))
    lo, hi = (psnr(image, codec.decompress(codec.compress(image, q))) for q in (1, 100))
    goal = (lo + hi) / 2
    data, q = codec.compress_to(image, min_psnr=goal)
    assert psnr(image, codec.decompress(data)) >= goal > psnr(image, codec.decompress(codec.compress(image, q - 1)))
    with pytest.raises(Exception, match="exactly one"):
        Codec.compress_to(codec, image)
