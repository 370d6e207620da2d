"""Lossless image compression with an Image Transformer: range coding under the model's own
likelihood, so a file takes (almost exactly) the model's bits/dim.

    data = compress(model, image)           # bytes of an .itx file
    image = decompress(data, model)         # the same pixels, as a PIL image

The file format is in :mod:`imgtx.codec.format`, the coding in :mod:`imgtx.codec.coder`, and the
``imgtx compress`` / ``imgtx decompress`` commands in :mod:`imgtx.codec.cli`.
"""

from __future__ import annotations

import time

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from imgtx.codec.adapt import adapter_values, default_adapt, fit_adapter
from imgtx.codec.coder import (
    RangeSink,
    RangeSource,
    code_tiles,
    join_tiles,
    split_tiles,
    tile_count,
    tile_layout,
)
from imgtx.codec.format import CodecError, Header, build_tag, fingerprint, pack, pixel_crc, unpack
from imgtx.codec.orient import default_orient, orient_tiles, tile_orientations
from imgtx.codec.transform import (
    IDENTITY,
    SCALES,
    TRANSFORMS,
    Transform,
    best_scales,
    best_transform,
    default_search,
    scale_offsets,
    search_all,
)
from imgtx.incremental import one_thread

__all__ = ["compress", "decompress", "read_header", "image_pixels", "load_model", "CodecError",
           "DEFAULT_BATCH"]

#: Tiles per batch of the cached decoder (recorded in each file; the decoder uses the file's).
DEFAULT_BATCH = 64
#: Larger images are taken for a damaged header (about 50 times a 12-megapixel photo).
MAX_PIXELS = 1 << 29


def image_pixels(image) -> tuple[np.ndarray, bool]:
    """``(pixels (H, W, 3) uint8, grey)`` of a PIL image (mode RGB or L), a ``(H, W)`` or
    ``(H, W, 3)`` uint8 array, or a ``(3, H, W)`` uint8 tensor; anything that the codec cannot
    restore exactly (alpha, 16-bit, palettes, ...) raises :class:`CodecError`."""
    if isinstance(image, PIL.Image.Image):
        if image.mode not in ("RGB", "L"):
            reason = {"RGBA": "it has an alpha channel", "LA": "it has an alpha channel",
                      "P": "it is a palette image", "I;16": "it has 16-bit samples",
                      "I": "it has 32-bit samples", "F": "it has float samples",
                      "1": "it is a 1-bit image"}.get(image.mode, f"its mode is {image.mode}")
            raise CodecError(f"cannot compress this image losslessly: {reason}; imgtx compress "
                             "codes 8-bit RGB and greyscale (convert it first, e.g. with "
                             "Pillow's Image.convert('RGB'), if that loses nothing you need)")
        array, grey = np.asarray(image), image.mode == "L"
    else:
        array = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) \
            else np.asarray(image)
        grey = array.ndim == 2
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or \
                (array.ndim == 3 and array.shape[2] != 3):
            raise CodecError(f"expected 8-bit pixels (H, W) or (H, W, 3), got an array of shape "
                             f"{array.shape} and dtype {array.dtype}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise CodecError("the image is empty")
    if grey:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array, dtype=np.uint8), grey


def _check_model(model) -> None:
    from imgtx.model import ImageTransformer

    # Subclasses take side information and encoder-decoder models a context: neither is in a file.
    cross = any(getattr(layer, "cross_attn", None) is not None for layer in model.layers) \
        if isinstance(model, ImageTransformer) else True
    if type(model) is not ImageTransformer or cross:
        raise CodecError("the codec needs an unconditional Image Transformer likelihood model "
                         f"(got {type(model).__name__})")
    if model.config.num_classes:
        raise CodecError("the codec needs an unconditional model; this one is class-conditional")


def _to_model_order(model, tiles: np.ndarray) -> torch.Tensor:
    """``(T, S, S, 3)`` uint8 -> model-order values ``(T, N, 3)`` (DMOL) or ``(T, N)``."""
    images = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    return model.to_sequence(model.targets(images))


