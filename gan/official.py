"""Official TransGAN checkpoints as imgtx models (``imgtx gan convert-official``).

The official training script (VITA-Group/TransGAN@6b85440 ``train_derived.py``) saves with
``utils.save_checkpoint``, a ``torch.save`` of a dict: ``gen_state_dict``, ``avg_gen_state_dict``
(the EMA generator), ``dis_state_dict``, the optimiser states, ``epoch``, ``best_fid``,
``path_helper``, ``fixed_z`` and the model file names ``gen_model``/``dis_model``. ``test.py``
also loads a bare generator state dict. Networks trained with ``DistributedDataParallel`` name
every tensor ``module.<name>``.

The CIFAR-10 and STL-10 models (``models_search/ViT_custom_rp.py`` G,
``ViT_custom_scale2_rp_noise.py`` D) map one to one onto :class:`TransGANGenerator` and
:class:`TransGANDiscriminator`: the fused ``qkv`` projection splits into ``to_q`` and ``to_kv``,
the 1x1 ``deconv`` convolution becomes the ``to_rgb`` linear layer, and each relative position
index buffer is checked against imgtx's (it is computed, not stored, here). The mapping is strict:
a tensor of the checkpoint that nothing takes, or a parameter that nothing fills, is an error.

Shapes: D width of a block, N tokens, H heads, w window side.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import torch
from torch import nn

from imgtx.errors import UserError

__all__ = ["OFFICIAL_MODEL_FILES", "read_official_checkpoint", "generator_state_dict",
           "discriminator_state_dict", "models_from_official", "convert_official",
           "add_convert_parser"]

#: imgtx configs whose official models this module maps: (generator file, discriminator file).
OFFICIAL_MODEL_FILES = {"transgan-cifar10": ("ViT_custom_rp", "ViT_custom_scale2_rp_noise"),
                        "transgan-stl10": ("ViT_custom_rp", "ViT_custom_scale2_rp_noise")}

StateDict = dict[str, torch.Tensor]


def read_official_checkpoint(path: str | Path) -> dict:
    """The state dicts of an official checkpoint: ``{"ema": G, "generator": G | None,
    "discriminator": D | None, "names": (gen_model, dis_model) | None, "epoch": int | None}``
    (a bare state dict is the generator, read as ``ema``). Only tensors and plain containers
    are unpickled (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unknown type"
        raise UserError(f"{path} holds pickled objects besides tensors and plain containers "
                        f"({reason}); imgtx reads checkpoints with torch.load(weights_only=True) "
                        "only") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"{path} is not a readable torch checkpoint: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not a checkpoint dict or a "
                        "state dict")
    if "avg_gen_state_dict" in data or "gen_state_dict" in data:
        missing = [k for k in ("avg_gen_state_dict", "gen_state_dict", "dis_state_dict")
                   if k not in data]
        if missing:
            raise UserError(f"{path} is an official checkpoint without {', '.join(missing)}")
        names = (data.get("gen_model"), data.get("dis_model"))
        return {"ema": data["avg_gen_state_dict"], "generator": data["gen_state_dict"],
                "discriminator": data["dis_state_dict"],
                "names": names if all(isinstance(n, str) for n in names) else None,
                "epoch": data.get("epoch")}
    if data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"ema": data, "generator": None, "discriminator": None, "names": None,
                "epoch": None}
    raise UserError(f"{path} is neither an official TransGAN checkpoint (gen_state_dict, "
                    "avg_gen_state_dict, dis_state_dict, ...) nor a bare generator state dict; "
                    f"its keys: {', '.join(sorted(map(str, data))[:8])}")


