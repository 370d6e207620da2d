"""imgtx compress against the classical lossless codecs, whole files, every output decoded and
checked bit-exact.

Codecs: PNG (Pillow, optimize), lossless WebP (Pillow, method 6), JPEG XL lossless (effort 9) and
JPEG-LS (imagecodecs), and imgtx (:func:`imgtx.codec.compress`, header included). Sets:

* ``native``, ``scene``: the held-out crops of the photo corpus (``scripts/fetch_photo_corpus.sh``;
  docs/photo_corpus.md), 32x32;
* ``photos32``: the ``builtin:photos32`` test patches, 32x32;
* ``crops256``: 256x256 crops of the held-out photos (fixed seed);
* ``whole``: one held-out photo (EveningGlow) downscaled to 512x320 (Pillow ``reduce(5)``, a
  5x5 box average).

``--limit`` codes an evenly spaced subset of each set with imgtx (one image is one batch of
tiles, so a 32x32 image is 1,024 sequential steps at batch 1); the classical codecs run on the
same subset, and with ``--full-classical`` on whole sets as well. For 32x32 sets the model's
exact bits/dim (forward pass) and its bits per channel (r, g | r, b | r, g) are reported beside
the file sizes, and per photo. With ``--full-model`` imgtx is also projected on every image
of the 32x32 sets: the model's exact bits of each image as the encoder would transform it
(``imgtx.codec.transform``), plus headers and the range coder's overhead measured on the coded
subset.

    python scripts/bench_codec.py --json --limit 32          # prints one JSON line last
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import imagecodecs
import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from imgtx.codec import compress, decompress
from imgtx.codec.format import choices_bytes
from imgtx.codec.orient import orient_tiles
from imgtx.codec.transform import Transform, scale_offsets, search_all
from imgtx.likelihood import dmol_nll_per_channel, dmol_shift_log_scales
from imgtx.model import ImageTransformer

HELD_OUT = ("EveningGlow.jpg", "Grey.jpg")
HEADER_BYTES = 16  # a 32x32 file's, without a model name or a transform byte


def _pillow(fmt: str, **options):
    def encode(a: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        PIL.Image.fromarray(a).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode, lambda data: np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


CLASSICAL = {
    "png": _pillow("PNG", optimize=True),
    "webp": _pillow("WEBP", lossless=True, method=6, quality=100),
    "jpegxl": (lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=9),
               imagecodecs.jpegxl_decode),
    "jpegls": (imagecodecs.jpegls_encode, imagecodecs.jpegls_decode),
}


def _folder(path: Path) -> list[tuple[str, np.ndarray]]:
    return [(p.name.split("-")[0], np.asarray(PIL.Image.open(p).convert("RGB")))
            for p in sorted(path.glob("*.png"))]


def load_sets(args) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each set's ``(photo name, (H, W, 3) uint8)`` images."""
    from imgtx.data.builtin import photo_patches

    corpus, photos = Path(args.corpus), Path(args.photos)
    sets = {}
    for name in args.sets:
        if name in ("native", "scene"):
            sets[name] = _folder(corpus / f"heldout-{name}" / "test")
        elif name == "photos32":
            patches = photo_patches("test")
            sets[name] = [(patches.names[int(i)], img.permute(1, 2, 0).numpy())
                          for i, img in zip(patches.photo, patches.images)]
        elif name == "crops256":
            rng = np.random.default_rng(0)
            crops = []
            for photo in HELD_OUT:
                image = np.asarray(PIL.Image.open(photos / photo).convert("RGB"))
                for _ in range(8):
                    top = int(rng.integers(0, image.shape[0] - 256 + 1))
                    left = int(rng.integers(0, image.shape[1] - 256 + 1))
                    crops.append((photo.split(".")[0], image[top:top + 256, left:left + 256]))
            sets[name] = [crops[i] for i in np.argsort([i % 8 for i in range(len(crops))],
                                                       kind="stable")]  # alternate photos
        elif name == "whole":
            image = PIL.Image.open(photos / HELD_OUT[0]).convert("RGB").reduce(5)  # 512x320
            sets[name] = [(HELD_OUT[0].split(".")[0], np.asarray(image))]
    return sets


