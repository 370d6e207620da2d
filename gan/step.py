"""One GAN training step on the shared run, in the order of TransGAN's training loop.

:class:`GANStep` is the ``step(run, batch)`` that :meth:`imgtx.training.Run.fit` calls once per
micro-batch, inside one ``accelerator.accumulate(G, D)``. One run step is one D optimiser step;
the run steps ``0, n_critic, 2 n_critic, ...`` also take one G optimiser step after it
(VITA-Group/TransGAN@6b85440 ``functions.py::train``: ``global_steps % n_critic == 0``, counted
before the step, so G first steps right after the first D step).

With the TransGAN paper recipes the step reproduces that loop (see docs/gan.md, "Differences
from the official code"):

* G trains on ``g_batch_size`` fresh latents per G step (``gen_batch_size``), drawn after D's
  step and split over the processes and over ``grad_accum`` chunks (``g_accumulated_times``);
* the G step calls D with its parameters still trainable, so the gradient of the G loss with
  respect to D stays in D's ``.grad`` and joins D's next step (the official loop never zeroes D's
  gradients after the G step), with ``isolate_d=False`` (the paper recipes). The default,
  ``isolate_d=True``, freezes D during the G step instead.

Shapes: B images per micro-batch, L latent width; real images ``(B, 3, H, W)`` uint8 from the
loader become floats in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from imgtx.errors import UserError, check_at_least
from imgtx.gan.losses import mode_seeking_term, r1_penalty

__all__ = ["GANStep", "to_unit_range", "is_generator_step", "generator_steps"]


def to_unit_range(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 in [0, 255] -> ``dtype`` in [-1, 1]."""
    return images.to(dtype) / 127.5 - 1


def is_generator_step(step_index: int, n_critic: int) -> bool:
    """Whether run step ``step_index`` (0-based: the steps completed before it) also trains G,
    after its D step: steps 0, ``n_critic``, ``2 n_critic``, ... (TransGAN ``functions.py``:
    ``global_steps % (n_critic * accumulated_times) == 0`` on a count of micro-batches)."""
    return step_index % n_critic == 0


