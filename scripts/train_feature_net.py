"""Train the shipped feature network ``checkpoints/imgtx-features-small`` on two real tasks.

The network (:class:`imgtx.eval.features.SmallFeatureNet`) is trained jointly, one half of every
batch each, on

(a) the class of real handwritten digits, ``builtin:digits`` train split (1,437 images; the
    360-image test split is never trained on), with small random translations (+-2 px) and
    contrast/brightness jitter; and
(b) which of the seven ``builtin:photos`` training photographs a 32x32 patch was cut from. Patches
    are random crops, at native or 1/2 scale, from the left three quarters of each photo, with
    random flips and colour jitter, and the flat rule of ``builtin:photos`` (luma std >= 8). The
    right quarter of each photo is held out: its non-overlapping grid patches give the held-out
    photo-identity accuracy. The two ``builtin:photos`` test photos are never seen.

Its pooled 128-d features then describe both digit shape and photo content, for FID/KID; its digit
head is the class-accuracy classifier. Writes ``model.safetensors``, ``config.json`` (architecture
plus the measured figures) and a ``README.md`` model card.

    nice python scripts/train_feature_net.py --threads 1 --out checkpoints/imgtx-features-small
    python scripts/train_feature_net.py --steps 20 --out /tmp/features-smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.resources
import io
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from imgtx.data import FLAT_LUMA_STD, PHOTOS_TRAIN
from imgtx.eval.classifier import load_digits_split
from imgtx.eval.features import SmallFeatureConfig, SmallFeatureNet

PATCH = 32
LUMA = np.array([0.299, 0.587, 0.114])


def read_photos() -> list[list[np.ndarray]]:
    """Each training photo at native and 1/2 scale (2x2 box average), ``(H, W, 3)`` uint8."""
    photos = []
    for name in PHOTOS_TRAIN:
        data = (importlib.resources.files("skimage") / "data" / name).read_bytes()
        image = PIL.Image.open(io.BytesIO(data)).convert("RGB")
        photos.append([np.array(image), np.array(image.reduce(2))])
    return photos


def band_limits(width: int, holdout: float) -> tuple[int, int]:
    """Columns ``[0, train_end)`` are for training crops, ``[test_start, width)`` are held out."""
    test_start = int(math.ceil(width * (1 - holdout)))
    return test_start, test_start


def is_flat(patch: np.ndarray) -> bool:
    return float((patch.astype(np.float64) @ LUMA).std()) < FLAT_LUMA_STD


def heldout_patches(photos, holdout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping grid patches of the held-out right band, both scales, flat ones dropped."""
    images, labels = [], []
    for label, scales in enumerate(photos):
        for photo in scales:
            start = band_limits(photo.shape[1], holdout)[1]
            for y in range(0, photo.shape[0] - PATCH + 1, PATCH):
                for x in range(start, photo.shape[1] - PATCH + 1, PATCH):
                    patch = photo[y : y + PATCH, x : x + PATCH]
                    if not is_flat(patch):
                        images.append(patch.transpose(2, 0, 1))
                        labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def sample_photo_batch(photos, holdout: float, size: int, rng: np.random.Generator):
    """Random non-flat crops from the training bands, balanced over photos -> uint8, labels."""
    images, labels = [], rng.integers(len(photos), size=size)
    for label in labels:
        while True:
            photo = photos[label][rng.integers(2)]
            train_end = band_limits(photo.shape[1], holdout)[0]
            y = rng.integers(photo.shape[0] - PATCH + 1)
            x = rng.integers(max(1, train_end - PATCH + 1))
            patch = photo[y : y + PATCH, x : x + PATCH]
            if not is_flat(patch):
                break
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        images.append(patch.transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(images))), torch.from_numpy(labels)


