"""The benchmark pipeline on small generated images (no ../shared data, no trained weights needed)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec import bench

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "aecodec-cc.safetensors"
CURVE_KEYS = {"q", "bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}


def make_image(w: int, h: int, seed: int) -> Image.Image:
    """Gradients plus noise: compressible, but not trivially."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    make_image(64, 48, 0).save(d / "a.png")
    make_image(48, 64, 1).save(d / "b.png")
    make_image(176, 168, 2).save(d / "c.png")  # big enough for 5-scale MS-SSIM
    (d / "notes.txt").write_text("not an image")
    return d


class FakeCodec:
    """Quantises pixels with step (101 - q) and zlib-compresses: a codec with a real RD trade-off."""

    key = "fake"
    label = "Fake"
    qualities = (20, 60, 95)
    quick = (60,)

    def encode(self, image: Image.Image, quality: int) -> bytes:
        step = 101 - quality
        a = np.asarray(image).astype(np.int32) // step
        head = np.array([image.width, image.height, step], dtype=np.int32).tobytes()
        return head + zlib.compress(a.astype(np.uint8).tobytes(), 9)

    def decode(self, data: bytes) -> Image.Image:
        w, h, step = np.frombuffer(data[:12], dtype=np.int32)
        a = np.frombuffer(zlib.decompress(data[12:]), dtype=np.uint8).reshape(h, w, 3).astype(np.int32)
        return Image.fromarray(np.clip(a * step + step // 2, 0, 255).astype(np.uint8))

    def description(self) -> str:
        return "test codec"


def test_psnr_and_msssim():
    a = np.asarray(make_image(176, 168, 3))
    b = a.copy()
    assert bench.psnr(a, b) == bench.PSNR_CAP
    b[..., 0] = np.where(a[..., 0] < 255, a[..., 0] + 1, 254)  # every red value off by exactly 1
    assert bench.psnr(a, b) == pytest.approx(10 * math.log10(255**2 * 3))
    assert bench.ms_ssim_rgb(a, a) == pytest.approx(1.0, abs=1e-6)
    assert 0.9 < bench.ms_ssim_rgb(a, b) < 1.0
    assert math.isnan(bench.ms_ssim_rgb(a[:160], b[:160]))  # too small for 5 scales


def test_fake_codec_pipeline_writes_all_outputs(image_dir, tmp_path):
    codec, jpeg = FakeCodec(), bench.pillow_codecs()["jpeg420"]
    qualities = {"fake": codec.qualities, "jpeg420": jpeg.quick}
    paths = bench.list_images(image_dir)
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    rows = bench.sweep([codec, jpeg], paths, qualities, crop=None)
    assert len(rows) == 3 * (3 + 4)
    r = rows[0]
    assert (r.codec, r.image, r.width, r.height) == ("fake", "a.png", 64, 48)
    assert r.bpp == pytest.approx(8 * r.bytes / (64 * 48))
    assert r.encode_s > 0 and r.decode_s > 0 and math.isnan(r.ms_ssim_rgb)

    res = bench.average(rows, "fake", codec.qualities)
    assert set(res) == CURVE_KEYS and all(len(v) == 3 for v in res.values())
    assert res["bpp"][0] < res["bpp"][1] < res["bpp"][2]  # more quality, more bits
    assert res["psnr-rgb"][0] < res["psnr-rgb"][2]
    c_rows = [x for x in rows if x.codec == "fake" and x.quality == 20 and x.image == "c.png"]
    assert res["ms-ssim-rgb"][0] == pytest.approx(c_rows[0].ms_ssim_rgb)  # only c.png has MS-SSIM

    bench.write_json(tmp_path / "fake.json", "fake", "test codec", res)
    data = json.loads((tmp_path / "fake.json").read_text())
    assert data["name"] == "fake" and data["description"] == "test codec"
    assert set(data["results"]) == CURVE_KEYS

    bench.write_csv(tmp_path / "per_image.csv", rows)
    with open(tmp_path / "per_image.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert set(table[0]) == {"codec", "quality", "image", "width", "height", "bytes", "bpp", "psnr_rgb",
                             "ms_ssim_rgb", "encode_s", "decode_s"}
    assert table[0]["ms_ssim_rgb"] == ""  # NaN for a small image is written as empty


@pytest.mark.slow
def test_cli_quick_classical(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    ref = tmp_path / "published-thing.json"
    ref.write_text(json.dumps({"name": "Thing", "results": {"bpp": [0.5, 1, 2, 4], "psnr-rgb": [24, 26, 29, 33]}}))
    earlier = tmp_path / "webp.json"  # an earlier run's curve: a reference, not this run's WebP
    earlier.write_text(ref.read_text())
    rc = bench.main([str(image_dir), "--quick", "--codecs", "jpeg420,jpeg444,webp,avif,jpeg2000",
                     "--out", str(out), "--reference", str(ref), str(earlier)])
    assert rc == 0, capsys.readouterr().err
    for key in ("jpeg420", "jpeg444", "webp", "avif", "jpeg2000"):
        data = json.loads((out / f"{key}.json").read_text())
        assert data["name"] == key and "Pillow" in data["description"]
        res = data["results"]
        assert set(res) == CURVE_KEYS
        n = len(bench.pillow_codecs()[key].quick)
        assert all(len(v) == n for v in res.values())
        assert all(b > 0 for b in res["bpp"]) and all(10 < p < 101 for p in res["psnr-rgb"])
    summary = (out / "summary.md").read_text()
    assert "BD-rate" in summary and "| WebP |" in summary and "Thing (published)" in summary
    assert "## Against webp (reference)" in summary
    assert "python -m codec.bench" in summary and "CPU" in summary
    for png in ("rd-psnr.png", "rd-ms-ssim.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size == (800, 600)
    with open(out / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 3 * (4 + 4 + 4 + 3 + 4)
    err = capsys.readouterr().err
    assert "earlier run" not in err
    assert "aecodec bench: 3/3 images" in err  # no terminal: a line per image, so a log shows progress
    # the same --out again for JPEG alone: the other codecs' curves stay, and that is said
    assert bench.main([str(image_dir), "--quick", "--codecs", "jpeg420", "--limit", "1", "--out", str(out)]) == 0
    assert "also holds avif.json, jpeg2000.json, jpeg444.json, webp.json from an earlier run" in capsys.readouterr().err


def test_register_adds_bench_subcommand(image_dir):
    parser = argparse.ArgumentParser(prog="aecodec")
    bench.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", str(image_dir), "--quick", "--codecs", "webp", "--limit", "2",
                              "--reference", "a.json", "b.json"])
    assert args.func is bench.run
    assert args.quick and args.limit == 2 and args.reference == ["a.json", "b.json"]


@pytest.mark.parametrize(
    "argv, message, status",
    [
        (["{missing}"], "no such directory", 1),
        (["{images}/a.png"], "a.png: not a directory", 1),
        (["{empty}"], "no images", 1),
        (["{images}", "--codecs", "jpeg420,nosuch"], "unknown codec 'nosuch'", 2),
        (["{images}", "--qualities", "5,200"], "--qualities", 2),
        (["{images}", "--reference", "{missing}.json"], "cannot read reference", 1),
        (["{damaged}", "--codecs", "jpeg420"], "damaged.png: cannot read image (cannot decode image", 1),
        (["{deep}", "--codecs", "jpeg420"], "deep.png: cannot read image (I;16 image with 16-bit", 1),
    ],
)
def test_cli_errors_are_one_line(argv, message, status, image_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for name in ("damaged", "deep"):
        (tmp_path / name).mkdir()
    png = (image_dir / "a.png").read_bytes()
    (tmp_path / "damaged" / "damaged.png").write_bytes(png[: len(png) // 2])  # the PNG cut short
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep" / "deep.png")  # 16-bit grey
    subs = {"missing": str(tmp_path / "nope"), "empty": str(tmp_path / "empty"), "images": str(image_dir),
            "damaged": str(tmp_path / "damaged"), "deep": str(tmp_path / "deep")}
    argv = [a.format(**subs) for a in argv] + ["--out", str(tmp_path / "out")]
    rc = bench.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == status  # 2 for a bad argument, 1 for a bad file, as the other commands
    assert len(err.splitlines()) == 1 and "error: " in err and message in err


@pytest.mark.slow
@pytest.mark.skipif(not WEIGHTS.exists(), reason="no exported aecodec weights")
def test_quick_with_real_aecodec(tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    make_image(64, 48, 5).save(d / "tiny.png")
    out = tmp_path / "out"
    rc = bench.main([str(d), "--quick", "--codecs", "aecodec", "--qualities", "10,90", "--device", "cpu",
                     "--weights", str(WEIGHTS), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "aecodec.json").read_text())["results"]
    assert res["q"] == [10, 90] and all(b > 0 for b in res["bpp"])
    assert all(math.isfinite(p) for p in res["psnr-rgb"])
    assert (out / "jpeg420.json").exists()  # the BD anchor always runs
    assert "aecodec: cpu" in (out / "summary.md").read_text()
    # the encoder effort, as `compress --effort`: the same files the CLI would write, labelled as such
    rc = bench.main([str(d), "--quick", "--codecs", "aecodec", "--qualities", "90", "--device", "cpu",
                     "--weights", str(WEIGHTS), "--effort", "1", "--out", str(tmp_path / "e1")])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "e1" / "aecodec.json").read_text())
    assert "--effort 1" in data["description"] and "effort 1 |" in (tmp_path / "e1" / "summary.md").read_text()


def test_jpeg_xl_through_imagecodecs(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = bench.main([str(image_dir), "--quick", "--codecs", "jpegxl", "--limit", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "jpegxl.json").read_text())
    assert "libjxl" in data["description"] and "effort 7" in data["description"]
    res = data["results"]
    assert len(res["bpp"]) == len(bench.JxlCodec().quick)
    assert res["bpp"] == sorted(res["bpp"]) and res["psnr-rgb"] == sorted(res["psnr-rgb"])
    assert "| JPEG XL |" in (out / "summary.md").read_text()


def test_plot_has_a_title_and_a_distinct_style_per_curve(tmp_path, monkeypatch):
    import matplotlib.axes

    styles, titles = [], []
    real_plot, real_title = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: styles.append(
        (k["color"], k["marker"], k.get("linestyle", "-"))) or real_plot(self, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, *a, **k: titles.append(t)
                        or real_title(self, t, *a, **k))
    curves = [bench.Curve(f"c{i}", np.array([0.2, 0.5, 1.0]), np.array([25.0, 28, 31]) + i,
                          np.full(3, np.nan), i >= 6) for i in range(12)]
    bench.plot_rd(tmp_path / "rd.png", curves[:6], curves[6:], "psnr", "kodak: 24 images")
    assert titles == ["kodak: 24 images"] and len(set(styles)) == 12
