"""Image sources: a map-style and a streaming torch data set over stored rows.

Both yield ``{"image": (3, S, S) uint8, "label": int}`` (label ``-1`` where the data has none).
Neither holds decoded images: a source keeps its rows (a tensor for the builtins, a packed file
index for image folders, a datasets ``Dataset`` -- memory-mapped Arrow -- or ``IterableDataset``
otherwise) and decodes each row when it is asked for, so memory does not grow with the number of
images served. A map-style source keeps one int64 row id per row (8 bytes an image); a streaming
shuffle of a Hub data set holds ``buffer_size`` undecoded rows.

Unreadable rows: with ``on_error="skip"`` a map-style source serves the next readable row in place
of an unreadable one, so ``len()`` stays the number of rows in the data; :meth:`ImageSource.scan`
drops unreadable rows up front. A streaming source simply skips them. ``skipped`` counts the
distinct unreadable rows met in this process (DataLoader worker processes keep their own counts).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from imgtx.data.decode import ImageDataError, decode_image, to_rgb_uint8

__all__ = ["ImageSource", "StreamingImageSource"]

Row = tuple[Any, int, str]  # (stored image, label, name for error messages)


class Rows(Protocol):
    """Stored rows: indexable (map-style), iterable (streaming) and reshufflable."""

    def __call__(self, index: int) -> Row: ...

    def __iter__(self) -> Iterator[Row]: ...

    def shuffled(self, seed: int, buffer_size: int) -> Rows: ...


class Converter:
    """Turns stored rows into ``{"image": (3, S, S) uint8, "label": int}`` and counts bad rows."""

    def __init__(self, image_size: int, resize: str, on_error: str) -> None:
        self.image_size, self.resize, self.on_error = image_size, resize, on_error
        self.bad_rows: set[Any] = set()

    def __call__(self, row: Row) -> dict[str, Any]:
        value, label, name = row
        if isinstance(value, torch.Tensor):  # already (3, S, S) uint8
            return {"image": value.clone(), "label": label}
        image = decode_image(value, name)
        return {"image": to_rgb_uint8(image, self.image_size, self.resize, name), "label": label}


class TensorRows:
    """Rows of an ``(N, 3, S, S)`` uint8 tensor and optional ``(N,)`` labels; picklable."""

    def __init__(
        self,
        images: torch.Tensor,
        name: str,
        order: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ):
        self.images, self.name, self.labels = images, name, labels
        self.order = torch.arange(len(images)) if order is None else order

    def __call__(self, index: int) -> Row:
        label = -1 if self.labels is None else int(self.labels[index])
        return self.images[index], label, f"{self.name}[{index}]"

    def __iter__(self) -> Iterator[Row]:
        worker = get_worker_info()  # each DataLoader worker streams its own share
        start, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for index in self.order[start::step].tolist():
            yield self(index)

    def shuffled(self, seed: int, buffer_size: int) -> TensorRows:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.images), generator=generator)
        return TensorRows(self.images, self.name, order, self.labels)


class HFRows:
    """Rows of a datasets ``Dataset`` or ``IterableDataset`` with raw (undecoded) images."""

    def __init__(self, ds: Any, image_column: str, label_column: str | None, name: str):
        self.ds, self.image_column, self.label_column = ds, image_column, label_column
        self.name = name

    def _row(self, record: dict[str, Any], index: int) -> Row:
        value = record[self.image_column]
        label = -1
        if self.label_column is not None and record[self.label_column] is not None:
            label = int(record[self.label_column])
        path = value.get("path") if isinstance(value, dict) else None
        return value, label, path or f"{self.name} row {index}"

    def __call__(self, index: int) -> Row:
        return self._row(self.ds[index], index)

    def __iter__(self) -> Iterator[Row]:
        for index, record in enumerate(self.ds):
            yield self._row(record, index)

    def shuffled(self, seed: int, buffer_size: int) -> HFRows:
        ds = self.ds.shuffle(seed=seed, buffer_size=buffer_size)
        return HFRows(ds, self.image_column, self.label_column, self.name)


class _Source:
    """Attributes shared by the map-style and the streaming source."""

    def __init__(
        self,
        rows: Rows,
        converter: Converter,
        class_names: list[str] | None = None,
        seed: int = 0,
        name: str = "",
    ) -> None:
        self._rows, self._convert = rows, converter
        self.image_size, self.class_names, self.seed, self.name = (
            converter.image_size, class_names, seed, name
        )  # fmt: skip
        self.num_classes = None if class_names is None else len(class_names)

    @property
    def skipped(self) -> int:
        """Distinct unreadable rows met so far in this process (``on_error="skip"``)."""
        return len(self._convert.bad_rows)


class ImageSource(_Source, Dataset):
    """Map-style data set of ``{"image": (3, S, S) uint8, "label": int}`` (label -1 if none).

    Attributes: ``image_size`` (S), ``num_classes`` and ``class_names`` (from a ClassLabel
    feature, else None), ``skipped``, ``seed`` (used by ``image_loader`` to shuffle) and
    ``name`` (the spec). With ``on_error="skip"`` an unreadable row is served as the next
    readable one; :meth:`scan` drops unreadable rows up front instead.
    """

    def __init__(self, rows: Rows, num_rows: int, *args: Any, **kwargs: Any):
        super().__init__(rows, *args, **kwargs)
        self._index = np.arange(num_rows)  # row ids still served

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self._index)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} images")
        for offset in range(count):
            row = int(self._index[(index + offset) % count])
            if row in self._convert.bad_rows:
                continue
            try:
                return self._convert(self._rows(row))
            except ImageDataError:
                if self._convert.on_error == "raise":
                    raise
                self._convert.bad_rows.add(row)
        raise ImageDataError(
            f"none of the {count} images of {self.name!r} could be decoded; check the files"
        )

    def scan(self) -> ImageSource:
        """Decode every row once and drop unreadable ones, so ``len()`` counts readable rows.

        With ``on_error="raise"`` the first unreadable row raises; if no row is readable,
        :class:`ImageDataError` says so. Returns ``self``.
        """
        for row in self._index.tolist():
            try:
                self._convert(self._rows(row))
            except ImageDataError:
                if self._convert.on_error == "raise":
                    raise
                self._convert.bad_rows.add(row)
        self._index = np.array(
            [r for r in self._index if r not in self._convert.bad_rows], dtype=np.int64
        )
        if len(self._index) == 0:
            raise ImageDataError(f"none of the images of {self.name!r} could be decoded; "
                                 "check the files")
        return self


class StreamingImageSource(_Source, IterableDataset):
    """Streaming data set yielding ``{"image": (3, S, S) uint8, "label": int}``.

    Unreadable rows raise, or with ``on_error="skip"`` are skipped and counted in ``skipped``.
    A pass that finds no rows, or no readable row, raises :class:`ImageDataError` (in the main
    process; a DataLoader worker may legitimately get no share). Same attributes as
    :class:`ImageSource`.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows = readable = 0
        for row in self._rows:
            rows += 1
            try:
                item = self._convert(row)
            except ImageDataError:
                if self._convert.on_error == "raise":
                    raise
                self._convert.bad_rows.add(row[2])
                continue
            readable += 1
            yield item
        if readable == 0 and get_worker_info() is None:
            what = "no images" if rows == 0 else f"none of its {rows} images could be decoded"
            raise ImageDataError(f"{self.name!r} streamed {what}; check the spec and the split")

    def shuffled(self, buffer_size: int = 10_000) -> StreamingImageSource:
        """A copy that streams in shuffled order (a buffer shuffle seeded by ``seed``)."""
        rows = self._rows.shuffled(self.seed, buffer_size)
        return StreamingImageSource(rows, self._convert, self.class_names, self.seed, self.name)


def make_source(
    rows: Rows,
    num_rows: int | None,
    converter: Converter,
    class_names: list[str] | None,
    seed: int,
    name: str,
) -> ImageSource | StreamingImageSource:
    """A map-style source when ``num_rows`` is known, else a streaming one."""
    if num_rows is None:
        return StreamingImageSource(rows, converter, class_names, seed, name)
    return ImageSource(rows, num_rows, converter, class_names, seed, name)
