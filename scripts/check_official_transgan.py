"""Step-for-step equivalence of imgtx's TransGAN with the official code (VITA-Group/TransGAN).

    python scripts/check_official_transgan.py --official PATH_TO_A_CLONE [--configs ...]
    python scripts/check_official_transgan.py --official PATH --make-fixture DIR

Per config: build the official G and D (``models_search``), seed them, move every parameter off
its initial value (constant-initialised ones would hide a wrong mapping), save them with the
official ``utils.save_checkpoint``, convert the file (:mod:`imgtx.gan.official`), and compare in
float64 ``G(z)``, ``D(x)`` (no DiffAugment) and every parameter of G, D and the EMA G after the
official ``functions.train`` ran on ``n_critic + 1`` batches (a D and a G step, then ``n_critic``
D steps, a G step on ``gen_batch_size`` latents and its EMA update) against imgtx's ``Run`` with
``GANStep`` and the registry recipe on the same batches.

Draws: the official numpy/``random`` calls (latents, penalty weights, DiffAugment's coins and box
sizes) draw from torch here, with the same distributions; every torch draw of the official run
is recorded and replayed to imgtx in order, checked for function and size. The official code is
imported from the clone at run time (never copied) and runs on the CPU: ``torch.cuda.FloatTensor``
is the CPU type, ``Tensor.cuda`` a no-op, ``Tensor.get_device`` says ``"cpu"``, and stubs stand
in for imports these models never use (``cv2``, the FID code). Widths and batches are reduced
(printed); layers, loss, optimiser settings, n_critic and the EMA recipe are the configs' own.
The 256^2 model files are not mapped by :mod:`imgtx.gan.official` yet, so not checked.
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
from official_transgan_replay import (
    imgtx_configs,
    imgtx_run,
    max_difference,
    recording,
)

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


def full_size_forward(official, name: str) -> dict:
    """The full-size official G and D, saved, converted through the registry config by
    :func:`imgtx.gan.official.convert_official` and reloaded from the folder: ``G(z)`` and
    ``D(x)`` (no DiffAugment, the same noise) in float32 on two inputs."""
    from imgtx.gan.official import convert_official
    from imgtx.gan.sample import load_generator
    from imgtx.gan.transgan import TransGANDiscriminator

    cfg, _, utils = official
    args = official_args(cfg, name, {})
    torch.manual_seed(0)
    G = importlib.import_module(f"models_search.{args.gen_model}").Generator(args=args)
    D = importlib.import_module(f"models_search.{args.dis_model}").Discriminator(args=args)
    perturb(G, torch.Generator().manual_seed(1))
    perturb(D, torch.Generator().manual_seed(2))
    with tempfile.TemporaryDirectory() as tmp:
        utils.save_checkpoint({"epoch": 1, "gen_model": args.gen_model, "dis_model": args.dis_model,
                               "gen_state_dict": G.state_dict(), "dis_state_dict": D.state_dict(),
                               "avg_gen_state_dict": G.state_dict(), "best_fid": 1e4,
                               "path_helper": {}, "fixed_z": torch.zeros(2, args.latent_dim)},
                              False, tmp, filename="checkpoint.pth")
        folder = convert_official(Path(tmp) / "checkpoint.pth", name, Path(tmp) / "converted")
        g_ours = load_generator(str(folder))
        d_ours = TransGANDiscriminator.from_pretrained(str(folder / "discriminator")).train()
    z = torch.randn(2, args.latent_dim, generator=torch.Generator().manual_seed(3))
    x = torch.rand(2, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        g = float((G(z, 0) - g_ours(z)).abs().max())
        torch.manual_seed(5)
        d_official = D(x * 2 - 1, aug=False).flatten()
        torch.manual_seed(5)  # the same noise draws
        d = float((d_official - d_ours(x * 2 - 1, augment=False)).abs().max())
    return {"config": name, "full_size": True, "dtype": "float32", "g_forward_max_abs": g,
            "d_forward_max_abs": d, "parameters": [sum(p.numel() for p in m.parameters())
                                                    for m in (g_ours, d_ours)]}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="a clone of VITA-Group/TransGAN")
    parser.add_argument("--configs", default="transgan-cifar10,transgan-stl10")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--make-fixture", metavar="DIR", help="write the CI fixture to DIR")
    parser.add_argument("--full-size-forward", action="store_true",
                        help="instead: convert full-size models and compare G(z), D(x) (float32)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # the official code makes tensors of the default dtype
    official = import_official(args.official)
    if args.make_fixture:
        print(json.dumps(write_fixture(official, Path(args.make_fixture))))
        return
    if args.full_size_forward:
        torch.set_default_dtype(torch.float32)
        results = [full_size_forward(official, name) for name in args.configs.split(",")]
        worst = max(max(r["g_forward_max_abs"], r["d_forward_max_abs"]) for r in results)
        print(json.dumps({"official": f"VITA-Group/TransGAN@{OFFICIAL_COMMIT}",
                          "tolerance": 1e-4, "passed": worst <= 1e-4, "checks": results}))
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
