"""``metrics.jsonl`` and its learning-curve picture ``metrics.png``.

Each evaluation of a run appends one JSON line (``step``, ``images_seen``, ``hours``, the
family's training and held-out figures, learning rates). :func:`plot_curves` draws every figure
other than the counters (step, images seen, kimg, hours) and learning rates against images
seen: with matplotlib where it is installed, else with Pillow (axes, ticks and a legend, no other
dependency).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["append_record", "read_records", "plot_curves", "curve_names"]

COUNTERS = ("step", "images_seen", "kimg", "hours")  # kimg: images_seen / 1000 (GAN runs)
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]


def append_record(path: str | Path, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path``."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (none if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve_names(records: list[dict]) -> list[str]:
    """The plotted figures: numeric fields other than the counters and learning rates."""
    names: list[str] = []
    for record in records:
        for key, value in record.items():
            if (key not in COUNTERS and not key.startswith("lr") and key not in names
                    and isinstance(value, (int, float)) and not isinstance(value, bool)):
                names.append(key)
    return names


def _series(records: list[dict], name: str) -> list[tuple[float, float]]:
    return [(float(r["images_seen"]), float(r[name])) for r in records
            if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]


def plot_curves(records: list[dict], path: str | Path) -> Path | None:
    """Draw each figure of ``records`` against images seen into the PNG ``path``; returns the
    path, or None when there is nothing to draw yet."""
    names = [n for n in curve_names(records) if _series(records, n)]
    if not names:
        return None
    path = Path(path)
    try:
        import matplotlib
    except ImportError:
        _plot_with_pillow(records, names, path)
        return path
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name in names:
        xs, ys = zip(*_series(records, name))
        axes.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
    axes.set_xlabel("images seen")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    if value and (abs(value) >= 1e5 or abs(value) < 1e-2):
        return f"{value:.0e}"
    return f"{value:g}"


def _plot_with_pillow(records: list[dict], names: list[str], path: Path) -> None:
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 640, 400, 60, 20, 20, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = {name: _series(records, name) for name in names}
    xs = [x for series in points.values() for x, _ in series]
    ys = [y for series in points.values() for _, y in series]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high == y_low:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    margin = 0.05 * (y_high - y_low)  # keep the extreme points off the frame
    y_low, y_high = y_low - margin, y_high + margin

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        u = left + (x - x_low) / (x_high - x_low) * (width - left - right)
        v = height - bottom - (y - y_low) / (y_high - y_low) * (height - top - bottom)
        return u, v

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for x in _ticks(x_low, x_high):
        u, _ = to_pixel(x, y_low)
        draw.line([u, height - bottom, u, height - bottom + 4], fill="black")
        draw.text((u - 10, height - bottom + 6), _label(x), fill="black")
    for y in _ticks(y_low, y_high):
        _, v = to_pixel(x_low, y)
        draw.line([left - 4, v, left, v], fill="black")
        draw.text((4, v - 5), _label(y), fill="black")
    draw.text((width // 2 - 30, height - 14), "images seen", fill="black")
    for i, name in enumerate(names):
        colour = COLOURS[i % len(COLOURS)]
        pixels = [to_pixel(x, y) for x, y in points[name]]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for u, v in pixels:
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=colour)
        draw.text((left + 8, top + 6 + 12 * i), name, fill=colour)
    image.save(path)
