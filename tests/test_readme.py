"""The README is a spec: its Python examples run, and its "Where things live" table names files
that exist and covers every package that installs.

A Python block runs offline against the shipped checkpoints, in a fresh namespace and a scratch
working directory where ``checkpoints/`` is the repository's. A block is skipped, with the reason
shown, when
* it names a Hub id (a string ``owner/name`` whose first part is no folder of the repository):
  it needs the network;
* it uses CUDA and this machine has none;
* it says so itself, with a line ``# readme-test: skip (reason)``.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP_MARKER = "# readme-test: skip"


# --------------------------------------------------------------------------------------------
# Python blocks
# --------------------------------------------------------------------------------------------


def python_blocks() -> list[tuple[str, str]]:
    """``(id, code)`` of every fenced Python block, the id naming its section and line."""
    text = README.read_text()
    blocks, heading = [], "top"
    for match in re.finditer(r"^(#{2,6} [^\n]*)$|^```python\n(.*?)^```", text, re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
            continue
        line = text.count("\n", 0, match.start()) + 1
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
        blocks.append((f"{slug}-line{line}", match.group(2)))
    return blocks


def string_literals(code: str) -> list[str]:
    """The string constants of ``code`` (comments are not code)."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    values = []
    for token in tokens:
        if token.type == tokenize.STRING:
            try:
                values.append(str(eval(token.string, {})))  # a literal, nothing else
            except Exception:  # noqa: BLE001 - an f-string with names: not a path
                continue
    return values


def skip_reason(code: str) -> str | None:
    """Why this block cannot run here, or None."""
    for line in code.splitlines():
        if line.strip().startswith(SKIP_MARKER):
            return line.strip()[len(SKIP_MARKER):].strip(" :()") or "marked in the README"
    for value in string_literals(code):
        if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not (ROOT / value.split("/")[0]).exists():
            return f"needs the Hugging Face Hub ({value!r})"
    uses_cuda = any("cuda" in v for v in string_literals(code)) or ".cuda(" in code
    if uses_cuda and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return None


BLOCKS = python_blocks()


def test_the_readme_has_python_examples_and_most_run_here():
    assert len(BLOCKS) >= 2
    assert sum(skip_reason(code) is None for _, code in BLOCKS) >= 2


def test_skip_rules_tell_hub_ids_from_local_paths():
    assert skip_reason('m = load("checkpoints/imgtx-photos32-small")') is None
    assert "Hub" in skip_reason('m = load("org/name")')
    assert skip_reason('x = 1  # or "org/name"') is None
    assert skip_reason(f"{SKIP_MARKER} (writes to the Hub)\npush()") == "writes to the Hub"


@pytest.mark.slow
@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_a_readme_python_block_runs(code, tmp_path, monkeypatch):
    reason = skip_reason(code)
    if reason:
        pytest.skip(reason)
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)  # raises if the example is broken
    assert len(namespace) > 2  # it defined something


# --------------------------------------------------------------------------------------------
# "Where things live"
# --------------------------------------------------------------------------------------------


def table_paths() -> list[str]:
    """Every file or folder the table's file column names, from the repository root. A bare
    name (``ema.py``) lies in the folder of the path before it in the same cell."""
    text = README.read_text()
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    paths = []
    for row in section.splitlines():
        cells = row.split("|")
        if len(cells) < 4 or set(cells[2].strip()) <= set("-") or cells[2].strip() == "file":
            continue
        folder = ""
        for token in re.findall(r"`([^`]+)`", cells[2]):
            if "/" in token:
                paths.append(token)
                folder = token if token.endswith("/") else token.rsplit("/", 1)[0] + "/"
            elif re.fullmatch(r"[\w.-]+\.py", token):
                paths.append(folder + token)
    return paths


def installed_package_folders() -> set[str]:
    """The folder of every package ``pyproject.toml`` installs (``imgtx.gan`` -> ``gan/``)."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = setup.get("package-dir", {})
    folders = set()
    for package in setup["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in roots:
                folders.add("/".join([roots[prefix], *parts[cut:]]) + "/")
                break
    return folders


def test_every_path_in_the_table_exists():
    paths = table_paths()
    assert len(paths) >= 20
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"README 'Where things live' names missing paths: {missing}"


def test_the_table_covers_every_installed_package():
    named = {path if path.endswith("/") else path.rsplit("/", 1)[0] + "/"
             for path in table_paths()}
    uncovered = sorted(folder for folder in installed_package_folders()
                       if folder != "imgtx/" and folder not in named)
    assert not uncovered, f"no row of README 'Where things live' names {uncovered}"
