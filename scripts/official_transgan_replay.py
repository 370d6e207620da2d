"""The imgtx side of scripts/check_official_transgan.py, which needs no official code: replaying
recorded random draws, running the converted models through imgtx's training step, comparing
weights, and reading the CI fixture (tests/fixtures/official_transgan)."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

__all__ = ["recording", "replaying", "imgtx_configs", "imgtx_run", "max_difference",
           "load_fixture"]

DRAWS = ("rand", "randn", "randint")


@contextlib.contextmanager
def patched_draws(make):
    """``torch.rand/randn/randint`` replaced by ``make(name, original)`` inside the block."""
    originals = {name: getattr(torch, name) for name in DRAWS}
    for name in DRAWS:
        setattr(torch, name, make(name, originals[name]))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(torch, name, function)


def recording(draws: list):
    """Append ``(function, tensor)`` for every ``torch.rand/randn/randint`` call."""
    def make(name, original):
        def draw(*args, **kwargs):
            draws.append((name, original(*args, **kwargs)))
            return draws[-1][1].clone()
        return draw
    return patched_draws(make)


@contextlib.contextmanager
def replaying(draws: list):
    """``torch.rand/randn/randint`` return the recorded draws in order (each call checked for
    the recorded function and size); every draw must be used."""
    pending = list(draws)

    def make(name, original):
        def draw(*args, **kwargs):
            wanted = original(*args, **kwargs)  # the shape and dtype asked for
            recorded, value = pending.pop(0) if pending else (None, None)
            if recorded != name or value.numel() != wanted.numel():
                raise AssertionError(f"draw {len(draws) - len(pending)}: imgtx calls torch.{name}"
                                     f"{tuple(wanted.shape)}, the official run torch.{recorded}"
                                     f"{tuple(value.shape) if value is not None else ''}")
            # numpy drew the penalty's weights as (B, 1, 1, 1), imgtx as (B,): same numbers
            return value.reshape(wanted.shape).to(dtype=wanted.dtype, device=wanted.device)
        return draw

    with patched_draws(make):
        yield
    if pending:
        raise AssertionError(f"imgtx used {len(draws) - len(pending)} of the official run's "
                             f"{len(draws)} draws")


def imgtx_configs(args):
    from imgtx.gan.configs import TransGANDiscriminatorConfig, TransGANGeneratorConfig

    g = TransGANGeneratorConfig(
        image_size=args.img_size, latent_dim=args.latent_dim, bottom_width=args.bottom_width,
        dim=args.gf_dim, depths=tuple(int(d) for d in args.g_depth.split(",")), norm=args.g_norm)
    d = TransGANDiscriminatorConfig(
        image_size=args.img_size, dim=args.df_dim, patch_size=args.patch_size,
        embed_dims=(args.df_dim // 4 * 3, args.df_dim // 4), depths=((args.d_depth,),) * 2,
        windows=((0,), (0,)), norm=args.d_norm, diffaug=args.diff_aug)
    return g, d


def imgtx_run(case: dict, dtype: torch.dtype, out: Path, isolate_d: bool = False) -> dict:
    """Convert the official checkpoint, then the same forward passes and iteration in imgtx
    (``isolate_d``: with imgtx's fix of the official loop, which then differs)."""
    from torch.utils.data import DataLoader

    from imgtx.data import collate_images
    from imgtx.gan.configs import gan_entry
    from imgtx.gan.losses import make_loss
    from imgtx.gan.official import models_from_official, read_official_checkpoint
    from imgtx.gan.step import GANStep
    from imgtx.gan.train import settings_from_registry
    from imgtx.training import Run, Schedule

    args = case["args"]
    g_config, d_config = imgtx_configs(args)
    models = models_from_official(read_official_checkpoint(case["checkpoint"]), g_config,
                                  d_config)
    G, D = models["generator"].to(dtype), models["discriminator"].to(dtype)
    G.train(), D.train()
    x = case["images"][:args.dis_batch_size].to(dtype) / 127.5 - 1
    result = {}
    with replaying(case["forward_draws"]), torch.no_grad():
        result["g_out"] = G(case["z"])
        result["d_out"] = D(x, augment=False)
    # The paper recipe of the registry, at the check's batch sizes.
    settings = settings_from_registry(
        gan_entry(case["name"]).train, out=str(out / "run"), max_steps=args.n_critic + 1,
        batch_size=args.dis_batch_size, g_batch_size=args.gen_batch_size, eval_every=0,
        checkpoint_every=0, num_samples=0)
    items = [{"image": image, "label": 0} for image in case["images"]]
    loader = DataLoader(items, batch_size=args.dis_batch_size, collate_fn=collate_images)
    with replaying(case["step_draws"]):
        run = Run(settings)  # as train_gan wires it, with the converted models
        optimizers = {"G": torch.optim.Adam(G.parameters(), settings.lr, betas=settings.betas),
                      "D": torch.optim.Adam(D.parameters(), settings.lr_d or settings.lr,
                                            betas=settings.betas)}
        run.prepare({"G": G, "D": D}, optimizers, {n: Schedule(0, "constant") for n in optimizers},
                    {"G": settings.ema_settings()}, data=loader)
        loss = make_loss(settings.loss, **settings.loss_options)
        run.fit(GANStep(loss, settings.n_critic, settings.clip_grad_norm, args.latent_dim,
                        g_batch_size=settings.g_batch_size, isolate_d=isolate_d))
    result["after"] = {"generator": run.unwrap("G").state_dict(),
                       "discriminator": run.unwrap("D").state_dict(),
                       "ema": run.ema_model("G").state_dict()}
    return result


def max_difference(official: dict, ours: dict, g_config, d_config) -> dict[str, float]:
    """Largest absolute difference per network after the step (official names mapped)."""
    from imgtx.gan.official import discriminator_state_dict, generator_state_dict

    mapped = {"generator": generator_state_dict(official["generator"], g_config),
              "ema": generator_state_dict(official["ema"], g_config),
              "discriminator": discriminator_state_dict(official["discriminator"], d_config)}
    return {name: max(float((state[k].double() - ours[name][k].double()).abs().max())
                      for k in state) for name, state in mapped.items()}


def load_fixture(folder: Path) -> tuple[dict, dict]:
    """``(case, expected)`` of a fixture folder, in the shapes :func:`imgtx_run` and
    :func:`max_difference` take; needs no official code."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "meta.json").read_text())
    tensors, draws = (load_file(str(folder / f)) for f in ("expected.safetensors",
                                                            "draws.safetensors"))
    case = {"name": meta["config"], "args": argparse.Namespace(**meta["official_args"]),
            "checkpoint": folder / "checkpoint.pth", "images": tensors["images"],
            "z": tensors["z"]}
    for part, names in meta["draws"].items():
        case[f"{part}_draws"] = [(f, draws[f"{part}.{i:04d}"]) for i, f in enumerate(names)]
    after = {}
    for key, value in tensors.items():
        if key.startswith("after."):
            _, network, tensor = key.split(".", 2)
            after.setdefault(network, {})[tensor] = value
    expected = {k: tensors[k] for k in ("g_out", "d_out", "sample_out")} | {"after": after}
    return case, expected
