"""Views of a generator beside FID: bits/dim under a likelihood model, and within-class variety.

* :func:`likelihood_figures` -- mean bits/dim of image sets under an Image Transformer: smooth,
  blob-like samples read far below real photos, noise far above, so the number places a GAN's
  samples on the scale of the toolkit's likelihood family.
* :func:`grid_edge_ratio` -- how much larger the steps between neighbouring pixels are across
  the lines of a regular grid (every 4, 8, 16 pixels) than elsewhere: near 1 for photos, and
  well above it for a generator whose windows or tokens show as blocks.
* :func:`class_variety` -- for a class-conditional generator, how varied the samples of each class
  are next to the class's real images (a generator that draws one digit per class scores near 0),
  and each class's FID beside its real-versus-real floor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from imgtx.errors import UserError
from imgtx.eval.features import FeatureExtractor, compute_features
from imgtx.eval.fid import fid_from_features
from imgtx.eval.stats import mean_pairwise_distance

__all__ = ["GRID_PERIODS", "class_variety", "grid_edge_ratio", "likelihood_figures",
           "load_likelihood_model"]

GRID_PERIODS = (4, 8, 16)  # token and window sides of the 32x32 generators


def grid_edge_ratio(images: torch.Tensor, period: int) -> float:
    """Mean absolute difference between neighbouring pixels across the grid lines (between rows
    and columns ``k * period - 1`` and ``k * period``), over the same figure everywhere else.

    A Swin stage whose windows never shift, or a token grid upsampled by repetition, leaves
    steps on its window or token borders: the ratio then grows well above the ~1 of photos.

    Args:
        images: ``(N, C, H, W)``, any dtype.
        period: grid spacing in pixels (less than H and W).

    Returns:
        The ratio (horizontal and vertical steps pooled).
    """
    if images.ndim != 4 or not 1 < period < min(images.shape[-2:]):
        raise UserError(f"grid_edge_ratio needs (N, C, H, W) images larger than the period "
                        f"{period}, got {tuple(images.shape)}")
    x = images.double()
    across = [(x[..., :, 1:] - x[..., :, :-1]).abs(),  # (N, C, H, W-1): column j | j+1
              (x[..., 1:, :] - x[..., :-1, :]).abs().transpose(-1, -2)]  # rows, transposed
    on, off = [], []
    for steps in across:
        line = torch.arange(1, steps.shape[-1] + 1) % period == 0
        on.append(steps[..., line].flatten())
        off.append(steps[..., ~line].flatten())
    return float(torch.cat(on).mean() / torch.cat(off).mean().clamp_min(1e-12))


def load_likelihood_model(model: str, device: str | torch.device = "cpu"):
    """An unconditional Image Transformer from a folder or Hub id, or a one-line user error."""
    from imgtx.model import ImageTransformer

    try:
        likelihood = ImageTransformer.from_pretrained(model, device=str(device))
    except Exception as error:  # a missing folder, a bad id, another model's config
        raise UserError(f"--likelihood-model {model!r} is not an Image Transformer folder or "
                        f"Hub id ({str(error).splitlines()[0] if str(error) else error!r}); "
                        "e.g. checkpoints/imgtx-photos-dmol-small") from None
    if likelihood.config.num_classes:
        raise UserError(f"--likelihood-model {model!r} is class-conditional; give an "
                        "unconditional model")
    return likelihood


def likelihood_figures(model: Any, image_sets: dict[str, torch.Tensor], batch_size: int = 16,
                       device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean bits/dim of each image set under an Image Transformer, through the loop of
    ``imgtx eval-bpd`` (:func:`imgtx.eval.bits_per_dim.evaluate_images`), so a set's figure is
    the one ``eval-bpd`` gives for the same images.

    Args:
        model: a ``save_pretrained`` folder or Hub id of an unconditional Image Transformer,
            or the model (:func:`load_likelihood_model`).
        image_sets: ``{name: (N, 3, S, S) uint8}`` with ``S`` the model's image size.

    Returns:
        ``{name}_bits_per_dim`` and ``{name}_bits_per_dim_ci95`` (95% half-width over images)
        for each set.
    """
    from imgtx.eval.bits_per_dim import evaluate_images

    likelihood = load_likelihood_model(model, device) if isinstance(model, str) else model
    label = model if isinstance(model, str) else type(model).__name__
    size = likelihood.config.image_size
    figures = {}
    for name, images in image_sets.items():
        if tuple(images.shape[1:]) != (3, size, size):
            raise UserError(f"--likelihood-model {label!r} scores {size}x{size} images, but the "
                            f"{name} images are {tuple(images.shape[2:])}; use a model of "
                            "the generator's size")
        batches = [{"image": images[i : i + batch_size]}
                   for i in range(0, len(images), batch_size)]
        result = evaluate_images(likelihood, batches, baselines=False, progress=False)
        figures[f"{name}_bits_per_dim"] = result["bits_per_dim"]
        figures[f"{name}_bits_per_dim_ci95"] = result["ci95"]
    return figures


