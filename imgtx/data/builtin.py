"""The data sets that ship inside installed packages, so they need no download.

``builtin:photos`` (patch size ``S = image_size``; ``builtin:photos32`` is its ``S = 32`` case):

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

``builtin:digits``: scikit-learn's 1,797 labelled 8x8 handwritten digits (``load_digits``), grey
``v`` in 0..16 mapped to ``round(v * 255 / 16)``, repeated over RGB and upscaled to ``S x S`` with
Pillow's bicubic filter. Fixed split: test = indices ``i % 5 == 0`` (360), train = the rest
(1,437), in ``load_digits``' order. Labels 0-9, class names ``"0"``..``"9"``.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from imgtx.data.decode import ImageDataError, decode_image
from imgtx.data.sources import Converter, ImageSource, StreamingImageSource, TensorRows, make_source

__all__ = [
    "DIGITS_CLASS_NAMES",
    "FLAT_LUMA_STD",
    "PHOTOS_TEST",
    "PHOTOS_TRAIN",
    "BUILTIN_SPECS",
    "DigitImages",
    "PhotoPatches",
    "digit_images",
    "digits_grey",
    "photo_patches",
]

BUILTIN_SPECS = ("builtin:photos32", "builtin:photos", "builtin:digits")

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
    split = _builtin_split(split)
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


def _builtin_split(split: str, builtin: str = "builtin:photos") -> str:
    """"train" or "test" for a requested split name of a builtin data set."""
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
    split = _builtin_split(split, "builtin:digits")
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
# load_images("builtin:...")
# --------------------------------------------------------------------------------------------


def load_builtin(
    spec: str,
    split: str,
    image_size: int,
    streaming: bool,
    limit: int | None,
    on_error: str,
    seed: int,
) -> ImageSource | StreamingImageSource:
    """The source for a ``builtin:`` spec (see the module docstring); ``limit`` keeps the first."""
    if spec == "builtin:digits":
        digits = digit_images(_builtin_split(split, spec), image_size)
        images, labels, class_names = digits.images, digits.labels, list(DIGITS_CLASS_NAMES)
    elif spec in ("builtin:photos32", "builtin:photos"):
        if spec == "builtin:photos32" and image_size != 32:
            raise ImageDataError(
                f"builtin:photos32 has 32x32 patches but image_size={image_size}; "
                f"use spec 'builtin:photos' for {image_size}x{image_size} patches"
            )
        images = photo_patches(_builtin_split(split), image_size).images
        labels, class_names = None, None
    else:
        raise ImageDataError(f"unknown builtin {spec!r}; available: {', '.join(BUILTIN_SPECS)}")
    count = len(images) if limit is None else min(limit, len(images))
    rows = TensorRows(images[:count], spec, labels=None if labels is None else labels[:count])
    converter = Converter(image_size, "reject", on_error)
    return make_source(rows, None if streaming else count, converter, class_names, seed, spec)