class _Tensors:
    """The tensors of one official state dict, handed out by name exactly once."""

    def __init__(self, state: StateDict, what: str) -> None:
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise UserError(f"the official {what} state dict holds something besides tensors")
        if state and all(k.startswith("module.") for k in state):  # saved from DDP/DataParallel
            state = {k[len("module."):]: v for k, v in state.items()}
        self.state, self.what = dict(state), what

    def take(self, name: str) -> torch.Tensor:
        if name not in self.state:
            raise UserError(f"the official {self.what} lacks tensor {name!r}: the checkpoint "
                            "does not match this config (a different model file or depth?)")
        return self.state.pop(name)

    def finish(self) -> None:
        if self.state:
            extra = sorted(self.state)
            raise UserError(f"the official {self.what} has {len(extra)} tensor(s) this config "
                            f"does not use, e.g. {extra[0]!r}: the checkpoint does not match the "
                            "config (a different model file or depth?)")


def _relative_index(window: int) -> torch.Tensor:
    """The official ``relative_position_index`` ``(w^2, w^2)``: the (dy, dx) offset of two window
    tokens, shifted to start at 0, as ``dy * (2w - 1) + dx``."""
    y = torch.arange(window).repeat_interleave(window)
    x = torch.arange(window).repeat(window)
    return (y[:, None] - y[None, :] + window - 1) * (2 * window - 1) + x[:, None] - x[None, :] \
        + window - 1


def _block(src: _Tensors, old: str, new: str, out: StateDict, *, norm: str, noise: bool,
           window: int) -> None:
    """One official ``Block``/``DisBlock`` (``old``) as an imgtx :class:`TransGANBlock`
    (``new``). ``window`` 0: no relative position bias."""
    if norm == "ln":  # CustomNorm wraps the LayerNorm as .norm; PixelNorm has no parameters
        for official, ours in (("norm1", "attn_norm"), ("norm2", "ffn_norm")):
            for kind in ("weight", "bias"):
                out[f"{new}.layer.{ours}.{kind}"] = src.take(f"{old}.{official}.norm.{kind}")
    attn = f"{new}.layer.attn" + (".attention" if noise else "")
    if noise:
        out[f"{new}.layer.attn.strength"] = src.take(f"{old}.attn.noise_strength_1")
    qkv = src.take(f"{old}.attn.qkv.weight")  # (3D, D): rows q, then k, then v; heads inside
    width = qkv.shape[0] // 3
    out[f"{attn}.to_q.weight"], out[f"{attn}.to_kv.weight"] = qkv[:width], qkv[width:]
    for kind in ("weight", "bias"):
        out[f"{attn}.proj.{kind}"] = src.take(f"{old}.attn.proj.{kind}")
        for fc in ("fc1", "fc2"):
            out[f"{new}.layer.ffn.{fc}.{kind}"] = src.take(f"{old}.mlp.{fc}.{kind}")
    if window:
        out[f"{new}.rel_bias.table"] = src.take(f"{old}.attn.relative_position_bias_table")
        index = src.take(f"{old}.attn.relative_position_index")
        if not torch.equal(index.long(), _relative_index(window)):
            raise UserError(f"the official {src.what}'s {old}.attn.relative_position_index is "
                            f"not the {window}x{window} window index imgtx computes")


def _check_layout(g_config, d_config) -> None:
    """The official CIFAR-10/STL-10 model files' layout, or a UserError saying what differs."""
    problems = []
    if g_config is not None and not (
            len(g_config.depths) == 3 and set(g_config.upsample) == {"pixel_shuffle"}
            and all(w == 0 or w >= s for w, s in zip(g_config.windows, g_config.grids))
            and g_config.relative_bias and not g_config.noise
            and not g_config.latent_attention and not g_config.num_classes):
        problems.append("the generator is not ViT_custom_rp's (3 stages, PixelShuffle, global "
                        "attention with relative bias, no noise, unconditional)")
    if d_config is not None and not (
            len(d_config.embed_dims) == 2 and d_config.embed_dims[0] == d_config.dim // 4 * 3
            and len(d_config.depths[0]) == len(d_config.depths[1]) == 1
            and d_config.depths[0] == d_config.depths[1]
            and all(w == 0 or w >= s for ws, s in zip(d_config.windows, d_config.grids)
                    for w in ws)
            and d_config.relative_bias and d_config.noise and not d_config.overlap_first
            and not d_config.num_classes and not d_config.aux_classifier):
        problems.append("the discriminator is not ViT_custom_scale2_rp_noise's (2 scales of "
                        "equal depth, global attention with relative bias and noise)")
    if problems:
        raise UserError("; ".join(problems) + f"; official checkpoints convert for "
                        f"{', '.join(OFFICIAL_MODEL_FILES)}")


