"""One image loader for training, bits/dim evaluation and super-resolution.

Every image comes out as a ``torch.uint8`` tensor of shape ``(3, S, S)`` (CHW, RGB) with
``S = image_size``; batches from :func:`image_loader` are ``{"image": (B, 3, S, S) uint8,
"label": (B,) int64}``. A row without a label has label ``-1``.

Spec forms accepted by :func:`load_images`:

- ``builtin:photos32`` -- 32x32 patches cut from scikit-image's bundled colour photographs
  (needs no download); ``builtin:photos`` is the same data set for any ``image_size``.
- ``builtin:digits`` -- scikit-learn's 1,797 labelled 8x8 handwritten digits, grey repeated
  over RGB and upscaled bicubically to ``image_size`` (see :func:`digit_images`).
- ``PATH`` or ``imagefolder:PATH`` -- a local folder of images read with datasets' ``imagefolder``
  builder. A flat folder (e.g. Downsampled ImageNet's ``valid_32x32/``) is one split and serves
  every ``split``. A folder with split subfolders (``train``, ``test``, ``valid``/``validation``,
  also ``train_32x32``-style names) is picked from by ``split``. Class subfolders below that give
  labels. A folder written by ``Dataset.save_to_disk`` is read with ``datasets.load_from_disk``.
- ``owner/name`` or ``hub:ID`` -- a Hub data set, e.g. ``uoft-cs/cifar10`` or
  ``benjamin-paine/imagenet-1k-32x32``, through ``datasets.load_dataset`` (its local cache is used
  when ``HF_HUB_OFFLINE`` is set).

Splits: ``"test"`` falls back to ``"validation"``/``"valid"`` when a source has no test split, and
``"validation"``/``"valid"`` fall back to ``"test"``.

Image conversion (:func:`to_rgb_uint8`):

- Grayscale, palette, CMYK and other modes are converted to 8-bit RGB with Pillow.
- 16-bit (and 32-bit integer) grayscale is scaled to 8 bits by ``round(v / 257)``. Float images
  are taken as [0, 1] if their maximum is at most 1, else clipped to [0, 255].
- Images with an alpha channel (RGBA, LA, PA, palette or grayscale with transparency) are
  composited onto white, because the colour under a transparent pixel is arbitrary.
- ``resize="crop-area"`` (default) center-crops to a square of side ``min(W, H)``, then resamples
  to ``S x S``: area averaging (``PIL.Image.BOX``) when shrinking, bicubic when enlarging.
  ``resize="reject"`` raises :class:`ImageDataError` for any image that is not ``S x S``.

Unreadable images: decoding always goes through :func:`decode_image` (datasets' lazy decoding is
switched off with ``Image(decode=False)``), so a corrupt file raises :class:`ImageDataError`
naming it. With ``on_error="skip"`` a map-style source serves the next readable row in place of
an unreadable one, so ``len()`` stays the number of rows in the data; call
:meth:`ImageSource.scan` first to drop unreadable rows and make ``len()`` count only readable ones.
A streaming source simply skips them. ``skipped`` counts the distinct unreadable rows met in this
process (DataLoader worker processes keep their own counts).

``builtin:photos`` rules (patch size ``S = image_size``):

- Photos: astronaut, chelsea, coffee, hubble_deep_field, ihc, motorcycle_left, motorcycle_right,
  retina and rocket from ``skimage/data``. The synthetic images there (color, chessboard, logo,
  ...) and the grayscale ones are not used.
- Split by photo: test = astronaut + coffee; train = the other seven. The stereo pair
  motorcycle_left/right is on the train side, so no scene is in both splits.
- Grid: test patches at native resolution, stride ``S`` (no overlap). Train patches at native
  resolution and at 1/2 scale (2x2 box average, ``Image.reduce(2)``), stride ``S // 2``, top-left
  anchored, partial patches at the right/bottom edges dropped.
- Flat rule: a patch is dropped when the population standard deviation of its luma
  ``0.299 R + 0.587 G + 0.114 B`` (0..255 scale, over all ``S x S`` pixels) is below
  ``FLAT_LUMA_STD = 8.0``. This drops Hubble's black sky, the smooth interior of the retina, the
  rocket's evening sky and the astronaut's studio backdrop.
- Order: the kept patches of a split are stored in a fixed pseudo-random order
  (``numpy.random.default_rng(0)``), so ``limit=N`` takes patches from every photo.
- Patches carry no label (``-1``). Built arrays are cached in memory per ``(split, S)``.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

if TYPE_CHECKING:
    import datasets

__all__ = [
    "FLAT_LUMA_STD",
    "PHOTOS_TEST",
    "PHOTOS_TRAIN",
    "DIGITS_CLASS_NAMES",
    "DigitImages",
    "ImageDataError",
    "ImageSource",
    "PhotoPatches",
    "StreamingImageSource",
    "collate_images",
    "decode_image",
    "digit_images",
    "digits_grey",
    "from_hf_dataset",
    "image_loader",
    "load_images",
    "photo_patches",
    "to_rgb_uint8",
]

logger = logging.getLogger(__name__)

RESIZE_MODES = ("crop-area", "reject")
ON_ERROR_MODES = ("raise", "skip")
SPEC_FORMS = (
    "'builtin:photos32' or 'builtin:photos' (bundled photo patches)",
    "'builtin:digits' (scikit-learn's labelled 8x8 handwritten digits, upscaled)",
    "a local folder of images, or 'imagefolder:PATH'",
    "a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk",
    "a Hub dataset id 'owner/name' or 'hub:ID' (e.g. 'uoft-cs/cifar10')",
)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class ImageDataError(ValueError):
    """An image or data spec that cannot be loaded; the message says which one and what to do."""


# --------------------------------------------------------------------------------------------
# Image conversion
# --------------------------------------------------------------------------------------------


def decode_image(value: Any, name: str) -> PIL.Image.Image:
    """Decode one stored image into a fully loaded PIL image.

    ``value`` is a PIL image, a datasets ``{"bytes", "path"}`` dict (as given by
    ``Image(decode=False)``), a file path, raw encoded bytes, or an ``(H, W[, C])`` array.
    Raises :class:`ImageDataError` naming ``name`` when it cannot be decoded.
    """
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, np.ndarray):
            image = PIL.Image.fromarray(value)
        else:
            if isinstance(value, dict):
                value = value.get("bytes") or value.get("path")
                if value is None:
                    raise ValueError("the row has neither image bytes nor a path")
            if isinstance(value, (str, os.PathLike)):
                value = Path(value).read_bytes()
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError(f"unsupported image value of type {type(value).__name__}")
            image = PIL.Image.open(io.BytesIO(value))
        image.load()  # Pillow decodes lazily; force it here so errors surface here
    except Exception as error:  # Pillow raises OSError, SyntaxError, EOFError, zlib.error, ...
        raise ImageDataError(
            f"could not decode image {name!r}: {error}; delete or fix the file, "
            "or pass on_error='skip'"
        ) from error
    return image


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any Pillow mode -> 8-bit RGB (16-bit scaled, alpha composited onto white)."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            values = values * 255.0 if values.max(initial=0.0) <= 1.0 else values
        else:
            values = values / 257.0  # 65535 -> 255
        image = PIL.Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_rgb_uint8(
    image: PIL.Image.Image, image_size: int, resize: str = "crop-area", name: str = "image"
) -> torch.Tensor:
    """Convert a PIL image to a ``(3, S, S)`` uint8 RGB tensor with ``S = image_size``.

    See the module docstring for the mode conversions. ``resize="crop-area"`` center-crops to a
    square and resamples (BOX when shrinking, bicubic when enlarging); ``resize="reject"`` raises
    :class:`ImageDataError` if the image is not already ``S x S``.
    """
    _check_choice("resize", resize, RESIZE_MODES)
    try:
        rgb = _to_rgb(image)
    except Exception as error:
        raise ImageDataError(
            f"could not convert image {name!r} (mode {image.mode}) to RGB: {error}; "
            "re-save it as 8-bit RGB, or pass on_error='skip'"
        ) from error
    width, height = rgb.size
    if (width, height) != (image_size, image_size):
        if resize == "reject":
            raise ImageDataError(
                f"image {name!r} is {width}x{height} (WxH) but image_size={image_size} needs "
                f"{image_size}x{image_size}; pass resize='crop-area' to center-crop and resample, "
                "set image_size to the size of the data, or resize the files"
            )
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
        if side != image_size:
            resample = PIL.Image.BOX if side > image_size else PIL.Image.BICUBIC
            rgb = rgb.resize((image_size, image_size), resample)
    pixels = np.array(rgb, dtype=np.uint8)  # (S, S, 3)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, S, S)


# --------------------------------------------------------------------------------------------
# builtin:photos -- patches of scikit-image's colour photographs
# --------------------------------------------------------------------------------------------

PHOTOS_TEST = ("astronaut.png", "coffee.png")
PHOTOS_TRAIN = (
    "chelsea.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)
FLAT_LUMA_STD = 8.0  # patches whose luma std (0..255) is below this are "almost flat"
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


@dataclass(frozen=True)
class PhotoPatches:
    """The patches of one split of ``builtin:photos``.

    ``images``: ``(N, 3, S, S)`` uint8; ``photo``: ``(N,)`` int64 index into ``names``;
    ``candidates`` / ``dropped``: per photo, grid patches before the flat rule and patches it
    removed.
    """

    images: torch.Tensor
    photo: torch.Tensor
    names: tuple[str, ...]
    candidates: tuple[int, ...]
    dropped: tuple[int, ...]


def _read_photo(filename: str) -> np.ndarray:
    """One skimage photo as an ``(H, W, 3)`` uint8 array."""
    try:
        data = (importlib.resources.files("skimage") / "data" / filename).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise ImageDataError(
            f"builtin:photos needs scikit-image's bundled photo {filename!r} ({error}); "
            "install it with `pip install scikit-image`"
        ) from error
    return np.array(decode_image(data, f"skimage/data/{filename}").convert("RGB"))


def _grid(photo: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Patches on a top-left anchored grid and their luma std.

    ``(H, W, 3)`` uint8 -> ``(N, 3, size, size)`` uint8 patches and ``(N,)`` float64 std.
    """
    if min(photo.shape[:2]) < size:
        return np.zeros((0, 3, size, size), np.uint8), np.zeros(0)
    windows = np.lib.stride_tricks.sliding_window_view(photo, (size, size), axis=(0, 1))
    patches = windows[::stride, ::stride].reshape(-1, 3, size, size)  # (rows*cols, 3, S, S)
    # Window sums from integral images: std without materialising float patches.
    luma = photo.astype(np.float64) @ _LUMA_WEIGHTS  # (H, W)
    moments = []
    for values in (luma, luma**2):
        integral = np.pad(values, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        window_sum = (
            integral[size:, size:]
            - integral[:-size, size:]
            - integral[size:, :-size]
            + integral[:-size, :-size]
        )  # (H - S + 1, W - S + 1)
        moments.append(window_sum[::stride, ::stride].reshape(-1) / size**2)
    return patches, np.sqrt(np.maximum(moments[1] - moments[0] ** 2, 0.0))


@functools.lru_cache(maxsize=8)
def photo_patches(split: str = "train", patch_size: int = 32) -> PhotoPatches:
    """Build (once per process) the ``builtin:photos`` patches of ``split`` ("train"/"test").

    See the module docstring for the photo split, grid, scales and flat rule.
    """
    split = _photo_split(split)
    if patch_size < 2:
        raise ImageDataError(f"builtin:photos needs image_size >= 2, got {patch_size}")
    names = PHOTOS_TRAIN if split == "train" else PHOTOS_TEST
    stride = max(1, patch_size // 2) if split == "train" else patch_size
    kept, photo_ids, candidates, dropped = [], [], [], []
    for photo_id, name in enumerate(names):
        photo = _read_photo(name)
        scales = [photo]
        if split == "train":
            scales.append(np.array(PIL.Image.fromarray(photo).reduce(2)))  # 2x2 box average
        photo_candidates = photo_dropped = 0
        for scaled in scales:
            patches, luma_std = _grid(scaled, patch_size, stride)
            keep = luma_std >= FLAT_LUMA_STD
            kept.append(patches[keep])
            photo_ids.append(np.full(int(keep.sum()), photo_id, np.int64))
            photo_candidates += len(patches)
            photo_dropped += int((~keep).sum())
        candidates.append(photo_candidates)
        dropped.append(photo_dropped)
    images = np.concatenate(kept)
    if len(images) == 0:
        raise ImageDataError(
            f"builtin:photos has no {split} patches of size {patch_size}; use a smaller image_size"
        )
    order = np.random.default_rng(0).permutation(len(images))
    return PhotoPatches(
        images=torch.from_numpy(np.ascontiguousarray(images[order])),
        photo=torch.from_numpy(np.concatenate(photo_ids)[order]),
        names=names,
        candidates=tuple(candidates),
        dropped=tuple(dropped),
    )


def _photo_split(split: str, builtin: str = "builtin:photos") -> str:
    if split in ("train", "training"):
        return "train"
    if split in ("test", "validation", "valid", "val"):
        return "test"
    raise ImageDataError(
        f"{builtin} has splits 'train' and 'test' ('validation'/'valid' mean 'test'), "
        f"not {split!r}"
    )


# --------------------------------------------------------------------------------------------
# builtin:digits -- scikit-learn's handwritten digits
# --------------------------------------------------------------------------------------------

DIGITS_CLASS_NAMES = tuple(str(digit) for digit in range(10))
DIGITS_TEST_EVERY = 5  # test = the images whose index in load_digits' order is a multiple of 5
DIGITS_LEVELS = 16  # load_digits' grey values run 0..16 (4x4 pixel counts of 32x32 bitmaps)


@dataclass(frozen=True)
class DigitImages:
    """One split of ``builtin:digits``.

    ``images``: ``(N, 3, S, S)`` uint8 (grey repeated over RGB); ``labels``: ``(N,)`` int64 in
    0..9; ``index``: ``(N,)`` int64 position of each image in ``sklearn.datasets.load_digits``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


def digits_grey() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(1797, 8, 8)`` uint8 grey (``round(v * 255 / 16)``) and labels.

    The data are the test part of the UCI "Optical Recognition of Handwritten Digits" set
    (Alpaydin & Kaynak, 1998) as bundled with scikit-learn (``load_digits``), in its order.
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as error:
        raise ImageDataError(
            f"builtin:digits needs scikit-learn's bundled digits ({error}); "
            "install it with `pip install scikit-learn`"
        ) from error
    digits = load_digits()
    # 0..16 -> 0..255; the only exact half is v = 8 -> 127.5, which rint and round-half-up
    # both send to 128.
    grey = np.rint(digits.images * (255.0 / DIGITS_LEVELS)).astype(np.uint8)  # (1797, 8, 8)
    return grey, digits.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def digit_images(split: str = "train", image_size: int = 32) -> DigitImages:
    """Build (once per process) the ``builtin:digits`` images of ``split`` at ``image_size``.

    test = load_digits indices ``i % 5 == 0`` (360 images), train = the rest (1,437), both in
    load_digits' order. Each 8x8 grey image is upscaled to ``S x S`` with Pillow's
    ``Image.BICUBIC`` (``S = 8`` keeps it as is) and repeated over the 3 channels.
    """
    split = _photo_split(split, "builtin:digits")
    if image_size < 1:
        raise ImageDataError(f"builtin:digits needs image_size >= 1, got {image_size}")
    grey, labels = digits_grey()
    index = np.arange(len(grey))
    chosen = index[(index % DIGITS_TEST_EVERY == 0) == (split == "test")]
    if image_size == grey.shape[-1]:
        upscaled = grey[chosen]  # (N, 8, 8)
    else:
        upscaled = np.stack([
            np.asarray(PIL.Image.fromarray(grey[i], "L").resize(
                (image_size, image_size), PIL.Image.BICUBIC))
            for i in chosen
        ])  # (N, S, S)
    images = np.repeat(upscaled[:, None], 3, axis=1)  # (N, 3, S, S)
    return DigitImages(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels[chosen]),
        index=torch.from_numpy(chosen),
    )


# --------------------------------------------------------------------------------------------
# Sources: map-style and streaming
# --------------------------------------------------------------------------------------------

Row = tuple[Any, int, str]  # (stored image, label, name for error messages)


class _Converter:
    """Turns stored rows into ``{"image": (3, S, S) uint8, "label": int}`` and counts bad rows."""

    def __init__(self, image_size: int, resize: str, on_error: str) -> None:
        self.image_size, self.resize, self.on_error = image_size, resize, on_error
        self.bad_rows: set[Any] = set()

    def __call__(self, row: Row) -> dict[str, Any]:
        value, label, name = row
        if isinstance(value, torch.Tensor):  # already (3, S, S) uint8
            return {"image": value.clone(), "label": label}
        image = decode_image(value, name)
        return {"image": to_rgb_uint8(image, self.image_size, self.resize, name), "label": label}


class _Source:
    """Attributes shared by the map-style and the streaming source."""

    def __init__(
        self,
        rows: _TensorRows | _HFRows,
        converter: _Converter,
        class_names: list[str] | None = None,
        seed: int = 0,
        name: str = "",
    ) -> None:
        self._rows, self._convert = rows, converter
        self.image_size, self.class_names, self.seed, self.name = (
            converter.image_size, class_names, seed, name
        )  # fmt: skip
        self.num_classes = None if class_names is None else len(class_names)

    @property
    def skipped(self) -> int:
        """Distinct unreadable rows met so far in this process (``on_error="skip"``)."""
        return len(self._convert.bad_rows)


class ImageSource(_Source, Dataset):
    """Map-style data set of ``{"image": (3, S, S) uint8, "label": int}`` (label -1 if none).

    Attributes: ``image_size`` (S), ``num_classes`` and ``class_names`` (from a ClassLabel
    feature, else None), ``skipped``, ``seed`` (used by :func:`image_loader` to shuffle) and
    ``name`` (the spec). With ``on_error="skip"`` an unreadable row is served as the next
    readable one; :meth:`scan` drops unreadable rows up front instead.
    """

    def __init__(self, rows: _TensorRows | _HFRows, num_rows: int, *args: Any, **kwargs: Any):
        super().__init__(rows, *args, **kwargs)
        self._index = np.arange(num_rows)  # row ids still served

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self._index)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} images")
        for offset in range(count):
            row = int(self._index[(index + offset) % count])
            if row in self._convert.bad_rows:
                continue
            try:
                return self._convert(self._rows(row))
            except ImageDataError:
                if self._convert.on_error == "raise":
                    raise
                self._convert.bad_rows.add(row)
        raise ImageDataError(f"none of the {count} images of {self.name!r} could be decoded")

    def scan(self) -> ImageSource:
        """Decode every row once and drop unreadable ones, so ``len()`` counts readable rows.

        With ``on_error="raise"`` the first unreadable row raises. Returns ``self``.
        """
        for row in self._index.tolist():
            try:
                self._convert(self._rows(row))
            except ImageDataError:
                if self._convert.on_error == "raise":
                    raise
                self._convert.bad_rows.add(row)
        self._index = np.array(
            [r for r in self._index if r not in self._convert.bad_rows], dtype=np.int64
        )
        return self


class StreamingImageSource(_Source, IterableDataset):
    """Streaming data set yielding ``{"image": (3, S, S) uint8, "label": int}``.

    Unreadable rows raise, or with ``on_error="skip"`` are skipped and counted in ``skipped``.
    Same attributes as :class:`ImageSource`.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._rows:
            try:
                yield self._convert(row)
            except ImageDataError:
                if self._convert.on_error == "raise":
                    raise
                self._convert.bad_rows.add(row[2])

    def shuffled(self, buffer_size: int = 10_000) -> StreamingImageSource:
        """A copy that streams in shuffled order (a buffer shuffle seeded by ``seed``)."""
        rows = self._rows.shuffled(self.seed, buffer_size)
        return StreamingImageSource(rows, self._convert, self.class_names, self.seed, self.name)


class _TensorRows:
    """Rows of an ``(N, 3, S, S)`` uint8 tensor and optional ``(N,)`` labels; picklable."""

    def __init__(
        self,
        images: torch.Tensor,
        name: str,
        order: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ):
        self.images, self.name, self.labels = images, name, labels
        self.order = torch.arange(len(images)) if order is None else order

    def __call__(self, index: int) -> Row:
        label = -1 if self.labels is None else int(self.labels[index])
        return self.images[index], label, f"{self.name}[{index}]"

    def __iter__(self) -> Iterator[Row]:
        worker = get_worker_info()  # each DataLoader worker streams its own share
        start, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for index in self.order[start::step].tolist():
            yield self(index)

    def shuffled(self, seed: int, buffer_size: int) -> _TensorRows:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.images), generator=generator)
        return _TensorRows(self.images, self.name, order, self.labels)


