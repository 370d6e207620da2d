"""Reproduce the shipped checkpoint ``checkpoints/sr-photos-8to32-small``.

Trains the ``photos-8to32-small`` super-resolution config (2 encoder + 4 decoder layers, width 128,
local 1D decoder attention with block 96 = one output row of subpixels, pre-norm, bicubic anchor)
on ``builtin:photos32`` train - each 32x32 patch is a target, its 8x8 area downscale the input -
for a wall-clock budget, then exports the Hub-format model with its training curve. The decoder's
layers are warm-started from the shipped Image Transformer; the anchor's offset prior is set from
the training data. The same script runs on CPU or GPU (accelerate picks the device). Settings
match scripts/train_photos32_small.py.

    python scripts/train_sr_photos.py --minutes 62 --threads 2 --out runs/sr-photos-small
    python scripts/train_sr_photos.py --max-steps 3 --out /tmp/smoke --export ''   # smoke run
    # fine-tune the shipped model on the photo corpus (scripts/fetch_photo_corpus.sh)
    python scripts/train_sr_photos.py --data runs/photo_corpus \
        --init checkpoints/sr-photos-8to32-small --minutes 80 --threads 1 --lr 5e-4 \
        --warmup 50 --out runs/sr-corpus --export checkpoints/sr-corpus-8to32-small
    # grow that model by the median edge predictor and fine-tune it (docs/benchmarks.md)
    python scripts/train_sr_photos.py --data runs/photo_corpus --config photos-8to32-med \
        --init checkpoints/sr-corpus-8to32-small --minutes 70 --threads 1 --lr 3e-4 \
        --warmup 50 --out runs/sr-med --export ''
    # checkpoints/sr-corpus-8to32-dmol: the photo model as decoder, conditioned on the input's
    # block means exactly, with no training step (training the rest did not beat it on held-out
    # photos: docs/benchmarks.md)
    python scripts/train_sr_photos.py --config corpus-8to32-dmol \
        --decoder-init checkpoints/imgtx-photos-dmol-small --max-steps 0 \
        --export checkpoints/sr-corpus-8to32-dmol
    # ... and that training: the decoder fixed; only the encoder, cross-attention and anchor
    # inputs train
    python scripts/train_sr_photos.py --data runs/photo_corpus --config corpus-8to32-dmol \
        --decoder-init checkpoints/imgtx-photos-dmol-small --freeze-decoder --minutes 45 \
        --threads 1 --batch-size 16 --lr 1e-3 --warmup 50 --hflip --grey 0.25 \
        --out runs/sr-dmol --export ''

The same run from the command line (the registry's suggestion for ``photos-8to32-small`` holds
this batch size, lr, warm-up and ``--decoder-init``):

    imgtx sr train --config photos-8to32-small --data builtin:photos32 --out runs/sr-photos-small \
        --minutes 62 --threads 2 --decoder-init checkpoints/imgtx-photos32-small \
        --eval-every 150 --eval-images 128 --checkpoint-every 300
"""

from __future__ import annotations

import argparse

import torch

from imgtx.sr import SuperResolutionTransformer
from imgtx.sr.configs import get_config
from imgtx.sr.train import init_decoder_from, train
from imgtx.training.checkpoints import export_run
from imgtx.training.likelihood import TrainSettings


def export_untrained(args: argparse.Namespace) -> None:
    """``--max-steps 0``: save the model as training would start it - the decoder copied from
    ``--decoder-init``, the rest freshly initialised (seed 0) - to ``--export``. For a DMOL
    decoder that is exactly the unconditional model, conditioned only through the config's
    ``block_means`` (how checkpoints/sr-corpus-8to32-dmol was made)."""
    if not args.export or not args.decoder_init:
        raise SystemExit("--max-steps 0 needs --decoder-init and --export")
    torch.manual_seed(0)
    model = SuperResolutionTransformer(get_config(args.config))
    copied = init_decoder_from(model, args.decoder_init)
    model.save_pretrained(args.export)
    print(f"saved {args.export}: {copied} decoder tensors from {args.decoder_init}, no training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=85.0)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps; 0 exports the warm-started model "
                             "untrained (needs --decoder-init and --export)")
    parser.add_argument("--out", default="runs/sr-photos-small")
    parser.add_argument("--export", default="checkpoints/sr-photos-8to32-small",
                        help="where to copy the final Hub-format model ('' to skip)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="peak learning rate (lower than from scratch: the decoder is "
                             "warm-started)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--decoder-init", default="checkpoints/imgtx-photos32-small",
                        help="warm-start the decoder from this unconditional Image Transformer "
                             "('' for a fresh start)")
    parser.add_argument("--init", default="",
                        help="start from this whole super-resolution model instead (fine-tune "
                             "it; --decoder-init is then ignored)")
    parser.add_argument("--data", default="builtin:photos32",
                        help="training data: builtin:photos32, or the photo corpus folder of "
                             "scripts/fetch_photo_corpus.sh (runs/photo_corpus)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--freeze-decoder", action="store_true",
                        help="keep the weights copied by --decoder-init fixed: train only the "
                             "encoder, cross-attention and anchor inputs")
    parser.add_argument("--hflip", action="store_true", help="mirror half the training images")
    parser.add_argument("--grey", type=float, default=0.0,
                        help="turn this fraction of the training images grey")
    parser.add_argument("--config", default="photos-8to32-small",
                        help="photos-8to32-small; photos-8to32-med (plus the median edge "
                             "predictor; --init may be a photos-8to32-small model); "
                             "corpus-8to32-dmol (DMOL decoder: pass --decoder-init "
                             "checkpoints/imgtx-photos-dmol-small)")
    args = parser.parse_args()
    if args.max_steps == 0:  # no training: the warm-started model as it starts
        export_untrained(args)
        return
    settings = TrainSettings(
        data=args.data, out=args.out, minutes=args.minutes, max_steps=args.max_steps,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, schedule="noam", eval_every=150,
        eval_images=128,
        checkpoint_every=300, num_samples=4, resume=args.resume, threads=args.threads,
        hflip=args.hflip, grey=args.grey)
    if args.init:  # the whole model comes from --init
        args.decoder_init = ""
    final = train(get_config(args.config), settings, decoder_init=args.decoder_init,
                  model_init=args.init or None, freeze_decoder=args.freeze_decoder)
    if args.export:
        export_run(final, args.export)


if __name__ == "__main__":
    main()
