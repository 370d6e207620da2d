"""Train the shipped feature network ``checkpoints/imgtx-features-small`` on two real tasks
(handwritten digit class and photo identity; :mod:`imgtx.eval.feature_training` says what and
how), on the shared training run.

    nice python scripts/train_feature_net.py --threads 1 --out runs/features \\
        --export checkpoints/imgtx-features-small
    python scripts/train_feature_net.py --max-steps 2 --out /tmp/features-smoke   # a smoke run

Any option of the run (``--max-steps``, ``--batch-size``, ``--seed``, ``--resume``, ...) overrides
the recipe below. The network is written to ``OUT/final`` (and copied to ``--export``); the last
line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from imgtx.cli_options import add_run_arguments, settings_from_args
from imgtx.eval.feature_training import FeatureNetSettings, train_feature_net

# The recipe of checkpoints/imgtx-features-small: 1,000 AdamW steps of 64 digits + 64 photo
# patches, peak lr 2e-3 (warm-up 50 steps, cosine to 0), weight decay 5e-4, a quarter of each
# photo held out, one CPU thread.
RECIPE = {"max_steps": 1000, "batch_size": 64, "lr": 2e-3, "weight_decay": 5e-4,
          "holdout": 0.25, "threads": 1, "seed": 0, "eval_every": 100, "checkpoint_every": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--export", help="also copy the trained network to this folder")
    command = "nice python " + shlex.join(["scripts/train_feature_net.py", *sys.argv[1:]])
    settings = settings_from_args(FeatureNetSettings, parser.parse_args(), RECIPE,
                                  command=command)
    final = train_feature_net(settings)
    card = json.loads((final / "config.json").read_text())
    print(json.dumps({k: card[k] for k in ("digits_test_accuracy", "photo_heldout_accuracy",
                                           "training_seconds")}))


if __name__ == "__main__":
    main()