class _HFRows:
    """Rows of a datasets ``Dataset`` or ``IterableDataset`` with raw (undecoded) images."""

    def __init__(self, ds: Any, image_column: str, label_column: str | None, name: str):
        self.ds, self.image_column, self.label_column = ds, image_column, label_column
        self.name = name

    def _row(self, record: dict[str, Any], index: int) -> Row:
        value = record[self.image_column]
        label = -1
        if self.label_column is not None and record[self.label_column] is not None:
            label = int(record[self.label_column])
        path = value.get("path") if isinstance(value, dict) else None
        return value, label, path or f"{self.name} row {index}"

    def __call__(self, index: int) -> Row:
        return self._row(self.ds[index], index)

    def __iter__(self) -> Iterator[Row]:
        for index, record in enumerate(self.ds):
            yield self._row(record, index)

    def shuffled(self, seed: int, buffer_size: int) -> _HFRows:
        ds = self.ds.shuffle(seed=seed, buffer_size=buffer_size)
        return _HFRows(ds, self.image_column, self.label_column, self.name)


def _make_source(
    rows: _TensorRows | _HFRows,
    num_rows: int | None,
    converter: _Converter,
    class_names: list[str] | None,
    seed: int,
    name: str,
) -> ImageSource | StreamingImageSource:
    """A map-style source when ``num_rows`` is known, else a streaming one."""
    if num_rows is None:
        return StreamingImageSource(rows, converter, class_names, seed, name)
    return ImageSource(rows, num_rows, converter, class_names, seed, name)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


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
    Images are decoded by :func:`decode_image`, never by datasets.
    """
    import datasets

    _check_choice("resize", resize, RESIZE_MODES)
    _check_choice("on_error", on_error, ON_ERROR_MODES)
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
    rows = _HFRows(ds, image_col, label_col, name)
    converter = _Converter(image_size, resize, on_error)
    return _make_source(rows, None if streaming else len(ds), converter, class_names, seed, name)


def _split_candidates(split: str) -> list[str]:
    """Split names to try, in order, for a requested split."""
    if split in ("test", "testing"):
        return [split, "validation", "valid", "val"]
    if split in ("validation", "valid", "val"):
        return [split] + [s for s in ("validation", "valid", "val") if s != split] + ["test"]
    return [split]


def _load_hub(repo: str, split: str, streaming: bool) -> Any:
    import datasets

    candidates = _split_candidates(split)
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


def _load_from_disk(path: Path, split: str, streaming: bool) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        chosen = next((s for s in _split_candidates(split) if s in loaded), None)
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


def _class_dirs(folder: Path) -> list[str] | None:
    """Names of class subfolders, or None when images sit directly in ``folder``."""
    names = []
    with os.scandir(folder) as entries:  # stops at the first image: cheap on a 1M-file folder
        for entry in entries:
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                return None
            if entry.is_dir() and not entry.name.startswith("."):
                names.append(entry.name)
    return sorted(names)


def _imagefolder_dir(root: Path, split: str, image_size: int) -> tuple[Path, list[Path]]:
    """The folder holding ``split`` under ``root``, and all split folders (for class names)."""
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _split_of(d.name)]
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
    for candidate in _split_candidates(split):
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


def _load_imagefolder(root: Path, split: str, image_size: int, streaming: bool) -> Any:
    import datasets

    folder, split_dirs = _imagefolder_dir(root, split, image_size)
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


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


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

    ``spec`` is one of the forms in the module docstring. ``streaming=True`` returns a
    :class:`StreamingImageSource` (an ``IterableDataset``), else an :class:`ImageSource`.
    ``limit`` keeps the first ``limit`` rows. ``seed`` drives shuffling in :func:`image_loader`.
    """
    _check_choice("resize", resize, RESIZE_MODES)
    _check_choice("on_error", on_error, ON_ERROR_MODES)
    if not isinstance(image_size, int) or image_size < 1:
        raise ImageDataError(f"image_size must be a positive int, got {image_size!r}")
    if limit is not None and limit < 0:
        raise ImageDataError(f"limit must be None or >= 0, got {limit}")
    hf = {"image_column": image_column, "label_column": label_column, "resize": resize,
          "on_error": on_error, "limit": limit, "seed": seed, "name": spec}  # fmt: skip

    if spec.startswith("builtin:"):
        return _load_builtin(spec, split, image_size, streaming, limit, on_error, seed)
    if spec.startswith("hub:"):
        return from_hf_dataset(_load_hub(spec[4:], split, streaming), image_size, **hf)
    path = Path(spec.removeprefix("imagefolder:")).expanduser()
    if path.is_dir():
        if spec.startswith("imagefolder:") or not _is_saved_dataset(path):
            ds = _load_imagefolder(path, split, image_size, streaming)
        else:
            ds = _load_from_disk(path, split, streaming)
        return from_hf_dataset(ds, image_size, **hf)
    if path.exists():
        raise ImageDataError(f"{spec!r} is a file; an image spec must name a folder or a dataset")
    if not spec.startswith("imagefolder:") and _HUB_ID.fullmatch(spec):
        return from_hf_dataset(_load_hub(spec, split, streaming), image_size, **hf)
    forms = "\n  - ".join(SPEC_FORMS)
    raise ImageDataError(
        f"unknown image spec {spec!r}: no such folder. Accepted forms:\n  - {forms}"
    )


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _load_builtin(
    spec: str,
    split: str,
    image_size: int,
    streaming: bool,
    limit: int | None,
    on_error: str,
    seed: int,
) -> ImageSource | StreamingImageSource:
    if spec == "builtin:digits":
        digits = digit_images(_photo_split(split, spec), image_size)
        count = len(digits.images) if limit is None else min(limit, len(digits.images))
        rows = _TensorRows(digits.images[:count], spec, labels=digits.labels[:count])
        converter = _Converter(image_size, "reject", on_error)
        return _make_source(
            rows, None if streaming else count, converter, list(DIGITS_CLASS_NAMES), seed, spec
        )
    if spec not in ("builtin:photos32", "builtin:photos"):
        raise ImageDataError(
            f"unknown builtin {spec!r}; available: builtin:photos32, builtin:photos, "
            "builtin:digits"
        )
    if spec == "builtin:photos32" and image_size != 32:
        raise ImageDataError(
            f"builtin:photos32 has 32x32 patches but image_size={image_size}; "
            f"use spec 'builtin:photos' for {image_size}x{image_size} patches"
        )
    images = photo_patches(_photo_split(split), image_size).images
    images = images if limit is None else images[:limit]
    rows = _TensorRows(images, spec)
    converter = _Converter(image_size, "reject", on_error)
    return _make_source(rows, None if streaming else len(images), converter, None, seed, spec)


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


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ImageDataError(f"{what}={value!r} is not one of {list(choices)}")
