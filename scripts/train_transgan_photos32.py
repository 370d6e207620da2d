"""Reproduce the shipped generator ``checkpoints/transgan-photos32-small``.

Trains a CPU-sized TransGAN on ``builtin:photos32`` (train split) for a wall-clock budget with
``imgtx.gan.train`` (the code behind ``imgtx gan train``), copies the run's ``final/`` (EMA
generator, ``discriminator/``) with its learning curve to ``--export``, then measures FID/KID
against the test split with the untrained and real-data baselines (the figures of
``imgtx gan eval --baselines``), writes them into the model card and draws the trained and
untrained sample grids into ``docs/``.

The model is the ``transgan-photos32-small`` registry entry made cheaper for 2 shared CPU cores
(G width 192 with blocks at 8x8 and 16x16 only; a one-block-per-scale D of width 64): see
``SETTINGS``, which also hold the training settings. Pilot runs chose the hinge loss, one D step
per G step, Adam 2e-4 (betas 0, 0.99) and a 2k-image EMA half-life (docs/gan.md has the pilot
table).

    python scripts/train_transgan_photos32.py --minutes 70 --out runs/transgan-photos32
    python scripts/train_transgan_photos32.py --max-steps 4 --out /tmp/smoke --export '' \
        --eval-samples 0                                               # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imgtx.errors import UserError
from imgtx.gan.train import train_named
from imgtx.training.checkpoints import export_run
from imgtx.training.curves import plot_curves, read_records

CONFIG = "transgan-photos32-small"
# Cheaper than the registry entry: the 32x32 stage has no blocks (its global attention over
# 1,024 tokens cost 10x the rest of G on this CPU) and D has one block per scale. The training
# settings replace the entry's recipe where they differ.
SETTINGS = {"generator": {"dim": 192, "depths": (2, 1, 0)},
            "discriminator": {"dim": 64, "embed_dims": (48, 16), "depths": ((1,), (1,))},
            "data": "builtin:photos32", "loss": "hinge", "lr": 2e-4, "n_critic": 1,
            "batch_size": 16, "ema_kimg": 2.0, "ema_warmup": 0.05, "clip_grad_norm": 5.0,
            "eval_every": 100, "sample_every": 500, "checkpoint_every": 250, "num_samples": 64}
COMMAND = ("python scripts/train_transgan_photos32.py --minutes {minutes} --out {out}")


def evaluate(export: Path, samples: int, docs: Path | None) -> dict:
    """FID/KID with baselines (imgtx-small features, test split) and the sample grids."""
    from imgtx.gan.evaluate import _untrained_copy, evaluate_generator
    from imgtx.gan.sample import load_generator
    from imgtx.images import save_grid

    generator = load_generator(str(export))
    result = evaluate_generator(generator, "builtin:photos32", "test", samples, "imgtx-small",
                                baselines=True)
    if docs is not None:
        save_grid(generator.generate(64, seed=0), docs / "transgan_photos32_samples.png", scale=2)
        untrained = _untrained_copy(generator, 0)
        save_grid(untrained.generate(64, seed=0), docs / "transgan_photos32_untrained.png",
                  scale=2)
    return result


def write_card(export: Path, result: dict | None, command: str) -> None:
    """Re-save the generator with a model card holding the command and the figures."""
    from imgtx.gan.sample import load_generator

    generator = load_generator(str(export))
    card = json.loads((export / "train_summary.json").read_text())
    metrics = dict(card["metrics"])
    if result:
        for key in ("fid", "kid", "kid_std", "untrained_fid", "untrained_kid", "floor_fid",
                    "num_samples"):
            metrics[f"{key} (imgtx-small, builtin:photos32 test)"] = round(result[key], 5) \
                if isinstance(result[key], float) else result[key]
    extra = ("## Reproduce\n\n```\n" + command + "\nimgtx gan eval --model "
             "checkpoints/transgan-photos32-small --data builtin:photos32 --split test "
             "--num-samples 512 --baselines --json\n```\n\nThe learning curve is "
             "`training_curve.jsonl` / `training_curve.png`; the discriminator is in "
             "`discriminator/`.")
    generator.save_pretrained(export, metrics=metrics, card_extra=extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=70.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--out", default="runs/transgan-photos32")
    parser.add_argument("--export", default="checkpoints/transgan-photos32-small",
                        help="where to copy the final generator ('' to skip)")
    parser.add_argument("--eval-samples", type=int, default=512, help="0: skip the evaluation")
    parser.add_argument("--docs", default="docs", help="where the sample grids go ('' to skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    final = train_named(CONFIG, **SETTINGS, out=args.out, minutes=args.minutes,
                        max_steps=args.max_steps, threads=args.threads, resume=args.resume)
    if not args.export:
        return
    export = export_run(final, args.export)
    # The curve without kimg and the learning rates, whose scales would flatten the losses.
    records = [{k: v for k, v in r.items() if k not in ("kimg", "lr_G", "lr_D")}
               for r in read_records(export / "training_curve.jsonl")]
    plot_curves(records, export / "training_curve.png")
    progress = json.loads((Path(args.out) / "progress.json").read_text())
    summary = {"metrics": {"training data": "builtin:photos32 (train)", "loss": SETTINGS["loss"],
                           "D steps": progress["step"], "images seen": progress["images_seen"],
                           "training hours": round(progress["hours"], 3),
                           "EMA half-life (kimg)": SETTINGS["ema_kimg"]}}
    (export / "train_summary.json").write_text(json.dumps(summary, indent=2))
    result = None
    if args.eval_samples:
        try:
            result = evaluate(export, args.eval_samples, Path(args.docs) if args.docs else None)
        except UserError as error:  # e.g. no feature network yet: the model is exported anyway
            print(f"evaluation skipped: {error}")
        else:
            (export / "eval.json").write_text(json.dumps(result, indent=2))
            print(json.dumps(result))
    write_card(export, result, COMMAND.format(minutes=args.minutes, out=args.out))


if __name__ == "__main__":
    main()
