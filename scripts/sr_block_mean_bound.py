"""What the low-resolution input is worth to a DMOL photo model, exactly: the block-mean bound.

A 4x area downscale fixes each 4x4 block's channel mean to the nearest level
(``imgtx.sr.model.make_low_res``), so once 15 pixels of a block are known, the last one in
raster order (bottom right) can take only 16 values per channel: those that keep the block sum
inside ``[16 m - 8, 16 m + 7]``. Renormalising the unconditional model over those values at every
bottom-right pixel is an exact conditional model of the image given its downscale; this script
prints what that saves, in bits per subpixel of the whole image, on held-out photos:

    python scripts/sr_block_mean_bound.py --data runs/photo_corpus/heldout-native --every 4

Each channel's mass on the allowed values uses the mixture weights updated by the true earlier
channels (as ``imgtx.likelihood.dmol_nll_per_channel`` does), with the same discretized logistic
as the likelihood (its PixelCNN++ edge bins). Prints a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from imgtx import ImageTransformer  # noqa: E402
from imgtx.data import load_images  # noqa: E402
from imgtx.likelihood import (  # noqa: E402
    bits_per_dim,
    discretized_logistic_log_prob,
    dmol_conditional_means,
    dmol_split_params,
    scale_pixels,
)

SCALE = 4  # the 8x8 -> 32x32 task


@torch.no_grad()
def block_mean_saving(model: ImageTransformer, images: torch.Tensor) -> float:
    """Nats saved over ``images`` ``(B, 3, H, W)`` uint8 by renormalising ``model`` (DMOL,
    raster order) over the values the block means allow at each block's last pixel."""
    b, _, h, w = images.shape
    pixels = images.long().permute(0, 2, 3, 1)  # (B, H, W, 3)
    blocks = pixels.view(b, h // SCALE, SCALE, w // SCALE, SCALE, 3)
    total = blocks.sum(dim=(2, 4))  # (B, h, w, 3)
    mean = torch.div(2 * total + SCALE**2, 2 * SCALE**2, rounding_mode="floor")  # round half up
    last = pixels[:, SCALE - 1 :: SCALE, SCALE - 1 :: SCALE]  # (B, h, w, 3)
    others = total - last
    allowed = torch.arange(-SCALE**2 // 2, SCALE**2 // 2)  # block sums rounding to the mean
    values = SCALE**2 * mean[..., None] + allowed - others[..., None]  # (B, h, w, 3, 16)
    rows = torch.arange(SCALE - 1, h, SCALE)[:, None] * w + torch.arange(SCALE - 1, w, SCALE)
    p = dmol_split_params(model(images)[:, rows.flatten()])  # (B, n, K, 3) parts
    x = scale_pixels(last.reshape(b, -1, 3), p.means.dtype)  # (B, n, 3) true values
    candidates = values.reshape(b, -1, 3, SCALE**2)
    log_weights = torch.log_softmax(p.logits, dim=-1)  # (B, n, K)
    means = dmol_conditional_means(p, x)  # (B, n, K, 3)
    saved = 0.0
    for c in range(3):
        mean_c = means[..., c]
        valid = (candidates[:, :, c] >= 0) & (candidates[:, :, c] <= 255)  # (B, n, 16)
        v = scale_pixels(candidates[:, :, c].clamp(0, 255), mean_c.dtype)
        log_probs = discretized_logistic_log_prob(v[:, :, None, :], mean_c[..., None],
                                                  p.log_scales[..., c, None])  # (B, n, K, 16)
        log_probs = log_probs.masked_fill(~valid[:, :, None, :], -math.inf)
        mass = torch.logsumexp(log_weights[..., None] + log_probs, dim=(2, 3))  # (B, n)
        saved -= mass.sum().item()
        own = discretized_logistic_log_prob(x[..., None, c], mean_c, p.log_scales[..., c])
        log_weights = torch.log_softmax(log_weights + own, dim=-1)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/imgtx-photos-dmol-small")
    parser.add_argument("--data", default="runs/photo_corpus/heldout-native")
    parser.add_argument("--split", default="test")
    parser.add_argument("--every", type=int, default=1, help="use every k-th image")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ImageTransformer.from_pretrained(args.model).eval()
    if model.config.likelihood != "dmol" or model.config.attention != "local1d":
        raise SystemExit("needs a DMOL model decoding in raster order (local1d)")
    source = load_images(args.data, args.split, model.config.image_size)
    images = torch.stack([source[i]["image"] for i in range(0, len(source), args.every)])
    saved = sum(block_mean_saving(model, images[i : i + 64]) for i in range(0, len(images), 64))
    bits = bits_per_dim(saved, images[0].numel() * len(images))
    print(json.dumps({"model": args.model, "data": args.data, "images": len(images),
                      "bits_per_dim_saved": round(bits, 4)}))


if __name__ == "__main__":
    main()
