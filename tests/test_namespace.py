"""Spec: imgtx installs as one namespace (imgtx, imgtx.gan, imgtx.sr, imgtx.eval) and nothing named
``eval``, ``sr`` or ``gan`` reaches site-packages, so a research folder's own ``eval.py``,
``sr/`` or ``gan.py`` neither breaks imgtx nor is shadowed by it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def research_folder(tmp_path: Path) -> Path:
    """A folder like a user's: its own eval.py, sr/ package and gan.py."""
    (tmp_path / "eval.py").write_text("WHO = 'the user'\n")
    (tmp_path / "sr").mkdir()
    (tmp_path / "sr" / "__init__.py").write_text("WHO = 'the user'\n")
    (tmp_path / "gan.py").write_text("WHO = 'the user'\n")
    return tmp_path


def test_imgtx_subpackages_import_beside_a_users_eval_sr_and_gan(research_folder):
    result = run_python(
        "import eval, sr, gan\n"
        "import imgtx.eval, imgtx.sr, imgtx.gan\n"
        "import imgtx.eval.bits_per_dim, imgtx.sr.model, imgtx.gan.transgan\n"
        "assert eval.WHO == sr.WHO == gan.WHO == 'the user'\n"
        "print(imgtx.eval.__name__, imgtx.sr.__name__, imgtx.gan.__name__)\n",
        research_folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imgtx.eval", "imgtx.sr", "imgtx.gan"]


@pytest.mark.parametrize("args", [["--help"], ["sr", "--help"], ["gan", "--help"]])
def test_cli_help_works_beside_a_users_eval_sr_and_gan(research_folder, args):
    result = subprocess.run([sys.executable, "-m", "imgtx.cli", *args], cwd=research_folder,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


@pytest.mark.parametrize("name", ["eval", "sr", "gan"])
def test_nothing_top_level_named_eval_sr_or_gan_is_installed(tmp_path, name):
    result = run_python(f"import {name}", tmp_path)
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.slow
def test_readme_python_example_runs_beside_a_users_eval_sr_and_gan(research_folder):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    checkpoint = ROOT / "checkpoints" / "imgtx-photos32-small"
    if not checkpoint.exists():
        pytest.skip("the shipped checkpoint is not in this checkout")
    code = code.replace('"checkpoints/imgtx-photos32-small"', repr(str(checkpoint)))
    result = run_python(code, research_folder)
    assert result.returncode == 0, result.stderr
    assert "bits/dim" in result.stdout
    assert (research_folder / "samples.png").stat().st_size > 0
