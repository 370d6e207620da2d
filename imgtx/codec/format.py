"""The ``.itx`` file format: a compact header, then the range coder's words.

Layout (integers big-endian; ``varint`` is LEB128, 7 bits a byte, low group first)::

    magic        2 bytes  b"IX"
    version      1 byte   high 4 bits: FORMAT_VERSION; low 4 bits: flags
                          bit 0: greyscale (restored as mode "L"); bit 1: a model name follows;
                          bit 2: an RGB image whose three channels are equal (coded as grey,
                          restored as RGB); bit 3: the encoder's choices follow
    width        varint
    height       varint
    tile         varint   the model's image size: tiles are tile x tile pixels
    batch        varint   tiles coded together in one batch of the cached decoder
    model        4 bytes  fingerprint of the model's config and weights (:func:`fingerprint`)
    build        1 byte   tag of the float build (torch version, CPU capability)
    pixels       4 bytes  CRC-32 of the image's bytes (H x W x C, row-major, uint8)
    [choices]    varint   when flag bit 3 is set:
                          ``transform + 96 * (scales + 512 * (adapted + 2 * oriented))``, the
                          encoder's choices (:mod:`imgtx.codec.transform`): the image was
                          coded turned, mirrored, with its channels reordered or inverted
                          (``Transform.code``), with the DMOL log-scale offsets
                          ``scale_offsets(scales)``, when ``adapted`` is 1 with a DMOL adapter
                          (:mod:`imgtx.codec.adapt`) and, when ``oriented`` is 1, with each
                          tile turned once more; absent when all are 0
    [adapter]    varint length + that many int8 codes, when ``adapted`` is 1
    [orient]     varint count of tiles + one 4-bit orientation (0-7) per tile, two a byte
                 (first in the high half), when ``oriented`` is 1
    [name]       varint length + UTF-8: the model's Hub id or path, when flag bit 1 is set
    payload      the range coder's 32-bit words, big-endian; trailing zero bytes of the last
                 word are dropped (the reader restores them)

A 32x32 image's header is 16 bytes (0.04 bits/dim): on small images the header is a visible part
of the file, so it holds only what decoding needs and what checks it. What must match between
encoder and decoder for the probabilities to agree bit for bit: the model (``model``), the tile
size and batch layout (``tile``, ``batch``) and the float build (``build``). A different build
usually still computes the same floats; the decoder tries. The pixels' CRC-32 is the one check
of everything: a damaged or truncated payload, or probabilities computed differently, decode to
other pixels and are refused, never returned.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from imgtx.codec.transform import SCALES, TRANSFORMS
from imgtx.errors import UserError

__all__ = ["MAGIC", "FORMAT_VERSION", "Header", "CodecError", "fingerprint", "build_tag",
           "pack", "unpack", "pixel_crc", "choices_bytes"]

MAGIC = b"IX"
FORMAT_VERSION = 1
GREY, NAMED, EQUAL, CHOSEN = 1, 2, 4, 8  # flag bits


class CodecError(UserError):
    """A file that cannot be decoded here: not an .itx file, damaged, or made with another
    model or image than the one at hand."""


@dataclass(frozen=True)
class Header:
    """Everything an .itx file says besides the coded pixels."""

    width: int
    height: int
    grey: bool
    tile: int
    batch: int
    model: bytes  # 4-byte fingerprint
    build: bytes  # 1-byte build tag
    pixels: int  # CRC-32 of the pixel bytes
    name: str | None = None
    equal: bool = False  # RGB with r = g = b everywhere: only r is coded
    transform: int = 0  # imgtx.codec.transform: the coded image is Transform.from_code(it)
    scales: int = 0  # imgtx.codec.transform.scale_offsets(scales) shift the DMOL log-scales
    adapter: bytes = b""  # int8 codes of a DMOL adapter (imgtx.codec.adapt), or none
    orientations: bytes = b""  # each tile's extra orientation 0-7 (one byte each), or none

    @property
    def one_channel(self) -> bool:
        """Only the red channel is coded (green and blue copy it)."""
        return self.grey or self.equal


def fingerprint(model: torch.nn.Module) -> bytes:
    """4 bytes identifying a model: SHA-256 of its config (JSON, sorted keys) and of every
    tensor of its state dict (names, shapes, dtypes and bytes, in name order)."""
    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    digest.update(json.dumps(asdict(model.config), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.digest()[:4]


def build_tag() -> bytes:
    """1 byte naming the float build probabilities are computed with: torch's version and the
    CPU instruction set its kernels use."""
    capability = torch.backends.cpu.get_cpu_capability()
    return zlib.crc32(f"{torch.__version__}|{capability}".encode()).to_bytes(4, "big")[:1]


def pixel_crc(pixels: np.ndarray) -> int:
    """CRC-32 of a ``(H, W)`` or ``(H, W, 3)`` uint8 array's bytes, row-major."""
    return zlib.crc32(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, count: int) -> bytes:
        if self.offset + count > len(self.data):
            raise CodecError("the file is truncated (its header is incomplete)")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
            if shift > 35:
                raise CodecError("the file is damaged (a header number is too long)")


