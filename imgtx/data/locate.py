"""Finding the data a spec names through datasets: a Hub data set or a ``save_to_disk`` folder.

Each loader returns a datasets ``Dataset`` (or ``IterableDataset`` when streaming) whose images
are still encoded; :func:`imgtx.data.loaders.from_hf_dataset` wraps it. Image folders are indexed
by :mod:`imgtx.data.folder` instead.

Splits: ``"test"`` falls back to ``"validation"``/``"valid"``/``"val"`` when a source has no test
split, and ``"validation"``/``"valid"``/``"val"`` fall back to each other, then to ``"test"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgtx.data.decode import ImageDataError

__all__ = ["is_saved_dataset", "load_from_disk", "load_hub", "split_candidates"]

def split_candidates(split: str) -> list[str]:
    """Split names to try, in order, for a requested split."""
    if split in ("test", "testing"):
        return [split, "validation", "valid", "val"]
    if split in ("validation", "valid", "val"):
        return [split] + [s for s in ("validation", "valid", "val") if s != split] + ["test"]
    return [split]


def load_hub(repo: str, split: str, streaming: bool) -> Any:
    """``datasets.load_dataset(repo, split=...)``, trying the split's fallbacks in order."""
    import datasets

    candidates = split_candidates(split)
    for candidate in candidates:
        try:
            return datasets.load_dataset(repo, split=candidate, streaming=streaming)
        except ValueError as error:
            if "Unknown split" not in str(error):
                raise _hub_error(repo, error) from error
            unknown_split = error
        except Exception as error:  # datasets raises many types for a missing or unreachable repo
            raise _hub_error(repo, error) from error
    raise ImageDataError(f"{repo!r} has no split {split!r} (tried {candidates}): {unknown_split}")


def _hub_error(repo: str, error: Exception) -> ImageDataError:
    import datasets

    local_hint = f"; there is no local folder {repo!r} either" if "/" in repo else ""
    reason = f"{type(error).__name__}: {error}"
    if datasets.config.HF_HUB_OFFLINE:
        return ImageDataError(
            f"Hub dataset {repo!r} is not in the local cache and HF_HUB_OFFLINE is set, so it "
            f"cannot be downloaded{local_hint}. Download it once with network access, or point "
            f"the spec at a local folder. ({reason})"
        )
    return ImageDataError(f"could not load Hub dataset {repo!r}{local_hint}: {reason}")


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or its DatasetDict form."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def load_from_disk(path: Path, split: str, streaming: bool) -> Any:
    """``datasets.load_from_disk``, picking ``split`` (or a fallback) from a DatasetDict."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        chosen = next((s for s in split_candidates(split) if s in loaded), None)
        if chosen is None:
            raise ImageDataError(
                f"saved dataset {str(path)!r} has splits {list(loaded)}, none of them {split!r}"
            )
        loaded = loaded[chosen]
    return loaded.to_iterable_dataset() if streaming else loaded