def generator_steps(d_steps: int, n_critic: int) -> int:
    """G steps taken with the first ``d_steps`` D steps: ``ceil(d_steps / n_critic)`` (the run
    steps ``0, n_critic, 2 n_critic, ...`` below ``d_steps``; :func:`is_generator_step`)."""
    return -(-d_steps // n_critic)


class GANStep:
    """``step(run, batch) -> figures``: the D loss on real and fake images and D's optimiser step,
    then on a G step the generator loss through D and G's optimiser step.

    Args:
        loss: a loss of :mod:`imgtx.gan.losses` (``discriminator(D, real, fake, labels) ->
            (loss, parts)``, ``generator(D, fake, labels) -> loss``).
        n_critic: D steps per G step.
        clip_grad_norm: gradient-norm clipping of both networks (None: off).
        latent_dim: width L of the generator's latents.
        num_classes: > 0 for a conditional pair: the batch's labels go to G and D (the fakes
            take the labels of the real images, tiled, so both see the data's classes).
        g_batch_size: fresh latents G trains on per G optimiser step, over all processes and
            micro-batches (TransGAN ``gen_batch_size x g_accumulated_times``); it must divide by
            ``grad_accum x processes``. None: G's loss uses the D step's own fakes (no second
            forward pass of G; as many latents as D's real images).
        isolate_d: freeze D during the G step, so the G loss leaves no gradient in D (the
            default; False reproduces the official loop, as the TransGAN paper recipes do).
        mode_seeking: weight of MSGAN's term in G's loss
            (:func:`imgtx.gan.losses.mode_seeking_term`; 0: off).
        r1_gamma: weight of an R1 penalty on real images added to any loss's D step
            (Mescheder et al. 2018; 0: off). It is lazy (Karras et al. 2020, StyleGAN2, sec. 3.1:
            ``training/loss.py`` with ``r1_interval``): computed on every ``r1_every``-th D step
            only, weighted ``r1_gamma / 2 x r1_every`` there, so its average pull is that of
            ``r1_gamma / 2`` on every step at a fraction of the double-backward cost.
        r1_every: the lazy interval in D steps (1: every step).
    """

    def __init__(self, loss, n_critic: int, clip_grad_norm: float | None, latent_dim: int,
                 num_classes: int = 0, *, g_batch_size: int | None = None,
                 isolate_d: bool = True, mode_seeking: float = 0.0, r1_gamma: float = 0.0,
                 r1_every: int = 16) -> None:
        check_at_least("n_critic", n_critic, 1)
        check_at_least("r1_gamma", r1_gamma, 0)
        check_at_least("r1_every", r1_every, 1)
        check_at_least("g_batch_size", g_batch_size, 1)
        self.loss, self.n_critic, self.clip = loss, n_critic, clip_grad_norm
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.g_batch_size, self.isolate_d = g_batch_size, isolate_d
        self.mode_seeking = mode_seeking
        self.r1_gamma, self.r1_every = r1_gamma, r1_every

    def g_chunk(self, run) -> int:
        """Latents of one G chunk on this process: ``g_batch_size / (grad_accum x
        processes)``."""
        parts = run.settings.grad_accum * run.num_processes
        if self.g_batch_size % parts:
            raise UserError(f"g_batch_size {self.g_batch_size} does not divide into grad_accum "
                            f"x processes = {parts} equal parts; choose a multiple of {parts}")
        return self.g_batch_size // parts

    def _latents(self, run, count: int) -> torch.Tensor:
        """``(count, L)`` latents: drawn for all processes from the shared seed, this process
        keeping its share (N processes see what one process with N times the batch would)."""
        z = torch.randn(count * run.num_processes, self.latent_dim, device=run.device,
                        dtype=self._dtype(run))
        return run.this_process(z)

    @staticmethod
    def _dtype(run) -> torch.dtype:
        return next(run.unwrap("D").parameters()).dtype

    def __call__(self, run, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        G, D = run.models["G"], run.models["D"]
        real = to_unit_range(batch["image"], self._dtype(run))  # (B, 3, H, W)
        labels = batch["label"] if self.num_classes else None  # (B,) | None
        z = self._latents(run, real.shape[0])  # (B, L)
        train_g = is_generator_step(run.state.step, self.n_critic)
        reuse_fakes = train_g and self.g_batch_size is None
        with torch.set_grad_enabled(reuse_fakes):  # G's graph is kept only to reuse the fakes
            fake = G(z, labels)  # (B, 3, H, W)

        d_loss, parts = self.loss.discriminator(D, real, fake, labels)  # detaches fake
        if self.r1_gamma and run.state.step % self.r1_every == 0:
            penalty, _ = r1_penalty(D, real, labels)
            d_loss = d_loss + self.r1_gamma / 2 * self.r1_every * penalty
            parts = {**parts, "r1": penalty.detach()}
        run.backward(d_loss)
        run.optimizer_step("D", max_grad_norm=self.clip)
        figures = {"d_loss": d_loss.detach(), **parts}
        if reuse_fakes:
            figures["g_loss"] = self._generator_backward(run, fake, labels, z)
            run.optimizer_step("G", max_grad_norm=self.clip)
        elif train_g and run.accelerator.sync_gradients:
            # The whole G step follows D's step, on fresh latents, in grad_accum chunks whose
            # losses run.backward averages (functions.py: g_loss / g_accumulated_times). The run
            # divides logged figures by grad_accum, so the chunks' losses are summed here.
            chunk = self.g_chunk(run)
            g_loss = 0.0
            for _ in range(run.settings.grad_accum):
                g_z = self._latents(run, chunk)  # (chunk, L)
                g_labels = None if labels is None else labels.repeat(
                    -(-chunk // labels.shape[0]))[:chunk]  # (chunk,): the batch's, tiled
                g_loss = g_loss + self._generator_backward(run, G(g_z, g_labels), g_labels,
                                                           g_z)
            run.optimizer_step("G", max_grad_norm=self.clip)
            figures["g_loss"] = g_loss
        return figures

    def _generator_backward(self, run, fake: torch.Tensor, labels: torch.Tensor | None,
                            z: torch.Tensor) -> torch.Tensor:
        """The G loss of ``fake`` (made from latents ``z``) through D, plus the mode-seeking
        term if weighted, backpropagated; returns it detached."""
        if self.isolate_d:
            with run.frozen("D") as plain_d:  # no gradients into D; its augmentations stay on
                g_loss = self._generator_loss(plain_d, fake, labels, z)
                run.backward(g_loss)
            return g_loss.detach()
        # D is called unwrapped (a forward through the distributed wrapper would wait for a
        # reduction in this backward); its gradients stay in D's .grad and join its next step,
        # where they are reduced with it.
        g_loss = self._generator_loss(run.unwrap("D"), fake, labels, z)
        run.backward(g_loss)
        return g_loss.detach()

    def _generator_loss(self, D, fake: torch.Tensor, labels: torch.Tensor | None,
                        z: torch.Tensor) -> torch.Tensor:
        g_loss = self.loss.generator(D, fake, labels)
        if self.mode_seeking:
            g_loss = g_loss + self.mode_seeking * mode_seeking_term(fake, z, labels)
        return g_loss