def generator_state_dict(official: StateDict, config) -> StateDict:
    """An official ``ViT_custom_rp`` generator state dict as the state dict of
    ``TransGANGenerator(config)``; strict (see the module docstring)."""
    _check_layout(config, None)
    src, out = _Tensors(official, "generator"), {}
    for kind in ("weight", "bias"):
        out[f"to_tokens.{kind}"] = src.take(f"l1.{kind}")
    for stage, (depth, side) in enumerate(zip(config.depths, config.grids)):
        out[f"pos_embeds.{stage}"] = src.take(f"pos_embed_{stage + 1}")
        old = "blocks.block" if stage == 0 else f"upsample_blocks.{stage - 1}.block"
        for i in range(depth):
            _block(src, f"{old}.{i}", f"stages.{stage}.{i}", out, norm=config.norm,
                   noise=False, window=side)
    out["to_rgb.weight"] = src.take("deconv.0.weight").flatten(1)  # (3, C, 1, 1) -> (3, C)
    out["to_rgb.bias"] = src.take("deconv.0.bias")
    src.finish()
    return out


def discriminator_state_dict(official: StateDict, config) -> StateDict:
    """An official ``ViT_custom_scale2_rp_noise`` discriminator state dict as the state dict of
    ``TransGANDiscriminator(config)``; strict."""
    _check_layout(None, config)
    src, out = _Tensors(official, "discriminator"), {}
    out["cls_token"] = src.take("cls_token")
    for scale, side in enumerate(config.grids):
        for kind in ("weight", "bias"):
            out[f"patch_embeds.{scale}.proj.{kind}"] = src.take(f"fRGB_{scale + 1}.{kind}")
        out[f"pos_embeds.{scale}"] = src.take(f"pos_embed_{scale + 1}")
        for i in range(config.depths[scale][0]):
            _block(src, f"blocks_{scale + 1}.{i}", f"scales.{scale}.{i}", out, norm=config.norm,
                   noise=True, window=side)
    _block(src, "last_block.0", "last_block", out, norm=config.norm, noise=True, window=0)
    if config.norm == "ln":
        for kind in ("weight", "bias"):
            out[f"norm.{kind}"] = src.take(f"norm.norm.{kind}")
    for kind in ("weight", "bias"):
        out[f"head.linear.{kind}"] = src.take(f"head.{kind}")
    src.finish()
    return out