def colour_jitter(x: torch.Tensor, rng: np.random.Generator, amount: float) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in ``1 +- amount``; float [0, 255]."""
    b = len(x)
    factors = torch.from_numpy(rng.uniform(1 - amount, 1 + amount, size=(3, b, 1, 1, 1))).float()
    x = x.float() * factors[0]  # (B, 3, S, S) brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * factors[1]  # contrast
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * factors[2]  # saturation
    return x.clamp(0, 255).round()


def translate(x: torch.Tensor, rng: np.random.Generator, pixels: int) -> torch.Tensor:
    """Shift each image by up to ``pixels`` in x and y, filling with zeros (digit background)."""
    padded = F.pad(x, (pixels,) * 4)
    shifts = rng.integers(0, 2 * pixels + 1, size=(len(x), 2))
    s = x.shape[-1]
    return torch.stack([p[:, dy : dy + s, dx : dx + s] for p, (dy, dx) in zip(padded, shifts)])


@torch.no_grad()
def accuracy(net: SmallFeatureNet, images: torch.Tensor, labels: torch.Tensor, head: int) -> float:
    net.eval()
    logits = torch.cat([net.logits(net.features(images[i : i + 256]))[head]
                        for i in range(0, len(images), 256)])  # fmt: skip
    return float((logits.argmax(-1) == labels).double().mean())


def write_card(out: Path, card: dict) -> None:
    lines = [
        "# imgtx-features-small",
        "",
        "A small CNN feature network (`imgtx.eval.features.SmallFeatureNet`, "
        f"{card['parameters']:,} parameters) for offline FID/KID/IS (`--features imgtx-small`) "
        "and, through its digit head, the class-accuracy classifier of conditional digit GANs.",
        "",
        "Architecture: three stages of two (3x3 conv, BatchNorm, ReLU) with widths "
        f"{list(card['widths'])}, 2x2 max pooling between stages, global average pooling to "
        f"{card['widths'][-1]}-d features (used for FID/KID), a 10-way digit head and a 7-way "
        "photo-identity head. Input: `(B, 3, 32, 32)` uint8 RGB.",
        "",
        "## Training data (all real, all offline)",
        "",
        "- `builtin:digits` train split (scikit-learn's handwritten digits, 1,437 images, "
        "upscaled to 32x32), digit class; random +-2 px translations and contrast jitter.",
        "- Patches of the seven `builtin:photos` training photographs, photo identity; random "
        "crops at native and 1/2 scale from the left 75% of each photo, flips, colour jitter. "
        "The right 25% of each photo is held out; the `builtin:photos` test photos are unseen.",
        "",
        "## Held-out figures",
        "",
        "| measure | value |",
        "|---|---|",
        "| digit accuracy, `builtin:digits` test (360 images) | "
        f"{card['digits_test_accuracy']:.4f} |",
        f"| digit accuracy, train split | {card['digits_train_accuracy']:.4f} |",
        f"| photo identity, held-out right bands ({card['photo_heldout_count']} patches) "
        f"| {card['photo_heldout_accuracy']:.4f} |",
        f"| training wall time ({card['threads']} thread(s), 2-core CPU shared with other jobs) "
        f"| {card['training_seconds'] / 60:.1f} min |",
        f"| training CPU time | {card['training_cpu_seconds'] / 60:.1f} min |",
        "",
        "Photo identity is 7-way (chance 0.14); motorcycle_left and motorcycle_right are a "
        "stereo pair of one scene, so some of its held-out errors are unavoidable.",
        "",
        "## Usage",
        "",
        "```python",
        "from imgtx.eval.features import get_extractor",
        "from imgtx.eval.classifier import class_accuracy, classifier_test_accuracy",
        "",
        'net = get_extractor("imgtx-small")      # (B, 3, 32, 32) uint8 -> (B, 128) features',
        "probs = net.probabilities(images)        # (B, 10) digit-class probabilities",
        "accuracy = class_accuracy(images, labels)  # report beside classifier_test_accuracy()",
        "```",
        "",
        "FIDs measured with these features are comparable only with each other, never with "
        "Inception FIDs.",
        "",
        "## Command",
        "",
        "```",
        card["command"],
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="images per task per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--holdout", type=float, default=0.25, help="held-out photo width share")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="checkpoints/imgtx-features-small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    digits_train, digits_train_labels = load_digits_split("train", PATCH)
    digits_test, digits_test_labels = load_digits_split("test", PATCH)
    photos = read_photos()
    photo_test, photo_test_labels = heldout_patches(photos, args.holdout)
    print(f"digits {len(digits_train)} train / {len(digits_test)} test; "
          f"photo held-out patches {len(photo_test)}", flush=True)  # fmt: skip

    config = SmallFeatureConfig(num_photo_classes=len(PHOTOS_TRAIN))
    net = SmallFeatureNet(config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    warmup = min(50, args.steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps)),
    )
    start, cpu_start = time.time(), time.process_time()
    for step in range(args.steps):
        net.train()
        index = torch.from_numpy(rng.integers(len(digits_train), size=args.batch))
        digits = colour_jitter(translate(digits_train[index], rng, 2), rng, 0.15)
        patches, photo_labels = sample_photo_batch(photos, args.holdout, args.batch, rng)
        patches = colour_jitter(patches, rng, 0.1)
        features = net.features(torch.cat([digits, patches]))  # (2B, dim)
        digit_logits, _ = net.logits(features[: args.batch])
        _, photo_logits = net.logits(features[args.batch :])
        digit_loss = F.cross_entropy(digit_logits, digits_train_labels[index])
        photo_loss = F.cross_entropy(photo_logits, photo_labels)
        optimizer.zero_grad(set_to_none=True)
        (digit_loss + photo_loss).backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} digit_loss {digit_loss.item():.4f} photo_loss "
                  f"{photo_loss.item():.4f} {time.time() - start:.0f}s", flush=True)  # fmt: skip
    seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start

    net.eval()
    card = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "parameters": sum(p.numel() for p in net.parameters()),
        "feature_dim": net.dim,
        "digits_test_accuracy": accuracy(net, digits_test, digits_test_labels, 0),
        "digits_train_accuracy": accuracy(net, digits_train, digits_train_labels, 0),
        "photo_heldout_accuracy": accuracy(net, photo_test, photo_test_labels, 1),
        "photo_heldout_count": len(photo_test),
        "photo_classes": list(PHOTOS_TRAIN),
        "training_seconds": round(seconds, 1),
        "training_cpu_seconds": round(cpu_seconds, 1),
        "threads": args.threads,
        "steps": args.steps,
        "command": "nice python " + shlex.join(["scripts/train_feature_net.py", *sys.argv[1:]]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(out / "model.safetensors"))  # fmt: skip
    (out / "config.json").write_text(json.dumps(card, indent=2) + "\n")
    write_card(out, card)
    print(json.dumps({k: card[k] for k in ("digits_test_accuracy", "photo_heldout_accuracy",
                                           "training_seconds")}))  # fmt: skip


if __name__ == "__main__":
    main()
