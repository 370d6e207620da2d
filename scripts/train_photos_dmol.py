"""Reproduce ``checkpoints/imgtx-photos-dmol-small``: a DMOL photo model on the wallpaper corpus.

Trains the ``small-dmol`` config (4 layers, width 128, local 1D attention over 64 pixels, a
mixture of 10 discretised logistics per pixel: Salimans et al. 2017, "PixelCNN++", sec. 2.1-2.2,
as the Image Transformer's DMOL variant, Parmar et al. 2018 sec. 3.3) on the photo corpus that
``scripts/fetch_photo_corpus.sh`` builds (native 32x32 crops and whole-scene crops area-downsampled
to 32x32 of eight Debian wallpaper photographs; two more photos held out whole). The run is
wall-clock limited, so it can be split: ``--resume`` continues from the run's checkpoint.

    scripts/fetch_photo_corpus.sh                       # -> runs/photo_corpus
    python scripts/train_photos_dmol.py --minutes 110 --threads 1
    python scripts/train_photos_dmol.py --minutes 30 --threads 1 --resume
    imgtx eval-bpd --model checkpoints/imgtx-photos-dmol-small \
        --data runs/photo_corpus/heldout-native --split test --json

The shipped model is a third stage: the second stage (``small-dmol-photo``, neighbour inputs) is
grown by ``predictor="med"`` (``small-dmol-med``: every mixture component's means are corrections
to the LOCO-I median edge prediction from the left, upper and upper-left pixels) and fine-tuned
(``--init`` the second-stage model, ``checkpoints/imgtx-photos-dmol-small`` of commit bfdd3ac):

    mkdir -p runs/stage2 && for f in config.json model.safetensors; do
        git show bfdd3ac:checkpoints/imgtx-photos-dmol-small/$f > runs/stage2/$f; done
    python scripts/train_photos_dmol.py --config small-dmol-med \
        --init runs/stage2 --lr 3e-4 --warmup 100 --schedule cosine \
        --max-steps 2400 --minutes 80 --hflip --grey 0.25 --threads 1 --out runs/photos-med

The categorical comparison (same body, recipe and data; one value of 256 per subpixel):

    python scripts/train_photos_dmol.py --config small --minutes 75 --threads 1 \
        --out runs/photos-cat --export ''

The same run from the command line:

    imgtx train --config small-dmol --data runs/photo_corpus --out runs/photos-dmol \
        --minutes 110 --batch-size 16 --lr 2e-3 --warmup 200 --threads 1 --eval-every 200 \
        --eval-images 256 --checkpoint-every 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgtx.configs import get_config
from imgtx.errors import UserError
from imgtx.train import train
from imgtx.training.checkpoints import export_run
from imgtx.training.likelihood import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/photo_corpus",
                        help="the corpus folder of scripts/fetch_photo_corpus.sh")
    parser.add_argument("--minutes", type=float, default=110.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="runs/photos-dmol")
    parser.add_argument("--export", default="checkpoints/imgtx-photos-dmol-small",
                        help="where to copy the final Hub-format model ('' to skip)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--config", default="small-dmol",
                        help="small-dmol (the shipped model's first stage), small-dmol-photo "
                             "(its second stage: neighbour inputs), small-dmol-med (its third: "
                             "means relative to the median edge predictor) or small "
                             "(the same body with a categorical head over 256 values per "
                             "subpixel, for the comparison in docs/benchmarks.md)")
    parser.add_argument("--init", default=None,
                        help="warm-start from this trained model (imgtx.train.init_from)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--schedule", default="noam",
                        help="noam | constant | cosine (to --max-steps)")
    parser.add_argument("--hflip", action="store_true",
                        help="mirror half the training images left-right")
    parser.add_argument("--grey", type=float, default=0.0,
                        help="probability of turning a training image grey (BT.601 luma)")
    args = parser.parse_args()
    if not (Path(args.data) / "train").is_dir():
        raise SystemExit(UserError(f"{args.data}/train not found: run "
                                   "scripts/fetch_photo_corpus.sh first (or pass --data with a "
                                   "folder of train/ and test/)"))
    settings = TrainSettings(
        data=args.data, out=args.out, minutes=args.minutes, max_steps=args.max_steps,
        batch_size=16, lr=args.lr, warmup=args.warmup, schedule=args.schedule, eval_every=200,
        eval_images=256, checkpoint_every=200, num_samples=4, threads=args.threads,
        resume=args.resume, hflip=args.hflip, grey=args.grey)
    final = train(get_config(args.config), settings, init=args.init)
    if args.export:
        export_run(final, args.export)


if __name__ == "__main__":
    main()
