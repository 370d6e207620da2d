"""Test helper: lay out a saved model as an entry of the Hugging Face Hub cache.

The cache layout (``huggingface_hub`` "Manage the cache" guide): ``models--org--name/refs/<rev>``
holds a 40-hex commit id, and ``models--org--name/snapshots/<commit>/`` holds the files. With
``HF_HUB_OFFLINE=1``, ``Model.from_pretrained("org/name", cache_dir=...)`` then loads it without
network.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path


def write_offline_hub_cache(model_dir: str | Path, repo_id: str, cache_dir: str | Path, *,
                            revision: str = "main", commit: str | None = None) -> str:
    """Lay out ``model_dir``'s files as Hub cache entry ``repo_id`` under ``cache_dir``.

    Writes ``models--org--name/refs/<revision>`` (the commit id) and
    ``models--org--name/snapshots/<commit>/<files>``, so that with ``HF_HUB_OFFLINE=1``
    ``Model.from_pretrained(repo_id, cache_dir=cache_dir)`` loads it without network. The commit
    defaults to a SHA-1 of the files, so the same files give the same id. Returns the commit id.
    """
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    if not files:
        raise FileNotFoundError(f"{model_dir} has no files to put in the cache")
    if commit is None:
        digest = hashlib.sha1()
        for path in files:
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(chunk)
        commit = digest.hexdigest()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"commit must be 40 lowercase hex digits, got {commit!r}")
    repo_folder = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, snapshot / path.name)
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / revision).write_text(commit)  # no newline: the Hub reads it verbatim
    return commit
