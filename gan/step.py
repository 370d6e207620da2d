"""One GAN training step on the shared run: a D step on every batch, a G step every
``n_critic``-th run step.

:class:`GANStep` is the ``step(run, batch)`` that :meth:`imgtx.training.Run.fit` calls once per
micro-batch, inside one ``accelerator.accumulate(G, D)``. Both networks' gradients accumulate over
the same micro-batches, so with ``grad_accum = k`` D and G step exactly as often as with one
micro-batch of ``k`` times the size (Gulrajani et al. 2017, Alg. 1: ``n_critic`` critic
iterations per generator iteration; TransGAN ``functions.py``: ``global_steps % n_critic == 0``).

Shapes: B images per micro-batch, L latent width; real images ``(B, 3, H, W)`` uint8 from the
loader become floats in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["GANStep", "to_unit_range", "is_generator_step"]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 in [0, 255] -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1


def is_generator_step(step_index: int, n_critic: int) -> bool:
    """Whether run step ``step_index`` (0-based: the steps completed before it) also trains G:
    the ``n_critic``-th, ``2 n_critic``-th, ... D steps do."""
    return (step_index + 1) % n_critic == 0


class GANStep:
    """``step(run, batch) -> figures``: the D loss on real and fake images, and on a G step the
    generator loss through the frozen D.

    Args:
        loss: a loss of :mod:`imgtx.gan.losses` (``discriminator(D, real, fake, labels) ->
            (loss, parts)``, ``generator(D, fake, labels) -> loss``).
        n_critic: D steps per G step.
        clip_grad_norm: gradient-norm clipping of both networks (None: off).
        latent_dim: width L of the generator's latents.
        num_classes: > 0 for a conditional pair: the batch's labels go to G and D (the fakes
            take the labels of the real images beside them, so both see the data's classes).
    """

    def __init__(self, loss, n_critic: int, clip_grad_norm: float | None, latent_dim: int,
                 num_classes: int = 0) -> None:
        self.loss, self.n_critic, self.clip = loss, n_critic, clip_grad_norm
        self.latent_dim, self.num_classes = latent_dim, num_classes

    def __call__(self, run, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        G, D = run.models["G"], run.models["D"]
        real = to_unit_range(batch["image"])  # (B, 3, H, W)
        labels = batch["label"] if self.num_classes else None  # (B,) | None
        # Noise for the global batch from the shared seed, this process keeping its share.
        z = run.this_process(torch.randn(real.shape[0] * run.num_processes, self.latent_dim,
                                         device=run.device))  # (B, L)
        train_g = is_generator_step(run.state.step, self.n_critic)
        with torch.set_grad_enabled(train_g):  # G's graph is kept only when G steps
            fake = G(z, labels)  # (B, 3, H, W)

        d_loss, parts = self.loss.discriminator(D, real, fake, labels)  # detaches fake
        run.backward(d_loss)
        run.optimizer_step("D", max_grad_norm=self.clip)
        figures = {"d_loss": d_loss.detach(), **parts}
        if train_g:
            with run.frozen("D") as plain_d:  # no gradients into D; its augmentations stay on
                g_loss = self.loss.generator(plain_d, fake, labels)
                run.backward(g_loss)
            run.optimizer_step("G", max_grad_norm=self.clip)
            figures["g_loss"] = g_loss.detach()
        return figures
