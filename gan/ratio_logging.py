"""Residual norm ratios logged during GAN training (Xu et al. 2021, arXiv 2110.13107: the
residual analysis that shows attention being bypassed in transformer discriminators).

:class:`RatioProbe` wraps a training step ``step(run, batch)`` (e.g.
:class:`imgtx.gan.step.GANStep`). Every ``every`` run steps, and before the first, it runs G and
D once more on a fixed probe, in eval mode and without gradients, with ratio recording on
(:func:`imgtx.gan.diagnostics.recording_ratios`), and appends ``||f(x)|| / ||x||`` of every
sub-layer to one :class:`~imgtx.gan.diagnostics.RatioHistory` per network. The probe is fixed
for the whole run, so the curves show the networks changing, not the inputs: the first
``probe_size`` real images (and labels) the step sees, and latents drawn from ``seed``. D sees
the real images without DiffAugment; G gets the probe's labels.

On the main process it writes ``<run out>/ratios_G.json``, ``ratios_D.json`` (``{"<layer>.attn":
[[step, ratio], ...], ...}``) and their plots ``ratios_G.png``, ``ratios_D.png`` at each
measurement.

Use: ``step = RatioProbe(GANStep(...), every=50)`` before ``run.fit(step, ...)``.

Shapes: P probe images, L latent width.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgtx.errors import check_at_least
from imgtx.gan.diagnostics import RatioHistory, collect_ratios, recording_ratios
from imgtx.gan.step import to_unit_range

__all__ = ["RatioProbe", "measure_ratios"]


@torch.no_grad()
def measure_ratios(model: nn.Module, *inputs: Any) -> dict[str, float]:
    """``{"<layer>.<sublayer>": ratio}`` of one eval-mode forward of ``model(*inputs)`` (the
    training mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        with recording_ratios(model):
            model(*inputs)
            return collect_ratios(model)
    finally:
        model.train(was_training)


class RatioProbe:
    """A step function that also logs residual norm ratios of G and D every ``every`` steps.

    Args:
        step: the wrapped ``step(run, batch) -> figures``; it must have ``latent_dim`` and
            ``num_classes`` attributes (as :class:`imgtx.gan.step.GANStep` does).
        every: run steps between measurements (a measurement also precedes step 0).
        probe_size: real images (and latents) in the fixed probe.
        seed: seed of the probe's latents.
        names: the run's model names of the generator and the discriminator.
    """

    def __init__(self, step: Callable[[Any, dict], dict], every: int, probe_size: int = 32,
                 seed: int = 0, names: tuple[str, str] = ("G", "D")) -> None:
        check_at_least("ratio logging interval", every, 1)
        check_at_least("probe size", probe_size, 1)
        self.step, self.every, self.probe_size, self.seed = step, every, probe_size, seed
        self.names = names
        self.histories = {name: RatioHistory() for name in names}
        self.probe: dict[str, torch.Tensor | None] | None = None
        self._measured_at: int | None = None

    def __getattr__(self, name: str) -> Any:  # latent_dim, num_classes, ... of the wrapped step
        if name == "step":
            raise AttributeError(name)
        return getattr(self.step, name)

    def _make_probe(self, run, batch: dict) -> None:
        images = batch["image"][: self.probe_size].to(run.device)  # (P, 3, H, W) uint8
        labels = batch["label"][: len(images)].to(run.device) if self.num_classes else None
        z = torch.randn(len(images), self.latent_dim,
                        generator=torch.Generator().manual_seed(self.seed)).to(run.device)
        self.probe = {"real": to_unit_range(images), "labels": labels, "z": z}  # z: (P, L)

    def measure(self, run) -> dict[str, dict[str, float]]:
        """Ratios of both networks on the probe, recorded at the run's current step."""
        generator, discriminator = (run.unwrap(name) for name in self.names)
        p = self.probe
        ratios = {self.names[0]: measure_ratios(generator, p["z"], p["labels"]),
                  self.names[1]: measure_ratios(discriminator, p["real"], p["labels"])}
        for name, values in ratios.items():
            self.histories[name].record(run.state.step, values)
        self._measured_at = run.state.step
        if run.is_main_process:
            self.save(run.out)
        return ratios

    def save(self, out: str | Path) -> None:
        """``ratios_<name>.json`` and ``ratios_<name>.png`` for each network in ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, history in self.histories.items():
            if history.curves:
                history.save(out / f"ratios_{name}.json")
                history.plot(out / f"ratios_{name}.png",
                             title=f"{name}: residual norm ratio ||f(x)|| / ||x||")

    def __call__(self, run, batch: dict) -> dict:
        if self.probe is None:
            self._make_probe(run, batch)
        step = run.state.step
        # Measure once per run step (gradient accumulation calls this once per micro-batch).
        if step % self.every == 0 and self._measured_at != step:
            self.measure(run)
        return self.step(run, batch)
