"""Files a run leaves behind that must survive a kill: checkpoints and exports.

Both are written under a temporary name and renamed into place, so a process killed in the
middle of a save leaves the previous version whole. ``checkpoint/`` is accelerate's
``save_state`` folder (models, optimisers, registered objects, each process's RNG states).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

__all__ = ["RunState", "save_checkpoint", "find_checkpoint", "export_model", "export_run",
           "batch_images"]


class RunState:
    """The counters of a run, saved with every checkpoint: optimiser steps, images seen over all
    processes, training hours, the position in the data (epoch, batches of it consumed) and the
    smoothed training figures (an exponential average over steps, factor 0.98)."""

    def __init__(self) -> None:
        self.step = 0
        self.images_seen = 0
        self.hours = 0.0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.running: dict[str, float] = {}

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def find_checkpoint(out: Path) -> Path | None:
    """The last complete checkpoint of run directory ``out`` (``checkpoint/``, or
    ``checkpoint.old/`` when a kill fell between the two renames of a save), or None."""
    for path in (out / "checkpoint", out / "checkpoint.old"):
        if (path / "custom_checkpoint_0.pkl").exists():
            return path
    return None


def save_checkpoint(accelerator, out: Path, state: RunState) -> Path:
    """``accelerator.save_state`` into ``out/checkpoint`` (every process calls it), atomically;
    then ``out/progress.json`` with the counters (main process)."""
    final, partial, old = (out / name for name in
                           ("checkpoint", "checkpoint.partial", "checkpoint.old"))
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # At every moment checkpoint/ or checkpoint.old/ is complete: checkpoint.old/ goes only
        # while checkpoint/ exists (after a resume from checkpoint.old/ it does not).
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        progress = {key: getattr(state, key) for key in ("step", "images_seen", "hours", "epoch")}
        (out / "progress.json.partial").write_text(json.dumps(progress))
        (out / "progress.json.partial").replace(out / "progress.json")
    accelerator.wait_for_everyone()
    return final


def export_model(model: nn.Module, path: Path, metrics: dict | None = None) -> Path:
    """``model.save_pretrained(path)`` (with ``metrics`` for an imgtx model card), or
    ``model.safetensors`` for a model without ``save_pretrained``; written beside ``path`` and
    renamed into place. Call it on one process."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(partial, **({"metrics": metrics} if metrics is not None else {}))
    else:
        from safetensors.torch import save_model

        partial.mkdir(parents=True)
        save_model(model, str(partial / "model.safetensors"))
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    _retarget_card(path, partial)
    return path


def _retarget_card(folder: Path, written_at: Path) -> None:
    """Make the model card's usage line in ``folder/README.md`` name ``folder``, where the card
    was written at ``written_at`` (a temporary or run folder)."""
    card = Path(folder) / "README.md"
    if card.is_file():
        text = card.read_text()
        card.write_text(text.replace(f'from_pretrained("{written_at}")',
                                     f'from_pretrained("{folder}")'))


def batch_images(batch) -> int | None:
    """Leading size of a batch: a tensor, a dict (its ``"image"`` entry or first tensor) or a
    tuple/list (its first tensor)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        values = [batch["image"]] if "image" in batch else list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return None
    return next((v.shape[0] for v in values if isinstance(v, torch.Tensor)), None)


def export_run(final: Path, export: str | Path) -> Path:
    """Copy a run's ``final/`` model to ``export`` (replacing it), with the run's learning curve
    as ``training_curve.jsonl``: how the shipped checkpoints are made."""
    export = Path(export)
    shutil.rmtree(export, ignore_errors=True)
    shutil.copytree(final, export)
    _retarget_card(export, Path(final))
    shutil.copy(Path(final).parent / "metrics.jsonl", export / "training_curve.jsonl")
    print(f"copied {final} -> {export}")
    return export
