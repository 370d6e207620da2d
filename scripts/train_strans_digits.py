"""Reproduce the shipped conditional generator ``checkpoints/strans-digits32-cond``.

Trains the ``strans-digits32-cond`` pair (STrans-G with AdaNorm-T on the trunk; Xu et al. 2021,
arXiv 2110.13107; STrans-D with a projection head and an AC-GAN auxiliary classifier, Odena et
al. 2017) on ``builtin:digits``
train at 32x32 on the shared GAN run (``imgtx.gan.train.train_gan``), logging the residual norm
ratios of G and D every ``--ratio-every`` steps (``imgtx.gan.ratio_logging``), then copies the
EMA generator to ``--export`` with its training curve, ratio curves and a class grid (one row
per class, seed 0).

    python scripts/train_strans_digits.py --batch-size 16 --lr 2e-4 --lr-d 2e-4 \
        --max-steps 20000 --minutes 60 --sample-every 500 --ratio-every 100 --eval-every 100 \
        --checkpoint-every 250 --threads 1 \
        --out runs/strans-digits32-cond --export checkpoints/strans-digits32-cond
    python scripts/train_strans_digits.py --max-steps 3 --out /tmp/smoke --export ''  # smoke

The first command made the shipped checkpoint (docs/strans.md has its figures and the pilot
runs). The same training without the ratio logging is

    imgtx gan train --config strans-digits32-cond --data builtin:digits --out DIR \
        --batch-size 16 --lr 2e-4 --lr-d 2e-4 --max-steps 20000 --minutes 60 --ema-kimg 2 \
        --num-samples 100

Settings not given here come from the registry entry's ``train`` (loss, lr, batch, n_critic),
then from ``imgtx.gan.train.DEFAULTS``. ``--set``/``--set-d`` override generator/discriminator
config fields (the ablations in ``scripts/ablate_strans_digits.py`` use them).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from imgtx.cli import apply_overrides
from imgtx.errors import UserError
from imgtx.gan.configs import gan_entry
from imgtx.gan.ratio_logging import RatioProbe
from imgtx.gan.train import settings_from_registry, train_gan
from imgtx.train import export_run

# Logging and EMA of the shipped run; the registry entry's ``train`` gives loss, lr, batch size
# and n_critic, which the shipped command overrides (see the module docstring).
RECIPE = {"ema_kimg": 2.0, "eval_every": 50, "checkpoint_every": 200, "num_samples": 100}


@contextmanager
def logging_ratios(every: int):
    """Wrap the step that ``train_gan`` builds in a :class:`RatioProbe` (``train_gan`` has no
    step hook of its own; see the module docstring of ``imgtx.gan.ratio_logging``)."""
    import imgtx.gan.train as gan_train

    original = gan_train.GANStep
    gan_train.GANStep = lambda *args, **kwargs: RatioProbe(original(*args, **kwargs), every)
    try:
        yield
    finally:
        gan_train.GANStep = original


def class_grid(model_dir: str | Path, path: str | Path, per_class: int = 10, seed: int = 0,
               scale: int = 2) -> Path:
    """A grid PNG with one row per class (``per_class`` samples each) of a saved generator."""
    import torch

    from imgtx.gan.sample import load_generator
    from imgtx.images import save_grid

    generator = load_generator(str(model_dir))
    classes = generator.config.num_classes
    rows = [generator.generate(per_class, labels=c, seed=seed) for c in range(classes)]
    return save_grid(torch.cat(rows), path, columns=per_class, scale=scale)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="strans-digits32-cond")
    p.add_argument("--out", default="runs/strans-digits32-cond")
    p.add_argument("--export", default="checkpoints/strans-digits32-cond",
                   help="where to copy the EMA generator ('' to skip)")
    p.add_argument("--max-steps", type=int, default=1600, help="D steps")
    p.add_argument("--minutes", type=float, help="wall-clock cap as well")
    p.add_argument("--loss", choices=["wgan-gp", "hinge", "logistic-r1"])
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-d", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--n-critic", type=int)
    p.add_argument("--ema-kimg", type=float, default=RECIPE["ema_kimg"])
    p.add_argument("--ratio-every", type=int, default=50, help="steps between ratio probes")
    p.add_argument("--eval-every", type=int, default=RECIPE["eval_every"])
    p.add_argument("--checkpoint-every", type=int, default=RECIPE["checkpoint_every"])
    p.add_argument("--sample-every", type=int, default=0, help="steps between sample grids")
    p.add_argument("--num-samples", type=int, default=RECIPE["num_samples"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--loss-option", action="append", metavar="NAME=NUMBER", default=[])
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="generator field")
    p.add_argument("--set-d", action="append", metavar="FIELD=VALUE", help="discriminator field")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> Path:
    """Train as ``args`` say; returns the run's ``final/`` (EMA generator)."""
    entry = gan_entry(args.config)
    generator, discriminator = copy.deepcopy(entry.config), copy.deepcopy(entry.discriminator)
    apply_overrides(generator, args.set)
    apply_overrides(discriminator, args.set_d)
    generator.__post_init__()
    discriminator.__post_init__()
    loss_options = {}
    for pair in args.loss_option:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--loss-option {pair!r}: expected NAME=NUMBER")
        loss_options[key] = float(value)
    settings = settings_from_registry(
        entry.train, data="builtin:digits", out=args.out, max_steps=args.max_steps,
        minutes=args.minutes, loss=args.loss, lr=args.lr, lr_d=args.lr_d,
        batch_size=args.batch_size, n_critic=args.n_critic, ema_kimg=args.ema_kimg,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        num_samples=args.num_samples, seed=args.seed, threads=args.threads,
        resume=args.resume or None, loss_options=loss_options or None)
    with logging_ratios(args.ratio_every):
        return train_gan(generator, discriminator, settings)


def export(final: Path, target: str | Path, command: str) -> Path:
    """Copy ``final/`` to ``target`` with the training curve (``training_curve.jsonl``,
    ``metrics.png``), ratio curves (``ratios_*.json|png``), a class grid and the command."""
    target = export_run(final, target)
    run = final.parent
    for name in ["metrics.png"] + [p.name for p in run.glob("ratios_*.*")]:
        shutil.copy(run / name, target / name)
    class_grid(target, target / "class_grid.png")
    (target / "train_command.txt").write_text(command + "\n")
    return target


def main(argv: list[str] | None = None) -> None:
    import shlex
    import sys

    args = parse_args(argv)
    final = train(args)
    summary = {"final": str(final)}
    if args.export:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        summary["export"] = str(export(final, args.export, command))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
