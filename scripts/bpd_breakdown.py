"""Where a DMOL model's bits go: bits/dim per source photo and bits per channel, beside the codecs.

For an image folder named as ``scripts/make_photo_crops.py`` names its crops
(``PHOTO-form-NNNN.png``) this prints, per photo: the model's bits/dim, lossless PNG and WebP on
the same crops, and the model's bits for r, g given r, and b given r and g
(:func:`imgtx.likelihood.dmol_nll_per_channel`; the three add up exactly to the pixel's cost).
A black-and-white photo stored as RGB has g = r and b = g, so a model that has learned to copy
pays almost nothing for g and b; one that has not shows it here.

    python scripts/bpd_breakdown.py --model checkpoints/imgtx-photos-dmol-small \\
        --data runs/photo_corpus/heldout-native/test runs/photo_corpus/heldout-scene/test
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgtx.errors import UserError
from imgtx.eval.compression import png_bits_per_dim, webp_bits_per_dim
from imgtx.likelihood import dmol_nll_per_channel, nats_to_bits
from imgtx.model import ImageTransformer


@torch.no_grad()
def bits_per_channel(model: ImageTransformer, images: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` mean bits of r, g | r and b | r, g per pixel of each image (DMOL models)."""
    nats = dmol_nll_per_channel(model(images), model.targets(images))  # (B, N, 3)
    return nats_to_bits(nats.mean(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", nargs="+", required=True, help="folders of PNG crops")
    parser.add_argument("--limit", type=int, default=256, help="crops per photo")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    model = ImageTransformer.from_pretrained(args.model).eval()
    if model.config.likelihood != "dmol":
        raise SystemExit(UserError("the breakdown by channel needs a DMOL model"))
    rows = []
    for folder in args.data:
        photos = defaultdict(list)
        for path in sorted(Path(folder).glob("*.png")):
            photos[path.name.split("-")[0]].append(path)
        if not photos:
            raise SystemExit(UserError(f"no PNG files in {folder}"))
        for photo, paths in photos.items():
            paths = paths[: args.limit]
            images = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"))
                                                for p in paths])).permute(0, 3, 1, 2).contiguous()
            bits = torch.cat([bits_per_channel(model, images[i : i + args.batch_size])
                              for i in range(0, len(images), args.batch_size)])  # (n, 3)
            rows.append({"data": folder, "photo": photo, "images": len(paths),
                         "bits_per_dim": round(bits.sum(1).mean().item() / 3, 3),
                         "png": round(float(png_bits_per_dim(images)), 3),
                         "webp": round(float(webp_bits_per_dim(images)), 3),
                         "bits_r": round(bits[:, 0].mean().item(), 3),
                         "bits_g_given_r": round(bits[:, 1].mean().item(), 3),
                         "bits_b_given_rg": round(bits[:, 2].mean().item(), 3)})
    print("| data | photo | images | model bits/dim | PNG | WebP | r | g given r | b given r, g |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['data']} | {r['photo']} | {r['images']} | {r['bits_per_dim']} | {r['png']} | "
              f"{r['webp']} | {r['bits_r']} | {r['bits_g_given_r']} | {r['bits_b_given_rg']} |")
    print(json.dumps({"model": args.model, "rows": rows}))


if __name__ == "__main__":
    main()
