"""Cut a folder of photographs into a 32x32 image folder with ``train/`` and ``test/`` splits.

    python scripts/make_photo_crops.py --photos DIR --out OUT [--test NAME ...] [--size 32]

Split: by whole photo, never by crop. ``--test`` names the held-out photos (file names without
folders); without it every fifth photo in name order (the 1st, 6th, ...) is held out when there
are at least two photos.

Crops of every photo (positions from ``numpy.random.default_rng(seed + photo index)``):

* **native**: ``--native`` squares of ``size x size`` pixels at the photo's own resolution
  (texture, as ``builtin:photos32``'s test patches);
* **scene**: ``--scene`` squares whose side is the photo's shorter side times 1, 1/2, 1/4 or 1/8
  (a quarter of the crops each; never below ``size``), area-averaged down to ``size x size``
  with Pillow's ``BOX`` filter: whole-scene statistics, like downsampled ImageNet 32x32.

Output: ``OUT/train/*.png`` and ``OUT/test/*.png`` (both forms), plus ``OUT/heldout-native/test``
and ``OUT/heldout-scene/test`` with the test crops of one form each, for evaluating the two forms
apart (``imgtx eval-bpd --data OUT/heldout-native --split test``). File names are
``<photo>-<form>-<index>.png``. ``OUT/manifest.json`` lists the photos of each split and the
crop counts. Images need no labels: the splits hold no class subfolders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
SCENE_FRACTIONS = (1.0, 0.5, 0.25, 0.125)  # scene crop side / the photo's shorter side

PIL.Image.MAX_IMAGE_PIXELS = None  # wallpapers reach 5120x2880; these are trusted local files


def list_photos(folder: Path) -> list[Path]:
    """Photo files directly in ``folder`` or below it, sorted by name."""
    photos = sorted((p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES),
                    key=lambda p: p.name)
    if not photos:
        raise SystemExit(f"no photos ({', '.join(PHOTO_SUFFIXES)}) under {folder}")
    names = [p.name for p in photos]
    if len(set(names)) != len(names):
        raise SystemExit(f"photo file names under {folder} must be unique")
    return photos


def split_photos(photos: list[Path], test: list[str] | None) -> tuple[list[Path], list[Path]]:
    """(train, test) photo lists: ``test`` names, or every fifth photo."""
    if test:
        missing = set(test) - {p.name for p in photos}
        if missing:
            raise SystemExit(f"--test names photos that are not there: {sorted(missing)}")
        held = [p for p in photos if p.name in test]
    else:
        held = photos[::5] if len(photos) >= 2 else []
    return [p for p in photos if p not in held], held


def native_crops(photo: PIL.Image.Image, count: int, size: int,
                 rng: np.random.Generator) -> list[PIL.Image.Image]:
    """``count`` ``size``-square crops at native resolution, uniformly placed."""
    width, height = photo.size
    if width < size or height < size:
        return []
    xs = rng.integers(0, width - size + 1, count)
    ys = rng.integers(0, height - size + 1, count)
    return [photo.crop((x, y, x + size, y + size)) for x, y in zip(xs, ys)]


def scene_crops(photo: PIL.Image.Image, count: int, size: int,
                rng: np.random.Generator) -> list[PIL.Image.Image]:
    """``count`` squares of side max(size, shorter side x fraction), box-filtered to ``size``
    (none if the photo is smaller than ``size``)."""
    width, height = photo.size
    crops = []
    for i in range(count):
        side = max(size, int(min(width, height) * SCENE_FRACTIONS[i % len(SCENE_FRACTIONS)]))
        if side > min(width, height):
            break  # the photo is smaller than one crop
        x = int(rng.integers(0, width - side + 1))
        y = int(rng.integers(0, height - side + 1))
        crops.append(photo.crop((x, y, x + side, y + side)).resize((size, size),
                                                                   PIL.Image.Resampling.BOX))
    return crops


def write_split(photos: list[Path], split: str, out: Path, args: argparse.Namespace,
                first_index: int) -> dict:
    """Write the crops of ``photos`` into ``out/split`` (and the held-out form folders)."""
    counts = {"native": 0, "scene": 0}
    folders = [out / split]
    if split == "test":
        folders += [out / "heldout-native" / "test", out / "heldout-scene" / "test"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(photos, start=first_index):
        rng = np.random.default_rng(args.seed + index)
        with PIL.Image.open(path) as opened:
            photo = opened.convert("RGB")
        stem = path.stem.replace(" ", "_")
        forms = {"native": native_crops(photo, args.native, args.size, rng),
                 "scene": scene_crops(photo, args.scene, args.size, rng)}
        for form, crops in forms.items():
            for i, crop in enumerate(crops):
                name = f"{stem}-{form}-{i:04d}.png"
                crop.save(out / split / name)
                if split == "test":
                    crop.save(out / f"heldout-{form}" / "test" / name)
            counts[form] += len(crops)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, type=Path, help="folder of photographs")
    parser.add_argument("--out", required=True, type=Path, help="image folder to write")
    parser.add_argument("--test", nargs="*", default=None, help="file names held out for test")
    parser.add_argument("--size", type=int, default=32, help="crop side in pixels")
    parser.add_argument("--native", type=int, default=512, help="native crops per photo")
    parser.add_argument("--scene", type=int, default=256, help="scene crops per photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    photos = list_photos(args.photos)
    train, test = split_photos(photos, args.test)
    manifest = {"size": args.size, "seed": args.seed, "native_per_photo": args.native,
                "scene_per_photo": args.scene, "scene_fractions": list(SCENE_FRACTIONS),
                "train_photos": [p.name for p in train], "test_photos": [p.name for p in test]}
    manifest["train"] = write_split(train, "train", args.out, args, 0)
    manifest["test"] = write_split(test, "test", args.out, args, len(train))
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
