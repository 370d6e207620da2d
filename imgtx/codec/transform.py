"""The encoder's choice of how to present an image to the model: turned, mirrored, its colour
channels reordered or its values inverted, whichever the model codes in the fewest bits.

An autoregressive model reads an image in one fixed order (rows top to bottom, left to right;
red, then green given red, then blue given both), so the same picture turned, mirrored or with
its channels in another order is a different sequence to it, and some cost fewer bits than
others: a gradient that runs down the image is predicted better once the rows above it are
known, a sunset codes better with its flattest channel first. Every :class:`Transform` is a
bijection on pixels:

* ``orientation`` 0-7: ``orientation % 4`` quarter turns counter-clockwise, then a left-right
  mirror when ``orientation >= 4`` (the dihedral group of the square);
* ``order`` 0-5: the coded image's channel ``c`` is the image's channel ``ORDERS[order][c]``;
* ``invert``: every value ``v`` becomes ``255 - v``.

The encoder scores candidates with teacher-forced forward passes, codes the cheapest, and
records it in the header (``Transform.code``, 0-95, in the choices field of
:mod:`imgtx.codec.format`, written only when something was chosen). The decoder decodes the
transformed image and undoes the transform. No probability changes, so the coded values keep
the model's exact likelihood. This is the encoder-side search of classical codecs (PNG's choice
of filter per row, JPEG XL's choice of colour transform and predictor per image) applied to the
choices a fixed model leaves free.

Two searches:

* :func:`search_all` scores all 96 transforms (16 for an image coded as one channel), and fits
  log-scale offsets (below) to the best 8: 104 forward passes. The default for images of at
  most :data:`FULL_SEARCH_TILES` tiles, where they cost about 1.5 times the coding itself.
* :func:`best_transform` scores the 12 colour choices (order x invert) as the image stands and
  the 8 orientations with its colours as they are, then the best orientation with the best
  colours: 20 forward passes at most. The default for larger images.

A large image is scored on ``max_tiles`` evenly spaced tile-sized regions, the same regions for
every candidate. Its tiles can then each be turned or mirrored once more
(:mod:`imgtx.codec.orient`).

For DMOL models the encoder also fits the model's sharpness to the image: one offset per channel
from ``SCALE_GRID`` added to every log-scale of that channel's logistics
(:func:`imgtx.likelihood.dmol_shift_log_scales`), chosen greedily r, then g, then b on the
transformed image's forward pass (:func:`best_scales`). This changes the coded pmfs, to another
member of the same exact, normalised DMOL family that both sides compute from the header: the
counterpart of the per-image statistics a classical codec fits and sends. A photo smoother or
noisier than the training photos gets narrower or wider logistics.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from imgtx.codec.coder import split_tiles, tile_count
from imgtx.likelihood import dmol_nll_per_channel, dmol_shift_log_scales, nats_to_bits

__all__ = ["ORDERS", "TRANSFORMS", "Transform", "IDENTITY", "SCALE_GRID", "SCALES",
           "FULL_SEARCH_TILES", "default_search", "scales_index", "scale_offsets", "coded_bits",
           "best_transform", "best_scales", "search_all"]

#: Channel orders: the coded image's channel c is the image's channel ``ORDERS[order][c]``.
ORDERS = list(itertools.permutations(range(3)))
#: Number of transforms (8 orientations x 6 channel orders x 2), one header byte.
TRANSFORMS = 8 * len(ORDERS) * 2


@dataclass(frozen=True)
class Transform:
    """One bijection on ``(H, W, 3)`` pixels (see the module docstring)."""

    orientation: int = 0
    order: int = 0
    invert: bool = False

    def __post_init__(self) -> None:
        if self.orientation not in range(8) or self.order not in range(len(ORDERS)):
            raise ValueError(f"no such transform: orientation {self.orientation} (0-7), "
                             f"channel order {self.order} (0-{len(ORDERS) - 1})")

    @property
    def code(self) -> int:
        """``orientation + 8 order + 48 invert``, 0 to 95; 0 is the identity."""
        return self.orientation + 8 * self.order + 48 * int(self.invert)

    @classmethod
    def from_code(cls, code: int) -> Transform:
        if code not in range(TRANSFORMS):
            raise ValueError(f"a transform code is 0 to {TRANSFORMS - 1}, got {code}")
        return cls(orientation=code % 8, order=code // 8 % len(ORDERS), invert=code >= 48)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> the transformed image (a contiguous copy)."""
        out = np.rot90(pixels, self.orientation % 4, axes=(0, 1))
        if self.orientation >= 4:
            out = out[:, ::-1]
        out = out[..., list(ORDERS[self.order])]
        return np.ascontiguousarray(255 - out if self.invert else out)

    def undo(self, pixels: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply`."""
        out = 255 - pixels if self.invert else pixels
        out = out[..., list(np.argsort(ORDERS[self.order]))]
        if self.orientation >= 4:
            out = out[:, ::-1]
        return np.ascontiguousarray(np.rot90(out, -(self.orientation % 4), axes=(0, 1)))

    def size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of an image of this size once transformed."""
        return (width, height) if self.orientation % 2 else (height, width)


IDENTITY = Transform()

#: Images of at most this many tiles get the full search (:func:`search_all`) by default.
FULL_SEARCH_TILES = 4

def default_search(height: int, width: int, tile: int) -> str:
    """The search ``compress(search="auto")`` runs on an image of this size: ``"full"`` for at
    most :data:`FULL_SEARCH_TILES` tiles, else ``"greedy"``."""
    return "full" if tile_count(height, width, tile) <= FULL_SEARCH_TILES else "greedy"


#: Transforms whose log-scale offsets :func:`search_all` fits (the best-scoring without them).
REFINE = 8

#: Log-scale offsets per channel (index 0 is none); a choice of three is one number below SCALES.
SCALE_GRID = (0.0, -0.1, -0.2, -0.3, -0.4, -0.6, 0.1, 0.2)
SCALES = len(SCALE_GRID) ** 3


def scales_index(grid_indices) -> int:
    """The scales choice of per-channel ``SCALE_GRID`` indices ``(r, g, b)``: ``sum_c i_c 8^c``
    (inverse of :func:`scale_offsets`)."""
    return sum(int(i) * len(SCALE_GRID) ** c for c, i in enumerate(grid_indices))


def scale_offsets(index: int) -> tuple[float, float, float]:
    """``(r, g, b)`` log-scale offsets of scales choice ``index`` (``sum_c i_c 8^c``)."""
    if index not in range(SCALES):
        raise ValueError(f"a scales choice is 0 to {SCALES - 1}, got {index}")
    n = len(SCALE_GRID)
    return tuple(SCALE_GRID[index // n**c % n] for c in range(3))


@torch.no_grad()
def coded_bits(model, tiles: np.ndarray, sizes: list[tuple[int, int]], one_channel: bool,
               batch: int = 64, scales: int = 0) -> np.ndarray:
    """The model's code length in bits of what the codec codes of each tile ``(T, S, S, 3)``
    uint8 (:func:`imgtx.codec.coder.split_tiles`): its image part ``sizes[i] = (h, w)`` (edge
    padding is not coded), red only when ``one_channel``. One teacher-forced forward pass per
    ``batch`` tiles, in float32; the coded figure, computed in float64 through the cached
    decoder, agrees to about 1e-5 relative. ``scales``: a DMOL model's log-scale offsets
    (:func:`scale_offsets`). Returns ``(T,)``."""
    return _channel_bits(model, tiles, sizes, one_channel, batch, [scales])[0].sum(-1)


def _mask(size: int, sizes: list[tuple[int, int]], one_channel: bool) -> torch.Tensor:
    """``(T, S*S, 3)``: the coded values of each tile, pixel-major raster order."""
    rows, cols = torch.arange(size)[:, None], torch.arange(size)[None, :]
    inside = torch.stack([(rows < h) & (cols < w) for h, w in sizes]).flatten(1)  # (T, S*S)
    return inside[:, :, None] & torch.tensor([True, not one_channel, not one_channel])


@torch.no_grad()
def _channel_bits(model, tiles, sizes, one_channel, batch, choices, outputs=None) -> np.ndarray:
    """Bits of the coded values per tile and channel ``(len(choices), T, 3)``, one forward pass
    per ``batch`` tiles shared by every scales choice in ``choices`` (or the head ``outputs``
    of :func:`_forward`, already computed). A choice is one scales index for every tile, or a
    ``(T,)`` array of one per tile."""
    mask = _mask(model.config.image_size, sizes, one_channel)
    if outputs is None:
        outputs = _forward(model, tiles, batch)
    table = torch.tensor([scale_offsets(i) for i in range(SCALES)])  # (SCALES, 3)
    offsets = [table[torch.as_tensor(np.broadcast_to(c, len(tiles)).astype(np.int64))]
               for c in choices]  # (T, 3) each
    out, start = [], 0
    for (images, head), here in zip(outputs, mask.split(batch)):
        part = slice(start, start + len(images))
        start += len(images)
        if model.config.likelihood != "dmol":
            if any(np.any(c) for c in choices):
                raise ValueError("log-scale offsets apply to DMOL models only")
            nats = model.nll_of_outputs(head, images).view(len(images), -1, 3)
            out.append((nats * here).sum(1).expand(len(choices), -1, -1))
            continue
        targets = model.targets(images)
        shape = (len(images),) + (1,) * (head.dim() - 2) + (1, 3)  # per tile, over its positions
        out.append(torch.stack([
            (dmol_nll_per_channel(dmol_shift_log_scales(head, shift[part].view(shape)), targets)
             * here).sum(1) for shift in offsets]))  # (choices, B, 3)
    return nats_to_bits(torch.cat(out, dim=1).double()).numpy()


@torch.no_grad()
def _forward(model, tiles: np.ndarray, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, head outputs)`` of each ``batch`` of tiles: one teacher-forced pass each."""
    out = []
    for start in range(0, len(tiles), batch):
        images = torch.from_numpy(tiles[start : start + batch]).permute(0, 3, 1, 2)
        out.append((images, model(images)))
    return out


def _regions(pixels: np.ndarray, size: int, max_tiles: int) -> list[np.ndarray] | None:
    """``max_tiles`` evenly spaced crops of at most ``size x size`` pixels, on the tile grid of
    ``pixels``, or None when the image has ``max_tiles`` tiles or fewer (score them all)."""
    height, width = pixels.shape[:2]
    rows, cols = -(-height // size), -(-width // size)
    if rows * cols <= max_tiles:
        return None
    # full tiles where there are any, so that every candidate scores the same content
    full_rows, full_cols = max(height // size, 1), max(width // size, 1)
    picks = np.unique(np.linspace(0, full_rows * full_cols - 1, max_tiles).round().astype(int))
    return [pixels[r * size : (r + 1) * size, c * size : (c + 1) * size]
            for r, c in (divmod(int(i), full_cols) for i in picks)]


def _sample(model, pixels: np.ndarray, transform: Transform, max_tiles: int):
    """Tiles (and their image parts) on which to score ``transform`` of ``pixels``: every tile
    of the transformed image when it has at most ``max_tiles``; otherwise the same evenly spaced
    regions of ``pixels`` for every transform, each transformed, so that candidates are scored
    on the same content (turning a whole image moves its tile grid)."""
    size = model.config.image_size
    regions = _regions(pixels, size, max_tiles)
    if regions is None:
        return split_tiles(transform.apply(pixels), size)
    tiles, sizes = zip(*(split_tiles(transform.apply(region), size) for region in regions))
    return np.concatenate(tiles), [part for parts in sizes for part in parts]


def _score(model, pixels: np.ndarray, transforms: list[Transform], one_channel: bool,
           batch: int, max_tiles: int) -> list[float]:
    """Bits per coded subpixel of each transform (:func:`_sample`'s tiles), batched across
    transforms."""
    tiles, sizes, owner = [], [], []
    for index, transform in enumerate(transforms):
        these, their_sizes = _sample(model, pixels, transform, max_tiles)
        tiles.append(these)
        sizes += their_sizes
        owner += [index] * len(these)
    bits = coded_bits(model, np.concatenate(tiles), sizes, one_channel, batch)
    channels = 1 if one_channel else 3
    subpixels = np.array([h * w * channels for h, w in sizes], dtype=np.float64)
    owner = np.array(owner)
    return [float(bits[owner == i].sum() / subpixels[owner == i].sum())
            for i in range(len(transforms))]


def best_transform(model, pixels: np.ndarray, one_channel: bool, batch: int = 64,
                   max_tiles: int = 16, turns: bool = True) -> tuple[Transform, dict[int, float]]:
    """The transform whose coded values cost the model the fewest bits per subpixel among the
    candidates searched (the module docstring), and every candidate's score by
    :attr:`Transform.code`. Ties go to the earlier candidate, so the identity wins them. An image
    whose channels are equal (coded as one channel) only tries orientations and inversion.
    ``turns=False`` tries the colour choices alone (for an image whose tiles are each turned
    afterwards, :func:`tile_orientations`)."""
    orders = [0] if one_channel else range(len(ORDERS))
    colours = [Transform(order=o, invert=i) for i in (False, True) for o in orders]
    turned = [Transform(orientation=k) for k in range(1, 8)] if turns else []
    candidates = colours + turned
    scores = dict(zip([t.code for t in candidates],
                      _score(model, pixels, candidates, one_channel, batch, max_tiles)))
    colour = min(colours, key=lambda t: scores[t.code])
    turn = min([IDENTITY, *turned], key=lambda t: scores[t.code])
    both = Transform(orientation=turn.orientation, order=colour.order, invert=colour.invert)
    if both.code not in scores:
        scores[both.code] = _score(model, pixels, [both], one_channel, batch, max_tiles)[0]
    best = min(scores, key=lambda code: (scores[code], code != 0))
    return Transform.from_code(best), scores


def best_scales(model, pixels: np.ndarray, one_channel: bool, batch: int = 64,
                max_tiles: int = 16) -> tuple[int, float]:
    """A DMOL model's log-scale offsets for ``pixels`` (already transformed): for r, then g,
    then b, the offset of ``SCALE_GRID`` that codes that channel in the fewest bits given the
    offsets chosen before it (a channel's posterior over components depends on the earlier
    channels' scales). One forward pass on at most ``max_tiles`` evenly spaced tiles, shared by
    every choice tried. Returns the choice (index 0, no offsets, among equals) and its bits per
    coded subpixel."""
    tiles, sizes = _sample(model, pixels, IDENTITY, max_tiles)
    index, bits = _fit_scales(model, tiles, sizes, one_channel, batch,
                              _forward(model, tiles, batch))
    return int(index[0]), float(bits[0])


def _fit_scales(model, tiles, sizes, one_channel, batch, outputs, owner=None
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_scales` on tiles whose head ``outputs`` (:func:`_forward`) are computed, for
    each group of tiles ``owner`` ``(T,)`` (0 to G-1; all one group when None) separately.
    Returns each group's ``(G,)`` choice and bits per coded subpixel."""
    owner = np.zeros(len(tiles), dtype=int) if owner is None else np.asarray(owner)
    groups = int(owner.max()) + 1
    chosen = np.zeros((groups, 3), dtype=int)  # SCALE_GRID indices per group and channel
    for c in range(1 if one_channel else 3):
        choices = []
        for g in range(len(SCALE_GRID)):
            trial = chosen.copy()
            trial[:, c] = g
            choices.append(np.array([scales_index(row) for row in trial])[owner])
        bits = _channel_bits(model, tiles, sizes, one_channel, batch, choices, outputs)
        per_group = np.stack([np.bincount(owner, b[:, c], groups) for b in bits])  # (8, G)
        chosen[:, c] = per_group.argmin(0)  # the first (no offset) among equals
    index = np.array([scales_index(row) for row in chosen])
    total = _channel_bits(model, tiles, sizes, one_channel, batch, [index[owner]], outputs)
    subpixels = np.array([h * w for h, w in sizes]) * (1 if one_channel else 3)
    return index, np.bincount(owner, total[0].sum(-1), groups) / np.bincount(owner, subpixels,
                                                                              groups)


@torch.no_grad()
def search_all(model, pixels: np.ndarray, one_channel: bool, scales: int | str = "auto",
               batch: int = 64, max_tiles: int = 16) -> tuple[Transform, int, dict[int, float]]:
    """Every transform of ``pixels`` (all 96; the 16 without channel reordering when the image
    is coded as one channel), then, when ``scales`` is ``"auto"`` (DMOL models), log-scale
    offsets fitted as by :func:`best_scales` to each of the ``REFINE`` transforms that score
    best without them; else every transform with the scales choice ``scales``. One forward pass
    per transform, batched across transforms, and one more per refined transform.

    Returns ``(transform, scales choice, scores)``: the pair that costs the fewest bits per
    coded subpixel (the earlier code, so the identity, among equals), and each transform's score
    by :attr:`Transform.code` (with its fitted offsets for the refined ones). On held-out photo
    crops, fitting offsets to the best 8 transforms scores within about 0.01% of fitting them to all
    96 at half the cost, and the search codes 0.3-0.7% fewer bits than :func:`best_transform`."""
    orders = [0] if one_channel else range(len(ORDERS))
    candidates = [Transform(k, o, i) for i in (False, True) for o in orders for k in range(8)]
    samples = [_sample(model, pixels, t, max_tiles) for t in candidates]
    per = len(samples[0][0])  # tiles per candidate: the same for every transform
    fixed = 0 if scales == "auto" else int(scales)
    scores = np.concatenate([_group_bits(model, samples[start : start + max(1, batch // per)],
                                         one_channel, batch, fixed)
                             for start in range(0, len(candidates), max(1, batch // per))])
    choices = np.full(len(candidates), fixed)
    if scales == "auto" and model.config.likelihood == "dmol":
        top = np.argsort(scores, kind="stable")[:REFINE]
        tiles = np.concatenate([samples[i][0] for i in top])
        sizes = [size for i in top for size in samples[i][1]]
        choices[top], scores[top] = _fit_scales(model, tiles, sizes, one_channel, batch,
                                                _forward(model, tiles, batch),
                                                np.repeat(np.arange(len(top)), per))
    best = int(np.argmin(scores))  # the first among equals
    return candidates[best], int(choices[best]), {
        t.code: float(score) for t, score in zip(candidates, scores)}


def _group_bits(model, samples, one_channel: bool, batch: int, scales: int) -> np.ndarray:
    """Bits per coded subpixel of each ``(tiles, sizes)`` of ``samples`` with the scales choice
    ``scales``, in forward passes of at least ``batch`` tiles."""
    tiles = np.concatenate([tiles for tiles, _ in samples])
    sizes = [size for _, their in samples for size in their]
    owner = np.repeat(np.arange(len(samples)), [len(tiles) for tiles, _ in samples])
    bits = _channel_bits(model, tiles, sizes, one_channel, max(batch, len(tiles)),
                         [scales])[0].sum(-1)
    subpixels = np.array([h * w for h, w in sizes]) * (1 if one_channel else 3)
    return np.bincount(owner, bits, len(samples)) / np.bincount(owner, subpixels, len(samples))

