"""Training of the feature network :class:`imgtx.eval.features.SmallFeatureNet` on the shared
:class:`imgtx.training.Run` (``checkpoints/imgtx-features-small``; recipe:
``scripts/train_feature_net.py``).

The network learns two real tasks at once, one half of every batch each:

(a) the class of handwritten digits, ``builtin:digits`` train split (1,437 images; the 360-image
    test split is never trained on), with random translations (+-2 px) and brightness, contrast
    and saturation jitter; and
(b) which of the seven ``builtin:photos`` training photographs a 32x32 patch was cut from: random
    crops at native or 1/2 scale from the left three quarters of each photo (``holdout`` = 1/4),
    random flips, colour jitter, and the flat rule of ``builtin:photos`` (luma std >= 8). The
    right quarter's non-overlapping grid patches give the held-out photo-identity accuracy. The
    two ``builtin:photos`` test photos are never seen.

Its pooled 128-d features then describe both digit shape and photo content, for FID/KID; its
digit head is the class-accuracy classifier. The export is ``model.safetensors``, ``config.json``
(the architecture plus the measured figures, as :func:`~imgtx.eval.features.load_small_feature_net`
reads it) and a ``README.md`` card.

Every batch is drawn in the step from a generator seeded by the run's (checkpointed) torch
generator and the process index, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import importlib.resources
import io
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imgtx.errors import UserError, check_at_least, check_positive
from imgtx.eval.features import SmallFeatureConfig, SmallFeatureNet
from imgtx.training import Run, RunSettings

__all__ = ["FeatureNetSettings", "train_feature_net", "WarmCosine", "TwoTaskLoss", "write_card"]

PATCH = 32  # side of the network's input, in pixels
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


@dataclass
class FeatureNetSettings(RunSettings):
    """The run's settings plus the feature network's optimiser and data. ``batch_size`` is the
    number of images per task per step (digits and photo patches each; the run's images seen
    count one task's)."""

    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 5e-4  # AdamW
    holdout: float = 0.25  # right share of each training photo kept for the held-out accuracy
    export: str | None = None  # also copy the exported network here
    command: str = ""  # the command that ran this, for the card

    def validate(self) -> None:
        super().validate()
        check_positive("lr", self.lr)
        check_at_least("weight_decay", self.weight_decay, 0)
        if self.max_steps is None:
            raise UserError("the learning rate decays to 0 at max_steps: give --max-steps")
        if not 0 < self.holdout < 1:
            raise UserError(f"holdout={self.holdout} is a share of each photo: give a value in "
                            "(0, 1)")


@dataclass
class WarmCosine:
    """LR multiplier of step index ``s`` (0-based): a linear warm-up over ``warmup`` steps times
    a cosine from 1 to 0 over all ``total`` steps."""

    warmup: int
    total: int

    def __call__(self, s: int) -> float:
        return min(1.0, (s + 1) / self.warmup) * 0.5 * (1 + math.cos(math.pi * s / self.total))


class TwoTaskLoss(nn.Module):
    """The training loss of both tasks through one forward, so that a distributed run averages
    the network's gradients: ``(digits, digit labels, patches, photo labels) -> scalar``."""

    def __init__(self, net: SmallFeatureNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, digits: torch.Tensor, digit_labels: torch.Tensor, patches: torch.Tensor,
                photo_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Digit and photo cross-entropies of float images ``(B, 3, 32, 32)`` in [0, 255]."""
        features = self.net.features(torch.cat([digits, patches]))  # (2B, dim)
        digit_logits, _ = self.net.logits(features[: len(digits)])
        _, photo_logits = self.net.logits(features[len(digits) :])
        return (F.cross_entropy(digit_logits, digit_labels),
                F.cross_entropy(photo_logits, photo_labels))


# -- data ----------------------------------------------------------------------------------------

def read_photos() -> list[list[np.ndarray]]:
    """Each training photo at native and 1/2 scale (2x2 box average), ``(H, W, 3)`` uint8."""
    import PIL.Image

    from imgtx.data import PHOTOS_TRAIN

    photos = []
    for name in PHOTOS_TRAIN:
        data = (importlib.resources.files("skimage") / "data" / name).read_bytes()
        image = PIL.Image.open(io.BytesIO(data)).convert("RGB")
        photos.append([np.array(image), np.array(image.reduce(2))])
    return photos


def train_end(width: int, holdout: float) -> int:
    """Columns ``[0, train_end)`` of a photo are for training crops; the rest is held out."""
    return int(math.ceil(width * (1 - holdout)))


def is_flat(patch: np.ndarray) -> bool:
    """The flat rule of ``builtin:photos``: luma std below ``FLAT_LUMA_STD``."""
    from imgtx.data import FLAT_LUMA_STD

    return float((patch.astype(np.float64) @ LUMA).std()) < FLAT_LUMA_STD


def heldout_patches(photos, holdout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping grid patches of the held-out right band, both scales, flat ones dropped:
    ``(N, 3, 32, 32)`` uint8 and labels ``(N,)``."""
    images, labels = [], []
    for label, scales in enumerate(photos):
        for photo in scales:
            for y in range(0, photo.shape[0] - PATCH + 1, PATCH):
                for x in range(train_end(photo.shape[1], holdout), photo.shape[1] - PATCH + 1,
                               PATCH):
                    patch = photo[y : y + PATCH, x : x + PATCH]
                    if not is_flat(patch):
                        images.append(patch.transpose(2, 0, 1))
                        labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def sample_photo_batch(photos, holdout: float, size: int, rng: np.random.Generator):
    """Random non-flat crops from the training bands, balanced over photos, flipped at random:
    ``(size, 3, 32, 32)`` uint8 and labels ``(size,)``."""
    images, labels = [], rng.integers(len(photos), size=size)
    for label in labels:
        while True:
            photo = photos[label][rng.integers(2)]
            y = rng.integers(photo.shape[0] - PATCH + 1)
            x = rng.integers(max(1, train_end(photo.shape[1], holdout) - PATCH + 1))
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
    """Share of ``images`` whose head-``head`` argmax (0: digit, 1: photo) is ``labels``."""
    net.eval()
    logits = torch.cat([net.logits(net.features(images[i : i + 256]))[head]
                        for i in range(0, len(images), 256)])
    return float((logits.argmax(-1) == labels.to(logits.device)).double().mean())


# -- the run -------------------------------------------------------------------------------------

def train_feature_net(settings: FeatureNetSettings) -> Path:
    """Train :class:`SmallFeatureNet` on the run; returns the folder of the exported network
    (``<out>/final``, also copied to ``settings.export`` when given)."""
    from imgtx.data import PHOTOS_TRAIN
    from imgtx.eval.classifier import load_digits_split
    from imgtx.training.checkpoints import export_model

    run = Run(settings)
    digits_train, digit_labels = load_digits_split("train", PATCH)
    digits_test, digits_test_labels = load_digits_split("test", PATCH)
    photos = read_photos()
    photo_test, photo_test_labels = heldout_patches(photos, settings.holdout)
    run.print(f"digits {len(digits_train)} train / {len(digits_test)} test; photo held-out "
              f"patches {len(photo_test)}")
    config = SmallFeatureConfig(num_photo_classes=len(PHOTOS_TRAIN))
    loss = TwoTaskLoss(SmallFeatureNet(config))
    optimizer = torch.optim.AdamW(loss.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    total = settings.max_steps
    run.prepare({"model": loss}, {"model": optimizer},
                {"model": WarmCosine(min(50, total // 10 + 1), total)})

    def step(run: Run, _batch) -> dict:
        seed = int(torch.randint(2**62, ()).item())  # the run's generator: resumable
        rng = np.random.default_rng([seed, run.process_index])
        size = settings.batch_size
        index = torch.from_numpy(rng.integers(len(digits_train), size=size))
        digits = colour_jitter(translate(digits_train[index], rng, 2), rng, 0.15)
        patches, photo_labels = sample_photo_batch(photos, settings.holdout, size, rng)
        patches = colour_jitter(patches, rng, 0.1)
        to = run.device
        digit_loss, photo_loss = run.models["model"](digits.to(to), digit_labels[index].to(to),
                                                     patches.to(to), photo_labels.to(to))
        run.backward(digit_loss + photo_loss)
        run.optimizer_step("model")
        return {"digit_loss": digit_loss.detach(), "photo_loss": photo_loss.detach()}

    def evaluate(run: Run) -> dict:
        net = run.unwrap("model").net
        return {"digits_test_accuracy": accuracy(net, digits_test, digits_test_labels, 0),
                "photo_heldout_accuracy": accuracy(net, photo_test, photo_test_labels, 1)}

    start, cpu_start = time.time(), time.process_time()
    record = run.fit(step, evaluate=evaluate)
    net = run.unwrap("model").net.eval()
    card = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "parameters": sum(p.numel() for p in net.parameters()), "feature_dim": net.dim,
            "digits_test_accuracy": record["digits_test_accuracy"],
            "digits_train_accuracy": accuracy(net, digits_train, digit_labels, 0),
            "photo_heldout_accuracy": record["photo_heldout_accuracy"],
            "photo_heldout_count": len(photo_test), "photo_classes": list(PHOTOS_TRAIN),
            "training_seconds": round(time.time() - start, 1),
            "training_cpu_seconds": round(time.process_time() - cpu_start, 1),
            "threads": settings.threads or torch.get_num_threads(), "steps": run.state.step,
            "command": settings.command}
    final = run.out / "final"
    if run.is_main_process:
        export_model(net, final)
        (final / "config.json").write_text(json.dumps(card, indent=2) + "\n")
        write_card(final, card)
        if settings.export:
            shutil.copytree(final, settings.export, dirs_exist_ok=True)
    run.end()
    return final


def write_card(out: Path, card: dict) -> None:
    """``out/README.md``: what the network is, its training data, held-out figures and usage."""
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
