"""Every benchmark and diagnostic tool in tools/ starts and explains itself with --help (their
work needs ../shared and minutes of CPU, so it is run by hand, as each tool's docstring says)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = sorted((Path(__file__).resolve().parent.parent / "tools").glob("*.py"))


def test_tools_are_found():
    assert len(TOOLS) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_tool_help(tool: Path):
    run = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage:")


def test_rd_gap_compares_only_where_both_curves_were_measured():
    sys.path.insert(0, str(TOOLS[0].parent))
    from rd_gap import gaps

    ours = (np.array([0.1, 0.2, 0.8]), np.array([25.0, 27.0, 31.0]))
    webp = (np.array([0.4, 0.8, 1.6]), np.array([30.0, 32.0, 36.0]))  # starts at 0.4 bpp
    rows = gaps(ours, {"webp": webp}, rates=(0.2, 0.4, 0.8, 1.2))
    assert rows[0] == (0.2, 27.0, {"webp": None})  # below WebP's first point: no clamped guess
    assert rows[1][1] == pytest.approx(29.0) and rows[1][2]["webp"] == pytest.approx(-1.0)  # halfway in log-rate
    assert rows[2] == (0.8, 31.0, {"webp": -1.0})
    assert rows[3] == (1.2, None, {"webp": None})  # past our last point


@pytest.mark.slow
def test_vae_report_writes_the_pictures_it_is_asked_for(tmp_path: Path):
    from PIL import Image

    sys.path.insert(0, str(TOOLS[0].parent))
    from vae_report import main

    rng = np.random.default_rng(0)
    for name in ("kodim03", "other"):
        Image.fromarray(rng.integers(0, 256, (176, 192, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    pictures = tmp_path / "pictures"
    assert main([str(tmp_path), "--device", "cpu", "--crop", "176", "--pictures", str(pictures)]) == 0
    assert [p.name for p in pictures.iterdir()] == ["kodim03-vae.jpg"]  # only the names asked for
    assert Image.open(pictures / "kodim03-vae.jpg").size == (192, 88)  # both, side by side, at half size


def test_effort_tune_measures_a_schedule_and_leaves_the_defaults(tmp_path: Path, capsys):
    from PIL import Image

    from codec.models import refine

    sys.path.insert(0, str(TOOLS[0].parent))
    from effort_tune import main

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    defaults = (refine.LEARNING_RATE, refine.TOP_BOOST, refine.SCHEDULES, refine.REFRESH)
    assert main(["--val", str(tmp_path), "--first", "0", "--images", "1", "--crop", "64", "--qualities", "90",
                 "--steps", "5", "--refresh", "2", "--odds", "1"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("q 90: cost ") and float(line.split()[3].rstrip("%")) >= 0  # never costlier
    assert (refine.LEARNING_RATE, refine.TOP_BOOST, refine.SCHEDULES, refine.REFRESH) == defaults
