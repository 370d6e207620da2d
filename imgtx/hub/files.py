"""Finding a checkpoint's files: a local ``save_pretrained`` directory or a Hub repo (its cache).

Safety rules, enforced here so that every loader gets them:

- Weights are read from ``model.safetensors`` only. A pickle checkpoint (``pytorch_model.bin``)
  is never unpickled, because unpickling can run arbitrary code (PyTorch's ``torch.load``
  documentation, "weights_only"); the error prints a one-line command that converts it.
- A Hub id or revision with ``..`` components, and any cached file whose normalised path lies
  outside the Hub cache, are refused (:class:`UnsafePathError`).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from imgtx.hub.errors import CheckpointNotFoundError, PickleCheckpointError, UnsafePathError

__all__ = ["CONFIG_FILE", "PICKLE_WEIGHTS_FILE", "WEIGHTS_FILE", "config_file", "find_weights",
           "hub_options", "pickle_conversion_command"]

CONFIG_FILE = constants.CONFIG_NAME  # "config.json"
WEIGHTS_FILE = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
PICKLE_WEIGHTS_FILE = constants.PYTORCH_WEIGHTS_NAME  # "pytorch_model.bin"

# One shell line; ``weights_only=True`` restricts the unpickler to tensors and plain containers.
_CONVERT = ("import sys, torch; from safetensors.torch import save_file; d = sys.argv[1]; "
            "state = torch.load(d + '/pytorch_model.bin', map_location='cpu', weights_only=True); "
            "save_file({k: v.clone().contiguous() for k, v in state.items()}, "
            "d + '/model.safetensors')")


def pickle_conversion_command(folder: str | Path) -> str:
    """A shell line writing ``folder/model.safetensors`` from ``folder/pytorch_model.bin``."""
    return f"python -c {shlex.quote(_CONVERT)} {shlex.quote(str(folder))}"


def _has_parent_parts(text: str) -> bool:
    return ".." in PurePosixPath(text.replace("\\", "/")).parts


def hub_options(model_id: str, **options: Any) -> dict[str, Any] | None:
    """``hf_hub_download`` options for ``model_id``, or None when it is a local directory.

    Raises :class:`UnsafePathError` for a non-directory ``model_id`` or a ``revision`` with
    ``..`` components: such a name would address files outside the Hub cache.
    """
    if Path(model_id).is_dir():
        return None
    if _has_parent_parts(model_id):
        raise UnsafePathError(
            f"{model_id!r} is not a local directory, and as a Hub id its '..' components would "
            "point outside the Hub cache; pass an existing directory or an 'org/name' id.")
    revision = options.get("revision")
    if revision is not None and (_has_parent_parts(revision) or revision.startswith("/")):
        raise UnsafePathError(f"revision {revision!r} has '..' or '/' components that would "
                              "point outside the Hub cache; pass a branch, tag or commit id.")
    return options


def _inside_cache(path: str, repo_id: str, hub: dict[str, Any]) -> str:
    """``path`` if its normalised form lies inside the Hub cache, else :class:`UnsafePathError`."""
    cache = os.path.abspath(hub.get("cache_dir") or constants.HF_HUB_CACHE)
    if os.path.commonpath([cache, os.path.abspath(path)]) != cache:
        raise UnsafePathError(
            f"the Hub cache entry of {repo_id!r} points outside the cache ({path}); its refs "
            f"file may have been tampered with: delete {cache}/models--"
            f"{repo_id.replace('/', '--')} and download it again.")
    return path


def _hub_file(repo_id: str, filename: str, hub: dict[str, Any],
              missing_ok: bool = False) -> str | None:
    """Download (or find in the cache) one file, turning Hub errors into actionable ones.

    With ``missing_ok`` a file that is absent (from the repo, or from the cache when offline)
    gives None instead of an error.
    """
    try:
        return _inside_cache(hf_hub_download(repo_id=repo_id, filename=filename, **hub),
                             repo_id, hub)
    except HFValidationError as e:
        raise CheckpointNotFoundError(
            f"{repo_id!r} is neither an existing local directory nor a valid Hub repo id "
            "('org/name'); check the path.") from e
    except RepositoryNotFoundError as e:
        raise CheckpointNotFoundError(
            f"Hub repo {repo_id!r} does not exist, or is private/gated and no valid token was "
            "given (log in with `hf auth login` or pass token=...).") from e
    except LocalEntryNotFoundError as e:
        if missing_ok:
            return None
        offline = constants.HF_HUB_OFFLINE or hub.get("local_files_only")
        why = ("Hub access is off (HF_HUB_OFFLINE=1 or local_files_only=True)" if offline
               else "the Hub could not be reached")
        raise CheckpointNotFoundError(
            f"{filename} of Hub repo {repo_id!r} is not in the local Hub cache "
            f"({hub.get('cache_dir') or constants.HF_HUB_CACHE}) and {why}; nor is {repo_id!r} a "
            "local directory. Download it once with network access, or pass the path of a "
            "directory written by save_pretrained.") from e
    except EntryNotFoundError as e:
        if missing_ok:
            return None
        raise CheckpointNotFoundError(
            f"Hub repo {repo_id!r} has no {filename}; was it written by imgtx save_pretrained?"
        ) from e
    except ValueError as e:  # huggingface_hub's own guard: "Invalid pointer path ..."
        if "pointer path" not in str(e):
            raise
        raise UnsafePathError(
            f"the Hub cache entry of {repo_id!r} points outside the cache (its refs file may "
            "have been tampered with); delete it and download it again.") from e


def _hub_has_file(repo_id: str, filename: str, hub: dict[str, Any]) -> bool:
    """Whether the repo has ``filename``, without downloading it."""
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=hub.get("cache_dir"),
                                    revision=hub.get("revision"))
    if isinstance(cached, str):
        return True
    if constants.HF_HUB_OFFLINE or hub.get("local_files_only"):
        return False
    try:
        from huggingface_hub import HfApi
        return HfApi(token=hub.get("token")).file_exists(repo_id, filename,
                                                          revision=hub.get("revision"))
    except Exception:  # unreachable Hub: the answer only words an error
        return False


def config_file(model_id: str, hub: dict[str, Any] | None, model_name: str) -> Path:
    """Path of ``config.json`` of a local directory (``hub`` None) or a Hub repo."""
    if hub is None:
        path = Path(model_id) / CONFIG_FILE
        if not path.is_file():
            raise CheckpointNotFoundError(f"{model_id} has no {CONFIG_FILE}; pass config=... to "
                                          f"say how to build the {model_name}.")
        return path
    return Path(_hub_file(model_id, CONFIG_FILE, hub))  # type: ignore[arg-type]


def _pickle_refusal(where: str, folder: str, first: str = "") -> PickleCheckpointError:
    return PickleCheckpointError(
        f"{where} holds only a pickle checkpoint ({PICKLE_WEIGHTS_FILE}); imgtx never unpickles "
        "(allow_pickle=True no longer changes that), because unpickling can run arbitrary code. "
        f"If you trust the file, {first}convert it once to {WEIGHTS_FILE}: "
        + pickle_conversion_command(folder))


def find_weights(model_id: str, hub: dict[str, Any] | None) -> str:
    """Path of ``model.safetensors``; ``hub`` is None for a local directory.

    Raises :class:`PickleCheckpointError` (with the conversion command) when only
    ``pytorch_model.bin`` exists, :class:`CheckpointNotFoundError` when neither does.
    """
    if hub is None:
        folder = Path(model_id)
        if (folder / WEIGHTS_FILE).is_file():
            return str(folder / WEIGHTS_FILE)
        if (folder / PICKLE_WEIGHTS_FILE).is_file():
            raise _pickle_refusal(str(folder), str(folder))
        raise CheckpointNotFoundError(
            f"{folder} has no {WEIGHTS_FILE} (found: {sorted(p.name for p in folder.iterdir())}); "
            "pass a directory written by save_pretrained.")
    path = _hub_file(model_id, WEIGHTS_FILE, hub, missing_ok=True)
    if path is not None:
        return path
    if _hub_has_file(model_id, PICKLE_WEIGHTS_FILE, hub):
        local = model_id.rsplit("/", 1)[-1]
        first = f"download it (hf download {model_id} --local-dir {local}) and "
        raise _pickle_refusal(f"Hub repo {model_id!r}", local, first)
    return _hub_file(model_id, WEIGHTS_FILE, hub)  # type: ignore[return-value]  (raises)
