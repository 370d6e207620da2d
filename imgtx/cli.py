"""The ``imgtx`` command line.

    imgtx info --config NAME [--json]
    imgtx train --config NAME --data SPEC --out DIR [...]
    imgtx eval-bpd --model DIR_OR_HUB_ID --data SPEC --split test [--json]
    imgtx sample --model DIR_OR_HUB_ID --num N --out grid.png [...]
    imgtx <group> ...                      (a family's commands: sr, gan, ...)

The families register their command groups through the ``imgtx.commands`` entry points
(``pyproject.toml``: ``sr = "imgtx.sr.cli:register"``), so the core names none of them; a group
whose module fails to import is left out, with a note in ``--help``.

Errors a user can act on (:class:`imgtx.errors.UserError`) print one line,
``imgtx <command>: error: <message>``, and exit with status 2; anything else is a bug and shows
its traceback. ``IMGTX_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import asdict

from imgtx.errors import UserError, check_at_least, check_positive

__all__ = ["main", "build_parser", "apply_overrides", "train_settings", "add_train_arguments",
           "add_device_arguments", "default_device", "launch_accelerator", "check_arguments"]

COMMAND_GROUPS = "imgtx.commands"  # entry-point group: name -> module:register(subparsers)

# Numeric options checked before any work, whatever the command: dest -> (minimum, inclusive).
NUMBER_LIMITS = {
    "batch_size": (1, True), "max_steps": (1, True), "minutes": (0, False), "limit": (1, True),
    "temperature": (0, True), "threads": (1, True), "num": (1, True), "grad_accum": (1, True),
    "eval_images": (1, True), "warmup": (0, True), "lr": (0, False), "scale": (1, True),
    "eval_every": (0, True), "sample_every": (0, True), "checkpoint_every": (0, True),
    "num_samples": (0, True), "num_workers": (0, True), "n_critic": (1, True),
    "kimg": (0, False), "ema_kimg": (0, False), "fid_every": (0, True), "fid_samples": (2, True),
}


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


def get_named_config(get_config, name: str, **overrides):
    """``get_config(name)`` of a family's registry, an unknown name being a :class:`UserError`."""
    try:
        return get_config(name, **overrides)
    except KeyError as error:
        raise UserError(error.args[0] if error.args else f"unknown config {name!r}") from None


def _info(args: argparse.Namespace) -> int:
    from imgtx.configs import CONFIGS, get_config
    from imgtx.hub import parameter_count
    from imgtx.model import ImageTransformer

    names = list(CONFIGS) if args.config == "all" else [args.config]
    rows = []
    for name in names:
        config = get_named_config(get_config, name)
        model = ImageTransformer(config)
        rows.append({"name": name, "parameters": parameter_count(model),
                     "sequence_length": config.sequence_length, "source": CONFIGS[name].source,
                     "config": asdict(config)})
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        for row in rows:
            print(f"{row['name']}: {row['parameters']:,} parameters, "
                  f"{row['sequence_length']} positions - {row['source']}")
            if len(rows) == 1:
                for key, value in row["config"].items():
                    print(f"  {key} = {value}")
    return 0


def apply_overrides(config, pairs: list[str] | None) -> None:
    """Apply ``--set FIELD=VALUE`` overrides to a config dataclass in place.

    VALUE is read as JSON when it parses (``2``, ``0.1``, ``true``, ``[4,24]``, ``null``), else as
    a string; a list becomes a tuple for tuple fields. Types are checked against the current
    value so that typos fail loudly.
    """
    from dataclasses import fields

    names = [field.name for field in fields(config)]
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
    if pairs:
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
        minimum = 1 if isinstance(current, int) and current >= 1 else 0
        if new < minimum:
            raise UserError(f"--set {key}={raw}: {key} is a size or count; it must be >= "
                            f"{minimum}")


