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
from collections.abc import Callable, Mapping
from dataclasses import asdict

# The options and helpers every family's command line shares; imported here too, where the
# families' modules have always found them.
from imgtx.cli_options import (
    add_device_arguments,
    add_info_arguments,
    add_run_arguments,
    add_train_arguments,
    apply_overrides,
    check_arguments,
    close_process_group,
    default_device,
    get_named_config,
    launch_accelerator,
    named_config,
    print_rows,
    settings_from_args,
)
from imgtx.errors import UserError

__all__ = ["main", "build_parser", "command_groups", "apply_overrides", "add_train_arguments",
           "add_run_arguments", "add_device_arguments", "default_device", "launch_accelerator",
           "check_arguments", "get_named_config", "settings_from_args"]

COMMAND_GROUPS = "imgtx.commands"  # entry-point group: name -> module:register(subparsers)


def _info(args: argparse.Namespace) -> int:
    from imgtx.configs import CONFIGS
    from imgtx.hub import parameter_count
    from imgtx.model import ImageTransformer

    rows = []
    for name in list(CONFIGS) if args.config == "all" else [args.config]:
        config = named_config(CONFIGS, name)
        rows.append({"name": name, "parameters": parameter_count(ImageTransformer(config)),
                     "sequence_length": config.sequence_length, "source": CONFIGS[name].source,
                     "config": asdict(config)})
    print_rows(rows, args.json, lambda row: f"{row['name']}: {row['parameters']:,} parameters, "
               f"{row['sequence_length']} positions - {row['source']}", details="config")
    return 0


def _train(args: argparse.Namespace) -> int:
    from imgtx.configs import CONFIGS
    from imgtx.train import train
    from imgtx.training.likelihood import TrainSettings

    config = named_config(CONFIGS, args.config, args.set)
    settings = settings_from_args(TrainSettings, args, CONFIGS[args.config].train,
                                  recipe_name=args.config)
    train(config, settings, init=args.init)
    return 0


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

    model = ImageTransformer.from_pretrained(args.model, device=default_device(args.device))
    start = time.time()
    images = model.generate(args.num, args.class_label, temperature=args.temperature,
                            seed=args.seed, batch_size=args.batch_size,
                            use_cache=not args.no_cache, progress=True)
    seconds = time.time() - start
    path = save_grid(images, args.out, scale=args.scale)
    print(json.dumps({"out": str(path), "num_images": args.num, "seconds": round(seconds, 3),
                      "seconds_per_image": round(seconds / args.num, 4),
                      "cache": not args.no_cache}))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The Image Transformer's commands (``info``, ``train``, ``eval-bpd``, ``sample``) on
    ``sub``: both the ``imgtx transformer`` group and, for the documented commands, ``imgtx``."""
    p = sub.add_parser("info", help="parameter count and settings of a named configuration")
    add_info_arguments(p)
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



def register(subparsers: argparse._SubParsersAction) -> None:
    """The Image Transformer's command group, ``imgtx transformer COMMAND``, shaped like the other
    families' groups (``imgtx sr``, ``imgtx gan``); the top-level commands are its aliases."""
    group = subparsers.add_parser("transformer", help="Image Transformer likelihood models "
                                  "(the top-level info/train/eval-bpd/sample are aliases)")
    add_commands(group.add_subparsers(dest="transformer_command", metavar="COMMAND",
                                      required=True))


def build_parser(groups: Mapping[str, Register] | None = None) -> argparse.ArgumentParser:
    """The ``imgtx`` parser: the core commands, then every family's command group (entry points
    ``imgtx.commands``, plus ``groups``: name -> ``register(subparsers)``)."""
    parser = argparse.ArgumentParser(
        prog="imgtx", description="Transformer image generation: Image Transformer likelihood "
        "models (bits/dim, sampling) and the command groups of the other model families.")
    from imgtx import __version__

    parser.add_argument("--version", action="version", version=f"imgtx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    add_commands(sub)  # the Image Transformer's commands at the top level: `imgtx train ...`
    register(sub)  # and as a group like every family's: `imgtx transformer train ...`
    unavailable = _register_groups(sub, groups)
    if unavailable:
        parser.epilog = "unavailable command groups: " + "; ".join(unavailable)
    return parser


Register = Callable[[argparse._SubParsersAction], None]


def command_groups() -> tuple[dict[str, Register], list[str]]:
    """Each family's ``register(subparsers)`` from the ``imgtx.commands`` entry points, by name,
    and a note for each whose module failed to import (a broken family must not break the
    others)."""
    from importlib.metadata import entry_points

    found, notes = {}, []
    for entry in sorted(entry_points(group=COMMAND_GROUPS), key=lambda e: e.name):
        try:
            found[entry.name] = entry.load()
        except Exception as error:  # noqa: BLE001
            notes.append(f"{entry.name} ({type(error).__name__}: {error})")
    return found, notes


def _register_groups(sub, extra: Mapping[str, Register] | None) -> list[str]:
    """Call every group's ``register(sub)``: the entry points', then ``extra`` (groups a caller
    adds without installing them, as a test does); returns the notes of groups that failed."""
    found, notes = command_groups()
    for register in {**found, **(extra or {})}.values():
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


def main(argv: list[str] | None = None, groups: Mapping[str, Register] | None = None) -> int:
    """Run one ``imgtx`` command; returns its exit status (2 for an error a user can act on).

    ``groups`` adds command groups beside the installed ones (see :func:`build_parser`)."""
    parser = build_parser(groups)
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
