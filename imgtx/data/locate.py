"""Finding the data a spec names: a Hub data set, an image folder, or a ``save_to_disk`` folder.

Each loader returns a datasets ``Dataset`` (or ``IterableDataset`` when streaming) whose images
are still encoded; :func:`imgtx.data.loaders.from_hf_dataset` wraps it.

Splits: ``"test"`` falls back to ``"validation"``/``"valid"``/``"val"`` when a source has no test
split, and ``"validation"``/``"valid"``/``"val"`` fall back to each other, then to ``"test"``.

Image folders (datasets' ``imagefolder`` builder): a flat folder (e.g. Downsampled ImageNet's
``valid_32x32/``) is one split and serves every ``split``. A folder with split subfolders
(``train``, ``test``, ``valid``/``validation``, also ``train_32x32``-style names) is picked from
by ``split``. Class subfolders below that give labels.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from imgtx.data.decode import ImageDataError

__all__ = ["IMAGE_EXTENSIONS", "is_saved_dataset", "load_from_disk", "load_hub",
           "load_imagefolder", "split_candidates"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


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


_SPLIT_DIR = re.compile(
    r"(train|training|validation|valid|val|dev|test|testing|eval|evaluation)([-._ 0-9].*)?",
    re.IGNORECASE,
)
_CANONICAL_SPLIT = {
    "train": "train", "training": "train", "validation": "validation", "valid": "validation",
    "val": "validation", "dev": "validation", "test": "test", "testing": "test",
    "eval": "test", "evaluation": "test",
}  # fmt: skip


def _split_of(folder_name: str) -> str | None:
    match = _SPLIT_DIR.fullmatch(folder_name)
    return _CANONICAL_SPLIT[match.group(1).lower()] if match else None


def _is_image_file(entry: os.DirEntry) -> bool:
    return entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS


def _subfolders(folder: Path) -> list[Path]:
    """Sorted visible subfolders; the files of a 1M-image folder are never held in a list."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))


def _class_dirs(folder: Path) -> list[str] | None:
    """Names of class subfolders, or None when images sit directly in ``folder``."""
    names = []
    with os.scandir(folder) as entries:  # stops at the first image: cheap on a 1M-file folder
        for entry in entries:
            if _is_image_file(entry):
                return None
            if entry.is_dir() and not entry.name.startswith("."):
                names.append(entry.name)
    return sorted(names)


def _has_image(folder: Path) -> bool:
    """Whether any image file lies in ``folder`` or below; stops at the first one found."""
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if _is_image_file(entry):
                    return True
                if entry.is_dir() and not entry.name.startswith("."):
                    pending.append(Path(entry.path))
    return False


def _imagefolder_dir(root: Path, split: str, image_size: int) -> tuple[Path, list[Path]]:
    """The folder holding ``split`` under ``root``, and all split folders (for class names)."""
    split_dirs = [d for d in _subfolders(root) if _split_of(d.name)]
    if not split_dirs:
        own = _split_of(root.name)
        wanted = _CANONICAL_SPLIT.get(split, split)
        if own is not None and own != wanted and {own, wanted} != {"test", "validation"}:
            warnings.warn(
                f"{str(root)!r} is a single-split folder whose name says {own!r}; using it for "
                f"split={split!r}",
                stacklevel=4,  # point at the caller of load_images
            )
        logger.info("image folder %s has one split; using it for split=%r", root, split)
        return root, [root]
    for candidate in split_candidates(split):
        canonical = _CANONICAL_SPLIT.get(candidate, candidate)
        matches = [d for d in split_dirs if _split_of(d.name) == canonical]
        if len(matches) > 1:  # e.g. train_32x32 and train_64x64: prefer the one for image_size
            matches = [d for d in matches if f"{image_size}x{image_size}" in d.name] or matches
        if len(matches) == 1:
            return matches[0], split_dirs
        if matches:
            raise ImageDataError(
                f"several folders under {str(root)!r} match split {split!r}: "
                f"{[d.name for d in matches]}; point the spec at one of them"
            )
    raise ImageDataError(
        f"no folder for split {split!r} under {str(root)!r}; split folders found: "
        f"{[d.name for d in split_dirs]}"
    )


def load_imagefolder(root: Path, split: str, image_size: int, streaming: bool) -> Any:
    """The images of ``split`` under folder ``root`` through datasets' ``imagefolder`` builder.

    Raises :class:`ImageDataError` when the chosen folder holds no image file at all.
    """
    import datasets

    folder, split_dirs = _imagefolder_dir(root, split, image_size)
    if not _has_image(folder):
        raise ImageDataError(
            f"image folder {str(folder)!r} holds no image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); point the spec at a folder of images"
        )
    class_lists = [_class_dirs(d) for d in split_dirs]
    labelled = all(c is not None for c in class_lists) and any(class_lists)
    features = None
    if labelled:  # class ids from the union over splits, so train and test agree
        names = sorted(set().union(*class_lists))
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
        )
    try:
        return datasets.load_dataset(
            "imagefolder",
            data_files={"train": [str(folder / "**")]},
            split="train",
            streaming=streaming,
            drop_labels=not labelled,
            features=features,
        )
    except Exception as error:
        raise ImageDataError(
            f"could not read image folder {str(folder)!r}: {type(error).__name__}: {error}"
        ) from error