def train_settings(args: argparse.Namespace, suggested: dict):
    """``TrainSettings`` from the arguments of :func:`add_train_arguments`, validated;
    ``suggested`` holds the config's registry defaults for batch size, lr and warm-up."""
    from imgtx.training.likelihood import TrainSettings

    settings = TrainSettings(
        data=args.data, out=args.out, eval_data=args.eval_data, max_steps=args.max_steps,
        minutes=args.minutes, batch_size=args.batch_size or suggested.get("batch_size", 8),
        grad_accum=args.grad_accum, lr=args.lr or suggested.get("lr", 3.5e-3),
        warmup=args.warmup if args.warmup is not None else suggested.get("warmup", 4000),
        schedule=args.schedule or suggested.get("schedule", "noam"),
        mixed_precision=args.mixed_precision, eval_every=args.eval_every,
        eval_images=args.eval_images, sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
        threads=args.threads, report_to=args.report_to, num_workers=args.num_workers,
        hflip=args.hflip, grey=args.grey)
    if settings.max_steps is None and settings.minutes is None:
        raise UserError("give --max-steps or --minutes (or both) so training knows when to stop")
    settings.validate()
    return settings


def _train(args: argparse.Namespace) -> int:
    from imgtx.configs import CONFIGS, get_config
    from imgtx.train import train

    config = get_named_config(get_config, args.config)
    apply_overrides(config, args.set)
    train(config, train_settings(args, CONFIGS[args.config].train), init=args.init)
    return 0


