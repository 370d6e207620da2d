"""Exact bits/dim of an Image Transformer over a data split (``imgtx eval-bpd``).

Every subpixel of every image is counted once: bits/dim is the sum of the per-image nats over
``num_images * 3 * H * W`` subpixels, in bits (:func:`imgtx.likelihood.bits_per_dim`),
accumulated in float64, so the figure does not depend on the batch size (to float32 rounding of
the logits, ~1e-7). Alongside it, on the very same images:

* ``ci95``: half-width of a 95% Student-t interval over per-image bits/dim
  (:func:`imgtx.eval.stats.mean_and_ci95`); report ``bits_per_dim ± ci95``. It measures how much the
  figure would move on another draw of images from the same source, not model uncertainty.
* ``png_bits_per_dim`` / ``webp_bits_per_dim``: what lossless codecs pay for the same images
  (:mod:`imgtx.eval.compression`), a floor any likelihood model should beat.

Images are never resampled: a model of side S is evaluated on S x S data only (bits/dim at
another resolution is a different quantity), so data of another size is a clear error.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from imgtx.data import ImageDataError, image_loader, load_images
from imgtx.errors import check_at_least
from imgtx.eval.compression import png_bits_per_dim, webp_bits_per_dim
from imgtx.eval.stats import mean_and_ci95
from imgtx.likelihood import bits_per_dim
from imgtx.model import ImageTransformer

__all__ = ["evaluate_model", "evaluate_images", "per_image_values", "mean_bits_per_dim"]

TRIM_EVERY = 16  # batches between hand-backs of freed heap memory (see _release_freed_memory)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_freed_memory() -> None:
    """Give heap memory that freed tensors left behind back to the system. glibc raises its
    mmap threshold to the size of each large block freed (up to 32 MB), so a loop of
    medium-sized tensors comes to allocate them on the heap, whose freed pieces it keeps: over
    20,000 images of a small model that grew the resident memory by ~100 MB, without any object
    being kept. ``malloc_trim(0)`` returns those pieces and costs about a millisecond."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _load_model(model: str | Path | ImageTransformer, device: str | None
                ) -> tuple[ImageTransformer, str]:
    """The model (moved to ``device`` if given) and a name for reports."""
    if isinstance(model, ImageTransformer):
        return (model if device is None else model.to(device)), type(model).__name__
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a save_pretrained directory, a Hub id or an "
                        f"ImageTransformer, got {type(model).__name__}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ImageTransformer.from_pretrained(str(model), device=device), str(model)


def _size_error(error: ImageDataError, model_name: str, size: int, data: str,
                split: str) -> ImageDataError:
    which = str(error).split(";")[0]  # "image 'NAME' is WxH (WxH) but image_size=S needs SxS"
    return ImageDataError(
        f"{model_name} expects {size}x{size} images (config.image_size={size}), but {data!r} "
        f"(split {split!r}) does not match: {which}. Bits/dim are only comparable at the model's "
        f"own resolution, so imgtx does not resample: evaluate on {size}x{size} data, or use a "
        "model trained at the data's size.")


