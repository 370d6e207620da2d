"""Weights: checking a safetensors file before it is read, and strict state-dict loading.

safetensors format (``huggingface/safetensors``, README "Format"): an 8-byte little-endian
unsigned header length ``N``, then ``N`` bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, then the tensor data, with offsets
relative to the start of the data. :func:`check_safetensors_file` verifies all of that against the
file's size with a few small reads, so a file whose header declares more than it holds is refused
before any large allocation.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import constants
from safetensors.torch import load_file
from torch import nn

from imgtx.hub.errors import CheckpointMismatchError, CorruptCheckpointError

__all__ = ["check_safetensors_file", "load_safetensors", "load_state_dict_checked",
           "upgrade_state_dict",
           "parameter_count"]

MAX_LISTED = 10  # names shown per category in a mismatch message
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own header limit
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip  (sub-byte types such as F4 are left to the library's own check)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``; tied parameters count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_safetensors_file(path: str | Path) -> None:
    """Raise :class:`CorruptCheckpointError` unless ``path`` is a complete safetensors file.

    Checks, reading only the header: the 8-byte length fits in the file (and under the library's
    100 MB header limit), the header is a JSON object of tensor entries, each tensor's byte range
    matches its dtype and shape, and the largest ``data_offsets`` end lies within the file.
    """
    size = os.path.getsize(path)
    fix = ("the file is truncated or corrupt: delete it and download it again "
           "(force_download=True), or re-save the model with save_pretrained")

    def refuse(problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{path} is not a valid safetensors file: {problem}; {fix}")

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise refuse(f"it has {size} bytes, fewer than the 8-byte header length")
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > min(size - 8, MAX_HEADER_BYTES):
            raise refuse(f"its header length says {header_bytes} bytes but the file has "
                         f"{size - 8} bytes after it")
        try:
            header = json.loads(f.read(header_bytes))
        except (UnicodeDecodeError, ValueError) as error:
            raise refuse(f"its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise refuse("its header is not a JSON object")
    data_bytes = size - 8 - header_bytes
    declared_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = [int(v) for v in entry["shape"]]
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError) as error:
            raise refuse(f"tensor {name!r} has a malformed header entry ({error})") from error
        if not 0 <= begin <= end or min(shape, default=0) < 0:
            raise refuse(f"tensor {name!r} has offsets {[begin, end]} and shape {shape}")
        if dtype in DTYPE_BYTES and (end - begin) != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise refuse(f"tensor {name!r} ({dtype}, shape {shape}) needs "
                         f"{math.prod(shape) * DTYPE_BYTES[dtype]} bytes but its offsets span "
                         f"{end - begin}")
        declared_end = max(declared_end, end)
    if declared_end > data_bytes:
        raise refuse(f"its header declares {declared_end} bytes of tensor data but the file "
                     f"holds {data_bytes}")


def load_safetensors(path: str | Path,
                     device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """:func:`check_safetensors_file`, then ``safetensors.torch.load_file`` onto ``device``."""
    check_safetensors_file(path)
    return load_file(path, device=str(device))


def upgrade_state_dict(model: nn.Module,
                       state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with the key names of older imgtx checkpoints brought up to date:
    every submodule of ``model`` that defines ``upgrade_state_dict(state_dict, prefix)`` renames
    its own keys in place (e.g. :class:`imgtx.transformer.TransformerLayer`: ``norms.0`` ->
    ``attn_norm``, ``self_attn`` -> ``attn``)."""
    upgraded = dict(state_dict)
    for name, module in model.named_modules():
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            upgrade(upgraded, f"{name}." if name else "")
    return upgraded


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                            strict: bool = True, source: str = "checkpoint") -> None:
    """Copy ``state_dict`` into ``model``, checking names and shapes first.

    With ``strict=True`` any missing, unexpected or wrongly shaped tensor raises
    :class:`CheckpointMismatchError` before anything is copied. With ``strict=False`` the matching
    tensors are loaded and a warning lists the rest. Tied tensors that safetensors stored under
    one name only count as present. Keys of older imgtx versions are renamed first
    (:func:`upgrade_state_dict`).
    """
    state_dict = upgrade_state_dict(model, state_dict)
    own = model.state_dict()
    present = set(state_dict)
    # safetensors keeps one name per shared storage; its aliases are satisfied by that one.
    alias_of: dict[tuple, set[str]] = {}
    for name, tensor in own.items():
        if tensor.numel() == 0 or tensor.device.type == "meta":
            continue  # no storage to share
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tuple(tensor.stride()))
        alias_of.setdefault(key, set()).add(name)
    tied_ok = {name for group in alias_of.values() if len(group) > 1 and group & present
               for name in group}
    missing = sorted(set(own) - present - tied_ok)
    unexpected = sorted(present - set(own))
    mismatched = sorted(
        f"{name}: checkpoint {tuple(state_dict[name].shape)} vs model {tuple(own[name].shape)}"
        for name in present & set(own) if state_dict[name].shape != own[name].shape)
    if missing or unexpected or mismatched:
        message = _mismatch_message(type(model).__name__, source, missing, unexpected, mismatched)
        if strict:
            raise CheckpointMismatchError(
                message + " Pass strict=False to load only the matching tensors (not recommended).",
                missing, unexpected, mismatched)
        warnings.warn(message + " Loaded the matching tensors only (strict=False).", stacklevel=3)
    bad = {m.split(":")[0] for m in mismatched}
    loadable = {k: v for k, v in state_dict.items() if k in own and k not in bad}
    model.load_state_dict(loadable, strict=False)


def _mismatch_message(model_name: str, source: str, missing: list[str], unexpected: list[str],
                      mismatched: list[str]) -> str:
    lines = [f"{source} does not match {model_name}:"]
    for label, names in (("missing from the checkpoint", missing),
                         ("unexpected in the checkpoint", unexpected),
                         ("shape mismatches", mismatched)):
        if names:
            more = f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
            lines.append(f"  {label} ({len(names)}): {', '.join(names[:MAX_LISTED])}{more}")
    lines.append("This checkpoint was saved from a different configuration or model class; "
                 f"check that its {constants.CONFIG_NAME} matches the weights and that you load "
                 "it with the class that saved it.")
    return "\n".join(lines)
