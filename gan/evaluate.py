"""Evaluate a generator against real images: FID, KID, IS, baselines and class accuracy.

:func:`evaluate_generator` is what ``imgtx gan eval`` runs. Small-network FIDs mean little on their
own, so ``baselines=True`` measures, with the same extractor and counts, a freshly initialised
generator of the same config (``untrained_*``: the ceiling a trained model must get well below) and
``num_samples`` real training images in place of the generated ones (``floor_*``: what a perfect
generator of the training distribution would score at this sample count).

Two more views (:mod:`imgtx.gan.yardstick`): ``likelihood_model`` adds the mean bits/dim of
samples and of real images under an Image Transformer (the loop of ``imgtx eval-bpd``), and a
conditional generator gets per-class variety and FID.

The generator needs ``generate(num, labels=None, seed=0) -> (N, 3, H, W) uint8`` and a ``config``
with ``image_size`` and ``num_classes`` (0 for unconditional), and ``type(generator)(config)``
must build a fresh one.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from imgtx.errors import UserError, check_at_least, check_positive
from imgtx.eval.classifier import DIGITS_SPEC, classifier_test_accuracy, predict_digits
from imgtx.eval.features import FeatureExtractor, SmallFeatureNet, compute_features, get_extractor
from imgtx.eval.fid import (
    ReferenceStatistics,
    cached_reference_statistics,
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from imgtx.gan.yardstick import (
    GRID_PERIODS,
    class_variety,
    grid_edge_ratio,
    likelihood_figures,
    load_likelihood_model,
)

__all__ = ["class_variety", "evaluate_generator", "likelihood_figures", "real_images",
           "reference_statistics", "spread_indices"]

KID_SUBSETS = 100
# Bińkowski et al. 2018 use subsets of 1000. With fewer than 2000 images on a side, subsets are
# half the smaller side: a subset as large as the whole set would be the same rows every time, and
# kid_std would be 0 rather than the spread over subsets.
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
GRID_IMAGES = 512  # samples and real images of the grid-edge view (gan.yardstick.grid_edge_ratio)


def spread_indices(total: int, count: int) -> list[int]:
    """``min(count, total)`` indices spread evenly over ``range(total)`` (all of them when
    ``count >= total``). Splits are often stored photo by photo or class by class, so the first
    ``count`` rows can be one photo; evenly spaced rows cover the whole split, deterministically."""
    if count >= total:
        return list(range(total))
    return [(i * total) // count for i in range(count)]


def real_images(data: str, split: str, image_size: int, count: int) -> torch.Tensor:
    """``count`` images (or all, if fewer) spread evenly over a split (:func:`spread_indices`):
    ``(N, 3, S, S)`` uint8."""
    from imgtx.data import load_images

    source = load_images(data, split=split, image_size=image_size)
    images = [source[i]["image"] for i in spread_indices(len(source), count)]
    if len(images) < 2:
        raise UserError(f"{data!r} split {split!r} has {len(images)} images; FID needs >= 2")
    return torch.stack(images)  # (N, 3, S, S)


def _fingerprint(extractor: FeatureExtractor) -> str:
    """A short hash of the extractor's weights, so retrained weights never reuse cached stats."""
    module = extractor if isinstance(extractor, nn.Module) else None
    module = module or getattr(extractor, "module", None) or getattr(extractor, "network", None)
    digest = hashlib.sha256(type(extractor).__name__.encode())
    if isinstance(module, nn.Module):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def reference_statistics(
    data: str,
    split: str,
    image_size: int,
    count: int,
    features: str,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    use_cache: bool = True,
) -> ReferenceStatistics:
    """Features and Gaussian fit of ``count`` real images spread over a split, cached on disk.

    The cache key holds the data spec, split, image size, extractor name and weight fingerprint,
    and the requested ``count``; ``len(result.features)`` is the number of images really used.
    """
    key = {"data": data, "split": split, "image_size": image_size, "features": features,
           "fingerprint": _fingerprint(extractor), "count": count, "rows": "spread"}  # fmt: skip

    def compute() -> np.ndarray:
        return compute_features(extractor, real_images(data, split, image_size, count), batch_size)

    return cached_reference_statistics(key, compute, use_cache)