def load_into(model: nn.Module, state: StateDict, what: str) -> nn.Module:
    """``model.load_state_dict(state)`` with every name and shape checked first (a UserError
    naming the first mismatch)."""
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"the official {what}'s tensor for {name} has shape "
                            f"{tuple(tensor.shape)}; this config needs "
                            f"{tuple(expected[name].shape)}: the checkpoint does not match it")
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise UserError(f"the official {what} does not fill this config's model: missing "
                        f"{missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(state)
    return model


def models_from_official(state: dict, generator_config, discriminator_config
                         ) -> dict[str, nn.Module]:
    """The imgtx models of :func:`read_official_checkpoint`'s ``state``: ``{"ema": G,
    "generator": G, "discriminator": D}`` (the last two when the file has them), built from
    the given configs (dtype float32; ``model.double()`` before loading keeps float64)."""
    from imgtx.gan.train import build_models

    models = {}
    for key, what in (("ema", "averaged generator"), ("generator", "generator"),
                      ("discriminator", "discriminator")):
        if state[key] is None:
            continue
        G, D = build_models(generator_config, discriminator_config)
        if key == "discriminator":
            models[key] = load_into(D, discriminator_state_dict(state[key], D.config), what)
        else:
            models[key] = load_into(G, generator_state_dict(state[key], G.config), what)
    return models


def convert_official(checkpoint: str | Path, config_name: str, out: str | Path, *,
                     generator_config=None, discriminator_config=None) -> Path:
    """Convert an official checkpoint to an imgtx folder ``out``: the EMA generator at the top
    (as a training run's ``final/``), ``discriminator/`` and the raw (non-averaged) generator in
    ``generator/`` when the file has them. The configs default to the registry entry
    ``config_name``'s. Nothing is left in ``out`` when anything fails."""
    from imgtx.gan.configs import gan_entry
    from imgtx.gan.train import DISCRIMINATOR_DIR
    from imgtx.training.checkpoints import export_model

    entry = gan_entry(config_name)
    if config_name not in OFFICIAL_MODEL_FILES:
        raise UserError(f"official checkpoints convert for {', '.join(OFFICIAL_MODEL_FILES)}, "
                        f"not {config_name}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose a new --out")
    state = read_official_checkpoint(checkpoint)
    if state["names"] is not None and tuple(state["names"]) != OFFICIAL_MODEL_FILES[config_name]:
        raise UserError(f"{checkpoint} was trained with --gen_model {state['names'][0]} "
                        f"--dis_model {state['names'][1]}; {config_name} maps "
                        f"{' and '.join(OFFICIAL_MODEL_FILES[config_name])}")
    models = models_from_official(state, generator_config or entry.config,
                                  discriminator_config or entry.discriminator)
    metrics = {"converted from": f"official TransGAN checkpoint {Path(checkpoint).name} "
                                 "(VITA-Group/TransGAN)"}
    if state["epoch"] is not None:
        metrics["official epoch"] = state["epoch"]
    partial = out.with_name(out.name + ".partial")
    made_out = not out.exists()
    try:
        shutil.rmtree(partial, ignore_errors=True)
        export_model(models["ema"], partial, metrics)
        if "discriminator" in models:
            export_model(models["discriminator"], partial / DISCRIMINATOR_DIR)
        if "generator" in models:
            export_model(models["generator"], partial / "generator")
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if made_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def _convert(args: argparse.Namespace) -> int:
    import copy

    from imgtx.cli_options import apply_overrides
    from imgtx.gan.configs import gan_entry

    entry = gan_entry(args.config)
    generator, discriminator = copy.deepcopy(entry.config), copy.deepcopy(entry.discriminator)
    apply_overrides(generator, args.set)
    apply_overrides(discriminator, args.set_d)
    generator.__post_init__()
    discriminator.__post_init__()
    out = convert_official(args.checkpoint, args.config, args.out, generator_config=generator,
                           discriminator_config=discriminator)
    written = sorted(str(p.relative_to(out).parent) for p in out.rglob("model.safetensors"))
    print(json.dumps({"out": str(out), "config": args.config, "models": written}))
    return 0


def add_convert_parser(sub) -> None:
    """``imgtx gan convert-official CHECKPOINT --config NAME --out DIR``."""
    p = sub.add_parser("convert-official",
                       help="an official TransGAN checkpoint (.pth) as an imgtx folder")
    p.add_argument("checkpoint", help="official checkpoint file (or a bare generator state dict)")
    p.add_argument("--config", required=True, choices=sorted(OFFICIAL_MODEL_FILES),
                   help="the imgtx config of the official model")
    p.add_argument("--out", required=True, help="new folder: EMA generator, discriminator/, "
                   "generator/")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a generator config field (a checkpoint of another size)")
    p.add_argument("--set-d", action="append", metavar="FIELD=VALUE",
                   help="override a discriminator config field")
    p.set_defaults(func=_convert)