def close_process_group() -> None:
    """When this process is one of several (``torchrun``), wait for the others, then close the
    process group: a process that exits with the group's communication threads still running
    aborts ("terminate called without an active exception") and fails the whole launch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _eval_bpd(args: argparse.Namespace) -> int:
    from imgtx.eval.bits_per_dim import evaluate_model

    accelerator = launch_accelerator(args.device)
    result = evaluate_model(args.model, args.data, split=args.split, limit=args.limit,
                            batch_size=args.batch_size, image_column=args.image_column,
                            streaming=args.streaming, on_error=args.on_error,
                            baselines=not args.no_baselines, device=args.device,
                            accelerator=accelerator)
    if accelerator is not None:
        result["processes"] = accelerator.num_processes
        if not accelerator.is_main_process:
            return 0
    if not args.json:
        codecs = "".join(f", {name} {result[f'{name.lower()}_bits_per_dim']:.4f}"
                         for name in ("PNG", "WebP")
                         if result.get(f"{name.lower()}_bits_per_dim") is not None)
        print(f"{result['model']} on {result['data']} ({result['split']}): "
              f"{result['bits_per_dim']:.4f} ± {result['ci95']:.4f} bits/dim (95% CI over "
              f"{result['num_images']} images){codecs}; "
              f"{result['images_per_second']:.1f} images/s", file=sys.stderr)
    print(json.dumps(result))
    return 0


def _sample(args: argparse.Namespace) -> int:
    import time

    from imgtx.images import save_grid
    from imgtx.model import ImageTransformer
    from imgtx.sampling import sample

    model = ImageTransformer.from_pretrained(args.model, device=default_device(args.device))
    start = time.time()
    images = sample(model, args.num, temperature=args.temperature, labels=args.class_label,
                    batch_size=args.batch_size, use_cache=not args.no_cache, seed=args.seed)
    seconds = time.time() - start
    path = save_grid(images, args.out, scale=args.scale)
    print(json.dumps({"out": str(path), "num_images": args.num, "seconds": round(seconds, 3),
                      "seconds_per_image": round(seconds / args.num, 4),
                      "cache": not args.no_cache}))
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``imgtx train`` and ``imgtx sr train`` share (data, budget, optimiser,
    evaluation, checkpoints); read them back with :func:`train_settings`."""
    p.add_argument("--data", default="builtin:photos32",
                   help="builtin:photos32 | a folder of images | a Hub dataset id")
    p.add_argument("--eval-data", default=None, help="held-out data (default: --data's test split)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--max-steps", type=int, help="optimiser steps")
    p.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int,
                   help="images per process and micro-batch (default: the config's suggestion)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="optimiser steps of linear warm-up")
    p.add_argument("--schedule", default=None, choices=["noam", "constant", "cosine"],
                   help="learning-rate schedule (default: the config's suggestion, else noam)")
    p.add_argument("--hflip", action="store_true",
                   help="mirror each training image left-right with probability 1/2")
    p.add_argument("--grey", type=float, default=0.0,
                   help="probability of turning a training image grey (its BT.601 luma in all "
                        "three channels)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-images", type=int, default=128)
    p.add_argument("--sample-every", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--report-to", default="none", choices=["none", "tensorboard", "wandb", "all"],
                   help="also log to these accelerate trackers (OUT/logs)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgtx", description="Transformer image generation: Image Transformer likelihood "
        "models (bits/dim, sampling) and the command groups of the other model families.")
    from imgtx import __version__

    parser.add_argument("--version", action="version", version=f"imgtx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="parameter count and settings of a named configuration")
    p.add_argument("--config", required=True, help="a registry name, or 'all'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)

    p = sub.add_parser("train", help="train an Image Transformer (accelerate)")
    p.add_argument("--config", required=True, help="registry name, e.g. small, cifar10-cat-1d")
    p.add_argument("--init", default=None,
                   help="warm-start from this trained model (dir or Hub id); the config may add "
                        "neighbour_inputs or a predictor to it")
    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval-bpd", help="exact bits/dim of a model on a data split")
    p.add_argument("--model", required=True, help="save_pretrained directory or Hub id")
    p.add_argument("--data", default="builtin:photos32")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-column")
    p.add_argument("--streaming", action="store_true")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    p.add_argument("--no-baselines", action="store_true", help="skip PNG/WebP bits/dim")
    add_device_arguments(p)
    p.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    p.set_defaults(func=_eval_bpd)

    p = sub.add_parser("sample", help="sample images (KV-cached)")
    p.add_argument("--model", required=True)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-label", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-cache", action="store_true", help="full recompute per position (slow)")
    p.add_argument("--scale", type=int, default=1, help="enlarge the grid for viewing")
    add_device_arguments(p)
    p.set_defaults(func=_sample)

    unavailable = _register_groups(sub)
    if unavailable:
        parser.epilog = "unavailable command groups: " + "; ".join(unavailable)
    return parser


def _register_groups(sub) -> list[str]:
    """Add each family's command group (entry points ``imgtx.commands``); returns a note for
    each group whose module failed to import."""
    from importlib.metadata import entry_points

    notes = []
    for entry in sorted(entry_points(group=COMMAND_GROUPS), key=lambda e: e.name):
        try:
            register = entry.load()
        except Exception as error:  # noqa: BLE001 - a broken family must not break the others
            notes.append(f"{entry.name} ({type(error).__name__}: {error})")
            continue
        register(sub)
    return notes


def _user_errors() -> tuple[type[BaseException], ...]:
    """:class:`UserError` and the error classes written for users that do not derive from it
    yet (they are caught by name until they do)."""
    classes: list[type[BaseException]] = [UserError]
    for module, names in (("imgtx.data", ["ImageDataError"]),
                          ("imgtx.hub", ["CheckpointMismatchError", "ConfigMismatchError",
                                         "PickleCheckpointError", "CheckpointNotFoundError"]),
                          ("imgtx.attention.backends", ["BackendUnavailable"])):
        try:
            loaded = importlib.import_module(module)
        except ImportError:  # pragma: no cover
            continue
        classes += [getattr(loaded, name) for name in names if hasattr(loaded, name)]
    return tuple(c for c in classes if c is UserError or not issubclass(c, UserError))


def _command_name(args: argparse.Namespace) -> str:
    name = args.command
    sub = getattr(args, f"{args.command}_command", None)
    return f"{name} {sub}" if sub else name


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        check_arguments(args)
        threads = getattr(args, "threads", None)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        status = args.func(args)
        close_process_group()
        return status
    except _user_errors() as error:
        if os.environ.get("IMGTX_DEBUG"):
            raise
        message = " ".join(str(error).split())  # one line
        print(f"imgtx {_command_name(args)}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
