"""Time a 4x upscale of a 256x256 photo (to 1024x1024) with a shipped SR checkpoint.

    python scripts/bench_sr_upscale.py --threads 2 --json   # sr-corpus-8to32-dmol, temperature 0
    python scripts/bench_sr_upscale.py --model checkpoints/sr-photos-8to32-small --json  # 0.5
    python scripts/bench_sr_upscale.py --size 64 --plain-step --json   # short; the unfused step
    python scripts/bench_sr_upscale.py --temperature 0 --threads 2 --json  # fixed-point passes
    python scripts/bench_sr_upscale.py --temperature 0 --sequential --json # subpixel by subpixel

The input is scikit-image's bundled ``astronaut`` (512x512) area-downscaled to 256x256, so no
download is needed. Writes the upscale and a bicubic comparison under ``--out`` and prints a final
JSON line with the wall-clock and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from imgtx.eval.image_metrics import downscale_area, upscale_bicubic
from imgtx.images import save_image
from imgtx.sr.model import SuperResolutionTransformer
from imgtx.sr.upscale import upscale_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/sr-corpus-8to32-dmol")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--batch-size", type=int, default=128, help="tiles decoded together")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--plain-step", action="store_true",
                        help="decode with each layer's own step instead of the fused one "
                        "(imgtx.fused_step), to compare the two")
    parser.add_argument("--sequential", action="store_true",
                        help="at temperature 0, decode subpixel by subpixel (KV cache) instead of "
                        "by fixed-point passes from the anchors (imgtx.sampling."
                        "decode_fixed_point), to compare the two")
    parser.add_argument("--out", default="runs/bench_sr_upscale")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed)")
    args = parser.parse_args()

    from skimage import data

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plain_step:
        from imgtx.fused_step import FusedStep

        FusedStep.supports = staticmethod(lambda layer: False)

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).contiguous()  # (3, 512, 512)
    factor = photo.shape[1] // args.size
    image = downscale_area(photo[None], factor)[0] if factor > 1 else photo
    model = SuperResolutionTransformer.from_pretrained(args.model)
    wall, cpu = time.time(), time.process_time()
    stats = {}
    out = upscale_image(model, image, temperature=args.temperature, seed=0,
                        batch_size=args.batch_size, progress=True,
                        fixed_point=False if args.sequential else None, stats=stats)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    out_dir = Path(args.out)
    save_image(out, out_dir / "upscaled.png")
    save_image(upscale_bicubic(image[None], model.config.scale)[0], out_dir / "bicubic.png")
    tile = model.config.input_size
    tiles = (image.shape[1] // tile) * (image.shape[2] // tile)
    print(json.dumps({"input": list(image.shape[1:]), "output": list(out.shape[1:]),
                      "tiles": tiles, "batch_size": args.batch_size, "seconds": round(wall, 1),
                      "cpu_seconds": round(cpu, 1), "threads": torch.get_num_threads(),
                      "cores": os.cpu_count(), "plain_step": args.plain_step,
                      "temperature": args.temperature, "load_average": os.getloadavg(),
                      "fixed_point_passes": stats.get("passes"),
                      "fixed_point_tile_passes": stats.get("row_passes"),
                      "model": args.model, "out": str(out_dir)}))


if __name__ == "__main__":
    main()
