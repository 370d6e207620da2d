"""``imgtx gan``: transformer GANs on the command line.

    imgtx gan info --config NAME|all [--json]
    imgtx gan train --config NAME --data SPEC --out DIR [--max-steps N | --kimg K | --minutes M]
                    [--loss wgan-gp|hinge|logistic-r1] [--n-critic N] [--grad-accum K]
                    [--g-batch-size N] [--ema-kimg K | --ema-decay D]
                    [--loss-option NAME=VALUE] [--[no-]isolate-d]
                    [--mixed-precision bf16] [--set checkpoint_blocks=true] [--resume] [...]
    imgtx gan sample --model DIR_OR_ID --num N (--out grid.png | --out-dir DIR) [--seed S]
                     [--class-label C] [--device D]
    imgtx gan eval --model DIR_OR_ID --data SPEC --split test --num-samples N
                   [--features NAME] [--baselines] [--likelihood-model DIR] [--json]

``imgtx.cli`` calls :func:`register` with its subparsers. Parameter counts are taken on the meta
device, so even the 256^2 models are counted without allocating their weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import torch

from imgtx.errors import UserError

__all__ = ["register", "info_rows", "build_gan", "add_train_arguments", "train_from_arguments",
           "parse_loss_options"]


def build_gan(name: str, device: str | torch.device | None = None, **generator_overrides):
    """Fresh ``(generator, discriminator)`` of a named config (TransGAN or STrans).

    ``device="meta"`` builds them without allocating weights (for counting parameters).
    ``generator_overrides`` replace generator config fields; ``num_classes`` and
    ``checkpoint_blocks`` are passed on to the discriminator too.
    """
    import dataclasses

    from imgtx.gan.configs import gan_entry
    from imgtx.gan.train import build_models

    entry = gan_entry(name)
    with torch.device(device or "cpu"):
        return build_models(dataclasses.replace(entry.config, **generator_overrides),
                            entry.discriminator)


def info_rows(names: list[str]) -> list[dict]:
    """Per config: name, source, generator/discriminator parameter counts and both configs."""
    from imgtx.gan.configs import gan_entry
    from imgtx.gan.train import resolved_recipe
    from imgtx.hub import parameter_count

    rows = []
    for name in names:
        entry = gan_entry(name)
        generator, discriminator = build_gan(name, device="meta")
        rows.append({"name": name, "generator_params": parameter_count(generator),
                     "discriminator_params": parameter_count(discriminator),
                     "image_size": entry.config.image_size, "source": entry.source,
                     "generator": asdict(entry.config),
                     "discriminator": asdict(entry.discriminator),
                     "train": resolved_recipe(entry.train)})
    return rows


def _info(args: argparse.Namespace) -> int:
    from imgtx.gan.configs import gan_config_names

    names = gan_config_names() if args.config == "all" else [args.config]
    rows = info_rows(names)
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['image_size']}x{row['image_size']}, G "
              f"{row['generator_params']:,} / D {row['discriminator_params']:,} parameters - "
              f"{row['source']}")
        if len(rows) == 1:
            for part in ("generator", "discriminator", "train"):
                print(f"  {part}:")
                for key, value in row[part].items():
                    print(f"    {key} = {value}")
    return 0


# --------------------------------------------------------------------------------------------
# train, sample, eval
# --------------------------------------------------------------------------------------------


def train_from_arguments(args: argparse.Namespace, wrap_step=None):
    """Train the registry pair ``args.config`` as the arguments of :func:`add_train_arguments`
    say: its configs with ``--set``/``--set-d``, its recipe with the given settings on top;
    returns ``final/``. ``wrap_step`` is :func:`imgtx.gan.train.train_gan`'s per-step hook."""
    import copy
    from dataclasses import fields

    from imgtx.cli_options import apply_overrides
    from imgtx.gan.configs import gan_entry
    from imgtx.gan.train import GANTrainSettings, settings_from_registry, train_gan

    entry = gan_entry(args.config)
    generator, discriminator = copy.deepcopy(entry.config), copy.deepcopy(entry.discriminator)
    apply_overrides(generator, args.set)
    apply_overrides(discriminator, args.set_d)
    given = {f.name: getattr(args, f.name) for f in fields(GANTrainSettings)
             if hasattr(args, f.name)}
    given["clip_grad_norm"] = None if args.clip_grad_norm == 0 else args.clip_grad_norm
    if args.loss_option:  # merged into the recipe's options (settings_from_registry)
        given["loss_options"] = parse_loss_options(args.loss_option)
    settings = settings_from_registry(entry.train, **given)
    if args.clip_grad_norm == 0:
        settings.clip_grad_norm = None
    return train_gan(generator, discriminator, settings, wrap_step=wrap_step)