def _from_model_order(model, values: torch.Tensor) -> np.ndarray:
    size = model.config.image_size
    raster = model.to_raster(values)
    return raster.reshape(raster.shape[0], size, size, 3).to(torch.uint8).numpy()


def compress(model, image, *, name: str | None = None, batch: int = DEFAULT_BATCH,
             transform: Transform | int | str | None = "auto", scales: int | str | None = "auto",
             search: str = "auto", adapt: bool | str = "auto", orient: bool | str = "auto",
             stats: dict | None = None, progress: bool = False) -> bytes:
    """The .itx file of ``image`` (see :func:`image_pixels`) under ``model``.

    ``name``: the model's Hub id or path, stored so that :func:`decompress` can load it itself.
    ``batch``: tiles per batch of the cached decoder. ``transform``: ``"auto"`` codes the image
    turned, mirrored, with its channels reordered or inverted, whichever the model codes in the
    fewest bits; ``None`` codes it as it is; a :class:`~imgtx.codec.transform.Transform` or its
    code forces one. ``scales``: DMOL models only, ``"auto"`` fits one log-scale offset per
    channel to the image (:func:`imgtx.codec.transform.best_scales`); ``None`` keeps the model's
    scales; ``0`` to ``511`` forces a choice (``scale_offsets``). ``search``, for
    ``transform="auto"``: ``"full"`` tries all 96 transforms and fits scales to the best 8
    (:func:`imgtx.codec.transform.search_all`: 104 forward passes); ``"greedy"`` tries at most
    20 (:func:`imgtx.codec.transform.best_transform`) and fits scales to the one chosen;
    ``"auto"``: :func:`imgtx.codec.transform.default_search` (full for images of at most
    4 tiles of the model, greedy for larger ones). ``adapt``, DMOL models only: ``True`` fits
    a DMOL adapter to the image and sends it in the header (:mod:`imgtx.codec.adapt`: 45 bytes
    for the shipped photo model), kept only when it saves more bits than it takes; ``"auto"``
    does so for images of more than 4 tiles (:func:`imgtx.codec.adapt.default_adapt`).
    ``orient``: ``True`` turns or mirrors each full tile once more, whichever of the 8
    orientations the model codes in the fewest bits (:func:`imgtx.codec.orient.
    tile_orientations`: one forward pass per orientation over every tile; 4 bits a tile in the
    header), kept only when it saves more than it takes; ``"auto"`` does so for images of more
    than 4 tiles (:func:`imgtx.codec.orient.default_orient`). ``progress``: a progress bar
    on stderr, its label the phase (search, turns, adapter, code), its count coded positions.

    ``stats``, if given, receives ``bytes``, ``header_bytes``, ``subpixels`` (coded ones),
    ``ideal_bits`` (the model's code length of the coded values), ``transform`` (its code),
    ``transform_scores`` (bits per coded subpixel of each candidate searched, by code),
    ``search`` (the one run, or None), ``scales`` (the choice), ``adapter`` (its numbers as
    a list, or None), ``orientations`` (each tile's, as a list, or None), ``positions``
    (decoder steps x tiles) and ``seconds``."""
    _check_model(model)
    pixels, grey = image_pixels(image)
    if transform is None:
        transform = IDENTITY
    elif transform != "auto" and not isinstance(transform, Transform):
        if isinstance(transform, bool) or transform not in range(TRANSFORMS):
            raise CodecError(f"a transform is 'auto', None, a Transform or a code 0 to "
                             f"{TRANSFORMS - 1}, got {transform!r}")
        transform = Transform.from_code(transform)
    dmol = model.config.likelihood == "dmol"
    if scales is None or (scales == "auto" and not dmol):
        scales = 0
    elif scales != "auto" and (isinstance(scales, bool) or not isinstance(scales, int)
                               or scales not in range(SCALES)):
        raise CodecError(f"scales are 'auto', None or a choice 0 to {SCALES - 1}, "
                         f"got {scales!r}")
    elif scales and not dmol:
        raise CodecError("log-scale offsets (scales) apply to DMOL models only")
    if search not in ("auto", "full", "greedy"):
        raise CodecError(f"search is 'auto', 'full' or 'greedy', got {search!r}")
    if adapt not in ("auto", True, False):
        raise CodecError(f"adapt is 'auto', True or False, got {adapt!r}")
    if adapt is True and not dmol:
        raise CodecError("an adapter refits DMOL outputs; this model is categorical")
    if orient not in ("auto", True, False):
        raise CodecError(f"orient is 'auto', True or False, got {orient!r}")
    start = time.perf_counter()
    model = model.eval().cpu()
    size = model.config.image_size
    # An RGB image with equal channels (a black-and-white photo saved as RGB) codes only red.
    equal = not grey and bool((pixels[..., :1] == pixels[..., 1:]).all())
    searched = None
    if transform == "auto" and search == "auto":
        search = default_search(pixels.shape[0], pixels.shape[1], size)
    orienting = orient is True or (orient == "auto" and default_orient(*pixels.shape[:2], size))
    # positions of every tile until the layout is known (then those actually coded)
    bar = tqdm(total=tile_count(*pixels.shape[:2], size) * model.config.sequence_length,
               desc="search", unit="pos", disable=not progress, leave=False)
    with one_thread(), bar:
        if transform == "auto" and search == "full":
            transform, scales, searched = search_all(model, pixels, grey or equal, scales, batch)
        elif transform == "auto":
            # Tiles turned one by one afterwards: the image's own turns are left out of the
            # search, and its colours, a property of the whole image, are scored on 8 tiles.
            transform, searched = best_transform(model, pixels, grey or equal, batch,
                                                 max_tiles=8 if orienting else 16,
                                                 turns=not orienting)
        else:
            search = None
        coded = transform.apply(pixels)
        if scales == "auto":
            scales, _ = best_scales(model, coded, grey or equal, batch)
        orientations = b""
        bar.set_description("turns")
        if orienting:
            chosen, saved = tile_orientations(model, coded, grey or equal, batch, scales)
            if chosen.any() and saved > 8 * ((len(chosen) + 1) // 2 + 3):  # its header bytes
                coded = orient_tiles(coded, size, chosen)
                orientations = chosen.tobytes()
        tiles, sizes = split_tiles(coded, size)
        layout = tile_layout(model.config, sizes, grey or equal)
        adapter = b""
        bar.set_description("adapter")
        if adapt is True or (adapt == "auto" and dmol and default_adapt(*coded.shape[:2], size)):
            adapter, before, after = fit_adapter(model, coded, grey or equal, scales, batch)
            saved = (before - after) * int(layout.coded.sum())  # bits, estimated on a sample
            if saved <= 8 * (len(adapter) + 1):
                adapter = b""
        sink = RangeSink()
        truth = _to_model_order(model, tiles)
        bar.set_description("code")
        bar.total = _positions(model, layout, batch)
        _, ideal_bits = code_tiles(model, layout, sink, truth, batch=batch,
                                   log_scale_offsets=scale_offsets(scales) if scales else None,
                                   adapter=adapter_values(adapter) if adapter else None, bar=bar)
    stored = pixels[:, :, 0] if grey else pixels
    header = Header(width=pixels.shape[1], height=pixels.shape[0], grey=grey, tile=size,
                    batch=batch, model=fingerprint(model), build=build_tag(),
                    pixels=pixel_crc(stored), name=name, equal=equal, transform=transform.code,
                    scales=scales, adapter=adapter, orientations=orientations)
    words = sink.words()
    data = pack(header, words)
    if stats is not None:
        empty = len(pack(header, np.zeros(0, np.uint32)))
        stats.update(bytes=len(data), header_bytes=empty, subpixels=int(layout.coded.sum()),
                     ideal_bits=ideal_bits, transform=transform.code,
                     transform_scores=searched, search=search, scales=scales,
                     adapter=adapter_values(adapter).tolist() if adapter else None,
                     orientations=list(orientations) or None,
                     positions=_positions(model, layout, batch),
                     seconds=time.perf_counter() - start)
    return data


def _positions(model, layout, batch: int) -> int:
    """Decoder steps times tiles, as :func:`imgtx.codec.coder.code_tiles` runs them."""
    coded = layout.coded if layout.coded.dim() == 2 else layout.coded.any(-1)
    total = 0
    for start in range(0, coded.shape[0], batch):
        part = coded[start : start + batch]
        if part.any():
            total += (int(part.nonzero()[:, 1].max()) + 1) * part.shape[0]
    return total


def read_header(data: bytes) -> Header:
    """The header of an .itx file."""
    return unpack(data)[0]


def load_model(name: str, device: str = "cpu"):
    """An :class:`~imgtx.model.ImageTransformer` from a directory or Hub id."""
    from imgtx.model import ImageTransformer

    return ImageTransformer.from_pretrained(name, device=device)


def decompress(data: bytes, model=None, *, stats: dict | None = None,
               progress: bool = False) -> PIL.Image.Image:
    """The image of an .itx file, as a PIL image (mode RGB, or L for greyscale).

    ``model``: the model it was made with (loaded from the name in the header when None).
    Raises :class:`CodecError` for a damaged file, another model, or pixels whose CRC-32 does
    not match (never returns a wrong image). ``progress``: a progress bar on stderr (decoded
    positions)."""
    header, words = unpack(data)
    if model is None:
        if not header.name:
            raise CodecError("the file does not name its model; pass the model (--model)")
        model = load_model(header.name)
    _check_model(model)
    model = model.eval().cpu()
    if fingerprint(model) != header.model or model.config.image_size != header.tile:
        made_with = f" ({header.name})" if header.name else ""
        raise CodecError(f"the file was made with another model{made_with}: its fingerprint "
                         f"{header.model.hex()} does not match this model's "
                         f"{fingerprint(model).hex()}; pass the right one with --model")
    if header.width * header.height > MAX_PIXELS:
        raise CodecError(f"the file is damaged (it claims {header.width}x{header.height} pixels)")
    start = time.perf_counter()
    size = header.tile
    dmol = model.config.likelihood == "dmol"
    if header.scales and not dmol:
        raise CodecError("the file is damaged (it shifts log-scales, and its model has none)")
    adapter = None
    if header.adapter:
        count = 4 + 4 * model.config.num_mixtures if dmol else 0
        if len(header.adapter) != count:
            raise CodecError(f"the file is damaged (an adapter of {len(header.adapter)} numbers; "
                             f"this model's has {count})")
        adapter = adapter_values(header.adapter)
    transform = Transform.from_code(header.transform)
    height, width = transform.size(header.height, header.width)
    _, sizes = split_tiles(np.zeros((height, width, 3), np.uint8), size)
    layout = tile_layout(model.config, sizes, header.one_channel)
    if header.orientations and (len(header.orientations) != len(sizes) or any(
            o and (h, w) != (size, size) for o, (h, w) in zip(header.orientations, sizes))):
        raise CodecError(f"the file is damaged (orientations for {len(header.orientations)} "
                         f"tiles; the image has {len(sizes)}, or an edge tile is turned)")
    try:
        with one_thread(), tqdm(total=_positions(model, layout, header.batch), desc="decode",
                                unit="pos", disable=not progress, leave=False) as bar:
            values, _ = code_tiles(
                model, layout, RangeSource(words), batch=header.batch,
                log_scale_offsets=scale_offsets(header.scales) if header.scales else None,
                adapter=adapter, bar=bar)
    except (ValueError, RuntimeError, AssertionError) as error:  # a stream that ends early
        raise CodecError(f"the coded pixels are damaged ({error})") from None
    pixels = join_tiles(_from_model_order(model, values), height, width)
    if header.orientations:
        pixels = orient_tiles(pixels, size, header.orientations, undo=True)
    pixels = transform.undo(pixels)
    stored = pixels[:, :, 0] if header.grey else pixels
    if pixel_crc(stored) != header.pixels:
        other = "" if header.build == build_tag() else (
            "; it was made on another float build (torch version or CPU kind)")
        raise CodecError("the decoded pixels fail the file's CRC-32: the file is damaged or "
                         "truncated, or this model computes different probabilities here"
                         f"{other}")
    if stats is not None:
        stats.update(seconds=time.perf_counter() - start,
                     positions=_positions(model, layout, header.batch))
    return PIL.Image.fromarray(stored, mode="L" if header.grey else "RGB")
