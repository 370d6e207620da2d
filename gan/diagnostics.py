"""Residual norm-ratio diagnostics (Xu et al. 2021, arXiv 2110.13107, the residual analysis).

For every sub-layer of every transformer layer, ``||f(x)|| / ||x||``: the norm of the residual
branch's output over the norm of the shortcut it is added to. A ratio far below 1 means the
shortcut dominates the information flow and the sub-layer (attention or MLP) is effectively
bypassed; the paper found exactly this in transformer discriminators.

:class:`imgtx.transformer.TransformerLayer` measures the ratios itself when its ``record_ratios``
attribute is set; this module switches that on for a whole model, collects
``{"<layer name>.attn": r, "<layer name>.ffn": r}`` after a forward, keeps a history over training
steps and plots one curve per layer (PNG, drawn with PIL).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from torch import nn

from imgtx.transformer import TransformerLayer

__all__ = ["set_ratio_recording", "recording_ratios", "collect_ratios", "RatioHistory",
           "plot_ratio_curves"]


def _layers(model: nn.Module) -> Iterator[tuple[str, TransformerLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, TransformerLayer):
            yield name.removesuffix(".layer"), module


def set_ratio_recording(model: nn.Module, enabled: bool = True) -> int:
    """Switch ratio recording on (or off) for every transformer layer of ``model``; returns how
    many layers there are."""
    count = 0
    for _, layer in _layers(model):
        layer.record_ratios = enabled
        count += 1
    return count


@contextmanager
def recording_ratios(model: nn.Module) -> Iterator[nn.Module]:
    """``with recording_ratios(D): D(x); ratios = collect_ratios(D)`` - recording is switched
    off again on exit."""
    set_ratio_recording(model, True)
    try:
        yield model
    finally:
        set_ratio_recording(model, False)


def collect_ratios(model: nn.Module) -> dict[str, float]:
    """``{"<layer>.<sublayer>": ||branch|| / ||shortcut||}`` from each layer's latest forward
    (the last call wins when a model ran several times, e.g. on real then fake images)."""
    ratios = {}
    for name, layer in _layers(model):
        for sublayer, value in (getattr(layer, "last_ratios", None) or {}).items():
            ratios[f"{name}.{sublayer}"] = float(value)
    return ratios


class RatioHistory:
    """Ratios over training steps: ``record(step, collect_ratios(model))`` each logging tick."""

    def __init__(self) -> None:
        self.curves: dict[str, list[tuple[int, float]]] = {}

    def record(self, step: int, ratios: Mapping[str, float]) -> None:
        for key, value in ratios.items():
            self.curves.setdefault(key, []).append((int(step), float(value)))

    def save(self, path: str | Path) -> None:
        """Write the curves as JSON ``{key: [[step, ratio], ...]}``."""
        Path(path).write_text(json.dumps(self.curves, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> RatioHistory:
        history = cls()
        history.curves = {k: [(int(s), float(v)) for s, v in points]
                          for k, points in json.loads(Path(path).read_text()).items()}
        return history

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Save the per-layer curves as a PNG (see :func:`plot_ratio_curves`)."""
        return plot_ratio_curves(self.curves, path, title)


# --------------------------------------------------------------------------------------------
# Plotting with PIL: one panel per sub-layer kind, log10 y axis, one colour per layer
# --------------------------------------------------------------------------------------------

PANEL_W, PANEL_H, MARGIN, LEGEND_W = 420, 300, 56, 230


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def _colour(i: int, n: int) -> tuple[int, int, int]:
    """Blue (first layer) through green to red (last layer)."""
    t = i / max(n - 1, 1)
    return (int(255 * min(1, 2 * t)), int(200 * (1 - abs(2 * t - 1))), int(255 * min(1, 2 - 2 * t)))


def plot_ratio_curves(curves: Mapping[str, list[tuple[int, float]]], path: str | Path,
                      title: str = "") -> Path:
    """Draw ``{"<layer>.<sublayer>": [(step, ratio), ...]}`` to a PNG: a panel per sub-layer
    kind (attn, ffn), one line per layer coloured by depth, the ratio on a log10 axis with a
    dashed line at 1 (branch and shortcut equally strong)."""
    kinds = sorted({key.rsplit(".", 1)[1] for key in curves})
    layers = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in curves))
    values = [v for points in curves.values() for _, v in points if v > 0 and math.isfinite(v)]
    steps = [s for points in curves.values() for s, _ in points]
    if not values:
        raise ValueError("no ratios to plot: record some with collect_ratios first")
    lo = math.floor(math.log10(min(values)))
    hi = max(math.ceil(math.log10(max(values))), lo + 1)
    s0, s1 = min(steps), max(max(steps), min(steps) + 1)
    width = len(kinds) * (PANEL_W + MARGIN) + MARGIN + LEGEND_W
    height = PANEL_H + 2 * MARGIN + 20
    image = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(image), _font()
    draw.text((MARGIN, 8), title or "residual norm ratio ||f(x)|| / ||x||", fill="black",
              font=_font(14))
    top = MARGIN + 10
    for k, kind in enumerate(kinds):
        left = MARGIN + k * (PANEL_W + MARGIN)

        def xy(step: float, value: float, left: int = left) -> tuple[float, float]:
            x = left + (step - s0) / (s1 - s0) * PANEL_W
            y = top + (hi - math.log10(value)) / (hi - lo) * PANEL_H
            return x, y

        draw.rectangle([left, top, left + PANEL_W, top + PANEL_H], outline="black")
        for decade in range(lo, hi + 1):
            for mantissa in (1, 2, 5):
                value = mantissa * 10.0**decade
                if value > 10.0**hi:
                    break
                _, y = xy(s0, value)
                draw.line([left, y, left + PANEL_W, y], fill=(225, 225, 225))
                if mantissa == 1 or hi - lo <= 2:  # label the 2x and 5x lines on short axes
                    draw.text((left - 50, y - 7), f"{value:g}", fill="black", font=font)
        if lo <= 0 <= hi:
            _, y = xy(s0, 1.0)
            for x in range(left, left + PANEL_W, 8):
                draw.line([x, y, x + 4, y], fill="black")
        for tick in (s0, (s0 + s1) // 2, s1):
            x, _ = xy(tick, 10.0**lo)
            draw.text((x - 12, top + PANEL_H + 4), str(tick), fill="black", font=font)
        draw.text((left + PANEL_W // 2 - 20, top + PANEL_H + 20), f"step - {kind}", fill="black",
                  font=font)
        for i, layer in enumerate(layers):
            points = [xy(s, v) for s, v in curves.get(f"{layer}.{kind}", [])
                      if v > 0 and math.isfinite(v)]
            if len(points) == 1:
                x, y = points[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_colour(i, len(layers)))
            elif points:
                draw.line(points, fill=_colour(i, len(layers)), width=2)
    legend_left = width - LEGEND_W + 10
    row = max(10, min(16, (height - top) // max(len(layers), 1)))
    for i, layer in enumerate(layers):
        y = top + i * row
        draw.line([legend_left, y + 6, legend_left + 18, y + 6], fill=_colour(i, len(layers)),
                  width=3)
        draw.text((legend_left + 24, y), layer, fill="black", font=_font(min(11, row - 1)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
