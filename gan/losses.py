"""GAN losses as small callables: ``loss.discriminator(D, real, fake, labels)`` and
``loss.generator(D, fake, labels)``.

Every loss calls the discriminator through its ``forward``, so whatever D does to its input
(DiffAugment, noise) applies to real images, fakes and the penalty's inputs alike. ``fake`` is
detached inside the discriminator loss; the generator loss keeps its graph.

* ``wgan-gp`` (default): WGAN with gradient penalty (Gulrajani et al. 2017, "Improved Training of
  Wasserstein GANs", Alg. 1) plus the drift term of Karras et al. 2018 ("Progressive Growing of
  GANs", App. A.1): ``-E[D(x)] + E[D(G(z))] + 10 GP + 1e-3 E[D(x)^2]``. TransGAN's code
  (``functions.py``, ``wgangp-eps``) squares the mean instead, ``1e-3 E[D(x)]^2``:
  ``drift_of_mean=True``.
* ``hinge``: ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``, G: ``-E[D(G(z))]`` (Lim & Ye 2017,
  "Geometric GAN"; Miyato et al. 2018, "Spectral Normalization for GANs").
* ``logistic-r1``: non-saturating logistic loss (Goodfellow et al. 2014) with the R1 penalty
  ``gamma/2 E[|grad_x D(x)|^2]`` on real data (Mescheder et al. 2018, "Which Training Methods for
  GANs do actually Converge?", eq. 9).

Shapes: images ``(B, 3, H, W)``; D returns ``(B,)`` or ``(B, 1)`` critic values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from imgtx.errors import UserError
from imgtx.training.draws import rand_for_batch

__all__ = ["gradient_penalty", "r1_penalty", "mode_seeking_term", "WGANGPLoss", "HingeLoss",
           "LogisticR1Loss", "LOSSES", "make_loss"]

Critic = Callable[..., torch.Tensor]


def _critic(D: Critic, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    out = D(images) if labels is None else D(images, labels)
    return out.reshape(images.shape[0])  # (B,)


def _critic_twice_differentiable(D: Critic, images: torch.Tensor,
                                 labels: torch.Tensor | None) -> torch.Tensor:
    """``D(images)`` whose gradient can itself be differentiated (for gradient penalties): the
    fused CPU attention kernels have no double backward, so attention runs on SDPA's math path
    here."""
    with sdpa_kernel([SDPBackend.MATH]):
        return _critic(D, images, labels)


def _item(value: torch.Tensor) -> float:
    return float(value.detach())


def gradient_penalty(D: Critic, real: torch.Tensor, fake: torch.Tensor,
                     labels: torch.Tensor | None = None, *, phi: float = 1.0,
                     epsilon: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``E[(|grad D(x_hat)|_2 - phi)^2] / phi^2`` at ``x_hat = eps x + (1-eps)
    G(z)``, ``eps ~ U[0, 1]`` per sample (Gulrajani et al. 2017; ``phi`` as TransGAN's
    ``compute_gradient_penalty``). ``epsilon`` ``(B,)`` overrides the draw. Returns a scalar
    with a graph (``create_graph=True``), so its gradient reaches D's parameters."""
    b = real.shape[0]
    if epsilon is None:
        epsilon = rand_for_batch(b, device=real.device, dtype=real.dtype)
    epsilon = epsilon.reshape(b, 1, 1, 1).to(real.dtype)
    mixed = (epsilon * real.detach() + (1 - epsilon) * fake.detach()).requires_grad_(True)
    out = _critic_twice_differentiable(D, mixed, labels)
    (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)  # (B, 3, H, W)
    norm = grad.flatten(1).norm(2, dim=1)  # (B,)
    return ((norm - phi) ** 2).mean() / phi**2


