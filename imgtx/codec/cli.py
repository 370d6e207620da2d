"""``imgtx compress`` and ``imgtx decompress``: lossless image files under a likelihood model.

    imgtx compress --model M in.png out.itx [--json]
    imgtx compress --model M a.png b.png ... --out-dir DIR [--json]      (DIR/a.itx, DIR/b.itx)
    imgtx decompress out.itx restored.png [--model M] [--json]
    imgtx decompress a.itx b.itx ... --out-dir DIR [--model M] [--json]  (DIR/a.png, ...)

A file is written only once it is complete and checked (decompress verifies the pixels' CRC-32),
through a temporary name in the same folder; an error leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["register"]

_SWITCH = {"auto": "auto", "on": True, "off": False}  # --adapt and --orient -> compress()


def register(subparsers) -> None:
    """Add the ``compress`` and ``decompress`` commands (entry point ``imgtx.commands``)."""
    p = subparsers.add_parser("compress", help="lossless compression under a likelihood model "
                              "(.itx files)")
    p.add_argument("--model", required=True,
                   help="an Image Transformer directory or Hub id (e.g. "
                        "checkpoints/imgtx-photos-dmol-small)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="IN OUT (one image), or the images when --out-dir is given")
    p.add_argument("--out-dir", help="write each input's .itx here, named after the input")
    p.add_argument("--batch", type=int, default=None,
                   help="tiles per batch of the cached decoder (default 64; recorded in the file)")
    p.add_argument("--transform", default="auto",
                   help="auto (default): code each image turned, mirrored, with its channels "
                        "reordered or inverted, whichever the model codes smallest (recorded "
                        "in the file); none: as it is; 0-95 force one (imgtx.codec.transform)")
    p.add_argument("--scales", default="auto",
                   help="DMOL models: auto (default) fits one log-scale offset per channel to "
                        "each image (recorded in the file); none: the model's own scales; "
                        "0-511 force a choice (imgtx.codec.transform.scale_offsets)")
    p.add_argument("--search", choices=("auto", "full", "greedy"), default="auto",
                   help="with --transform auto: full tries all 96 transforms and fits scales "
                        "to the best 8 (104 forward passes); greedy tries at most 20; auto "
                        "(default) is full for images of at most 4 tiles, greedy beyond")
    p.add_argument("--adapt", choices=("auto", "on", "off"), default="auto",
                   help="DMOL models: on fits a DMOL adapter to each image and sends it in the "
                        "file (45 bytes; kept only where it pays, imgtx.codec.adapt); auto "
                        "(default) does so for images of more than 4 tiles")
    p.add_argument("--orient", choices=("auto", "on", "off"), default="auto",
                   help="on turns or mirrors each tile the way the model codes it best (8 "
                        "forward passes over every tile; 4 bits a tile, kept only where it "
                        "pays); auto (default) does so for images of more than 4 tiles")
    p.add_argument("--no-name", action="store_true",
                   help="leave the model's name out of the file (decompress then needs --model)")
    p.add_argument("--json", action="store_true", help="one JSON line per file on stdout")
    p.set_defaults(func=_compress)

    p = subparsers.add_parser("decompress", help="restore images from .itx files")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="IN OUT (one file), or the .itx files when --out-dir is given")
    p.add_argument("--out-dir", help="write each file's image here as PNG, named after it")
    p.add_argument("--model", default=None,
                   help="the model (default: the one named in the file)")
    p.add_argument("--json", action="store_true", help="one JSON line per file on stdout")
    p.set_defaults(func=_decompress)


def _pairs(args: argparse.Namespace, suffix: str) -> list[tuple[Path, Path]]:
    from imgtx.errors import UserError

    paths = [Path(p) for p in args.paths]
    if args.out_dir:
        out = Path(args.out_dir)
        names = [p.stem for p in paths]
        if len(set(names)) != len(names):
            raise UserError("two inputs have the same name; --out-dir would write one over the "
                            "other")
        return [(p, out / (p.stem + suffix)) for p in paths]
    if len(paths) != 2:
        raise UserError(f"give IN and OUT, or several inputs with --out-dir (got {len(paths)} "
                        "paths)")
    return [(paths[0], paths[1])]


def _write(path: Path, write) -> None:
    """Call ``write(temporary_path)``, then move the result to ``path`` (nothing on error)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=path.suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _read_image(path: Path):
    import PIL.Image

    from imgtx.codec import CodecError

    if not path.is_file():
        raise CodecError(f"no such image file: '{path}'")
    try:
        image = PIL.Image.open(path)
        image.load()
    except (OSError, ValueError) as error:
        raise CodecError(f"cannot read '{path}' as an image: {error}") from None
    return image


