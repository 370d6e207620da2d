"""What every family's command line shares: run options, device options, and the path from a
registry recipe plus the user's flags to a settings dataclass.

A family's ``train`` command adds :func:`add_run_arguments` (the fields of
:class:`imgtx.training.RunSettings`: budget, batch, checkpoints, logging) and its own options, then
reads them back with :func:`settings_from_args`: the settings class's defaults, then the config's
registry recipe, then the flags the user gave (an option left out is ``None`` and changes
nothing). Recipes are strict (:func:`imgtx.registry.settings_from_recipe`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, TypeVar

from imgtx.errors import UserError, check_at_least, check_positive

__all__ = ["add_run_arguments", "add_train_arguments", "add_device_arguments", "add_info_arguments",
           "settings_from_args", "named_config", "get_named_config", "apply_overrides",
           "check_arguments", "default_device", "launch_accelerator", "close_process_group",
           "print_rows", "NUMBER_LIMITS"]

Settings = TypeVar("Settings")

# Numeric options checked before any work, whatever the command: dest -> (minimum, inclusive).
NUMBER_LIMITS = {
    "batch_size": (1, True), "max_steps": (1, True), "minutes": (0, False), "limit": (1, True),
    "temperature": (0, True), "threads": (1, True), "num": (1, True), "grad_accum": (1, True),
    "eval_images": (1, True), "warmup": (0, True), "lr": (0, False), "scale": (1, True),
    "eval_every": (0, True), "sample_every": (0, True), "checkpoint_every": (0, True),
    "num_samples": (0, True), "num_workers": (0, True), "n_critic": (1, True),
    "kimg": (0, False), "ema_kimg": (0, False), "fid_every": (0, True), "fid_samples": (2, True),
}


# -- options -----------------------------------------------------------------------------------

def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of every training run (the fields of :class:`imgtx.training.RunSettings`).

    Every default is ``None`` ("not given"), so that the config's recipe and then the settings
    dataclass decide (:func:`settings_from_args`).
    """
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--max-steps", type=int, help="optimiser steps")
    p.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int,
                   help="images per process and micro-batch (default: the config's recipe)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step (default 1)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], help="default: no")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (0: at the end)")
    p.add_argument("--sample-every", type=int, help="steps between sample grids (0: at the end)")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints (0: at the end)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue from OUT/checkpoint")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--num-workers", type=int, help="data-loading processes (default 0)")
    p.add_argument("--report-to", choices=["none", "tensorboard", "wandb", "all"],
                   help="also log to these accelerate trackers (OUT/logs)")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``imgtx train`` and ``imgtx sr train`` share: the run's, plus data, optimiser,
    augmentations, held-out evaluation and ``--set`` (fields of
    :class:`imgtx.training.likelihood.TrainSettings`)."""
    p.add_argument("--data", help="builtin:photos32 (default) | a folder of images | a Hub "
                   "dataset id")
    p.add_argument("--eval-data", help="held-out data (default: --data's test split)")
    add_run_arguments(p)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the config's recipe)")
    p.add_argument("--warmup", type=int, help="optimiser steps of linear warm-up")
    p.add_argument("--schedule", choices=["noam", "constant", "cosine"],
                   help="learning-rate schedule (default: the config's recipe, else noam)")
    p.add_argument("--hflip", action="store_true", default=None,
                   help="mirror each training image left-right with probability 1/2")
    p.add_argument("--grey", type=float,
                   help="probability of turning a training image grey (its BT.601 luma in all "
                        "three channels; default 0)")
    p.add_argument("--eval-images", type=int, help="held-out images per evaluation")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set num_layers=2")


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads`` for the commands that run a model (eval, sample, upscale)."""
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core). On a shared "
                   "machine give each concurrent job 1: decoding runs many small ops, and "
                   "oversubscribed threads make it 15-20x slower")


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    """``--config NAME|all`` and ``--json`` of an ``info`` command."""
    p.add_argument("--config", required=True, help="a registry name, or 'all'")
    p.add_argument("--json", action="store_true")


def print_rows(rows: list[dict], as_json: bool, line, details: str | None = None) -> None:
    """An ``info`` command's output: one JSON value (a row, or a list of rows) with ``as_json``,
    else ``line(row)`` per row, and ``row[details]`` field by field when there is one row."""
    if as_json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    for row in rows:
        print(line(row))
        if details and len(rows) == 1:
            for key, value in row[details].items():
                print(f"  {key} = {value}")


# -- reading them back -------------------------------------------------------------------------

