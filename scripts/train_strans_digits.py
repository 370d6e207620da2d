"""Reproduce the shipped conditional generator ``checkpoints/strans-digits32-cond``.

Trains the ``strans-digits32-cond`` pair (STrans-G with AdaNorm-T on the trunk; Xu et al. 2021,
arXiv 2110.13107; STrans-D with a projection head and an AC-GAN auxiliary classifier, Odena et
al. 2017) on ``builtin:digits`` at 32x32 with ``imgtx gan train``'s code
(:func:`imgtx.gan.cli.train_from_arguments`), logging the residual norm ratios of G and D every
``--ratio-every`` steps through the run's per-step hook (``imgtx.gan.ratio_logging``), then
copies the EMA generator to ``--export`` with its training curve, ratio curves and a class grid
(one row per class, seed 0).

    python scripts/train_strans_digits.py          # the shipped run: SETTINGS below
    python scripts/train_strans_digits.py --max-steps 3 --out /tmp/smoke --export ''  # smoke

``SETTINGS`` are the shipped run's (it was made by ``python scripts/train_strans_digits.py
--minutes 60 --aux-fade-kimg 50 --set noise=true --set upsample=norm_bilinear --mode-seeking
0.35 --threads 1``): batch 16, learning rates 2e-4, an EMA half-life of 2 kimg; G's AC-GAN
weight falls from 1 to 0 over the first 50 kimg, after which the projection head alone
conditions G; StyleGAN noise inputs (Karras et al. 2019, sec. 2) and ``norm_bilinear``
upsampling in G; MSGAN's mode-seeking term at weight 0.35 in G's loss (Mao et al. 2019), which
keeps same-class samples apart; 100 samples per grid. The registry entry's ``train`` gives the
rest (hinge loss, n_critic 1). Every ``imgtx gan train`` option overrides them, e.g.
``--set``/``--set-d`` for generator/discriminator config fields (the ablations in
``scripts/ablate_strans_digits.py``).
The same training without the ratio logging is

    imgtx gan train --config strans-digits32-cond --data builtin:digits --out DIR \
        --batch-size 16 --lr 2e-4 --lr-d 2e-4 --max-steps 20000 --minutes 60 --ema-kimg 2 \
        --aux-fade-kimg 50 --set noise=true --set upsample=norm_bilinear --mode-seeking 0.35 \
        --num-samples 100
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from imgtx.gan.cli import add_train_arguments, train_from_arguments
from imgtx.gan.ratio_logging import RatioProbe
from imgtx.training.checkpoints import export_run

SETTINGS = {"config": "strans-digits32-cond", "data": "builtin:digits",
            "out": "runs/strans-digits32-cond", "batch_size": 16, "lr": 2e-4, "lr_d": 2e-4,
            "max_steps": 20000, "minutes": 60.0, "ema_kimg": 2.0, "aux_fade_kimg": 50.0,
            "set": ["noise=true", "upsample=norm_bilinear"], "mode_seeking": 0.35,
            "eval_every": 100,
            "sample_every": 500, "checkpoint_every": 250, "num_samples": 100, "threads": 1,
            "ratio_every": 100, "export": "checkpoints/strans-digits32-cond"}


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
    """``imgtx gan train``'s options with :data:`SETTINGS` as defaults, plus ``--ratio-every``
    and ``--export``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_arguments(p)
    p.add_argument("--ratio-every", type=int, help="steps between ratio probes")
    p.add_argument("--export", help="where to copy the EMA generator ('' to skip)")
    p.set_defaults(**SETTINGS)
    # --config and --out are required by imgtx gan train: give the defaults first, so that the
    # user's own (later on the line) win.
    return p.parse_args(["--config", SETTINGS["config"], "--out", SETTINGS["out"], *(argv or [])])


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

    args = parse_args(sys.argv[1:] if argv is None else argv)
    final = train_from_arguments(args, wrap_step=lambda step: RatioProbe(step, args.ratio_every))
    summary = {"final": str(final)}
    if args.export:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        summary["export"] = str(export(final, args.export, command))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