def _choices(transform: int, scales: int, adapter: bytes, orientations: bytes) -> int:
    return transform + TRANSFORMS * (scales + SCALES * (bool(adapter) + 2 * bool(orientations)))


def _nibbles(values: bytes) -> bytes:
    """Two values 0-15 a byte, the first in the high half (an odd count ends in a zero half)."""
    padded = bytes(values) + b"\0" * (len(values) % 2)
    return bytes(padded[i] << 4 | padded[i + 1] for i in range(0, len(padded), 2))


def choices_bytes(transform: int, scales: int, adapter: bytes = b"",
                  orientations: bytes = b"") -> int:
    """Header bytes the encoder's choices take (0 when none was made)."""
    if not (transform or scales or adapter or orientations):
        return 0
    extra = len(_varint(len(adapter))) + len(adapter) if adapter else 0
    if orientations:
        extra += len(_varint(len(orientations))) + len(_nibbles(orientations))
    return len(_varint(_choices(transform, scales, adapter, orientations))) + extra


def pack(header: Header, words: np.ndarray) -> bytes:
    """The file: ``header``, then the range coder's ``words`` (uint32)."""
    flags = (GREY if header.grey else 0) | (NAMED if header.name else 0) | \
        (EQUAL if header.equal else 0) | \
        (CHOSEN if header.transform or header.scales or header.adapter or
         header.orientations else 0)
    out = bytearray(MAGIC + bytes([FORMAT_VERSION << 4 | flags]))
    for number in (header.width, header.height, header.tile, header.batch):
        out += _varint(number)
    out += header.model + header.build + header.pixels.to_bytes(4, "big")
    if flags & CHOSEN:
        out += _varint(_choices(header.transform, header.scales, header.adapter,
                                header.orientations))
    if header.adapter:
        out += _varint(len(header.adapter)) + header.adapter
    if header.orientations:
        if max(header.orientations) > 7:
            raise ValueError("a tile orientation is 0 to 7")
        out += _varint(len(header.orientations)) + _nibbles(header.orientations)
    if header.name:
        name = header.name.encode()
        out += _varint(len(name)) + name
    payload = np.asarray(words, dtype=">u4").tobytes()
    if payload:  # the last word's trailing zero bytes carry nothing
        keep = len(payload.rstrip(b"\0"))
        payload = payload[: max(keep, len(payload) - 3)]
    return bytes(out + payload)


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse a file written by :func:`pack`: ``(header, words)``; raises :class:`CodecError` for
    anything that is not an .itx file of this version or whose header is incomplete."""
    if data[:2] != MAGIC:
        raise CodecError("not an imgtx compressed file (.itx): wrong magic bytes")
    reader = _Reader(data)
    reader.take(2)
    version, flags = divmod(reader.take(1)[0], 16)
    if version != FORMAT_VERSION:
        raise CodecError(f"format version {version} is not supported (this imgtx reads version "
                         f"{FORMAT_VERSION}); upgrade imgtx")
    width, height, tile, batch = (reader.varint() for _ in range(4))
    model, build = reader.take(4), reader.take(1)
    pixels = int.from_bytes(reader.take(4), "big")
    choices = reader.varint() if flags & CHOSEN else 0
    if flags & CHOSEN and not 1 <= choices < TRANSFORMS * SCALES * 4:
        raise CodecError(f"the file is damaged (encoder choices {choices} in its header)")
    scales, transform = divmod(choices, TRANSFORMS)
    extras, scales = divmod(scales, SCALES)
    oriented, adapted = divmod(extras, 2)
    adapter = reader.take(reader.varint()) if adapted else b""
    if adapted and not adapter:
        raise CodecError("the file is damaged (an empty adapter in its header)")
    orientations = b""
    if oriented:
        count = reader.varint()
        packed = reader.take((count + 1) // 2)
        orientations = bytes(half for byte in packed for half in (byte >> 4, byte & 15))[:count]
        if not orientations or max(orientations) > 7:
            raise CodecError("the file is damaged (tile orientations in its header)")
    name = None
    if flags & NAMED:
        name = reader.take(reader.varint()).decode("utf-8", errors="replace")
    if min(width, height, tile, batch) < 1:
        raise CodecError("the file is damaged (a zero size in its header)")
    payload = data[reader.offset :]
    payload += b"\0" * (-len(payload) % 4)
    words = np.frombuffer(payload, dtype=">u4").astype(np.uint32)
    header = Header(width=width, height=height, grey=bool(flags & GREY), tile=tile, batch=batch,
                    model=model, build=build, pixels=pixels, name=name,
                    equal=bool(flags & EQUAL), transform=transform, scales=scales,
                    adapter=adapter, orientations=orientations)
    return header, words
