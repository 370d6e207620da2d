"""One image loader for training, bits/dim evaluation and super-resolution.

Every image comes out as a ``torch.uint8`` tensor of shape ``(3, S, S)`` (CHW, RGB) with
``S = image_size``; batches from :func:`image_loader` are ``{"image": (B, 3, S, S) uint8,
"label": (B,) int64}``. A row without a label has label ``-1``.

Spec forms accepted by :func:`load_images`:

- ``builtin:photos32`` -- 32x32 patches cut from scikit-image's bundled colour photographs
  (needs no download); ``builtin:photos`` is the same data set for any ``image_size``.
- ``builtin:digits`` -- scikit-learn's 1,797 labelled 8x8 handwritten digits, grey repeated
  over RGB and upscaled bicubically to ``image_size`` (see :func:`digit_images`).
- ``PATH`` or ``imagefolder:PATH`` -- a local folder of images, indexed compactly by
  :mod:`imgtx.data.folder` (the layout rules of datasets' ``imagefolder``). A flat folder (e.g.
  Downsampled ImageNet's ``valid_32x32/``) is one split and serves every ``split``. A folder with
  split subfolders (``train``, ``test``, ``valid``/``validation``, also ``train_32x32``-style
  names) is picked from by ``split``. Class subfolders below that give labels. A folder written
  by ``Dataset.save_to_disk`` is read with ``datasets.load_from_disk``.
- ``owner/name`` or ``hub:ID`` -- a Hub data set, e.g. ``uoft-cs/cifar10`` or
  ``benjamin-paine/imagenet-1k-32x32``, through ``datasets.load_dataset`` (its local cache is used
  when ``HF_HUB_OFFLINE`` is set).

Where things live: :mod:`imgtx.data.decode` (decoding, RGB conversion, :class:`ImageDataError`),
:mod:`imgtx.data.builtin` (the bundled data sets), :mod:`imgtx.data.sources` (map-style and
streaming sources), :mod:`imgtx.data.folder` (image folders), :mod:`imgtx.data.locate` (Hub ids,
``save_to_disk`` folders) and :mod:`imgtx.data.loaders` (:func:`load_images`,
:func:`image_loader`).

Unreadable images: decoding always goes through :func:`decode_image` (datasets' lazy decoding is
switched off with ``Image(decode=False)``), so a corrupt, truncated or non-image file raises
:class:`ImageDataError` naming it, unless ``on_error="skip"`` (see :mod:`imgtx.data.sources`).
An empty data set (no image files, no rows, nothing readable) raises :class:`ImageDataError` too.
"""

from imgtx.data.builtin import (
    DIGITS_CLASS_NAMES,
    FLAT_LUMA_STD,
    PHOTOS_TEST,
    PHOTOS_TRAIN,
    DigitImages,
    PhotoPatches,
    digit_images,
    digits_grey,
    photo_patches,
)
from imgtx.data.decode import ImageDataError, _to_rgb, decode_image, to_rgb, to_rgb_uint8
from imgtx.data.loaders import collate_images, from_hf_dataset, image_loader, load_images
from imgtx.data.sources import ImageSource, StreamingImageSource

__all__ = [
    "DIGITS_CLASS_NAMES",
    "FLAT_LUMA_STD",
    "PHOTOS_TEST",
    "PHOTOS_TRAIN",
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
    "to_rgb",
    "to_rgb_uint8",
]
# ``_to_rgb`` (the old private name of to_rgb) stays importable here for imgtx.images.
_ = _to_rgb