@torch.no_grad()
def per_image_values(batches: Iterable[dict], score: Callable[[dict], dict[str, torch.Tensor]],
                     *, accelerator=None, device: torch.device | str | None = None,
                     limit: int | None = None, bar=None) -> dict[str, torch.Tensor]:
    """The one evaluation loop under every bits/dim figure (training, ``eval-bpd``, ``sr eval``).

    Calls ``score(batch)`` on each batch ``{"image": (B, 3, S, S) uint8, "label": (B,), ...}``
    (moved to ``device``) and collects its per-image values ``{name: (B,)}`` in float64. With an
    ``accelerator``, ``batches`` must be a loader it prepared (sharded across processes): each
    batch's values are gathered with ``gather_for_metrics``, which drops the samples repeated to
    even out the last batch, so every image counts exactly once; then every process returns the
    same figures. ``limit`` keeps the first ``limit`` images. ``bar`` (tqdm) is advanced by
    the images counted.

    Returns ``{name: (N,) float64}`` on the CPU.
    """
    if accelerator is not None:
        device = accelerator.device
    columns: dict[str, list[torch.Tensor]] = {}
    count = 0
    for batch in batches:
        if limit is not None and count >= limit:
            if accelerator is None:
                break
            continue  # a prepared loader is run to its end, so that accelerate closes it
        if accelerator is None and limit is not None:  # score no more images than needed
            batch = {k: v[: limit - count] if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
        if device is not None:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
        values = {name: value.detach().double() for name, value in score(batch).items()}
        if accelerator is not None:
            values = accelerator.gather_for_metrics(values)
            if limit is not None:
                values = {name: value[: limit - count] for name, value in values.items()}
        size = next(iter(values.values())).shape[0] if values else 0
        for name, value in values.items():
            columns.setdefault(name, []).append(value.cpu())
        count += size
        if bar is not None:
            bar.update(size)
        batches_seen = len(next(iter(columns.values()), ()))
        if batches_seen % TRIM_EVERY == 0:
            _release_freed_memory()  # peak memory independent of the number of images
    return {name: torch.cat(parts) for name, parts in columns.items()}


def mean_bits_per_dim(model: torch.nn.Module, loader,
                      bits: Callable[[torch.nn.Module, dict], torch.Tensor], *,
                      accelerator=None, limit: int | None = None) -> float:
    """Mean over images of ``bits(model, batch)`` ``(B,)`` (each image's bits/dim), with
    ``model`` in eval mode, through :func:`per_image_values`: the held-out figure of training.
    Every process gets the same value."""
    was_training = model.training
    model.eval()
    try:
        values = per_image_values(loader, lambda batch: {"bits": bits(model, batch)},
                                  accelerator=accelerator, limit=limit,
                                  device=None if accelerator else next(model.parameters()).device)
    finally:
        model.train(was_training)
    if "bits" not in values or values["bits"].numel() == 0:
        raise ImageDataError("no images to evaluate: the held-out data is empty")
    return float(values["bits"].mean())


@torch.no_grad()
def evaluate_images(model: ImageTransformer, batches, *, num_classes_in_data: int | None = None,
                    limit: int | None = None, baselines: bool = True, progress: bool = True,
                    total: int | None = None, accelerator=None) -> dict[str, Any]:
    """Bits/dim of ``model`` over ``batches`` of ``{"image": (B, 3, S, S) uint8, "label": (B,)}``.

    The core of :func:`evaluate_model`, for callers with their own loader (with an
    ``accelerator``: a loader it prepared; see :func:`per_image_values`). Returns the figures
    (``bits_per_dim``, ``ci95``, ``num_images``, ``png_bits_per_dim``, ``webp_bits_per_dim``,
    ``images_per_second``, ``model_seconds``) and ``per_image_bits_per_dim`` (a list).
    """
    config = model.config
    size = config.image_size
    dims_per_image = 3 * size * size
    device = next(model.parameters()).device
    conditional = bool(config.num_classes)
    codecs = {"png": png_bits_per_dim, "webp": webp_bits_per_dim} if baselines else {}
    codec_notes: dict[str, str] = {}
    model_seconds = 0.0

    def score(batch: dict) -> dict[str, torch.Tensor]:
        nonlocal model_seconds
        images, labels = batch["image"], batch.get("label")
        if conditional and (labels is None or num_classes_in_data is None
                            or bool((labels < 0).any())):
            raise ImageDataError(
                f"the model is class-conditional ({config.num_classes} classes) but the data "
                "has no labels; evaluate it on labelled data (a ClassLabel column or class "
                "subfolders)")
        start = time.perf_counter()
        nats = model.nll(images, labels if conditional else None)  # (B, positions)
        values = {"nats": nats.double().sum(dim=1)}  # (B,)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_seconds += time.perf_counter() - start
        for codec, fn in codecs.items():
            per_image = torch.full((images.shape[0],), math.nan, dtype=torch.float64)
            if codec not in codec_notes:
                try:
                    per_image = torch.from_numpy(fn(images.cpu(), per_image=True)).double()
                except RuntimeError as error:  # e.g. Pillow without WebP
                    codec_notes[codec] = str(error)
            values[codec] = per_image.to(images.device)
        return values

    was_training = model.training
    model.eval()
    show = progress and (accelerator is None or accelerator.is_main_process)
    bar = tqdm(total=total, desc="bits/dim", unit="img", file=sys.stderr, disable=not show,
               dynamic_ncols=True)
    try:
        values = per_image_values(batches, score, accelerator=accelerator, device=device,
                                  limit=limit, bar=bar)
    finally:
        bar.close()
        model.train(was_training)
    count = values["nats"].numel() if values else 0
    if count == 0:
        raise ImageDataError("no images to evaluate: the data split is empty (or limit=0)")
    nats_per_image = values["nats"]  # (N,) float64
    bits_per_image = bits_per_dim(nats_per_image, dims_per_image).tolist()
    _, half_width = mean_and_ci95(bits_per_image)
    result: dict[str, Any] = {
        "bits_per_dim": bits_per_dim(float(nats_per_image.sum()), count * dims_per_image),
        "ci95": half_width,
        "num_images": count,
        "png_bits_per_dim": None,
        "webp_bits_per_dim": None,
        "images_per_second": count / model_seconds if model_seconds > 0 else None,
        "model_seconds": model_seconds,
        "per_image_bits_per_dim": bits_per_image,
    }
    for codec in codecs:
        if not bool(values[codec].isnan().any()):
            result[f"{codec}_bits_per_dim"] = float(values[codec].mean())
    if codec_notes:
        result["baseline_notes"] = codec_notes
    return result


def evaluate_model(model: str | Path | ImageTransformer, data: str, split: str = "test",
                   limit: int | None = None, batch_size: int = 16,
                   image_column: str | None = None, streaming: bool = False,
                   on_error: str = "raise", baselines: bool = True,
                   device: str | None = None, *, progress: bool = True,
                   accelerator=None) -> dict[str, Any]:
    """Exact bits/dim of an Image Transformer on a data split, with codec baselines.

    Args:
        model: a ``save_pretrained`` directory, a Hub id (read offline with ``HF_HUB_OFFLINE=1``
            when cached), or an :class:`~imgtx.model.ImageTransformer`.
        data: an :func:`imgtx.data.load_images` spec: ``builtin:photos32``, an image folder such
            as Downsampled ImageNet's ``valid_32x32/``, or a Hub id such as ``uoft-cs/cifar10``.
        split: the split to evaluate (``test`` falls back to ``validation``/``valid``).
        limit: evaluate the first ``limit`` images only.
        batch_size: images per forward pass; does not change the result.
        image_column: the image column of a Hub dataset, if not found automatically.
        streaming: stream a Hub dataset instead of downloading it whole.
        on_error: ``"raise"`` on an unreadable image, or ``"skip"`` it (counted in ``skipped``).
        baselines: also compute PNG and lossless-WebP bits/dim of the same images.
        device: where to run (default: CUDA if available, else CPU; an instance stays put).
        progress: show a tqdm bar on stderr.
        accelerator: an ``accelerate.Accelerator`` to share the images between processes (run
            under ``torchrun`` / ``accelerate launch``); every process returns the same figures.

    Returns:
        A JSON-ready dict: ``model``, ``data``, ``split``, ``image_size``, ``num_images``,
        ``bits_per_dim``, ``ci95`` (95% half-width over images), ``png_bits_per_dim``,
        ``webp_bits_per_dim``, ``images_per_second`` (model forward passes only), ``seconds``
        (wall clock, data loading and baselines included), ``batch_size``, ``device``,
        ``skipped``, ``limit``.

    Raises:
        ImageDataError (a ValueError): data of a size other than the model's, unlabelled data
            for a class-conditional model, or no images.
    """
    start = time.perf_counter()
    check_at_least("batch_size", batch_size, 1)
    if limit is not None and limit < 1:
        raise ImageDataError(f"no images to evaluate with limit={limit}; give a limit >= 1")
    if accelerator is not None:  # its CPU device is "cpu:0", which safetensors refuses
        device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    model, model_name = _load_model(model, device)
    size = model.config.image_size
    source = load_images(data, split, size, image_column=image_column, streaming=streaming,
                         limit=limit, resize="reject", on_error=on_error)
    if on_error == "skip" and not streaming:
        # A map-style source serves the next readable row in place of an unreadable one; drop
        # unreadable rows first so that no image is counted twice.
        source.scan()
    total = None if streaming else len(source)
    if total == 0:
        raise ImageDataError(f"{data!r} (split {split!r}, limit={limit}) has no images to "
                             "evaluate; check the path, the split name and the limit")
    loader = image_loader(source, batch_size, shuffle=False)
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    try:
        figures = evaluate_images(model, loader, num_classes_in_data=source.num_classes,
                                  limit=limit, baselines=baselines, progress=progress,
                                  total=total, accelerator=accelerator)
    except ImageDataError as error:
        # imgtx.data's resize="reject" message says "... image_size=S needs SxS ..."
        if f"needs {size}x{size}" in str(error):
            raise _size_error(error, model_name, size, data, split) from None
        raise
    figures.pop("per_image_bits_per_dim")
    figures.pop("model_seconds")
    return {
        "model": model_name,
        "data": str(data),
        "split": split,
        "image_size": size,
        **figures,
        "seconds": time.perf_counter() - start,
        "batch_size": batch_size,
        "device": str(next(model.parameters()).device),
        "skipped": source.skipped,
        "limit": limit,
    }
