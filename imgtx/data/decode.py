"""Decoding one stored image and converting it to a ``(3, S, S)`` uint8 RGB tensor.

Conversion rules (:func:`to_rgb_uint8`):

- Grayscale, palette, CMYK and other modes are converted to 8-bit RGB with Pillow.
- 16-bit (and 32-bit integer) grayscale is scaled to 8 bits by ``round(v / 257)``. Float images
  are taken as [0, 1] if their maximum is at most 1, else clipped to [0, 255].
- Images with an alpha channel (RGBA, LA, PA, palette or grayscale with transparency) are
  composited onto white, because the colour under a transparent pixel is arbitrary.
- ``resize="crop-area"`` (default) center-crops to a square of side ``min(W, H)``, then resamples
  to ``S x S``: area averaging (``PIL.Image.BOX``) when shrinking, bicubic when enlarging.
  ``resize="reject"`` raises :class:`ImageDataError` for any image that is not ``S x S``.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from imgtx.errors import UserError

__all__ = ["ImageDataError", "decode_image", "to_rgb", "to_rgb_uint8"]

RESIZE_MODES = ("crop-area", "reject")
ON_ERROR_MODES = ("raise", "skip")
SKIP_HINT = "delete or fix the file, or skip unreadable images (on_error='skip', --on-error skip)"
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-f]+>")  # "<_io.BytesIO object at 0x..>"


class ImageDataError(UserError, ValueError):
    """An image or data spec that cannot be loaded; the message says which one and what to do."""


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ImageDataError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ImageDataError(f"{what}={value!r} is not one of {list(choices)}")


def decode_image(value: Any, name: str) -> PIL.Image.Image:
    """Decode one stored image into a fully loaded PIL image.

    ``value`` is a PIL image, a datasets ``{"bytes", "path"}`` dict (as given by
    ``Image(decode=False)``), a file path, raw encoded bytes, or an ``(H, W[, C])`` array.
    Raises :class:`ImageDataError` naming ``name`` when it cannot be decoded (not an image,
    truncated or corrupt), in one line that says what to do.
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
        if isinstance(error, PIL.UnidentifiedImageError):
            reason = "not a readable image (unknown format, or a corrupt or truncated file)"
        else:
            reason = _OBJECT_REPR.sub("", str(error)).replace("\n", " ") or type(error).__name__
        raise ImageDataError(f"could not decode image {name!r}: {reason}; {SKIP_HINT}") from error
    return image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
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


_to_rgb = to_rgb  # the name imgtx.images imported before the split


def to_rgb_uint8(
    image: PIL.Image.Image, image_size: int, resize: str = "crop-area", name: str = "image"
) -> torch.Tensor:
    """Convert a PIL image to a ``(3, S, S)`` uint8 RGB tensor with ``S = image_size``.

    See the module docstring for the mode conversions. ``resize="crop-area"`` center-crops to a
    square and resamples (BOX when shrinking, bicubic when enlarging); ``resize="reject"`` raises
    :class:`ImageDataError` if the image is not already ``S x S``.
    """
    check_choice("resize", resize, RESIZE_MODES)
    try:
        rgb = to_rgb(image)
    except Exception as error:
        raise ImageDataError(
            f"could not convert image {name!r} (mode {image.mode}) to RGB: {error}; "
            "re-save it as 8-bit RGB, or skip unreadable images (on_error='skip')"
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
