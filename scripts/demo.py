"""The imgtx demo (``make demo``): bits/dim, KV-cached sampling and super-resolution, offline.

1. **Bits/dim.** Evaluates ``checkpoints/imgtx-photos-dmol-small``, the photo model (trained on
   the Debian wallpaper photographs of ``scripts/fetch_photo_corpus.sh``, never on scikit-image's),
   on ``builtin:photos32`` test (the first ``--limit`` images; the full-split command is printed)
   with :func:`imgtx.eval.bits_per_dim.evaluate_model`, next to PNG and lossless WebP on the same
   images.
   Without the checkpoint it says so and trains a ``tiny`` model at 32x32 for a few steps
   instead, so the demo still runs end to end (its figures then mean nothing).
2. **Sampling.** ``--num-samples`` 32x32 images with the KV cache -> ``runs/demo/samples.png``.
3. **Super-resolution.** If the ``sr`` package and ``checkpoints/sr-corpus-8to32-dmol`` exist:
   a 64x64 face crop of scikit-image's ``astronaut`` (a held-out photo: builtin:photos' test
   split), area-downscaled from the 256x256 original crop, upscaled 4x to 256x256 at the model's
   default temperature (0) -> ``runs/demo/sr_upscaled.png``, with ``sr_bicubic.png``,
   ``sr_input.png``, ``sr_original.png`` and ``sr_compare.png`` (bicubic | model | original)
   beside it and the PSNR of both against the original.
4. **A transformer GAN.** 64 samples of ``checkpoints/strans-corpus32`` (STrans-G trained with
   the toolkit's photo recipe on 32x32 crops of the photo corpus, EMA generator; the photo GAN
   race of docs/gan.md) -> ``runs/demo/gan_samples.png``, and beside them, at the same scale,
   64 real ``val`` crops of the same photos shipped with the checkpoint ->
   ``runs/demo/gan_vs_real.png`` (samples left, real right).

Nothing is downloaded: the Hub and datasets are switched to offline mode before they are imported,
and every image comes from files bundled with scikit-image. The last line on stdout is a JSON
summary.

    python scripts/demo.py                 # ~15 s on 2 CPU cores with the checkpoints
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse  # noqa: E402
import importlib.resources  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from imgtx.eval.bits_per_dim import evaluate_model  # noqa: E402
from imgtx.images import make_grid, read_image, save_grid, save_image  # noqa: E402
from imgtx.incremental import one_thread  # noqa: E402
from imgtx.model import ImageTransformer  # noqa: E402
from imgtx.sampling import sample  # noqa: E402

CHECKPOINT = Path("checkpoints/imgtx-photos-dmol-small")
SR_CHECKPOINT = Path("checkpoints/sr-corpus-8to32-dmol")
GAN_CHECKPOINT = Path("checkpoints/strans-corpus32")
DATA = "builtin:photos32"
# astronaut.png (512x512): the 256x256 square around the face, at (left, top).
FACE_BOX = (136, 16, 392, 272)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)




def fallback_model(out: Path, steps: int) -> Path:
    """Train the ``tiny`` config at 32x32 for a few steps; returns its save_pretrained dir."""
    from imgtx.configs import get_config
    from imgtx.train import train
    from imgtx.training.likelihood import TrainSettings

    settings = TrainSettings(data=DATA, out=str(out), max_steps=steps, batch_size=8, lr=2e-3,
                             warmup=10, eval_every=0, eval_images=16, checkpoint_every=0,
                             num_samples=0)
    return train(get_config("tiny", image_size=32), settings)


def bits_per_dim_section(model_path: Path, limit: int, batch_size: int) -> dict:
    say(f"\n== 1. bits/dim of {model_path} on {DATA} (test, first {limit} images)")
    result = evaluate_model(str(model_path), DATA, split="test", limit=limit,
                            batch_size=batch_size)
    codecs = ", ".join(f"{name} {result[f'{name.lower()}_bits_per_dim']:.3f}"
                       for name in ("PNG", "WebP")
                       if result[f"{name.lower()}_bits_per_dim"] is not None)
    say(f"   model {result['bits_per_dim']:.3f} ± {result['ci95']:.3f} bits/dim "
        f"(95% CI over {result['num_images']} images); lossless codecs on the same images: "
        f"{codecs}; {result['images_per_second']:.1f} images/s")
    say("   the exact figure on the whole test split:\n"
        f"   imgtx eval-bpd --model {model_path} --data {DATA} --split test --json")
    return result


def sampling_section(model_path: Path, num: int, out: Path, seed: int) -> dict:
    say(f"\n== 2. sampling {num} images with the KV cache")
    model = ImageTransformer.from_pretrained(str(model_path))
    start = time.perf_counter()
    with one_thread():
        images = sample(model, num, batch_size=num, seed=seed, progress=True)
    seconds = time.perf_counter() - start
    path = save_grid(images, out / "samples.png", scale=4)
    say(f"   {seconds:.1f} s ({seconds / num:.2f} s per image, batch {num}) -> {path}")
    return {"samples": str(path), "num_samples": num, "sampling_seconds": seconds}


def sr_section(out: Path, seed: int) -> dict:
    say(f"\n== 3. super-resolution with {SR_CHECKPOINT}")
    try:
        from imgtx.eval.image_metrics import downscale_area, psnr, upscale_bicubic
        from imgtx.sr.model import SuperResolutionTransformer
        from imgtx.sr.upscale import upscale_image
    except ImportError as error:
        say(f"   skipped: the sr package is not available ({error})")
        return {"sr": f"skipped: {error}"}
    if not (SR_CHECKPOINT / "config.json").is_file():
        say(f"   skipped: {SR_CHECKPOINT} not found (train it with scripts/train_sr_photos.py)")
        return {"sr": f"skipped: {SR_CHECKPOINT} not found"}
    model = SuperResolutionTransformer.from_pretrained(str(SR_CHECKPOINT))
    scale = model.config.scale
    photo = read_image(str(importlib.resources.files("skimage") / "data" / "astronaut.png"))
    left, top, right, bottom = FACE_BOX
    original = photo[:, top:bottom, left:right].contiguous()  # (3, 256, 256)
    low_res = downscale_area(original[None], scale)[0]  # (3, 256/scale, 256/scale)
    start = time.perf_counter()
    with one_thread():
        upscaled = upscale_image(model, low_res, seed=seed, progress=True)
    seconds = time.perf_counter() - start
    bicubic = upscale_bicubic(low_res[None], scale)[0]
    paths = {name: save_image(image, out / f"sr_{name}.png") for name, image in
             (("input", low_res), ("upscaled", upscaled), ("bicubic", bicubic),
              ("original", original),
              ("compare", make_grid(torch.stack([bicubic, upscaled, original]), columns=3)))}
    model_psnr = psnr(upscaled[None], original[None])
    bicubic_psnr = psnr(bicubic[None], original[None])
    size = low_res.shape[-1]
    say(f"   {size}x{size} -> {upscaled.shape[-1]}x{upscaled.shape[-2]} in {seconds:.1f} s; "
        f"PSNR against the original: model {model_psnr:.2f} dB (temperature "
        f"{model.config.sampling_temperature}), bicubic {bicubic_psnr:.2f} dB")
    for name, path in paths.items():
        say(f"   {name:9} {path}")
    return {"sr_upscaled": str(paths["upscaled"]), "sr_bicubic": str(paths["bicubic"]),
            "sr_input": str(paths["input"]), "sr_original": str(paths["original"]),
            "sr_seconds": seconds, "sr_psnr": model_psnr, "sr_bicubic_psnr": bicubic_psnr}


def gan_section(out: Path, seed: int) -> dict:
    """64 samples of the shipped photo generator (``generator.generate``), alone and beside the
    checkpoint's 64 real val crops."""
    if not (GAN_CHECKPOINT / "config.json").is_file():
        say(f"\n{GAN_CHECKPOINT} not found: skipping the GAN samples.")
        return {"gan": "skipped: no checkpoint"}
    from imgtx.gan.base import labels_in_blocks
    from imgtx.gan.sample import load_generator

    say(f"\n== Transformer GAN: 64 samples of {GAN_CHECKPOINT}, beside 64 real crops ==")
    generator = load_generator(str(GAN_CHECKPOINT))
    # a photo-conditional generator: one row per photo, as the val crops' rows (sorted names)
    labels = labels_in_blocks(64, generator.config.num_classes)
    images = generator.generate(64, labels=labels, seed=seed)  # (64, 3, 32, 32) uint8
    save_grid(images, out / "gan_samples.png", scale=2)
    paths = {"gan_samples": str(out / "gan_samples.png")}
    real_grid = GAN_CHECKPOINT / "val_crops.png"
    if real_grid.is_file():
        samples, real = make_grid(images), read_image(real_grid)  # both (3, 290, 290)
        gap = torch.full((3, samples.shape[1], 16), 255, dtype=torch.uint8)
        both = torch.cat([samples, gap, real], dim=2)
        save_image(both.repeat_interleave(2, 1).repeat_interleave(2, 2), out / "gan_vs_real.png")
        paths["gan_vs_real"] = str(out / "gan_vs_real.png")
    for name, path in paths.items():
        say(f"   {name:11} {path}")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=64, help="test images for bits/dim")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--fallback-steps", type=int, default=30)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sr", action="store_true", help="skip super-resolution")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary: dict = {}

    if (CHECKPOINT / "config.json").is_file():
        model_path = CHECKPOINT
    else:
        say(f"{CHECKPOINT} not found (reproduce it with scripts/train_photos_dmol.py). "
            f"Training a `tiny` 32x32 model for {args.fallback_steps} steps instead, so the demo "
            "runs end to end; its figures are not meaningful.")
        model_path = fallback_model(out / "fallback-tiny", args.fallback_steps)
        summary["fallback"] = True
    summary["model"] = str(model_path)
    result = bits_per_dim_section(model_path, args.limit, args.batch_size)
    summary.update({key: result[key] for key in ("bits_per_dim", "ci95", "num_images",
                                                 "png_bits_per_dim", "webp_bits_per_dim",
                                                 "images_per_second")})
    summary.update(sampling_section(model_path, args.num_samples, out, args.seed))
    if args.no_sr:
        summary["sr"] = "skipped: --no-sr"
    else:
        summary.update(sr_section(out, args.seed))
    summary.update(gan_section(out, args.seed))
    summary["seconds"] = time.perf_counter() - start
    say(f"\nDone in {summary['seconds']:.0f} s. Outputs are in {out}/:")
    for path in sorted(out.glob("*.png")):
        say(f"   {path}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
