"""Local image folders: picking the split folder, class labels, and a compact file index.

Layout rules: a flat folder (e.g. Downsampled ImageNet's ``valid_32x32/``) is one split and serves
every ``split``. A folder with split subfolders (``train``, ``test``, ``valid``/``validation``,
also ``train_32x32``-style names) is picked from by ``split``. Class subfolders below that give
labels, with ids from the sorted union of class names over all split folders (so train and test
agree). Images lying directly in the folder give no labels.

The index: every image file below the chosen folder (extension in :data:`IMAGE_EXTENSIONS`, any
case; hidden entries and ``__``-prefixed folders skipped, as datasets' ``imagefolder`` does), in
sorted order folder by folder. Paths are packed into one byte buffer with int64 offsets, so the
index costs about ``len(relative path) + 12`` bytes an image -- a million files take tens of MB,
not the kilobytes per file of a list of Python objects -- and no image is decoded until asked for.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import get_worker_info

from imgtx.data.decode import ImageDataError
from imgtx.data.locate import split_candidates
from imgtx.data.sources import Row

__all__ = ["IMAGE_EXTENSIONS", "FolderRows", "index_image_folder"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({
    ".bmp", ".gif", ".ico", ".jfif", ".jp2", ".jpeg", ".jpg", ".pbm", ".pcx", ".pgm", ".png",
    ".pnm", ".ppm", ".tga", ".tif", ".tiff", ".webp",
})

_SPLIT_DIR = re.compile(
    r"(train|training|validation|valid|val|dev|test|testing|eval|evaluation)([-._ 0-9].*)?",
    re.IGNORECASE,
)
_CANONICAL_SPLIT = {
    "train": "train", "training": "train", "validation": "validation", "valid": "validation",
    "val": "validation", "dev": "validation", "test": "test", "testing": "test",
    "eval": "test", "evaluation": "test",
}  # fmt: skip


class FolderRows:
    """Rows ``(path, label, path)`` of an indexed image folder; picklable for DataLoader workers.

    ``blob``/``offsets``: the relative paths, packed; ``labels``: ``(N,)`` int32 or None;
    ``order``: the streaming order (None = index order).
    """

    def __init__(self, root: str, blob: np.ndarray, offsets: np.ndarray,
                 labels: np.ndarray | None, order: np.ndarray | None = None) -> None:
        self.root, self.blob, self.offsets, self.labels, self.order = (
            root, blob, offsets, labels, order)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def path(self, index: int) -> str:
        relative = self.blob[self.offsets[index]:self.offsets[index + 1]].tobytes()
        return os.path.join(self.root, os.fsdecode(relative))

    def __call__(self, index: int) -> Row:
        path = self.path(index)
        return path, -1 if self.labels is None else int(self.labels[index]), path

    def __iter__(self) -> Iterator[Row]:
        worker = get_worker_info()  # each DataLoader worker streams its own share
        start, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        indices = range(len(self)) if self.order is None else self.order
        for index in indices[start::step]:
            yield self(int(index))

    def limited(self, limit: int | None) -> FolderRows:
        """The first ``limit`` rows (all when None)."""
        if limit is None or limit >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:limit]
        return FolderRows(self.root, self.blob[: self.offsets[limit]], self.offsets[: limit + 1],
                          labels)

    def shuffled(self, seed: int, buffer_size: int) -> FolderRows:
        """A copy streaming in a seeded full permutation (the whole index fits; no buffer)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).numpy()
        return FolderRows(self.root, self.blob, self.offsets, self.labels, order)


def _split_of(folder_name: str) -> str | None:
    match = _SPLIT_DIR.fullmatch(folder_name)
    return _CANONICAL_SPLIT[match.group(1).lower()] if match else None


def _visible(name: str | bytes) -> bool:
    text = os.fsdecode(name)
    return not text.startswith((".", "__"))


def _is_image_name(name: str | bytes) -> bool:
    return os.path.splitext(os.fsdecode(name))[1].lower() in IMAGE_EXTENSIONS


def _subfolders(folder: Path) -> list[Path]:
    """Sorted visible subfolders."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and _visible(e.name))


def _class_dirs(folder: Path) -> list[str] | None:
    """Names of class subfolders, or None when images sit directly in ``folder``."""
    names = []
    with os.scandir(folder) as entries:  # stops at the first image: cheap on a 1M-file folder
        for entry in entries:
            if entry.is_file() and _is_image_name(entry.name):
                return None
            if entry.is_dir() and _visible(entry.name):
                names.append(entry.name)
    return sorted(names)


def _split_folder(root: Path, split: str, image_size: int) -> tuple[Path, list[Path]]:
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


def _walk(folder: bytes, prefix: bytes = b"") -> Iterator[bytes]:
    """Relative paths of the image files below ``folder``, sorted folder by folder."""
    files, subfolders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not _visible(entry.name):
                continue
            if entry.is_dir():
                subfolders.append(entry.name)
            elif entry.is_file() and _is_image_name(entry.name):
                files.append(entry.name)
    files.sort()
    for name in files:
        yield prefix + name
    del files
    for name in sorted(subfolders):
        yield from _walk(os.path.join(folder, name), prefix + name + b"/")


def index_image_folder(root: Path, split: str, image_size: int
                       ) -> tuple[FolderRows, list[str] | None]:
    """Index the image files of ``split`` under ``root``; returns the rows and the class names.

    Raises :class:`ImageDataError` when the chosen folder holds no image file.
    """
    folder, split_dirs = _split_folder(root, split, image_size)
    class_lists = [_class_dirs(d) for d in split_dirs]
    labelled = all(c is not None for c in class_lists) and any(class_lists)
    class_names = sorted(set().union(*class_lists)) if labelled else None  # type: ignore[arg-type]
    class_id = {os.fsencode(name): i for i, name in enumerate(class_names or [])}
    blob, offsets, labels = bytearray(), array("q", [0]), array("i")  # 8 + 4 bytes an image
    for relative in _walk(os.fsencode(folder)):
        blob += relative
        offsets.append(len(blob))
        if labelled:
            labels.append(class_id[relative.split(b"/", 1)[0]])
    if len(offsets) == 1:
        raise ImageDataError(
            f"image folder {str(folder)!r} holds no image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); point the spec at a folder of images"
        )
    rows = FolderRows(str(folder), np.frombuffer(blob, np.uint8), np.frombuffer(offsets, np.int64),
                      np.frombuffer(labels, np.int32) if labelled else None)
    return rows, class_names
