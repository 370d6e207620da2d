"""Reproduce the shipped checkpoint ``checkpoints/imgtx-photos32-small``.

Trains the ``small`` config (4 layers, width 128, local 1D attention with block 96 = one image row
of subpixels, pre-norm) on ``builtin:photos32`` train for a wall-clock budget, then exports the
Hub-format model. The same script runs on CPU or GPU (accelerate picks the device).

    python scripts/train_photos32_small.py --minutes 85 --out runs/photos32-small
    python scripts/train_photos32_small.py --max-steps 20 --out /tmp/smoke   # a quick smoke run

The same run from the command line (the registry suggests this batch size, lr and warm-up for
``small``), then ``imgtx.training.checkpoints.export_run`` to copy ``final/`` with its training
curve:

    imgtx train --config small --data builtin:photos32 --out runs/photos32-small --minutes 85 \
        --eval-every 150 --eval-images 128 --checkpoint-every 300

Under ``torchrun --nproc_per_node N`` (or ``accelerate launch``) the processes share each step;
``batch_size`` is per process, so N processes see N times the images per step.
"""

from __future__ import annotations

import argparse

from imgtx.configs import get_config
from imgtx.train import train
from imgtx.training.checkpoints import export_run
from imgtx.training.likelihood import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=85.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--out", default="runs/photos32-small")
    parser.add_argument("--export", default="checkpoints/imgtx-photos32-small",
                        help="where to copy the final Hub-format model ('' to skip)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    settings = TrainSettings(
        data="builtin:photos32", out=args.out, minutes=args.minutes, max_steps=args.max_steps,
        batch_size=8, lr=2e-3, warmup=200, schedule="noam", eval_every=150, eval_images=128,
        checkpoint_every=300, num_samples=4, resume=args.resume)
    final = train(get_config("small"), settings)
    if args.export:
        export_run(final, args.export)


if __name__ == "__main__":
    main()
