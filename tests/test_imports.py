"""What a call pays for at start-up: CompressAI's entropy models without its point-cloud half
(codec/models/lean_imports.py), torch only when a model is needed, and no warnings from imports."""

from __future__ import annotations

import pytest

import subprocess
import sys


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_model_loads_without_compressais_point_cloud_half_and_without_warnings():
    r = _python("import sys; from codec.api import Codec; Codec(device='cpu'); "
                "print(sorted(m for m in ('torch_geometric', 'torch._dynamo', 'compressai.datasets', "
                "'scipy.stats._stats_py') if m in sys.modules))")
    assert r.returncode == 0, r.stderr  # -W error: an import warning would fail here
    assert r.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_rest_of_compressai_and_scipy_still_work_in_the_same_process():
    r = subprocess.run([sys.executable, "-c", """
import codec.models.hyperprior, compressai, scipy
from codec.models.lean_imports import is_deferred
assert is_deferred(compressai) and is_deferred(scipy.stats)
assert compressai.get_entropy_coder() == "ans"  # answered without the rest
assert abs(scipy.stats.norm.ppf(0.975) - 1.959964) < 1e-6 and not is_deferred(scipy.stats)
from compressai.zoo import bmshj2018_factorized  # noqa: F401
from compressai.datasets import ImageFolder  # noqa: F401
from compressai.models import ScaleHyperprior  # noqa: F401
assert callable(compressai.set_entropy_coder) and not is_deferred(compressai)  # the real __init__ ran
"""], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_compressai_imported_first_is_used_as_it_is():
    code = ("import compressai, codec.models.hyperprior; from codec.models.lean_imports import is_deferred; "
            "assert not is_deferred(compressai)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_the_command_line_answers_without_torch():
    code = ("import sys\nfrom codec.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    assert 'torch' not in sys.modules, 'torch was imported'")
    for args in (["--version"], ["--help"], ["info", "--help"], ["compress", "--help"], ["train", "--help"],
                 ["train", "fit", "--data", "x"], ["train", "export"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
        assert "torch was imported" not in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.returncode in (0, 2), (args, r.stderr)  # help, or a usage error
