"""What a non-editable install carries: every registered model's weights, the version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import codec
from codec import registry
from codec.cli import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_agrees_with_pyproject(capsys):
    assert codec.__version__ == PYPROJECT["project"]["version"]
    with pytest.raises(SystemExit) as e:
        from codec.cli import build_parser

        build_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"aecodec {codec.__version__}")


def test_every_built_in_model_ships_its_weights():
    shipped = PYPROJECT["tool"]["setuptools"]["data-files"]["share/aecodec/weights"]
    for entry in registry.MODELS.values():
        assert entry.weights_file is None or f"weights/{entry.weights_file}" in shipped


def test_every_released_weights_file_ships():
    """Files outlive releases: an installed aecodec carries every release's weights since 0.15.0."""
    shipped = PYPROJECT["tool"]["setuptools"]["data-files"]["share/aecodec/weights"]
    for _, name in registry.RELEASED_WEIGHTS.values():
        assert f"weights/{name}" in shipped


def test_shipped_weights_files_are_at_most_20_mb_and_the_wide_model_30():
    """One download for every quality (issue 13's bound); the hyperprior lives inside the cc file. The
    space-channel model's wider latent (320 channels) is held to 30 MB, its encoder-only parts int8."""
    for entry in registry.MODELS.values():
        if entry.weights_file:
            bound = 30_000_000 if entry.short == "sc" else 20_000_000
            assert (ROOT / "weights" / entry.weights_file).stat().st_size <= bound, entry.weights_file


@pytest.mark.slow
def test_wheel_carries_every_weights_file(tmp_path):
    """Build the wheel as pip would (no network: the installed setuptools) and look inside."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "bench-out", "build",
                                                             "*.egg-info", "__pycache__", "tests", "docs"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("aecodec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for entry in [e for e in registry.MODELS.values() if e.weights_file]:
        assert any(n.endswith(f"data/data/share/aecodec/weights/{entry.weights_file}") for n in names)
    assert "codec/registry.py" in names and "codec/format/entropy.py" in names
