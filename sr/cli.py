"""``imgtx sr``: train, upscale and evaluate super-resolution models.

    imgtx sr train --config NAME --data SPEC --out DIR [--decoder-init DIR_OR_HUB_ID] [...]
                                                  (and the other options of imgtx train)
    imgtx sr upscale --model DIR_OR_HUB_ID INPUT OUTPUT [--temperature T] [--seed S] [...]
    imgtx sr eval --model DIR_OR_HUB_ID --data SPEC --split test [--json]
    imgtx sr info --config NAME|all [--json]

``imgtx.cli`` calls :func:`register` through the ``imgtx.commands`` entry point ``sr``; errors a
user can act on are printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from imgtx.cli_options import (
    add_device_arguments,
    add_info_arguments,
    add_train_arguments,
    default_device,
    launch_accelerator,
    named_config,
    print_rows,
    settings_from_args,
)
from imgtx.errors import UserError
from imgtx.training.likelihood import TrainSettings

__all__ = ["register", "SuperResolutionTrainSettings"]


@dataclass
class SuperResolutionTrainSettings(TrainSettings):
    """``imgtx sr train``'s settings: the likelihood run's, plus where the decoder starts."""

    decoder_init: str | None = None  # an unconditional Image Transformer ("none": fresh)
    freeze_decoder: bool = False  # keep the decoder_init weights fixed


def _info(args: argparse.Namespace) -> int:
    from imgtx.hub import parameter_count
    from imgtx.sr.configs import CONFIGS
    from imgtx.sr.model import SuperResolutionTransformer

    rows = []
    for name in list(CONFIGS) if args.config == "all" else [args.config]:
        config = named_config(CONFIGS, name, what="super-resolution config")
        rows.append({"name": name,
                     "parameters": parameter_count(SuperResolutionTransformer(config)),
                     "input": config.input_size, "output": config.output_size,
                     "source": CONFIGS[name].source, "config": asdict(config)})
    print_rows(rows, args.json, lambda row: f"{row['name']}: {row['input']}x{row['input']} -> "
               f"{row['output']}x{row['output']}, {row['parameters']:,} parameters - "
               f"{row['source']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from imgtx.sr.configs import CONFIGS
    from imgtx.sr.train import train

    config = named_config(CONFIGS, args.config, args.set, what="super-resolution config")
    recipe = CONFIGS[args.config].train
    settings = settings_from_args(SuperResolutionTrainSettings, args, recipe,
                                  recipe_name=args.config)
    decoder_init = settings.decoder_init
    if args.decoder_init is None and decoder_init and not Path(decoder_init).exists():
        # the recipe of the shipped checkpoint names a path relative to the repository root
        print(f"note: the {args.config} recipe warm-starts the decoder from {decoder_init}, "
              "which is not here; training it from scratch (give --decoder-init)",
              file=sys.stderr)
        decoder_init = None
    decoder_init = None if decoder_init == "none" else decoder_init
    # The recipe's freeze goes with the recipe's decoder; --freeze-decoder with any.
    freeze = bool(args.freeze_decoder) or (settings.freeze_decoder
                                           and decoder_init == recipe.get("decoder_init"))
    if freeze and not decoder_init:
        raise UserError("--freeze-decoder keeps the weights of --decoder-init fixed: give one")
    settings = replace(settings, decoder_init=decoder_init, freeze_decoder=freeze)  # as run
    train(config, settings, decoder_init=decoder_init, freeze_decoder=freeze)
    return 0


def _upscale(args: argparse.Namespace) -> int:
    from imgtx.images import read_image
    from imgtx.sr.model import SuperResolutionTransformer
    from imgtx.sr.upscale import upscale_file

    read_image(args.input)  # a missing or corrupt input fails before the model is loaded
    model = SuperResolutionTransformer.from_pretrained(args.model,
                                                       device=default_device(args.device))
    summary = upscale_file(model, args.input, args.output, temperature=args.temperature,
                           seed=args.seed, batch_size=args.batch_size,
                           progress=not args.no_progress, bicubic_path=args.bicubic,
                           compare_path=args.compare)
    print(json.dumps(summary))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from imgtx.sr.evaluate import evaluate_model

    accelerator = launch_accelerator(args.device)
    result = evaluate_model(args.model, args.data, args.split, limit=args.limit,
                            batch_size=args.batch_size, temperature=args.temperature,
                            seed=args.seed, device=args.device, image_column=args.image_column,
                            on_error=args.on_error, unconditional_model=args.unconditional_model,
                            grid_path=args.grid, progress=not args.json, accelerator=accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    if not args.json:
        for key, value in result.items():
            print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def register(subparsers) -> None:
    """Add the ``sr`` command group to the ``imgtx`` parser's subparsers."""
    group = subparsers.add_parser("sr", help="super-resolution: train, upscale, eval")
    sub = group.add_subparsers(dest="sr_command", metavar="SR_COMMAND", required=True)

    p = sub.add_parser("info", help="parameter count and source of a named configuration")
    add_info_arguments(p)
    p.set_defaults(func=_info)

    p = sub.add_parser("train", help="train a super-resolution model (accelerate); pairs are "
                       "made on the fly by area-downscaling each image")
    p.add_argument("--config", required=True,
                   help="registry name, e.g. photos-8to32-small, celeba-8to32-1d")
    p.add_argument("--decoder-init", metavar="DIR_OR_HUB_ID",
                   help="warm-start the decoder from this unconditional Image Transformer of the "
                   "output size ('none': a fresh decoder; default: the config's recipe, e.g. "
                   "checkpoints/imgtx-photos32-small for photos-8to32-small)")
    p.add_argument("--freeze-decoder", action="store_true", default=None,
                   help="keep the --decoder-init weights fixed and train only the encoder, "
                   "cross-attention and anchor inputs (default: the config's recipe; on for "
                   "corpus-8to32-dmol)")
    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("upscale", help="upscale an image of any size (tiled, KV-cached)")
    p.add_argument("--model", required=True, help="save_pretrained directory or Hub id")
    p.add_argument("input", help="image file (PNG, JPEG, ...; grayscale/RGBA become RGB)")
    p.add_argument("output", help="where to write the upscaled image (format from the suffix)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature; 0 = most likely value per subpixel, kept at "
                   "the anchor unless the model is confident, decoded by fast fixed-point "
                   "passes (default: the model's sampling_temperature)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="tiles decoded together")
    p.add_argument("--bicubic", metavar="PATH", help="also write the bicubic upscale")
    p.add_argument("--compare", metavar="PATH",
                   help="also write bicubic | model side by side")
    p.add_argument("--no-progress", action="store_true")
    add_device_arguments(p)
    p.set_defaults(func=_upscale)

    p = sub.add_parser("eval", help="conditional bits/dim, PSNR and SSIM against bicubic and "
                       "nearest upscaling on held-out images")
    p.add_argument("--model", required=True, help="save_pretrained directory or Hub id")
    p.add_argument("--data", default="builtin:photos32")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None,
                   help="for PSNR/SSIM; 0 = most likely value per subpixel (default: the "
                   "model's sampling_temperature)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-column")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    p.add_argument("--unconditional-model", metavar="DIR_OR_HUB_ID",
                   help="also report this unconditional Image Transformer's bits/dim of the "
                   "same targets")
    p.add_argument("--grid", metavar="PATH",
                   help="write rows of nearest | bicubic | model | truth for the first images")
    add_device_arguments(p)
    p.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    p.set_defaults(func=_eval)