class _Shard:
    """Which sample batches this process makes when several share an evaluation (``torchrun``,
    ``accelerate launch``): batch ``i`` goes to process ``i % processes``. Each batch keeps its
    seed (``seed + i``) and its size, so the gathered results are those of one process."""

    def __init__(self, accelerator: Any = None) -> None:
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.processes = accelerator.num_processes if accelerator is not None else 1

    def gather(self, items: list) -> list:
        """Every process's ``items``, concatenated, on every process."""
        if self.processes == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)


def _has_labels(data: str, image_size: int) -> bool:
    """Whether ``data``'s train split carries class labels (class subfolders, a label column)."""
    from imgtx.data import load_images

    return load_images(data, split="train", image_size=image_size).class_names is not None


def _num_classes(generator: Any) -> int:
    """The generator's class count (0: unconditional)."""
    return int(getattr(generator.config, "num_classes", 0) or 0)


def _labels(generator: Any, num: int) -> torch.Tensor | None:
    """Balanced labels ``0, 1, ..., K-1, 0, ...`` for a conditional generator, else None."""
    num_classes = _num_classes(generator)
    return torch.arange(num) % num_classes if num_classes > 0 else None


def _samples(generator: Any, num: int, batch_size: int, seed: int, shard: _Shard,
             extractor: FeatureExtractor, with_probabilities: bool = False,
             classifier: SmallFeatureNet | None = None, keep: int = 0) -> dict[str, Any]:
    """Generate ``num`` samples in batches (seed ``seed + batch index``, balanced labels), this
    process's share of the batches only, and reduce each batch at once to what the metrics need:
    extractor features, class probabilities (``with_probabilities``) and, with a ``classifier``
    and a conditional generator, how many samples it assigns to their label. Gathered over the
    processes, in batch order.

    Returns ``features`` ``(N, dim)`` float64, ``probabilities`` ``(N, K)`` or None,
    ``class_accuracy`` or None, ``per_process`` (samples made by each process) and ``images``:
    the first ``keep`` samples, ``(keep, 3, H, W)`` uint8.
    """
    labels = _labels(generator, num)
    parameter = next(generator.parameters(), None) if isinstance(generator, nn.Module) else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    mine = []
    with torch.no_grad():
        for index, start in enumerate(range(0, num, batch_size)):
            if index % shard.processes != shard.rank:
                continue
            n = min(batch_size, num - start)
            part = None if labels is None else labels[start : start + n]
            images = generator.generate(n, labels=None if part is None else part.to(device),
                                        seed=seed + index).cpu()
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
                raise UserError(f"generate must return (N, 3, H, W) uint8, got {images.dtype} "
                                f"{tuple(images.shape)}")  # fmt: skip
            probs = extractor.probabilities(images).double().cpu() if with_probabilities else None
            correct = None
            if classifier is not None and part is not None:
                correct = int((predict_digits(images, classifier, batch_size) == part).sum())
            kept = images[: max(0, keep - start)]
            mine.append((index, compute_features(extractor, images, batch_size), probs, correct,
                         kept, shard.rank))
    batches = sorted(shard.gather(mine), key=lambda item: item[0])
    per_process = [0] * shard.processes
    for _, features, *_, rank in batches:
        per_process[rank] += len(features)
    counted = [item[3] for item in batches]
    return {
        "features": np.concatenate([item[1] for item in batches]),
        "probabilities": torch.cat([item[2] for item in batches]) if with_probabilities else None,
        "class_accuracy": (sum(counted) / num) if counted and counted[0] is not None else None,
        "per_process": per_process,
        "images": torch.cat([item[4] for item in batches])[:keep],
    }