def settings_from_args(settings_class: type[Settings], args: argparse.Namespace,
                       recipe: dict | None = None, defaults: dict | None = None, *,
                       recipe_name: str = "", **given: Any) -> Settings:
    """``settings_class`` from its defaults, ``defaults``, the registry ``recipe``, then every
    argument of ``args`` named like one of its fields (``None``: not given) and ``given``.

    Raises :class:`UserError` for a recipe key that is not a field (recipes are strict) and for
    settings no run can use (``validate()``: no budget, a batch of 0, ...).
    """
    from imgtx.registry import settings_from_recipe

    names = {f.name for f in dataclasses.fields(settings_class)}
    flags = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    flags.update({k: v for k, v in given.items() if v is not None})
    return settings_from_recipe(settings_class, recipe, defaults, recipe_name=recipe_name,
                                **flags)


def get_named_config(get_config, name: str, **overrides):
    """``get_config(name)`` of a family's registry, an unknown name being a :class:`UserError`."""
    try:
        return get_config(name, **overrides)
    except KeyError as error:
        raise UserError(error.args[0] if error.args else f"unknown config {name!r}") from None


def named_config(registry: dict, name: str, pairs: list[str] | None = None,
                 what: str = "config"):
    """A fresh copy of ``registry[name].config`` with the ``--set FIELD=VALUE`` ``pairs``
    applied (:func:`apply_overrides`); an unknown name is a :class:`UserError`."""
    from imgtx.registry import lookup

    config = get_named_config(lambda key: lookup(registry, key, what), name)
    apply_overrides(config, pairs)
    return config


def apply_overrides(config, pairs: list[str] | None) -> None:
    """Apply ``--set FIELD=VALUE`` overrides to a config dataclass in place.

    VALUE is read as JSON when it parses (``2``, ``0.1``, ``true``, ``[4,24]``, ``null``), else as
    a string; a list becomes a tuple for tuple fields. Types are checked against the current
    value so that typos fail loudly.
    """
    names = [field.name for field in dataclasses.fields(config)]
    names += list(getattr(config, "OVERRIDE_ALIASES", ()))  # e.g. a nested config's fields
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or key not in names:
            raise UserError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of "
                            f"{', '.join(names)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        old = getattr(config, key)
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if old is not None and value is not None and type(value) is not type(old):
            raise UserError(f"--set {key}={raw}: expected a {type(old).__name__} like {old!r}")
        _check_size(key, raw, value, old)
        setattr(config, key, value)
    if pairs and hasattr(config, "__post_init__"):
        try:
            config.__post_init__()
        except (ValueError, TypeError) as error:  # the config's own validation
            raise UserError(f"--set {' '.join(pairs)}: {error}") from None


def _check_size(key: str, raw: str, value, old) -> None:
    """Integer fields are sizes and counts: never negative, and at least 1 where the config's
    value is (a width, a number of heads or layers); tuples of them (block shapes) likewise."""
    pairs = list(zip(value, old)) if isinstance(value, tuple) and isinstance(old, tuple) else [
        (value, old)]
    for new, current in pairs:
        if isinstance(new, bool) or not isinstance(new, int):
            continue
        # Entries of a tuple may be 0 (a TransGAN stage without blocks, as celebahq256's).
        minimum = 1 if isinstance(current, int) and current >= 1 and \
            not isinstance(old, tuple) else 0
        if new < minimum:
            raise UserError(f"--set {key}={raw}: {key} is a size or count; it must be >= "
                            f"{minimum}")


def check_arguments(args: argparse.Namespace) -> None:
    """Raise :class:`UserError` for a nonsensical number in ``args`` (a batch size of 0, a
    negative temperature, ...), before any data or model is loaded."""
    for dest, (minimum, inclusive) in NUMBER_LIMITS.items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, bool):
            continue
        flag = "--" + dest.replace("_", "-")
        if inclusive:
            check_at_least(flag, value, minimum)
        elif minimum == 0:
            check_positive(flag, value)


# -- processes and devices ---------------------------------------------------------------------

def default_device(device: str | None) -> str:
    """``device``, or CUDA when it is available, else the CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def launch_accelerator(device: str | None = None):
    """An ``accelerate.Accelerator`` when this process is one of several (``torchrun``,
    ``accelerate launch``: ``WORLD_SIZE`` > 1), so that an evaluation shares its images between
    them; else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import Accelerator

    # Without CUDA, accelerate joins the processes (gloo) only when told to run on the CPU.
    return Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())


def close_process_group() -> None:
    """When this process is one of several (``torchrun``), wait for the others, then close the
    process group: a process that exits with the group's communication threads still running
    aborts ("terminate called without an active exception") and fails the whole launch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