def subset(items: list, limit: int | None) -> list:
    """An evenly spaced subset of at most ``limit`` items (all when None)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def run_codec(encode, decode, images: list[np.ndarray]) -> dict:
    """Total bytes and seconds of ``encode``/``decode`` over ``images``; raises unless every
    image decodes bit-exact."""
    total = encode_s = decode_s = 0.0
    sizes = []
    for image in images:
        start = time.perf_counter()
        data = encode(image)
        middle = time.perf_counter()
        restored = np.asarray(decode(data))
        decode_s += time.perf_counter() - middle
        encode_s += middle - start
        if restored.shape != image.shape or not np.array_equal(restored, image):
            raise RuntimeError("a codec did not restore an image bit-exact")
        total += len(data)
        sizes.append(len(data))
    subpixels = sum(image.size for image in images)
    return {"bytes": int(total), "bits_per_dim": round(8 * total / subpixels, 4),
            "encode_s": round(encode_s, 3), "decode_s": round(decode_s, 3), "sizes": sizes}


@torch.no_grad()
def model_bits(model, images: list[np.ndarray], scales: list[int] | None = None
               ) -> np.ndarray | None:
    """``(n, 3)`` the model's exact bits per pixel of r, g | r and b | r, g (32x32, DMOL), with
    each image's log-scale offsets ``scale_offsets(scales[i])`` when given."""
    size = model.config.image_size
    if model.config.likelihood != "dmol" or any(i.shape[:2] != (size, size) for i in images):
        return None
    out = []
    for start in range(0, len(images), 64):
        batch = torch.from_numpy(np.stack(images[start:start + 64])).permute(0, 3, 1, 2)
        outputs = model(batch)
        if scales is not None:
            offsets = torch.tensor([scale_offsets(s) for s in scales[start:start + 64]])
            outputs = dmol_shift_log_scales(outputs, offsets[:, None, None, :])
        nats = dmol_nll_per_channel(outputs, model.targets(batch))  # (B, N, 3)
        out.append((nats.sum(1) / math.log(2)).numpy())
    return np.concatenate(out)


def projected_file_bits(model, images: list[np.ndarray], coder_bytes: float) -> dict:
    """imgtx on every image of a 32x32 set without coding it: each file's bits projected from
    the model's exact bits (forward pass) of the image as the encoder would transform it and
    with the log-scale offsets it would pick (the full search of
    :func:`imgtx.codec.transform.search_all`, the encoder's default at this size), plus its
    header and ``coder_bytes``, the range coder's bytes over the model's bits per file as
    measured on the coded subset. Returns ``file_bits``, ``as_given`` and ``best`` (model bits)
    and ``chosen`` (the header carries choices), ``(n,)`` each."""
    best, header = [], []
    equal = np.array([bool((image[..., :1] == image[..., 1:]).all()) for image in images])
    for image, one_channel in zip(tqdm(images, desc="full search", leave=False), equal):
        transform, scales, scores = search_all(model, image, bool(one_channel))
        best.append(scores[transform.code] * (image[..., 0].size if one_channel else image.size))
        header.append(HEADER_BYTES + choices_bytes(transform.code, scales))
    per_channel = model_bits(model, images)  # as given, coded as the codec would: red alone
    as_given = np.where(equal, per_channel[:, 0], per_channel.sum(1))  # for equal channels
    best, header = np.array(best), np.array(header)
    return {"file_bits": best + 8 * (header + coder_bytes), "as_given": as_given,
            "best": best, "chosen": header > HEADER_BYTES}


def full_set_rows(model, items, coder_bytes: float, classical: dict) -> dict:
    """Whole-set bits/dim: the classical codecs' files (``classical``: codec -> bytes per
    image) and imgtx projected (:func:`projected_file_bits`), over the set and per photo."""
    images = [image for _, image in items]
    projected = projected_file_bits(model, images, coder_bytes)
    subpixels = np.array([image.size for image in images], dtype=np.float64)
    files = {codec: 8 * np.asarray(sizes, dtype=np.float64) for codec, sizes in classical.items()}
    files["imgtx_projected"] = projected["file_bits"]

    def rows(mask):
        count = subpixels[mask].sum()
        out = {codec: round(float(bits[mask].sum() / count), 4) for codec, bits in files.items()}
        out["model_bits_per_dim_as_given"] = round(float(projected["as_given"][mask].sum()
                                                         / count), 4)
        out["model_bits_per_dim_transformed"] = round(float(projected["best"][mask].sum()
                                                            / count), 4)
        out["images_with_choices"] = int(projected["chosen"][mask].sum())
        return out

    result = rows(np.ones(len(images), dtype=bool))
    result["coder_bytes_per_file"] = round(coder_bytes, 2)
    photos = np.array([photo for photo, _ in items])
    if len(set(photos)) > 1:
        result["per_photo"] = {photo: rows(photos == photo) for photo in sorted(set(photos))}
    return result