def r1_penalty(D: Critic, real: torch.Tensor, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``E[|grad_x D(x)|^2]`` on real images (Mescheder et al. 2018). Returns ``(penalty,
    D(real))`` so the caller can reuse the critic values."""
    real = real.detach().requires_grad_(True)
    out = _critic_twice_differentiable(D, real, labels)
    (grad,) = torch.autograd.grad(out.sum(), real, create_graph=True)
    return grad.flatten(1).square().sum(dim=1).mean(), out


class WGANGPLoss:
    """WGAN-GP with drift (see the module docstring)."""

    name = "wgan-gp"

    def __init__(self, gp_weight: float = 10.0, drift: float = 1e-3, phi: float = 1.0,
                 drift_of_mean: bool = False) -> None:
        self.gp_weight, self.drift, self.phi = gp_weight, drift, phi
        self.drift_of_mean = drift_of_mean

    def discriminator(self, D: Critic, real: torch.Tensor, fake: torch.Tensor,
                      labels: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """Critic loss and its parts (floats, for logging)."""
        real_out = _critic(D, real, labels)
        fake_out = _critic(D, fake.detach(), labels)
        penalty = gradient_penalty(D, real, fake, labels, phi=self.phi)
        drift = real_out.mean() ** 2 if self.drift_of_mean else real_out.square().mean()
        wasserstein = real_out.mean() - fake_out.mean()
        loss = -wasserstein + self.gp_weight * penalty + self.drift * drift
        return loss, {"d_real": _item(real_out.mean()), "d_fake": _item(fake_out.mean()),
                      "wasserstein": _item(wasserstein), "gp": _item(penalty)}

    def generator(self, D: Critic, fake: torch.Tensor,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
        """``-E[D(G(z))]``."""
        return -_critic(D, fake, labels).mean()


class HingeLoss:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018)."""

    name = "hinge"

    def discriminator(self, D: Critic, real: torch.Tensor, fake: torch.Tensor,
                      labels: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        real_out = _critic(D, real, labels)
        fake_out = _critic(D, fake.detach(), labels)
        loss = F.relu(1 - real_out).mean() + F.relu(1 + fake_out).mean()
        return loss, {"d_real": _item(real_out.mean()), "d_fake": _item(fake_out.mean())}

    def generator(self, D: Critic, fake: torch.Tensor,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
        return -_critic(D, fake, labels).mean()


class LogisticR1Loss:
    """Non-saturating logistic loss with R1 on real data (Mescheder et al. 2018)."""

    name = "logistic-r1"

    def __init__(self, r1_gamma: float = 10.0) -> None:
        self.r1_gamma = r1_gamma

    def discriminator(self, D: Critic, real: torch.Tensor, fake: torch.Tensor,
                      labels: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        penalty, real_out = r1_penalty(D, real, labels)
        fake_out = _critic(D, fake.detach(), labels)
        loss = F.softplus(-real_out).mean() + F.softplus(fake_out).mean() \
            + self.r1_gamma / 2 * penalty
        return loss, {"d_real": _item(real_out.mean()), "d_fake": _item(fake_out.mean()),
                      "r1": _item(penalty)}

    def generator(self, D: Critic, fake: torch.Tensor,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
        """``E[softplus(-D(G(z)))]`` = ``-E[log sigmoid(D(G(z)))]`` (non-saturating)."""
        return F.softplus(-_critic(D, fake, labels)).mean()


def mode_seeking_term(fake: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's mode-seeking term for G's loss (Mao et al. 2019, "Mode Seeking Generative
    Adversarial Networks for Diverse Image Synthesis", arXiv 1903.05628, eq. 3; their code adds
    ``1 / (lz + eps)``): ``1 / (mean_pairs d_I / d_z + eps)``, with ``d_I`` the mean absolute
    difference of two fakes and ``d_z`` that of their latents. Minimising it pushes two latents'
    images apart in proportion to the latents' distance, against mode collapse.

    MSGAN draws two latents per condition. Here every pair of the batch whose labels are equal
    (all pairs for an unconditional G) counts, so the D step's fakes serve as they are; a batch
    with no such pair gives 0 (with a graph, so backward still runs).

    Args:
        fake: ``(B, 3, H, W)`` generated images (with their graph).
        z: ``(B, L)`` their latents.
        labels: ``(B,)`` their classes, or None.

    Returns:
        A scalar.
    """
    i, j = torch.triu_indices(fake.shape[0], fake.shape[0], offset=1, device=fake.device)
    if labels is not None:
        same = labels[i] == labels[j]
        i, j = i[same], j[same]
    if i.numel() == 0:
        return fake.sum() * 0
    image_distance = (fake[i] - fake[j]).abs().flatten(1).mean(dim=1)  # (P,)
    latent_distance = (z[i] - z[j]).abs().mean(dim=1)  # (P,)
    return 1 / ((image_distance / latent_distance).mean() + eps)


LOSSES = {"wgan-gp": WGANGPLoss, "hinge": HingeLoss, "logistic-r1": LogisticR1Loss}


def make_loss(name: str = "wgan-gp", **kwargs) -> WGANGPLoss | HingeLoss | LogisticR1Loss:
    """A loss by name (``wgan-gp`` | ``hinge`` | ``logistic-r1``) with its keyword options."""
    if name not in LOSSES:
        raise UserError(f"unknown GAN loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