def parse_loss_options(pairs: list[str]) -> dict[str, bool | int | float]:
    """``--loss-option NAME=VALUE`` pairs as a dict: VALUE is ``true``/``false``, an integer or a
    float (``drift_of_mean=true``, ``gp_weight=10``, ``drift=1e-3``)."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--loss-option {pair!r}: expected NAME=VALUE, e.g. r1_gamma=1")
        if raw.lower() in ("true", "false"):
            options[key] = raw.lower() == "true"
            continue
        for kind in (int, float):
            try:
                options[key] = kind(raw)
                break
            except ValueError:
                continue
        else:
            raise UserError(f"--loss-option {pair!r}: {raw!r} is not a number, true or false")
    return options


def _train(args: argparse.Namespace) -> int:
    final = train_from_arguments(args)
    print(json.dumps({"final": str(final), "config": args.config}))
    return 0


def _sample(args: argparse.Namespace) -> int:
    import time

    from imgtx.cli import default_device
    from imgtx.gan.sample import load_generator, write_samples

    if (args.out is None) == (args.out_dir is None):
        raise UserError("give exactly one of --out GRID.png and --out-dir DIR")
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = load_generator(args.model, default_device(args.device))
    start = time.time()
    summary = write_samples(generator, args.num, out=args.out, out_dir=args.out_dir,
                            seed=args.seed, class_label=args.class_label,
                            batch_size=args.batch_size, scale=args.scale)
    summary["seconds"] = round(time.time() - start, 3)
    print(json.dumps(summary))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from imgtx.cli import default_device, launch_accelerator
    from imgtx.gan.evaluate import evaluate_generator
    from imgtx.gan.sample import load_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = launch_accelerator(args.device)  # several processes share the samples
    device = default_device(args.device)
    if accelerator is not None and accelerator.device.type != "cpu":  # one GPU per process
        device = str(accelerator.device)
    generator = load_generator(args.model, device)
    result = evaluate_generator(generator, args.data, args.split, args.num_samples,
                                args.features, baselines=args.baselines,
                                batch_size=args.batch_size, device=device, seed=args.seed,
                                accelerator=accelerator, likelihood_model=args.likelihood_model,
                                likelihood_images=args.likelihood_images,
                                variety_per_class=args.variety_per_class)
    if accelerator is not None:
        result["processes"] = accelerator.num_processes
        if not accelerator.is_main_process:
            return 0
    result["model"] = args.model
    if not args.json:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float))
        if "grid_edge_ratio" in result:
            shown += (f", grid_edge_ratio at 8 px {result['grid_edge_ratio']['8']:.3g} (real "
                      f"{result['real_grid_edge_ratio']['8']:.3g})")
        print(f"{args.model} vs {args.data} {args.split}: {shown}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``imgtx gan train``: every run's (:func:`imgtx.cli_options.add_run_arguments`;
    a step is a D step) and the GAN settings, read back by :func:`train_from_arguments`. Every
    setting defaults to None: the registry recipe's value, else the settings' default."""
    from imgtx.cli_options import add_run_arguments

    p.add_argument("--config", required=True, help="registry name, e.g. transgan-cifar10")
    p.add_argument("--data", help="builtin:photos32 | builtin:digits | a folder | a Hub id")
    add_run_arguments(p)
    p.add_argument("--kimg", type=float, help="budget in thousands of real images")
    p.add_argument("--g-batch-size", type=int, help="G's fresh latents per G step over all "
                   "processes and micro-batches (TransGAN gen_batch_size; default: the config's, "
                   "else D's real images per step)")
    p.add_argument("--loss", choices=["wgan-gp", "hinge", "logistic-r1"])
    p.add_argument("--loss-option", action="append", metavar="NAME=VALUE",
                   help="a loss option on top of the recipe's, e.g. gp_weight=10, drift=0.001, "
                   "drift_of_mean=false, r1_gamma=1")
    p.add_argument("--lr", type=float, help="Adam learning rate of G (and D)")
    p.add_argument("--lr-d", type=float, help="D's learning rate (default: --lr)")
    p.add_argument("--warmup", type=int, help="optimiser steps of linear LR warm-up")
    p.add_argument("--n-critic", type=int, help="D steps per G step")
    p.add_argument("--clip-grad-norm", type=float, help="0 turns clipping off (default 5)")
    p.add_argument("--ema-kimg", type=float, help="EMA half-life of G in thousands of images")
    p.add_argument("--ema-warmup", type=float, help="half-life cap: this x images seen")
    p.add_argument("--ema-decay", type=float, help="instead of --ema-kimg: a fixed EMA decay "
                   "per G step (TransGAN --ema, e.g. 0.995)")
    p.add_argument("--num-samples", type=int, help="images per sample grid")
    p.add_argument("--fid-every", type=int, help="steps between FID/KID ticks (0: none)")
    p.add_argument("--fid-samples", type=int, help="images per FID/KID tick")
    p.add_argument("--fid-data", help="real images of the ticks (default: --data)")
    p.add_argument("--fid-split", help="split of --fid-data (default: test)")
    p.add_argument("--features", help="FID feature extractor (default: imgtx-small)")
    p.add_argument("--isolate-d", action=argparse.BooleanOptionalAction, default=None,
                   help="freeze D during the G step (default; --no-isolate-d lets the G loss's "
                   "gradient in D join D's next step, as the official TransGAN loop and its "
                   "paper recipes do)")
    p.add_argument("--aux-weight", type=float, help="weight of the AC-GAN class loss, when D "
                   "has an auxiliary classifier (--set-d aux_classifier=true; default 1)")
    p.add_argument("--aux-fade-kimg", type=float, help="G's AC-GAN weight falls linearly to 0 "
                   "over this many kimg; the projection head alone conditions G afterwards")
    p.add_argument("--mode-seeking", type=float, help="weight of MSGAN's mode-seeking term in "
                   "G's loss (Mao et al. 2019; their weight 1): pushes apart the images of "
                   "same-class latents (default 0: off)")
    p.add_argument("--r1-gamma", type=float, help="R1 penalty on real images added to D's loss "
                   "(Mescheder et al. 2018), lazily every --r1-every D steps (default 0: off)")
    p.add_argument("--r1-every", type=int, help="lazy R1 interval in D steps (StyleGAN2; "
                   "default 16)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a generator config field, e.g. --set checkpoint_blocks=true "
                   "(num_classes and checkpoint_blocks apply to D too)")
    p.add_argument("--set-d", action="append", metavar="FIELD=VALUE",
                   help="override a discriminator config field, e.g. --set-d diffaug=color")