def bench_set(model, name: str, items, args) -> dict:
    chosen = subset(items, args.limit if name not in ("crops256", "whole") else args.limit_large)
    images = [image for _, image in chosen]
    subpixels = sum(image.size for image in images)
    row: dict = {"images": len(images), "of": len(items), "size": list(images[0].shape[:2]),
                 "codecs": {}}
    full_sizes = {}
    for codec, (encode, decode) in CLASSICAL.items():
        row["codecs"][codec] = run_codec(encode, decode, images)
        if args.full_classical and len(chosen) < len(items):
            full = run_codec(encode, decode, [image for _, image in items])
            row.setdefault("full_set", {})[codec] = full["bits_per_dim"]
            full_sizes[codec] = full["sizes"]
    stats = []

    def encode(image):
        stats.append({})
        return compress(model, image, stats=stats[-1])

    decode_stats = []

    def decode(data):
        decode_stats.append({})
        return decompress(data, model, stats=decode_stats[-1])

    result = run_codec(encode, decode, images)
    positions = sum(s["positions"] for s in stats)
    result.update(
        header_bytes=sum(s["header_bytes"] for s in stats),
        ideal_bits_per_dim=round(sum(s["ideal_bits"] for s in stats) / subpixels, 4),
        encode_positions_per_s=round(positions / sum(s["seconds"] for s in stats), 1),
        decode_positions_per_s=round(positions / sum(s["seconds"] for s in decode_stats), 1),
        adapted=sum(s["adapter"] is not None for s in stats),  # images sent with an adapter
        oriented_tiles=sum(sum(map(bool, s["orientations"] or ())) for s in stats))
    row["codecs"]["imgtx"] = result
    per_channel = model_bits(model, images)  # as given
    if per_channel is not None:
        equal = np.array([bool((i[..., :1] == i[..., 1:]).all()) for i in images])
        row["equal_channel_images"] = int(equal.sum())
        row["model_bits_per_dim"] = round(float(per_channel.sum()) / subpixels, 4)
        # What the files code: each image as the encoder transformed it, red alone for the
        # images whose three channels are equal (the codec codes those as grey).
        row["transforms"] = [s["transform"] for s in stats]
        row["scales"] = [s["scales"] for s in stats]
        coded = [Transform.from_code(s["transform"]).apply(i) for i, s in zip(images, stats)]
        coded = [orient_tiles(i, model.config.image_size, s["orientations"])
                 if s["orientations"] else i for i, s in zip(coded, stats)]
        per_channel = model_bits(model, coded, row["scales"])
        row["model_bits_per_channel"] = [round(float(v), 4) for v in
                                         per_channel.sum(0) / (subpixels / 3)]
        coded_bits = float(np.where(equal, per_channel[:, 0], per_channel.sum(1)).sum())
        row["model_bits_per_dim_coded"] = round(coded_bits / subpixels, 4)
        # Exactness: the files against the model's bits of what they code plus the headers.
        expected = coded_bits / 8 + result["header_bytes"]
        row["file_over_model_plus_headers"] = round(result["bytes"] / expected - 1, 5)
        if args.full_model and len(chosen) < len(items):
            row["full_set"] = full_set_rows(model, items,
                                            (result["bytes"] - expected) / len(images),
                                            full_sizes)
    photos = defaultdict(list)
    for index, (photo, _) in enumerate(chosen):
        photos[photo].append(index)
    if len(photos) > 1:
        row["per_photo"] = {}
        for photo, indices in photos.items():
            count = sum(images[i].size for i in indices)
            row["per_photo"][photo] = {
                codec: round(8 * sum(r["sizes"][i] for i in indices) / count, 4)
                for codec, r in row["codecs"].items()}
            if per_channel is not None:
                row["per_photo"][photo]["model_bits_per_channel"] = [
                    round(float(v), 4) for v in per_channel[indices].sum(0) / (count / 3)]
    for r in row["codecs"].values():
        del r["sizes"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/imgtx-photos-dmol-small")
    parser.add_argument("--corpus", default="runs/photo_corpus")
    parser.add_argument("--photos", default="runs/photo_corpus_src/photos",
                        help="the corpus's source photos (for crops256 and whole)")
    parser.add_argument("--sets", nargs="+", default=["native", "scene", "photos32", "crops256",
                                                      "whole"])
    parser.add_argument("--limit", type=int, default=32,
                        help="32x32 images coded per set (evenly spaced; default 32)")
    parser.add_argument("--limit-large", type=int, default=2,
                        help="256x256 crops coded (default 2)")
    parser.add_argument("--full-classical", action="store_true",
                        help="also run the classical codecs on every image of each set")
    parser.add_argument("--full-model", action="store_true",
                        help="also the model's bits/dim on every image of each 32x32 set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true",
                        help="accepted; the JSON line is always printed last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ImageTransformer.from_pretrained(args.model)
    sets = load_sets(args)
    result = {"model": args.model, "limit": args.limit, "sets": {}}
    for name, items in sets.items():
        start = time.perf_counter()
        result["sets"][name] = bench_set(model, name, items, args)
        result["sets"][name]["seconds"] = round(time.perf_counter() - start, 1)
        codecs = result["sets"][name]["codecs"]
        print(name, {codec: r["bits_per_dim"] for codec, r in codecs.items()}, flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