def _lossless(path: Path) -> dict:
    """Pillow save options for ``path``'s format (PNG, TIFF, BMP, PPM/PGM: all keep every
    pixel and the mode); a lossy format is an error."""
    from imgtx.errors import UserError

    suffix = path.suffix.lower()
    if suffix in (".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"):
        return {}
    raise UserError(f"'{path}': write the restored image as .png (or another lossless format: "
                    ".tiff, .bmp, .ppm), not '{suffix or 'no suffix'}'")


def _report(args: argparse.Namespace, row: dict, text: str) -> None:
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        print(text, file=sys.stderr)


def _choice(option: str, text: str, count: int):
    """An encoder choice option: 'auto', None ('none') or a number below ``count``."""
    from imgtx.codec import CodecError

    if text in ("auto", "none"):
        return None if text == "none" else text
    if not text.isdigit() or int(text) >= count:
        raise CodecError(f"{option}: expected auto, none or 0 to {count - 1}, got '{text}'")
    return int(text)


def _compress(args: argparse.Namespace) -> int:
    from imgtx.codec import DEFAULT_BATCH, CodecError, compress, image_pixels, load_model
    from imgtx.errors import check_at_least

    check_at_least("--batch", args.batch, 1)
    pairs = _pairs(args, ".itx")
    images = [(source, target, _read_image(source)) for source, target in pairs]
    for source, _, image in images:  # refuse an unsupported image before loading anything
        try:
            image_pixels(image)
        except CodecError as error:
            raise CodecError(f"'{source}': {error}") from None
    from imgtx.codec.transform import SCALES, TRANSFORMS

    transform = _choice("--transform", args.transform, TRANSFORMS)
    scales = _choice("--scales", args.scales, SCALES)
    model = load_model(args.model)
    for source, target, image in images:
        stats: dict = {}
        data = compress(model, image, name=None if args.no_name else args.model,
                        batch=args.batch or DEFAULT_BATCH, stats=stats,
                        transform=transform, scales=scales, search=args.search,
                        adapt=_SWITCH[args.adapt], orient=_SWITCH[args.orient],
                        progress=sys.stderr.isatty())
        _write(target, lambda path, data=data: Path(path).write_bytes(data))
        bits = 8 * stats["bytes"] / stats["subpixels"]
        model_bits = stats["ideal_bits"] / stats["subpixels"]
        row = {"input": str(source), "output": str(target), "bytes": stats["bytes"],
               "header_bytes": stats["header_bytes"], "subpixels": stats["subpixels"],
               "bits_per_dim": round(bits, 5), "model_bits_per_dim": round(model_bits, 5),
               "transform": stats["transform"], "scales": stats["scales"],
               "search": stats["search"], "adapted": stats["adapter"] is not None,
               "oriented_tiles": sum(bool(o) for o in stats["orientations"] or ()),
               "seconds": round(stats["seconds"], 3),
               "positions_per_second": round(stats["positions"] / stats["seconds"], 1)}
        _report(args, row, f"{source} -> {target}: {stats['bytes']:,} bytes, {bits:.4f} "
                f"bits/dim (model {model_bits:.4f}), {stats['seconds']:.1f} s")
    return 0


def _decompress(args: argparse.Namespace) -> int:
    from imgtx.codec import CodecError, decompress, load_model

    pairs = _pairs(args, ".png")
    for _, target in pairs:
        _lossless(target)
    model = load_model(args.model) if args.model else None
    loaded: dict = {}
    for source, target in pairs:
        if not source.is_file():
            raise CodecError(f"no such file: '{source}'")
        data = source.read_bytes()
        stats: dict = {}
        file_model = model
        if file_model is None:  # the model the file names, loaded once per name
            from imgtx.codec import read_header

            name = read_header(data).name
            if name and name not in loaded:
                loaded[name] = load_model(name)
            file_model = loaded.get(name)
        image = decompress(data, file_model, stats=stats, progress=sys.stderr.isatty())
        options = _lossless(target)
        _write(target, lambda path, image=image, options=options: image.save(path, **options))
        row = {"input": str(source), "output": str(target), "bytes": len(data),
               "width": image.width, "height": image.height, "mode": image.mode,
               "seconds": round(stats["seconds"], 3),
               "positions_per_second": round(stats["positions"] / stats["seconds"], 1)}
        _report(args, row, f"{source} -> {target}: {image.width}x{image.height} {image.mode}, "
                f"{stats['seconds']:.1f} s")
    return 0
