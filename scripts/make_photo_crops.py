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
  with Pillow's ``BOX`` filter: whole-scene statistics, like downsampled ImageNet 32x32;
* **zoom** (``--zoom``, none by default): squares of ``size`` times 2 to 8 (drawn uniformly), box-
  filtered to ``size x size``: the scales between the two, those of a large photo shown or saved
  at a few hundred pixels (the codec benchmark's 512x320 photo is a 5x reduction).

**val** (for GAN evaluation against the training distribution): ``--val-native`` and
``--val-scene`` fresh crops of every *training* photo, of the same two forms (by default half as
many as ``train``; fewer where a small photo has no room left), from their own generator
(``numpy.random.default_rng((seed, photo index, 1))``), so ``train`` and ``test`` are the same
with or without them. A val native window shares no pixel with any train native window
of its photo; a val scene window is never a train scene window (whole-height scene squares cover
most of a photo, so scene windows of the two splits overlap, as any two such crops do).
``--add-val`` writes only ``OUT/val`` into an existing corpus, with the settings of its manifest.

Output: ``OUT/train/*.png``, ``OUT/val/*.png`` and ``OUT/test/*.png`` (both forms), plus
``OUT/heldout-native/test`` and ``OUT/heldout-scene/test`` with the test crops of one form each,
for evaluating the two forms apart (``imgtx eval-bpd --data OUT/heldout-native --split test``).
File names are ``<photo>-<form>-<index>.png``. ``OUT/manifest.json`` lists the photos of each
split and the crop counts. Images need no labels: the splits hold no class subfolders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
SCENE_FRACTIONS = (1.0, 0.5, 0.25, 0.125)  # scene crop side / the photo's shorter side
ZOOMS = (2, 3, 4, 5, 6, 7, 8)  # zoom crop side / size

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


Window = tuple[int, int, int]  # (x, y, side) of a square in the photo


def native_windows(width: int, height: int, count: int, size: int,
                   rng: np.random.Generator) -> list[Window]:
    """``count`` ``size``-square windows at native resolution, uniformly placed."""
    if width < size or height < size:
        return []
    xs = rng.integers(0, width - size + 1, count)
    ys = rng.integers(0, height - size + 1, count)
    return [(int(x), int(y), size) for x, y in zip(xs, ys)]


def scene_side(width: int, height: int, size: int, i: int) -> int:
    """Side of the ``i``-th scene window: max(size, shorter side x its fraction)."""
    return max(size, int(min(width, height) * SCENE_FRACTIONS[i % len(SCENE_FRACTIONS)]))


def scene_windows(width: int, height: int, count: int, size: int,
                  rng: np.random.Generator) -> list[Window]:
    """``count`` squares of side :func:`scene_side` (none if the photo is smaller than
    ``size``)."""
    windows = []
    for i in range(count):
        side = scene_side(width, height, size, i)
        if side > min(width, height):
            break  # the photo is smaller than one crop
        x = int(rng.integers(0, width - side + 1))
        y = int(rng.integers(0, height - side + 1))
        windows.append((x, y, side))
    return windows


def zoom_windows(width: int, height: int, count: int, size: int,
                 rng: np.random.Generator) -> list[Window]:
    """``count`` squares of side ``size`` times a zoom of :data:`ZOOMS`, uniformly placed
    (zooms larger than the photo are skipped)."""
    windows = []
    for zoom in rng.choice(ZOOMS, count):
        side = int(zoom) * size
        if side <= min(width, height):
            windows.append((int(rng.integers(0, width - side + 1)),
                            int(rng.integers(0, height - side + 1)), side))
    return windows


def cut(photo: PIL.Image.Image, windows: list[Window], size: int) -> list[PIL.Image.Image]:
    """The windows as ``size``-square images (larger ones box-filtered down)."""
    crops = [photo.crop((x, y, x + side, y + side)) for x, y, side in windows]
    return [c if c.size == (size, size) else c.resize((size, size), PIL.Image.Resampling.BOX)
            for c in crops]


def native_crops(photo: PIL.Image.Image, count: int, size: int,
                 rng: np.random.Generator) -> list[PIL.Image.Image]:
    """``count`` ``size``-square crops at native resolution, uniformly placed."""
    return cut(photo, native_windows(*photo.size, count, size, rng), size)


def scene_crops(photo: PIL.Image.Image, count: int, size: int,
                rng: np.random.Generator) -> list[PIL.Image.Image]:
    """``count`` squares of side max(size, shorter side x fraction), box-filtered to ``size``
    (none if the photo is smaller than ``size``)."""
    return cut(photo, scene_windows(*photo.size, count, size, rng), size)


def train_windows(width: int, height: int, args: argparse.Namespace,
                  index: int) -> dict[str, list[Window]]:
    """The windows :func:`write_split` cuts from training photo ``index`` (same draws)."""
    rng = np.random.default_rng(args.seed + index)
    return {"native": native_windows(width, height, args.native, args.size, rng),
            "scene": scene_windows(width, height, args.scene, args.size, rng)}


def val_windows(width: int, height: int, args: argparse.Namespace,
                index: int) -> dict[str, list[Window]]:
    """Fresh windows of training photo ``index``: native ones share no pixel with a train native
    window (nor with each other), scene ones are neither a train scene window nor repeated."""
    taken = train_windows(width, height, args, index)
    rng = np.random.default_rng((args.seed, index, 1))  # a stream of its own: train is unchanged
    size, attempts = args.size, 1000 * (args.val_native + args.val_scene) + 1000
    native: list[Window] = []
    if width >= size and height >= size:
        corners = np.array([w[:2] for w in taken["native"]] or [(-2 * size,) * 2])
        while len(native) < args.val_native and attempts > 0:
            attempts -= 1
            x, y = (int(v) for v in rng.integers(0, (width - size + 1, height - size + 1)))
            if (np.abs(corners - (x, y)) < size).all(axis=1).any():
                continue  # overlaps a train window or an earlier val window
            native.append((x, y, size))
            corners = np.vstack([corners, (x, y)])
    scene: list[Window] = []
    used = set(taken["scene"])
    for i in range(args.val_scene):
        side = scene_side(width, height, size, i)
        if side > min(width, height):
            break
        while attempts > 0:
            attempts -= 1
            window = (int(rng.integers(0, width - side + 1)),
                      int(rng.integers(0, height - side + 1)), side)
            if window not in used:
                used.add(window)
                scene.append(window)
                break
    if len(native) < args.val_native or (scene and len(scene) < args.val_scene):
        print(f"photo {index} ({width}x{height}): room for only {len(native)} native and "
              f"{len(scene)} scene val crops apart from its train crops", file=sys.stderr)
    return {"native": native, "scene": scene}


def write_val(photos: list[Path], out: Path, args: argparse.Namespace) -> dict:
    """Write ``out/val``: :func:`val_windows` of every training photo."""
    (out / "val").mkdir(parents=True, exist_ok=True)
    counts = {"native": 0, "scene": 0}
    for index, path in enumerate(photos):
        with PIL.Image.open(path) as opened:
            photo = opened.convert("RGB")
        stem = path.stem.replace(" ", "_")
        for form, windows in val_windows(*photo.size, args, index).items():
            for i, crop in enumerate(cut(photo, windows, args.size)):
                crop.save(out / "val" / f"{stem}-{form}-{i:04d}.png")
            counts[form] += len(windows)
    return counts


def write_split(photos: list[Path], split: str, out: Path, args: argparse.Namespace,
                first_index: int) -> dict:
    """Write the crops of ``photos`` into ``out/split`` (and the held-out form folders)."""
    counts = {"native": 0, "scene": 0, **({"zoom": 0} if args.zoom else {})}
    folders = [out / split]
    if split == "test":
        folders += [out / f"heldout-{form}" / "test" for form in counts]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(photos, start=first_index):
        rng = np.random.default_rng(args.seed + index)
        with PIL.Image.open(path) as opened:
            photo = opened.convert("RGB")
        stem = path.stem.replace(" ", "_")
        forms = {"native": native_crops(photo, args.native, args.size, rng),
                 "scene": scene_crops(photo, args.scene, args.size, rng)}
        if args.zoom:  # drawn after the others, so that they are the same with or without
            forms["zoom"] = cut(photo, zoom_windows(*photo.size, args.zoom, args.size, rng),
                                args.size)
        for form, crops in forms.items():
            for i, crop in enumerate(crops):
                name = f"{stem}-{form}-{i:04d}.png"
                crop.save(out / split / name)
                if split == "test":
                    crop.save(out / f"heldout-{form}" / "test" / name)
            counts[form] += len(crops)
    return counts


def default_val_counts(args: argparse.Namespace) -> None:
    """Val crops per photo not given: half of the train counts."""
    args.val_native = args.native // 2 if args.val_native is None else args.val_native
    args.val_scene = args.scene // 2 if args.val_scene is None else args.val_scene


def add_val(photos: list[Path], args: argparse.Namespace) -> None:
    """``--add-val``: the val split of an existing corpus, from its manifest's settings."""
    path = args.out / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"--add-val needs an existing corpus; {path} is missing")
    manifest = json.loads(path.read_text())
    args.size, args.seed = manifest["size"], manifest["seed"]
    args.native, args.scene = manifest["native_per_photo"], manifest["scene_per_photo"]
    default_val_counts(args)
    by_name = {p.name: p for p in photos}
    missing = [name for name in manifest["train_photos"] if name not in by_name]
    if missing:
        raise SystemExit(f"--photos lacks the corpus's training photos {missing}")
    manifest.update(val_native_per_photo=args.val_native, val_scene_per_photo=args.val_scene)
    manifest["val"] = write_val([by_name[n] for n in manifest["train_photos"]], args.out, args)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, type=Path, help="folder of photographs")
    parser.add_argument("--out", required=True, type=Path, help="image folder to write")
    parser.add_argument("--test", nargs="*", default=None, help="file names held out for test")
    parser.add_argument("--size", type=int, default=32, help="crop side in pixels")
    parser.add_argument("--native", type=int, default=512, help="native crops per photo")
    parser.add_argument("--scene", type=int, default=256, help="scene crops per photo")
    parser.add_argument("--zoom", type=int, default=0,
                        help="zoom crops per photo (2x to 8x reductions; default none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-val", action="store_true", help="write no OUT/val")
    parser.add_argument("--val-native", type=int, default=None,
                        help="val native crops per training photo (default: half of --native)")
    parser.add_argument("--val-scene", type=int, default=None,
                        help="val scene crops per training photo (default: half of --scene)")
    parser.add_argument("--add-val", action="store_true",
                        help="write only OUT/val into an existing corpus (its manifest's "
                        "settings; train and test are left as they are)")
    args = parser.parse_args()
    photos = list_photos(args.photos)
    if args.add_val:
        add_val(photos, args)
        return
    default_val_counts(args)
    train, test = split_photos(photos, args.test)
    manifest = {"size": args.size, "seed": args.seed, "native_per_photo": args.native,
                "scene_per_photo": args.scene, "scene_fractions": list(SCENE_FRACTIONS),
                **({"zoom_per_photo": args.zoom, "zooms": list(ZOOMS)} if args.zoom else {}),
                "train_photos": [p.name for p in train], "test_photos": [p.name for p in test]}
    manifest["train"] = write_split(train, "train", args.out, args, 0)
    manifest["test"] = write_split(test, "test", args.out, args, len(train))
    if not args.no_val:
        manifest.update(val_native_per_photo=args.val_native,
                        val_scene_per_photo=args.val_scene)
        manifest["val"] = write_val(train, args.out, args)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
