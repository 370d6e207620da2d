"""The base classes of every GAN model: :class:`Generator` and :class:`Discriminator`.

Both are :class:`imgtx.hub.HubModel`\\ s whose ``from_pretrained`` builds the class that
``config.json`` names (``_class_name``, as diffusers records it): ``Generator.from_pretrained(dir)``
gives a ``TransGANGenerator`` or an ``STransGenerator``, whichever was saved, and refuses a
discriminator's folder (or any other model's) with a message saying what it holds.

Folders saved before the class was recorded are told apart by their config keys
(:meth:`GANModel.legacy_class`): each family's config dataclass has fields the others lack
(TransGAN's ``bottom_width``, STrans's ``swin_from``, ...).

What a family writes is its layers: a generator's ``forward(z, labels)``; a discriminator's
``features(images) -> (B, D)``, the input of its critic head. :meth:`Generator.generate` and the
opening of :meth:`Discriminator.forward` (shape check, DiffAugment) are written here once.

Shapes: B batch, L latent width, D the critic head's input width, S image side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from imgtx.attention import set_backend
from imgtx.gan.conditioning import check_labels
from imgtx.gan.diffaugment import AugmentedInput
from imgtx.hub import HubModel
from imgtx.hub.config import CLASS_NAME_KEY, IGNORED_FIELDS_ATTRIBUTE
from imgtx.hub.errors import ConfigMismatchError
from imgtx.hub.files import CONFIG_FILE

__all__ = ["GANModel", "Generator", "Discriminator", "images_to_uint8", "labels_for",
           "labels_in_blocks"]


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` floats -> ``[0, 255]`` uint8 (clamped, rounded), on the CPU."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def labels_for(num: int, labels, num_classes: int) -> torch.Tensor | None:
    """:meth:`Generator.generate`'s labels as ``(num,)`` class ids, or None when unconditional:
    None (a conditional model cycles through 0..K-1), one int for all, or ``num`` ids."""
    if num_classes and labels is None:
        return torch.arange(num) % num_classes
    if isinstance(labels, int):
        labels = torch.full((num,), labels, dtype=torch.long)
    if labels is None:
        return None
    return check_labels(torch.as_tensor(labels), num_classes, num, "generator")


def labels_in_blocks(num: int, num_classes: int) -> torch.Tensor | None:
    """``num`` class ids in equal runs, 0 first (``0, 0, ..., 1, 1, ...``): a grid of ``num``
    samples then shows one class per row when ``num`` is rows × columns and the class count is
    the row count. None when unconditional (``num_classes`` 0)."""
    return torch.arange(num) * num_classes // num if num_classes else None


class GANModel(HubModel):
    """What generators and discriminators share: the run-time attention backend and loading by
    the saved class name. ``role`` (``"generator"`` / ``"discriminator"``) is set by
    :class:`Generator` and :class:`Discriminator`."""

    role: ClassVar[str] = "GAN model"

    def set_backend(self, backend: str) -> GANModel:
        """Compute every attention layer with ``backend`` from now on; returns the model."""
        set_backend(self, backend)
        return self

    @classmethod
    def saved_class(cls, data: Mapping[str, Any], where: str = CONFIG_FILE) -> type[HubModel]:
        """The class to build from config.json ``data``, as :meth:`HubModel.saved_class`; a GAN
        model of the other role (a discriminator where a generator is asked for) is refused with
        a message that says which folder holds which."""
        name = data.get(CLASS_NAME_KEY) if isinstance(data, Mapping) else None
        if name is None:
            found = cls.legacy_class(data)
        else:
            found = next((c for c in gan_classes() if c.__name__ == name), None)
            if found is None:  # not a GAN class: HubModel's message names the class to use
                return super().saved_class(data, where)
        if found is None:  # an old config.json that fits no GAN config
            keys = ", ".join(sorted(data)[:8]) if isinstance(data, Mapping) else ""
            raise ConfigMismatchError(
                f"{where} is not a GAN {cls.role} checkpoint: its keys ({keys}, ...) fit no GAN "
                "config. An Image Transformer is sampled with `imgtx sample`.")
        if found.role != cls.role and cls.role != GANModel.role:
            hint = (" (a training run's final/ holds the generator, final/discriminator/ its "
                    "discriminator)")
            raise ConfigMismatchError(f"{where} holds a {found.__name__}, not a {cls.role}: load "
                                      f"it with {found.__module__}.{found.__name__}."
                                      f"from_pretrained{hint}.")
        return found if name is None else super().saved_class(data, where)

    @classmethod
    def legacy_class(cls, data: Mapping[str, Any]) -> type[HubModel] | None:
        """The class of a config.json saved without ``_class_name``: a concrete class loads it
        as itself; a base class picks the GAN class whose config defines every key of ``data``
        (each family's config has fields the others lack), else the one defining most of them
        (at least half; its config then names the keys it lacks), else None."""
        if _is_concrete(cls):
            return cls
        keys = set(data) if isinstance(data, Mapping) else set()
        scores = {c: len(keys & _config_keys(c)) for c in gan_classes()}
        exact = [c for c, score in scores.items() if score == len(keys)]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise ConfigMismatchError(
                f"{CONFIG_FILE} names no class and fits {[c.__name__ for c in exact]} alike; add "
                f'"{CLASS_NAME_KEY}": "<class>" to it, or load it with that class.')
        best = max(scores.values(), default=0)
        closest = [c for c, score in scores.items() if score == best]
        return closest[0] if len(closest) == 1 and 2 * best >= len(keys) > 0 else None


class Generator(GANModel):
    """Base of the GAN generators: ``forward(z (B, L), labels (B,) | None) -> (B, 3, S, S)``
    images in about [-1, 1], and :meth:`generate`. Its config has ``latent_dim``,
    ``num_classes`` and ``image_size``."""

    role: ClassVar[str] = "generator"

    @torch.no_grad()
    def generate(self, num: int, labels: torch.Tensor | int | list[int] | None = None,
                 seed: int = 0, batch_size: int = 64) -> torch.Tensor:
        """``num`` images as ``(N, 3, S, S)`` uint8 on the CPU, deterministic for a ``seed``.

        Latents come from ``torch.Generator().manual_seed(seed)`` on the CPU, and the injected
        noise (if any) from the global generator seeded with ``seed`` inside a forked RNG state;
        the model runs in eval mode (restored afterwards) under no_grad, ``batch_size`` latents
        at a time.
        ``labels``: one class id for all, ``num`` ids, or None (a conditional model then cycles
        through the classes 0, 1, ...).
        """
        c = self.config
        device = next(self.parameters()).device
        z = torch.randn(num, c.latent_dim, generator=torch.Generator().manual_seed(seed))
        labels = labels_for(num, labels, c.num_classes)
        was_training = self.training
        self.eval()
        # Noise injection draws from the global generator: seed it too, without disturbing the
        # caller's random state.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            try:
                chunks = []
                for start in range(0, num, batch_size):
                    part = None if labels is None else labels[start:start + batch_size].to(device)
                    chunks.append(images_to_uint8(self(z[start:start + batch_size].to(device),
                                                       part)))
            finally:
                self.train(was_training)
        if not chunks:
            return torch.zeros(0, 3, c.image_size, c.image_size, dtype=torch.uint8)
        return torch.cat(chunks)


class Discriminator(AugmentedInput, GANModel):
    """Base of the GAN discriminators: ``forward(images (B, 3, S, S) in [-1, 1], labels (B,) |
    None) -> (B,)`` critic values. A family supplies ``features(images) -> (B, D)`` and a
    critic ``head`` (:class:`imgtx.gan.conditioning.ProjectionHead`).

    DiffAugment (``config.diffaug``) runs inside ``forward`` - in training mode by default, or
    as ``augment=True/False`` says - so real images, fakes and gradient-penalty interpolates are
    augmented alike.
    """

    role: ClassVar[str] = "discriminator"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` checked (and augmented) images -> ``(B, D)``, the head's input."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                augment: bool | None = None, return_class_logits: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``(B, 3, S, S)``, ``labels`` ``(B,)`` (conditional only) -> ``(B,)``.

        ``augment``: apply DiffAugment (default: in training mode only).
        ``return_class_logits``: also return the auxiliary classifier's ``(B, classes)`` logits.
        """
        images = self.checked_input(images, augment)  # (B, 3, S, S), augmented when training
        return self.head(self.features(images), labels, return_class_logits)  # (B,)


def gan_classes() -> list[type[GANModel]]:
    """Every family's generator and discriminator class (:func:`imgtx.gan.configs.model_classes`
    of each registered config type)."""
    from imgtx.gan.configs import family_classes

    return [cls for pair in family_classes() for cls in pair]


def _is_concrete(cls: type) -> bool:
    """Whether ``cls`` names its config dataclass (a family's class, not a base)."""
    try:
        cls.resolve_config_class()
    except TypeError:
        return False
    return True


def _config_keys(cls: type[HubModel]) -> set[str]:
    """The keys a config.json of ``cls`` may hold: its config fields and the ignored old ones."""
    config = cls.resolve_config_class()
    return {f.name for f in dataclasses.fields(config)} | \
        set(getattr(config, IGNORED_FIELDS_ATTRIBUTE, ()))
