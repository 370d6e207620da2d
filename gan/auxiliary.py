"""The auxiliary-classifier term of AC-GAN (Odena et al. 2017, "Conditional Image Synthesis with
Auxiliary Classifier GANs", sec. 3), added to any loss of :mod:`imgtx.gan.losses`.

A discriminator built with ``aux_classifier=True`` has a classifier head on the features its
critic reads (:class:`imgtx.gan.conditioning.ProjectionHead`). :class:`AuxiliaryClassifierLoss`
wraps a GAN loss and adds

* to D's loss: ``weight * CE(classifier(x_real), y)``, the classifier trained on real images only;
* to G's loss: ``weight * CE(classifier(G(z, y)), y)``, so G is pushed to draw class ``y``.

Odena et al. train D's classifier on fakes as well; we train it on real images only (our choice:
early fakes carry their intended labels but none of the classes' shapes, so they would only
teach the classifier noise). The projection term stays; the classifier gives G a class signal
from the first steps, where the projection alone teaches the classes slowly.

The class-accuracy figure of :mod:`imgtx.gan.evaluate` should be read beside FID: Gong et al. 2019
("Twin Auxiliary Classifiers GAN") show that AC-GAN's term pushes G towards easily classified
samples, at some cost in diversity. ``fade_kimg`` answers that with a schedule: G's share of the
term falls linearly from ``weight`` to 0 over the first ``fade_kimg`` thousand real images, after
which the projection head (Miyato & Koyama 2018) alone conditions G. D keeps training its
classifier on real images at ``weight`` throughout, so the accuracy figure stays meaningful.

The wrapped loss calls D once on the real batch (WGAN-GP and R1 also on the penalty's inputs);
those calls go through :class:`_ClassLogitTap`, which asks D for its class logits as well and
keeps those of the real batch (matched by storage, so ``real.detach()`` counts), so the term
costs no extra D forward.

Shapes: images ``(B, 3, H, W)``, labels ``(B,)``, logits ``(B, K)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from imgtx.errors import UserError

__all__ = ["AuxiliaryClassifierLoss"]


class _ClassLogitTap:
    """Calls ``D(images, labels, return_class_logits=True)``; returns the critic value and keeps
    the logits of the call whose input shares storage with ``target``."""

    def __init__(self, D, target: torch.Tensor) -> None:
        self.D, self.target = D, target
        self.logits: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out, logits = self.D(images, labels, return_class_logits=True)
        if self.logits is None and images.data_ptr() == self.target.data_ptr():
            self.logits = logits  # (B, K)
        return out

    def logits_for(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The kept logits, or a forward of its own if the wrapped loss never passed ``target``."""
        if self.logits is None:
            self.logits = self.D(images, labels, return_class_logits=True)[1]
        return self.logits


class AuxiliaryClassifierLoss:
    """``loss`` plus the AC-GAN classification term of weight ``weight`` (module docstring).

    Same interface as the losses it wraps: ``discriminator(D, real, fake, labels) -> (loss,
    parts)`` (parts gain ``d_class`` and ``d_class_acc``) and ``generator(D, fake, labels)``.
    """

    def __init__(self, loss, weight: float = 1.0, fade_kimg: float | None = None,
                 images_seen: Callable[[], int] | None = None) -> None:
        if not weight > 0:
            raise UserError(f"aux_weight must be > 0, got {weight}")
        if fade_kimg is not None and not (fade_kimg > 0 and images_seen is not None):
            raise UserError(f"aux_fade_kimg must be > 0 and needs the run's image count, got "
                            f"{fade_kimg}")
        self.loss, self.weight = loss, weight
        self.fade_kimg, self.images_seen = fade_kimg, images_seen
        self.name = f"{loss.name}+ac"

    def generator_weight(self) -> float:
        """G's weight of the class term now: ``weight``, or with ``fade_kimg`` falling linearly
        to 0 at ``fade_kimg`` thousand real images."""
        if self.fade_kimg is None:
            return self.weight
        return self.weight * max(0.0, 1.0 - self.images_seen() / (1000 * self.fade_kimg))

    def discriminator(self, D, real: torch.Tensor, fake: torch.Tensor,
                      labels: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        if labels is None:
            raise UserError("the auxiliary-classifier loss needs class labels")
        tap = _ClassLogitTap(D, real)
        loss, parts = self.loss.discriminator(tap, real, fake, labels)
        logits = tap.logits_for(real, labels)  # (B, K)
        ce = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss + self.weight * ce, {**parts, "d_class": float(ce.detach()),
                                         "d_class_acc": float(accuracy)}

    def generator(self, D, fake: torch.Tensor, labels: torch.Tensor | None = None
                  ) -> torch.Tensor:
        if labels is None:
            raise UserError("the auxiliary-classifier loss needs class labels")
        weight = self.generator_weight()
        if weight == 0:
            return self.loss.generator(D, fake, labels)
        tap = _ClassLogitTap(D, fake)
        loss = self.loss.generator(tap, fake, labels)
        return loss + weight * F.cross_entropy(tap.logits_for(fake, labels), labels)
