"""Every benchmark and diagnostic tool in tools/ starts and explains itself with --help (their
work needs ../shared and minutes of CPU, so it is run by hand, as each tool's docstring says)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = sorted((Path(__file__).resolve().parent.parent / "tools").glob("*.py"))


def test_tools_are_found():
    assert len(TOOLS) >= 8


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_tool_help(tool: Path):
    run = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage:")