def _add_sample_parser(sub) -> None:
    from imgtx.cli import add_device_arguments

    p = sub.add_parser("sample", help="images from a trained generator")
    p.add_argument("--model", required=True, help="generator folder or Hub id")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--out", help="one grid PNG")
    p.add_argument("--out-dir", help="N separate PNGs (for external FID tools)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-label", type=int, help="class of every sample (conditional models)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scale", type=int, default=1, help="enlarge the grid for viewing")
    add_device_arguments(p)
    p.set_defaults(func=_sample)


def _add_eval_parser(sub) -> None:
    from imgtx.cli import add_device_arguments

    p = sub.add_parser("eval", help="FID/KID (IS, class accuracy) of a generator")
    p.add_argument("--model", required=True, help="generator folder or Hub id")
    p.add_argument("--data", default="builtin:photos32", help="real images")
    p.add_argument("--split", default="test")
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--features", default="imgtx-small",
                   help="imgtx-small (offline, ships) | inception | PATH.pt | random")
    p.add_argument("--baselines", action="store_true",
                   help="add untrained_fid/kid (same config, fresh) and floor_fid (real train "
                   "vs --split, as many images)")
    p.add_argument("--likelihood-model", metavar="DIR_OR_ID",
                   help="also report the mean bits/dim of the samples and of --split's images "
                   "under this Image Transformer, e.g. checkpoints/imgtx-photos-dmol-small")
    p.add_argument("--likelihood-images", type=int, default=256,
                   help="samples (and real images) scored by --likelihood-model")
    p.add_argument("--variety-per-class", type=int, default=200,
                   help="conditional models: samples per class for variety_ratio and class_fid "
                   "(0: skip)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    add_device_arguments(p)
    p.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    p.set_defaults(func=_eval)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``gan`` command group to ``imgtx``'s subparsers; returns the group's parser
    (other modules add their subcommands to ``parser.gan_subparsers``)."""
    parser = subparsers.add_parser("gan", help="transformer GANs (TransGAN, STrans)")
    sub = parser.add_subparsers(dest="gan_command")
    parser.gan_subparsers = sub
    p = sub.add_parser("info", help="parameter counts and settings of named GAN configs")
    p.add_argument("--config", required=True, help="config name, or 'all'")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=_info)
    train = sub.add_parser("train", help="train a GAN pair on the shared run (accelerate)")
    add_train_arguments(train)
    train.set_defaults(func=_train)
    _add_sample_parser(sub)
    _add_eval_parser(sub)
    from imgtx.gan.official import add_convert_parser

    add_convert_parser(sub)
    return parser