def _distances(
    fake: np.ndarray, real: ReferenceStatistics, seed: int, prefix: str = ""
) -> dict[str, float]:
    subset = min(KID_SUBSET_SIZE, max(2, min(len(fake), len(real.features)) // 2))
    kid, kid_std = kernel_inception_distance(fake, real.features, KID_SUBSETS, subset, seed)
    fid = frechet_distance(*feature_statistics(fake), real.mu, real.sigma)
    return {f"{prefix}fid": fid, f"{prefix}kid": kid, f"{prefix}kid_std": kid_std}


def _untrained_copy(generator: Any, seed: int) -> Any:
    """The same config, freshly initialised under a fixed seed, on the generator's device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(generator)(generator.config)
    if isinstance(generator, nn.Module):
        parameter = next(generator.parameters(), None)
        if parameter is not None:
            fresh = fresh.to(parameter.device)
        fresh.train(generator.training)
    return fresh


def evaluate_generator(
    generator: Any,
    data: str,
    split: str = "test",
    num_samples: int = 512,
    features: str = "imgtx-small",
    baselines: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    use_cache: bool = True,
    accelerator: Any = None,
    likelihood_model: str | None = None,
    likelihood_images: int = 256,
    variety_per_class: int = 0,
) -> dict[str, Any]:
    """FID/KID (and IS, class accuracy, baselines) of ``generator`` against real images.

    Args:
        generator: has ``generate(num, labels=None, seed=0) -> (N, 3, H, W) uint8`` and
            ``config.image_size``/``config.num_classes``.
        data: image spec of the real images (see :func:`imgtx.data.load_images`).
        split: the real split to compare with (usually ``"test"``).
        num_samples: generated images; the real side uses as many, or all the split has.
        features: extractor name (:func:`imgtx.eval.features.get_extractor`).
        baselines: also measure an untrained generator and real train-vs-test images.
        batch_size: images per generate / feature batch.
        device: where the extractor runs.
        seed: sample seed (batch ``i`` uses ``seed + i``); also seeds the KID subsets and the
            untrained generator's initialisation.
        use_cache: read/write the real-image statistics cache
            (:func:`imgtx.eval.fid.fid_stats_dir`).
        accelerator: an ``accelerate.Accelerator`` of several processes (``torchrun``): each
            generates and extracts features for every ``processes``-th batch of samples, the
            results are gathered, and every process returns the figures of one process (the
            main process computes the real statistics first and caches them for the others).
        likelihood_model: an Image Transformer (folder or Hub id) that scores the first
            ``likelihood_images`` samples and as many real images of ``split``
            (:func:`likelihood_figures`: ``samples_bits_per_dim``, ``real_bits_per_dim``, each
            with ``_ci95``).
        variety_per_class: samples per class for
            :func:`imgtx.gan.yardstick.class_variety` (conditional generators on labelled data;
            0, the default here, skips it; ``imgtx gan eval`` asks for 200).

    Returns:
        ``fid``, ``kid``, ``kid_std``, ``num_samples``, ``num_real``, ``features``, ``data``,
        ``split``; ``is``/``is_std`` where the extractor has class probabilities that fit the
        data (Inception always; ``imgtx-small`` only on ``builtin:digits``); with ``baselines``,
        ``untrained_fid``/``untrained_kid``/``untrained_kid_std`` and
        ``floor_fid``/``floor_kid``/``floor_kid_std`` (``num_samples`` real training images in
        place of the generated ones) and ``num_floor``; for a conditional generator,
        ``class_accuracy`` (and ``untrained_class_accuracy``) with ``classifier_test_accuracy``,
        plus ``class_accuracy_caveat`` when the data is not ``builtin:digits``. Images larger
        than 16 pixels get ``grid_edge_ratio`` and ``real_grid_edge_ratio``: for each period
        of :data:`GRID_PERIODS`, :func:`imgtx.gan.yardstick.grid_edge_ratio` of up to 512
        samples and as many real images.
    """
    check_at_least("num_samples", num_samples, 2)
    check_positive("batch_size", batch_size)
    image_size = int(generator.config.image_size)
    shard = _Shard(accelerator)
    extractor = get_extractor(features, device)

    def real_statistics(real_split: str) -> ReferenceStatistics:
        first = accelerator.main_process_first() if accelerator is not None else nullcontext()
        with first:
            return reference_statistics(data, real_split, image_size, num_samples, features,
                                        extractor, batch_size, use_cache)

    # A wrong likelihood model fails now, not after the samples are made.
    likelihood = load_likelihood_model(likelihood_model, device) if likelihood_model else None
    real = real_statistics(split)
    probabilities = getattr(extractor, "probabilities", None)
    fits_data = features.startswith("inception") or data == DIGITS_SPEC
    with_is = probabilities is not None and fits_data and num_samples >= IS_SPLITS
    conditional = _num_classes(generator) > 0
    classifier = None
    if conditional:
        classifier = extractor if isinstance(extractor, SmallFeatureNet) else None
        classifier = classifier or get_extractor("imgtx-small", device)
    keep = min(num_samples, likelihood_images) if likelihood_model else 0
    grid_images = min(num_samples, GRID_IMAGES)
    fake = _samples(generator, num_samples, batch_size, seed, shard, extractor, with_is,
                    classifier, max(keep, grid_images))
    result: dict[str, Any] = {
        **_distances(fake["features"], real, seed),
        "num_samples": num_samples,
        "num_real": len(real.features),
        "features": features,
        "data": data,
        "split": split,
        "seed": seed,
    }
    if shard.processes > 1:
        result["samples_per_process"] = fake["per_process"]
    if with_is:
        result["is"], result["is_std"] = inception_score(fake["probabilities"], IS_SPLITS)
    if conditional:
        result["class_accuracy"] = fake["class_accuracy"]
        result["classifier_test_accuracy"] = classifier_test_accuracy(classifier)
        if data != DIGITS_SPEC:
            result["class_accuracy_caveat"] = (
                "the classifier was trained on builtin:digits; on other data class_accuracy "
                "is not meaningful"
            )
        if variety_per_class and _has_labels(data, image_size):
            result.update(class_variety(generator, data, extractor, variety_per_class,
                                        batch_size, seed))
        elif variety_per_class:  # e.g. a generator conditioned on labels the eval data lacks
            result["class_variety_skipped"] = (
                f"{data} has no class labels: variety_ratio and class_fid need a labelled "
                "train and test split")
    if likelihood_model:
        scored = real_images(data, split, image_size, keep)
        result["likelihood_model"] = likelihood_model
        result["likelihood_images"] = keep
        result.update(likelihood_figures(likelihood, {"samples": fake["images"][:keep],
                                                      "real": scored}))
    if image_size > max(GRID_PERIODS):
        real_grid = real_images(data, split, image_size, grid_images)
        result["grid_edge_ratio"] = {str(p): grid_edge_ratio(fake["images"][:grid_images], p)
                                     for p in GRID_PERIODS}
        result["real_grid_edge_ratio"] = {str(p): grid_edge_ratio(real_grid, p)
                                          for p in GRID_PERIODS}

    if baselines:
        untrained = _samples(_untrained_copy(generator, seed), num_samples, batch_size, seed,
                             shard, extractor, classifier=classifier)
        result.update(_distances(untrained["features"], real, seed, "untrained_"))
        if conditional:
            result["untrained_class_accuracy"] = untrained["class_accuracy"]
        # As many real training images as generated ones (or all there are), so the floor has
        # the same small-sample bias as ``fid``.
        train = real_statistics("train")
        result.update(_distances(train.features, real, seed, "floor_"))
        result["num_floor"] = len(train.features)
    return result
