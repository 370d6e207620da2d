"""Class accuracy of class-conditional samples, judged by the shipped digit classifier.

The classifier is the digit head of the shipped feature network ``imgtx-small``
(:class:`imgtx.eval.features.SmallFeatureNet`, ``checkpoints/imgtx-features-small``), trained on
the real ``builtin:digits`` training split only. Its own accuracy on the held-out test split is
stored in the checkpoint's ``config.json`` (``digits_test_accuracy``) and must be reported beside
any class accuracy it measures: a generator cannot be judged more precisely than that.
"""

from __future__ import annotations

import numpy as np
import torch

from imgtx.errors import UserError
from imgtx.eval.features import SmallFeatureNet, load_small_feature_net

__all__ = [
    "DIGITS_SPEC",
    "class_accuracy",
    "classifier_test_accuracy",
    "digit_classifier",
    "load_digits_split",
    "predict_digits",
]

DIGITS_SPEC = "builtin:digits"


def load_digits_split(
    split: str = "test", image_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of one split of ``builtin:digits``.

    Returns:
        ``images (N, 3, S, S)`` uint8 and ``labels (N,)`` int64 (test: 360 images, train: 1,437).
    """
    from imgtx.data import load_images

    source = load_images(DIGITS_SPEC, split=split, image_size=image_size)
    items = [source[i] for i in range(len(source))]
    images = torch.stack([item["image"] for item in items])  # (N, 3, S, S)
    labels = torch.tensor([int(item["label"]) for item in items], dtype=torch.long)  # (N,)
    return images, labels


def digit_classifier(
    path: str | None = None, device: str | torch.device = "cpu"
) -> SmallFeatureNet:
    """The shipped digit classifier (the feature network; its digit head classifies)."""
    return load_small_feature_net(path, device)


@torch.no_grad()
def predict_digits(
    images: torch.Tensor, classifier: SmallFeatureNet | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Predicted digit class of each image: ``(N, 3, H, W)`` uint8 -> ``(N,)`` int64."""
    classifier = classifier or digit_classifier()
    predictions = [
        classifier.probabilities(images[i : i + batch_size]).argmax(dim=-1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def class_accuracy(
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    classifier: SmallFeatureNet | None = None,
    batch_size: int = 256,
) -> float:
    """Fraction of images the digit classifier assigns to their label.

    Args:
        images: ``(N, 3, 32, 32)`` uint8 (other sizes are resized by the network).
        labels: ``(N,)`` the class each image was generated for (or its true class).
        classifier: a loaded classifier; default the shipped one.
        batch_size: images per forward pass.

    Returns:
        Accuracy in [0, 1]. For real test digits with true labels it equals
        :func:`classifier_test_accuracy`; for labels unrelated to the images it is about 0.1.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise UserError(
            f"class_accuracy needs (N, 3, H, W) images and N labels with N > 0, got images "
            f"{tuple(images.shape)} and {len(labels)} labels"
        )
    predicted = predict_digits(images, classifier, batch_size)
    return float((predicted == labels).double().mean())


def classifier_test_accuracy(classifier: SmallFeatureNet | None = None) -> float:
    """The classifier's own accuracy on the real ``builtin:digits`` test split (from its card)."""
    classifier = classifier or digit_classifier()
    card = getattr(classifier, "card", {})
    if "digits_test_accuracy" not in card:
        raise UserError("the feature network's config.json has no digits_test_accuracy")
    return float(card["digits_test_accuracy"])
