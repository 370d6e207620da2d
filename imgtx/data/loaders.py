"""Entry points: :func:`load_images` (any spec -> a source), :func:`from_hf_dataset` and
:func:`image_loader` (a source -> ``{"image": (B, 3, S, S) uint8, "label": (B,) int64}`` batches).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from imgtx.data.builtin import load_builtin
from imgtx.data.decode import ON_ERROR_MODES, RESIZE_MODES, ImageDataError, check_choice
from imgtx.data.folder import index_image_folder
from imgtx.data.locate import is_saved_dataset, load_from_disk, load_hub
from imgtx.data.sources import Converter, HFRows, ImageSource, StreamingImageSource, make_source

if TYPE_CHECKING:
    import datasets

__all__ = ["collate_images", "from_hf_dataset", "image_loader", "load_images"]

SPEC_FORMS = (
    "'builtin:photos32' or 'builtin:photos' (bundled photo patches)",
    "'builtin:digits' (scikit-learn's labelled 8x8 handwritten digits, upscaled)",
    "a local folder of images, or 'imagefolder:PATH'",
    "a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk",
    "a Hub dataset id 'owner/name' or 'hub:ID' (e.g. 'uoft-cs/cifar10')",
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _find_column(
    features: Any, columns: list[str], explicit: str | None, feature_type: type, names: tuple
) -> str | None:
    """``explicit`` if given, else the first column of ``feature_type``, else one of ``names``."""
    if explicit is not None:
        if explicit not in columns:
            raise ImageDataError(f"column {explicit!r} not found; the columns are {columns}")
        return explicit
    for column in columns:
        if features is not None and isinstance(features.get(column), feature_type):
            return column
    return next((column for column in names if column in columns), None)


def from_hf_dataset(
    ds: datasets.Dataset | datasets.IterableDataset,
    image_size: int = 32,
    image_column: str | None = None,
    label_column: str | None = None,
    *,
    resize: str = "crop-area",
    on_error: str = "raise",
    limit: int | None = None,
    seed: int = 0,
    name: str = "dataset",
) -> ImageSource | StreamingImageSource:
    """Wrap a datasets ``Dataset`` (map-style result) or ``IterableDataset`` (streaming result).

    The image column is ``image_column``, else the first ``datasets.Image`` column, else ``img``
    or ``image``. The label column is ``label_column``, else the first ``ClassLabel`` column,
    else ``label`` or ``labels``, else none (labels -1). ``num_classes`` comes from a ClassLabel.
    Images are decoded by :func:`imgtx.data.decode_image`, never by datasets. A map-style data
    set with no rows raises :class:`ImageDataError`.
    """
    import datasets

    check_choice("resize", resize, RESIZE_MODES)
    check_choice("on_error", on_error, ON_ERROR_MODES)
    features = ds.features
    columns = list(ds.column_names or (features or {}).keys())
    image_col = _find_column(features, columns, image_column, datasets.Image, ("img", "image"))
    if image_col is None:
        raise ImageDataError(
            f"no image column found in {name!r} (columns {columns}); pass image_column=..."
        )
    label_col = _find_column(
        features, columns, label_column, datasets.ClassLabel, ("label", "labels")
    )
    label_feature = None if features is None or label_col is None else features.get(label_col)
    class_names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None

    ds = ds.select_columns([c for c in (image_col, label_col) if c is not None])
    if features is not None and isinstance(features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))  # we decode, so we report
    streaming = isinstance(ds, datasets.IterableDataset)
    if limit is not None:
        ds = ds.take(limit) if streaming else ds.select(range(min(limit, len(ds))))
    if not streaming:
        ds = ds.with_format(None)
        if len(ds) == 0:
            raise ImageDataError(f"{name!r} has no images; check the spec and the split")
    rows = HFRows(ds, image_col, label_col, name)
    converter = Converter(image_size, resize, on_error)
    return make_source(rows, None if streaming else len(ds), converter, class_names, seed, name)



def load_images(
    spec: str,
    split: str = "train",
    image_size: int = 32,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    limit: int | None = None,
    resize: str = "crop-area",
    on_error: str = "raise",
    seed: int = 0,
) -> ImageSource | StreamingImageSource:
    """Load images as ``{"image": (3, S, S) uint8, "label": int}`` items, ``S = image_size``.

    ``spec`` is one of the forms in the :mod:`imgtx.data` docstring. ``streaming=True`` returns
    a :class:`StreamingImageSource` (an ``IterableDataset``), else an :class:`ImageSource`.
    ``limit`` (>= 1) keeps the first ``limit`` rows. ``seed`` drives shuffling in
    :func:`image_loader`. Every failure a user can fix raises :class:`ImageDataError`.
    """
    check_choice("resize", resize, RESIZE_MODES)
    check_choice("on_error", on_error, ON_ERROR_MODES)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ImageDataError(f"image_size must be a positive int, got {image_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ImageDataError(f"limit must be None or an int >= 1, got {limit!r}")
    hf = {"image_column": image_column, "label_column": label_column, "resize": resize,
          "on_error": on_error, "limit": limit, "seed": seed, "name": spec}  # fmt: skip

    if spec.startswith("builtin:"):
        return load_builtin(spec, split, image_size, streaming, limit, on_error, seed)
    if spec.startswith("hub:"):
        return from_hf_dataset(load_hub(spec[4:], split, streaming), image_size, **hf)
    path = Path(spec.removeprefix("imagefolder:")).expanduser()
    if path.is_dir():
        if spec.startswith("imagefolder:") or not is_saved_dataset(path):
            rows, class_names = index_image_folder(path, split, image_size)
            rows = rows.limited(limit)
            converter = Converter(image_size, resize, on_error)
            num_rows = None if streaming else len(rows)
            return make_source(rows, num_rows, converter, class_names, seed, spec)
        return from_hf_dataset(load_from_disk(path, split, streaming), image_size, **hf)
    if path.exists():
        raise ImageDataError(f"{spec!r} is a file; an image spec must name a folder or a dataset")
    if not spec.startswith("imagefolder:") and _HUB_ID.fullmatch(spec):
        return from_hf_dataset(load_hub(spec, split, streaming), image_size, **hf)
    forms = "\n  - ".join(SPEC_FORMS)
    raise ImageDataError(
        f"unknown image spec {spec!r}: no such folder. Accepted forms:\n  - {forms}"
    )


def collate_images(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack items into ``{"image": (B, 3, S, S) uint8, "label": (B,) int64}``."""
    images = torch.stack([item["image"] for item in items])  # (B, 3, S, S)
    labels = torch.tensor([int(item["label"]) for item in items], dtype=torch.long)  # (B,)
    return {"image": images, "label": labels}


def image_loader(
    source: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over a source giving ``{"image": (B, 3, S, S) uint8, "label": (B,) int64}``.

    Map-style sources shuffle with a generator seeded by ``source.seed``; streaming sources use
    their seeded buffer shuffle (:meth:`StreamingImageSource.shuffled`).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ImageDataError(f"batch_size must be an int >= 1, got {batch_size!r}")
    generator = None
    if isinstance(source, IterableDataset):
        if shuffle:
            if not isinstance(source, StreamingImageSource):
                raise ImageDataError("cannot shuffle a plain IterableDataset; pass shuffle=False")
            source = source.shuffled()
        shuffle = False
    elif shuffle:
        generator = torch.Generator().manual_seed(getattr(source, "seed", 0))
    return DataLoader(
        source,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_images,
        generator=generator,
    )
