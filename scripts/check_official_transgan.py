"""Step-for-step equivalence of imgtx's TransGAN with the official code (VITA-Group/TransGAN).

    python scripts/check_official_transgan.py --official PATH_TO_A_CLONE [--configs ...]
    python scripts/check_official_transgan.py --official PATH --make-fixture DIR

For each config it builds the official generator and discriminator (``models_search``), seeds
them, moves every parameter off its initial value (zero-initialised noise strengths and biases
would hide a wrong mapping), saves them with the official ``utils.save_checkpoint``, converts
the file with :mod:`imgtx.gan.official`, and compares, in float64:

* ``G(z)`` and ``D(x)`` (without DiffAugment; D's noise draws are the same on both sides);
* one whole training iteration and the step before it: the official ``functions.train`` on
  ``n_critic + 1`` real batches (its G steps after the first and after the last D step, the second
  G step on ``gen_batch_size`` fresh latents, then its EMA update) against ``imgtx``'s
  :class:`Run` with :class:`GANStep` on the same batches: every parameter of G, D and the EMA G
  afterwards.

Random draws: the official code draws latents and the penalty's mixing weights from numpy, and
DiffAugment's coins and box sizes from Python's ``random``; here they draw from torch instead
(the same distributions), and every torch draw of the official run is recorded, then replayed
to imgtx in order, each checked for the same function and shape. So both sides see the same
latents, penalty weights, DiffAugment draws and noise, and a draw in another order fails.

The official code is imported from the clone at run time (never copied). It wants CUDA; these
patches run it on the CPU: ``torch.cuda.FloatTensor`` is the CPU tensor type of the run's dtype,
``Tensor.cuda`` returns the tensor, ``Tensor.get_device`` says ``"cpu"``, and stub modules stand in
for imports these models never use (``cv2``, the FID code).

Sizes are reduced (printed in the JSON line): widths and batches shrink so that a check takes
seconds on a CPU; the layers, the loss, the optimiser settings, n_critic and the EMA recipe are
the configs' own. The 256^2 configs are not checked: their model files need CUDA-only ops.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import copy
import importlib
import json
import random
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

# What each check builds (official argument names; the rest are exps/*_train.py's values).
RECIPES = {
    "transgan-cifar10": dict(  # exps/cifar_train.py
        bottom_width=8, img_size=32, latent_dim=256, gf_dim=1024, g_depth="5,4,2", df_dim=384,
        d_depth=3, g_norm="ln", d_norm="ln", diff_aug="translation,cutout,color", n_critic=4,
        dis_batch_size=64, gen_batch_size=128, ema_kimg=500, ema_warmup=0.1),
    "transgan-stl10": dict(  # exps/stl_train.py
        bottom_width=12, img_size=48, latent_dim=512, gf_dim=1024, g_depth="7,5,3", df_dim=384,
        d_depth=3, g_norm="pn", d_norm="pn", diff_aug="translation,stl_erase_ratio,color",
        n_critic=5, dis_batch_size=32, gen_batch_size=64, ema_kimg=500, ema_warmup=0.05),
}
REDUCED = {  # what the CPU check changes
    "transgan-cifar10": dict(latent_dim=32, gf_dim=64, df_dim=64, dis_batch_size=4,
                             gen_batch_size=8),
    "transgan-stl10": dict(latent_dim=32, gf_dim=64, g_depth="2,2,1", df_dim=64, d_depth=2,
                           dis_batch_size=2, gen_batch_size=4),
}
FIXTURE = ("transgan-cifar10", dict(  # the CI fixture: the CIFAR-10 layout at 8^2, tiny
    bottom_width=2, img_size=8, latent_dim=8, gf_dim=64, g_depth="0,1,1", df_dim=32, d_depth=1,
    dis_batch_size=2, gen_batch_size=4))
COMMON = dict(  # exps/*_train.py, the same for both
    g_lr=1e-4, d_lr=1e-4, beta1=0.0, beta2=0.99, loss="wgangp-eps", phi=1.0, patch_size=2,
    optimizer="adam", accumulated_times=1, g_accumulated_times=1, world_size=1, rank=0,
    gpu=None, max_epoch=1, print_freq=10**9, dropout=0.0, latent_norm=False)
OFFICIAL_COMMIT = "6b85440"


# -- the official code, on the CPU -------------------------------------------------------------


def import_official(path: str):
    """``(cfg, functions, utils.utils)`` of the clone at ``path``, runnable on the CPU."""
    sys.path.insert(0, str(Path(path).resolve()))
    six = types.ModuleType("torch._six")
    six.container_abcs, six.string_classes, six.int_classes = collections.abc, (str, bytes), int
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.EasyDict, dnnlib.util = type("EasyDict", (dict,), {}), types.ModuleType("dnnlib.util")
    fid = types.ModuleType("utils.torch_fid_score")
    fid.get_fid = None
    for name, module in {"torch._six": six, "dnnlib": dnnlib, "dnnlib.util": dnnlib.util,
                         "cv2": types.ModuleType("cv2"),
                         "utils.torch_fid_score": fid}.items():
        sys.modules.setdefault(name, module)
    get_device = torch.Tensor.get_device
    torch.Tensor.get_device = lambda t: "cpu" if t.device.type == "cpu" else get_device(t)
    torch.Tensor.cuda = lambda t, *args, **kwargs: t
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cfg = importlib.import_module("cfg")
        functions = importlib.import_module("functions")
        utils = importlib.import_module("utils.utils")
    finally:
        sys.argv = argv
    return cfg, functions, utils


def official_args(cfg, name: str, sizes: dict) -> argparse.Namespace:
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        args = cfg.parse_args()
    finally:
        sys.argv = argv
    for key, value in {**COMMON, **RECIPES[name], **sizes}.items():
        setattr(args, key, value)
    args.gen_model, args.dis_model = "ViT_custom_rp", "ViT_custom_scale2_rp_noise"
    return args


@contextlib.contextmanager
def torch_draws_for_official(dtype: torch.dtype):
    """numpy's and Python's random calls of the official loop and DiffAugment as torch draws
    (same distributions), and ``torch.cuda.FloatTensor`` as the CPU type of ``dtype``."""
    saved = (np.random.normal, np.random.random, random.random, random.randint,
             torch.cuda.FloatTensor)

    def normal(mean, std, size):
        return (torch.randn(size) * std + mean).numpy()

    np.random.normal, np.random.random = normal, lambda size: torch.rand(size).numpy()
    random.random = lambda: float(torch.rand(()))
    random.randint = lambda low, high: int(torch.randint(low, high + 1, ()))
    torch.cuda.FloatTensor = torch.DoubleTensor if dtype == torch.float64 else torch.FloatTensor
    try:
        yield
    finally:
        (np.random.normal, np.random.random, random.random, random.randint,
         torch.cuda.FloatTensor) = saved


DRAWS = ("rand", "randn", "randint")


@contextlib.contextmanager
def recording(draws: list):
    """Append ``(function, tensor)`` for every ``torch.rand/randn/randint`` call."""
    originals = {name: getattr(torch, name) for name in DRAWS}

    def wrap(name):
        def draw(*args, **kwargs):
            value = originals[name](*args, **kwargs)
            draws.append((name, value.clone()))
            return value
        return draw

    for name in DRAWS:
        setattr(torch, name, wrap(name))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(torch, name, function)


@contextlib.contextmanager
def replaying(draws: list):
    """``torch.rand/randn/randint`` return the recorded draws in order (each call checked for
    the recorded function and shape); every draw must be used."""
    pending = list(draws)
    originals = {name: getattr(torch, name) for name in DRAWS}

    def wrap(name):
        def draw(*args, **kwargs):
            wanted = originals[name](*args, **kwargs)  # the shape and dtype asked for
            if not pending:
                raise AssertionError(f"imgtx draws more than the official run ({name})")
            recorded_name, value = pending.pop(0)
            if recorded_name != name or value.numel() != wanted.numel():
                raise AssertionError(f"draw {len(draws) - len(pending)}: imgtx calls torch.{name}"
                                     f"{tuple(wanted.shape)}, the official run called torch."
                                     f"{recorded_name}{tuple(value.shape)}")
            # numpy drew the penalty's weights as (B, 1, 1, 1), imgtx as (B,): same numbers
            return value.reshape(wanted.shape).to(dtype=wanted.dtype, device=wanted.device)
        return draw

    for name in DRAWS:
        setattr(torch, name, wrap(name))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(torch, name, function)
    if pending:
        raise AssertionError(f"imgtx used {len(draws) - len(pending)} of the official run's "
                             f"{len(draws)} draws")


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter moves by N(0, 0.02^2) (bias, norm and noise-strength parameters start at
    constants, which would hide a swapped mapping)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.02)


def official_run(official, name: str, sizes: dict, dtype: torch.dtype, out: Path) -> dict:
    """Build, seed, save (official save_checkpoint), forward, and train one iteration with the
    official code; returns its inputs, draws, outputs and post-step state dicts."""
    cfg, functions, utils = official
    args = official_args(cfg, name, sizes)
    gen_module = importlib.import_module(f"models_search.{args.gen_model}")
    dis_module = importlib.import_module(f"models_search.{args.dis_model}")
    torch.manual_seed(0)
    G = gen_module.Generator(args=args).to(dtype)
    D = dis_module.Discriminator(args=args).to(dtype)
    perturb(G, torch.Generator().manual_seed(1))
    perturb(D, torch.Generator().manual_seed(2))
    # The file holds float32 weights, as the official runs save them (utils.save_checkpoint is
    # torch.save of this dict); both sides then start from them, widened to dtype.
    weights = {"gen_state_dict": G, "dis_state_dict": D, "avg_gen_state_dict": G}
    weights = {key: {k: v.float() for k, v in model.state_dict().items()}
               for key, model in weights.items()}
    checkpoint = out / "checkpoint.pth"
    utils.save_checkpoint({"epoch": 0, "gen_model": args.gen_model, "dis_model": args.dis_model,
                           **weights, "gen_optimizer": {}, "dis_optimizer": {},
                           "best_fid": 1e4, "path_helper": {"prefix": "logs/check"},
                           "fixed_z": torch.zeros(2, args.latent_dim, dtype=torch.float32)},
                          False, str(out), filename=checkpoint.name)
    G.load_state_dict({k: v.to(dtype) for k, v in weights["gen_state_dict"].items()})
    D.load_state_dict({k: v.to(dtype) for k, v in weights["dis_state_dict"].items()})
    avg = functions.copy_params(G)
    data = torch.Generator().manual_seed(3)
    steps, b = args.n_critic + 1, args.dis_batch_size
    images = torch.randint(0, 256, (steps * b, 3, args.img_size, args.img_size),
                           generator=data, dtype=torch.uint8)
    z = torch.randn(b, args.latent_dim, generator=data, dtype=dtype)
    x = (images[:b].to(dtype) / 127.5 - 1)
    result = {"name": name, "args": args, "checkpoint": checkpoint, "images": images, "z": z}
    # The latents `imgtx gan sample --seed 0` draws, through the saved averaged generator.
    sample_z = torch.randn(4, args.latent_dim, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float32)
    with torch.no_grad():
        result["sample_out"] = G(sample_z.to(dtype), 0)
    draws: list = []
    with torch_draws_for_official(dtype), recording(draws):
        torch.manual_seed(4)
        with torch.no_grad():
            result["g_out"] = G(z, 0)
            result["d_out"] = D(x, aug=False)
        result["forward_draws"] = list(draws)
        draws.clear()
        loader = [(images[i * b:(i + 1) * b].to(dtype) / 127.5 - 1, None) for i in range(steps)]
        opt_g = torch.optim.Adam(G.parameters(), args.g_lr, (args.beta1, args.beta2))
        opt_d = torch.optim.Adam(D.parameters(), args.d_lr, (args.beta1, args.beta2))
        writer = types.SimpleNamespace(add_scalar=lambda *a, **k: None)
        with contextlib.redirect_stdout(sys.stderr):
            functions.train(args, G, D, opt_g, opt_d, avg, loader, 0,
                            {"writer": writer, "train_global_steps": 0}, None)
    result["step_draws"] = draws
    ema = copy.deepcopy(G)
    functions.load_params(ema, avg, args)
    result["after"] = {"generator": G.state_dict(), "discriminator": D.state_dict(),
                       "ema": ema.state_dict()}
    return result


# -- imgtx -----------------------------------------------------------------------------------


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


def check(official, name: str, sizes: dict, dtype: torch.dtype) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        case = official_run(official, name, sizes, dtype, Path(tmp))
        ours = imgtx_run(case, dtype, Path(tmp))
        g_config, d_config = imgtx_configs(case["args"])
        after = max_difference(case["after"], ours["after"], g_config, d_config)
    return {"config": name, "reduced": sizes,
            "g_forward_max_abs": float((case["g_out"] - ours["g_out"]).abs().max()),
            "d_forward_max_abs": float((case["d_out"].flatten() - ours["d_out"]).abs().max()),
            "after_step_max_abs": after, "draws": len(case["step_draws"])}


# -- the CI fixture ------------------------------------------------------------------------------

FIXTURE_ARGS = ("bottom_width", "img_size", "latent_dim", "gf_dim", "g_depth", "df_dim",
                "d_depth", "g_norm", "d_norm", "diff_aug", "patch_size", "n_critic",
                "dis_batch_size", "gen_batch_size")
FIXTURE_COMMAND = ("python scripts/check_official_transgan.py --official PATH_TO_TRANSGAN "
                   "--make-fixture tests/fixtures/official_transgan")


def write_fixture(official, out: Path) -> dict:
    """The official code's checkpoint, inputs, draws, outputs and post-step weights at the tiny
    FIXTURE size (float64 run; weights stored as float32, inputs and draws exactly)."""
    from safetensors.torch import save_file

    name, sizes = FIXTURE
    out.mkdir(parents=True, exist_ok=True)
    case = official_run(official, name, sizes, torch.float64, out)
    expected = {"images": case["images"], "z": case["z"], "g_out": case["g_out"].float(),
                "d_out": case["d_out"].float(), "sample_out": case["sample_out"].float()}
    for network, state in case["after"].items():
        expected.update({f"after.{network}.{k}": v.float().contiguous()
                         for k, v in state.items()})
    save_file({k: v.contiguous() for k, v in expected.items()}, str(out / "expected.safetensors"))
    draws = {f"{part}.{i:04d}": value.contiguous()
             for part in ("forward", "step") for i, (_, value) in enumerate(case[f"{part}_draws"])}
    save_file(draws, str(out / "draws.safetensors"))
    meta = {"config": name, "official": f"VITA-Group/TransGAN@{OFFICIAL_COMMIT}",
            "command": FIXTURE_COMMAND,
            "official_args": {k: getattr(case["args"], k) for k in FIXTURE_ARGS},
            "draws": {part: [f for f, _ in case[f"{part}_draws"]]
                      for part in ("forward", "step")}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"fixture": str(out), "draws": len(draws),
            "bytes": sum(f.stat().st_size for f in out.iterdir())}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="a clone of VITA-Group/TransGAN")
    parser.add_argument("--configs", default="transgan-cifar10,transgan-stl10")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--make-fixture", metavar="DIR", help="write the CI fixture to DIR")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # the official code makes tensors of the default dtype
    official = import_official(args.official)
    if args.make_fixture:
        print(json.dumps(write_fixture(official, Path(args.make_fixture))))
        return
    tolerance = 1e-5 if dtype == torch.float64 else 1e-4
    results = [check(official, name, REDUCED[name], dtype) for name in args.configs.split(",")]
    worst = max(max(r["g_forward_max_abs"], r["d_forward_max_abs"],
                    *r["after_step_max_abs"].values()) for r in results)
    print(json.dumps({"official": f"VITA-Group/TransGAN@{OFFICIAL_COMMIT}", "dtype": args.dtype,
                      "tolerance": tolerance, "passed": worst <= tolerance,
                      "max_abs": worst, "checks": results}))


if __name__ == "__main__":
    main()