def _labelled(data: str, split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``(N, 3, S, S)`` uint8 and labels ``(N,)`` of a split."""
    from imgtx.data import load_images

    source = load_images(data, split=split, image_size=image_size)
    rows = [source[i] for i in range(len(source))]
    return (torch.stack([row["image"] for row in rows]),
            torch.tensor([int(row["label"]) for row in rows]))


def class_variety(generator: Any, data: str, extractor: FeatureExtractor,
                  per_class: int = 200, batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """Within-class variety and per-class FID of a conditional generator, class by class.

    For class ``c``: ``per_class`` samples (seed ``seed + 1000 c + batch``) and the class's real
    ``train`` and ``test`` images of ``data``.

    * ``variety_ratio[c]``: mean pairwise L2 distance of the samples (pixels in [0, 1]) over the
      same figure for the class's real training images (1: as varied as the data; a collapsed
      class is near 0).
    * ``class_fid[c]``: FID against the class's training images of ``n_c`` samples, ``n_c`` the
      class's test-image count, averaged over the ``per_class // n_c`` disjoint sets of ``n_c``
      samples (``class_fid_range[c]``: their lowest and highest); ``class_floor_fid[c]``: FID
      of those ``n_c`` test images against the same training images (same count, so the same
      small-sample bias). FID on about 36 images is noisy: one set of samples alone can read
      twice another's, so the mean over sets is the figure compared with the floor.

    Returns those lists and ``class_fid_over_floor`` (per class), with ``num_per_class``.
    """
    size = int(generator.config.image_size)
    num_classes = int(getattr(generator.config, "num_classes", 0) or 0)
    train_images, train_labels = _labelled(data, "train", size)
    test_images, test_labels = _labelled(data, "test", size)
    if int(train_labels.min()) < 0:
        raise UserError(f"{data!r} has no class labels; per-class figures need labelled data "
                        "such as builtin:digits")
    result: dict[str, Any] = {"variety_ratio": [], "class_fid": [], "class_fid_range": [],
                              "class_floor_fid": [], "class_fid_over_floor": [],
                              "num_per_class": per_class}
    parameter = next(generator.parameters(), None) if isinstance(generator, nn.Module) else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    for label in range(num_classes):
        real = train_images[train_labels == label]
        held = test_images[test_labels == label]
        with torch.no_grad():
            fake = torch.cat([generator.generate(
                min(batch_size, per_class - start),
                labels=torch.full((min(batch_size, per_class - start),), label, device=device),
                seed=seed + 1000 * label + index).cpu()
                for index, start in enumerate(range(0, per_class, batch_size))])
        spread = mean_pairwise_distance(fake.double().numpy() / 255)
        result["variety_ratio"].append(spread / mean_pairwise_distance(real.double().numpy() / 255))
        real_features = compute_features(extractor, real, batch_size)
        fake_features = compute_features(extractor, fake, batch_size)
        n = len(held)
        fids = [fid_from_features(fake_features[k * n : (k + 1) * n], real_features)
                for k in range(max(1, len(fake) // n))]
        fid = sum(fids) / len(fids)
        floor = fid_from_features(compute_features(extractor, held, batch_size), real_features)
        result["class_fid"].append(fid)
        result["class_fid_range"].append([min(fids), max(fids)])
        result["class_floor_fid"].append(floor)
        result["class_fid_over_floor"].append(fid / floor)
    return result
