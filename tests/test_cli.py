"""The command line: outputs next to inputs or at -o, no clobbering without --force, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from codec.cli import main
from conftest import make_image


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image(50, 30).save("a.png")
    make_image(20, 20, "L").save("b.jpg")
    return tmp_path


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


def test_bad_inputs_fail_cleanly_and_leave_nothing(folder, capsys):
    (folder / "junk.aec").write_bytes(b"\x89AEC\x01junk")
    (folder / "text.png").write_text("not an image")
    assert main(["decompress", "junk.aec", "-o", "j.png"]) == 1
    assert main(["compress", "text.png", "missing.png"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("aecodec: error:") for line in err), err
    assert len(err) == 3
    leftovers = {p.name for p in folder.iterdir()} - {"a.png", "b.jpg", "junk.aec", "text.png"}
    assert leftovers == set()


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


def test_no_traceback_from_the_installed_command(folder):
    (folder / "bad.aec").write_bytes(b"nope")
    r = subprocess.run([sys.executable, "-m", "codec.cli", "decompress", "bad.aec"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "aecodec: error: bad.aec: not an .aec file (wrong magic bytes)"
