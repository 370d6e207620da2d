"""What a training run leaves behind: ``metrics.jsonl`` and its curve, tracker logs, sample grids,
checkpoints and the exported model (:class:`RunOutputs`, the part of :class:`imgtx.training.Run`
that writes). Only the main process writes; every process may call these methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imgtx.training.checkpoints import export_model, save_checkpoint
from imgtx.training.curves import append_record, plot_curves, read_records

if TYPE_CHECKING:
    from imgtx.training.run import Run

__all__ = ["RunOutputs"]


class RunOutputs:
    """The writing half of :class:`imgtx.training.Run`; it uses the run's ``accelerator``,
    ``out``, ``state``, ``models`` and ``emas``."""

    def print(self, *args, **kwargs) -> None:
        """``print`` on the main process only."""
        self.accelerator.print(*args, **kwargs)

    def write_json(self, name: str, value: Any) -> None:
        """Write ``value`` as ``<out>/<name>`` (main process only)."""
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / name).write_text(json.dumps(value, indent=2))

    def _running_over_processes(self) -> dict[str, float]:
        if self.num_processes == 1 or not self.state.running:
            return dict(self.state.running)
        values = torch.tensor(list(self.state.running.values()), dtype=torch.float64,
                              device=self.device)
        values = self.accelerator.reduce(values, "mean")
        return dict(zip(self.state.running, values.tolist()))

    def log(self, figures: dict[str, Any]) -> dict:
        """Append ``{step, images_seen, hours, **figures}`` to ``metrics.jsonl``, redraw
        ``metrics.png`` and send the numbers to the trackers (main process); returns it."""
        record = {"step": self.state.step, "images_seen": self.state.images_seen,
                  "hours": round(self.hours(), 4), **figures}
        if self.accelerator.is_main_process:
            append_record(self.out / "metrics.jsonl", record)
            plot_curves(read_records(self.out / "metrics.jsonl"), self.out / "metrics.png")
        numbers = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.accelerator.trackers:
            self.accelerator.log(numbers, step=self.state.step)
        return record

    def log_evaluation(self, evaluate: Callable[[Run], dict] | None,
                       write: Callable[[str], None] | None = None) -> dict:
        """Evaluate (every process), then :meth:`log` the running training figures, the
        evaluation's figures and the learning rates."""
        figures = evaluate(self) if evaluate is not None else {}
        for model in self.models.values():
            model.train()
        record = self.log({**self._running_over_processes(), **figures,
                           **self.learning_rates()})
        if write is not None and self.accelerator.is_main_process:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items()
                              if isinstance(v, float))
            write(f"step {self.state.step} ({self.state.images_seen} images seen)"
                  + (f": {shown}" if shown else ""))
        return record

    def save_samples(self, samples: Callable[[Run], torch.Tensor] | None) -> Path | None:
        """``samples(run)`` -> ``samples/step_<step>.png`` on the main process only."""
        if samples is None or not self.accelerator.is_main_process:
            return None
        from imgtx.images import save_grid

        images = samples(self)
        path = save_grid(images, self.out / "samples" / f"step_{self.state.step:07d}.png")
        for model in self.models.values():
            model.train()
        return path

    def checkpoint(self) -> Path:
        """Save the accelerate state (models, optimisers, schedulers, EMA copies, counters,
        every process's RNG states) to ``checkpoint/``: written as ``checkpoint.partial/`` and
        renamed, so a kill during the save leaves the previous checkpoint whole."""
        self.state.hours = self.hours()
        return save_checkpoint(self.accelerator, self.out, self.state)

    def export(self, name: str | None = None, *, ema: bool = False, path: str | Path | None = None,
               metrics: dict | None = None) -> Path:
        """Write model ``name`` (or its EMA copy) with ``save_pretrained`` (main process).

        The default path is ``final/`` for a run of one model, else ``final/<name>`` (and
        ``final/<name>_ema``). The export is written beside the path and renamed into place.
        ``metrics`` go into an imgtx model card. A model without ``save_pretrained`` is saved
        as ``model.safetensors``.
        """
        name = name or next(iter(self.models))
        model = self.emas[name].model if ema else self.unwrap(name)
        if path is None:
            single = len(self.models) == 1 and not ema
            path = self.out / "final" if single else self.out / "final" / (
                name + ("_ema" if ema else ""))
        if self.accelerator.is_main_process:
            export_model(model, Path(path), metrics)
            self.print(f"exported {path}")
        self.accelerator.wait_for_everyone()
        return Path(path)

    def end(self) -> None:
        """Close the trackers and wait for every process."""
        if self.accelerator.trackers:
            self.accelerator.end_training()
        self.accelerator.wait_for_everyone()
