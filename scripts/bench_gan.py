"""Benchmark TransGAN training steps on the CPU: step time, achieved GFLOP/s and peak memory.

    python scripts/bench_gan.py --json                       # everything, prints one JSON line
    python scripts/bench_gan.py --json --skip-memory --skip-window
    python scripts/bench_gan.py --json --official /tmp/TransGAN --repeats 3 \
        --skip-steps --skip-memory --skip-window     # ours/official step-time ratios
    python scripts/bench_gan.py --json --race-cpu-minutes 3 \
        --skip-steps --skip-memory --skip-window     # kimg per CPU-hour of the photo race

* Step time at ``--config`` (default ``transgan-cifar10``), ``--batch`` 8, ``--threads`` 2,
  fp32, median of ``--iters`` after one warm-up:
  - G step: G forward, D forward (D frozen), WGAN generator loss, backward;
  - D step: D on real images, G forward (no grad) and D on the fakes, the gradient penalty
    (through D's forward, DiffAugment included), backward.
  FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
  attention; elementwise ops are not counted), so GFLOP/s is a lower bound of the work done.
  Fixed anchor: the official VITA-Group/TransGAN code (6b85440) timed earlier on an idle
  machine of this kind (2 CPU cores) at the same config, batch and threads took 5.4 s per G
  step and 4.0 s per D step (docs/benchmarks.md); ``--official`` times it beside ours instead.
* ``--official PATH``: the official code (a checkout outside this repository, loaded at run
  time) at its CIFAR-10 settings, G and D steps timed interleaved with ours in one process;
  ``g_step_ratio``/``d_step_ratio`` are ours over theirs (medians of ``--repeats``).
* Peak memory of one full training step (D step then G step, no optimizer) at ``--memory-batch``
  32, without and with activation checkpointing (``checkpoint_blocks``), each in a fresh
  subprocess: ``ru_maxrss`` after the step minus ``ru_maxrss`` after building the models.
* Window against global attention: peak memory of a generator forward+backward at 256^2
  output for the church layout (bicubic 8->16->32, PixelShuffle to 256) at reduced width
  (``--window-dim``, one block per stage, batch 1), with 16x16 windows from 64^2 tokens up
  against global attention there. Global attention with the relative bias (as TransGAN's global
  stages have it) is measured only where it fits (``--global-sizes``, default 64^2: at 128^2
  a single (heads, N, N) bias is already 4.3 GB in fp32, at 256^2 69 GB). CPU only; each case in
  a fresh subprocess.
* ``--race-cpu-minutes M``: training throughput of the recipes of
  ``scripts/photo_gan_race.py`` (``paper``, ``toolkit``, ``toolkit2``) at their race settings
  (one thread, the photo corpus's ``train`` split, their batch sizes and networks): each trains
  in a fresh subprocess for M minutes of process CPU time after ``--race-warmup-steps`` untimed
  steps, and reports kimg (real images shown to D) per CPU-hour and D/G steps per CPU-minute.
  The race's own logs (``race.jsonl``: kimg against CPU-minutes) give the same figure over a
  whole run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

ANCHOR = {"g_step_seconds": 5.4, "d_step_seconds": 4.0}


def build(config: str, **overrides):
    from imgtx.gan.cli import build_gan

    generator, discriminator = build_gan(config, **overrides)
    return generator.train(), discriminator.train()


def make_steps(generator, discriminator, batch: int):
    from imgtx.gan.losses import WGANGPLoss

    loss = WGANGPLoss()
    size = generator.config.image_size
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    z = torch.randn(batch, generator.config.latent_dim, generator=gen)

    def g_step() -> None:
        discriminator.requires_grad_(False)
        generator.zero_grad(set_to_none=True)
        loss.generator(discriminator, generator(z)).backward()
        discriminator.requires_grad_(True)

    def d_step() -> None:
        discriminator.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = generator(z)
        d_loss, _ = loss.discriminator(discriminator, real, fake)
        d_loss.backward()

    return g_step, d_step


def median_seconds(fn, iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break
    ``torch.autograd.grad`` (the gradient penalty); we only need the global total."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        pass


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def step_times(args) -> dict:
    torch.manual_seed(0)
    generator, discriminator = build(args.config)
    g_step, d_step = make_steps(generator, discriminator, args.batch)
    g_seconds = median_seconds(g_step, args.iters)
    d_seconds = median_seconds(d_step, args.iters)
    g_flops, d_flops = count_flops(g_step), count_flops(d_step)
    return {"g_step_seconds": round(g_seconds, 3), "d_step_seconds": round(d_seconds, 3),
            "g_step_gflop": round(g_flops / 1e9, 1), "d_step_gflop": round(d_flops / 1e9, 1),
            "g_gflop_per_s": round(g_flops / 1e9 / g_seconds, 1),
            "d_gflop_per_s": round(d_flops / 1e9 / d_seconds, 1),
            "g_vs_anchor": round(g_seconds / ANCHOR["g_step_seconds"], 3),
            "d_vs_anchor": round(d_seconds / ANCHOR["d_step_seconds"], 3)}


OFFICIAL_ARGS = dict(  # VITA-Group/TransGAN exps/cifar_train.py (other fields: cfg.py defaults)
    dataset="cifar10", bottom_width=8, img_size=32, gen_model="ViT_custom_rp",
    dis_model="ViT_custom_scale2_rp_noise", df_dim=384, d_heads=4, d_depth=3, g_depth="5,4,2",
    dropout=0.0, latent_dim=256, gf_dim=1024, loss="wgangp-eps", phi=1, patch_size=2,
    diff_aug="translation,cutout,color")


def load_official(path: str):
    """Import the official CIFAR-10 generator/discriminator from a checkout at ``path``
    (run time only). Stubs stand in for what their import chain needs but these models do
    not use (``torch._six``, ``dnnlib``, the package ``__init__`` importing every model);
    ``Tensor.get_device`` returns ``"cpu"`` for CPU tensors (their code calls
    ``.to(x.get_device())``, which is -1 on the CPU)."""
    import collections.abc
    import importlib
    import types

    sys.path.insert(0, path)
    six = types.ModuleType("torch._six")
    six.container_abcs, six.string_classes, six.int_classes = collections.abc, (str, bytes), int
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.EasyDict, dnnlib.util = type("EasyDict", (dict,), {}), types.ModuleType("dnnlib.util")
    package = types.ModuleType("models_search")
    package.__path__ = [f"{path}/models_search"]
    sys.modules.update({"torch._six": six, "dnnlib": dnnlib, "dnnlib.util": dnnlib.util,
                        "models_search": package})
    get_device = torch.Tensor.get_device
    torch.Tensor.get_device = lambda t: "cpu" if t.device.type == "cpu" else get_device(t)
    argv, sys.argv = sys.argv, sys.argv[:1]
    cfg = importlib.import_module("cfg")
    args = cfg.parse_args()
    sys.argv = argv
    for key, value in OFFICIAL_ARGS.items():
        setattr(args, key, value)
    gen = importlib.import_module(f"models_search.{args.gen_model}").Generator(args)
    dis = importlib.import_module(f"models_search.{args.dis_model}").Discriminator(args)
    return gen.train(), dis.train(), args


def official_steps(generator, discriminator, args, batch: int):
    """Their G step and D step as in functions.py ``train`` (loss ``wgangp-eps``)."""
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(batch, 3, args.img_size, args.img_size, generator=gen) * 2 - 1
    z = torch.randn(batch, args.latent_dim, generator=gen)

    def penalty(real_imgs, fake_imgs):  # functions.py compute_gradient_penalty
        alpha = torch.rand(batch, 1, 1, 1)
        mixed = (alpha * real_imgs + (1 - alpha) * fake_imgs).requires_grad_(True)
        grads = torch.autograd.grad(discriminator(mixed), mixed,
                                    torch.ones(batch, 1), create_graph=True)[0]
        return ((grads.reshape(batch, -1).norm(2, dim=1) - args.phi) ** 2).mean()

    def g_step() -> None:
        discriminator.requires_grad_(False)
        generator.zero_grad(set_to_none=True)
        (-discriminator(generator(z, 0)).mean()).backward()
        discriminator.requires_grad_(True)

    def d_step() -> None:
        discriminator.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = generator(z, 0)
        real_validity = discriminator(real)
        d_loss = (-real_validity.mean() + discriminator(fake).mean()
                  + penalty(real, fake) * 10 / args.phi ** 2 + real_validity.mean() ** 2 * 1e-3)
        d_loss.backward()

    return g_step, d_step


def side_by_side(args) -> dict:
    """Ours and the official code in one process, timed interleaved (ours, theirs, ...):
    under a shared load both suffer alike, so the ratio is the figure."""
    torch.manual_seed(0)
    ours = make_steps(*build(args.config), args.batch)
    their_g, their_d, their_args = load_official(args.official)
    counts = [sum(p.numel() for p in m.parameters()) for m in (their_g, their_d)]
    theirs = official_steps(their_g, their_d, their_args, args.batch)
    out = {"official_params": counts}
    for index, name in enumerate(("g_step", "d_step")):
        ours[index](), theirs[index]()  # warm-up
        times = {"ours": [], "theirs": []}
        for _ in range(args.repeats):
            for side, steps in (("ours", ours), ("theirs", theirs)):
                start = time.perf_counter()
                steps[index]()
                times[side].append(time.perf_counter() - start)
        mine, official = statistics.median(times["ours"]), statistics.median(times["theirs"])
        out.update({f"{name}_seconds_ours": round(mine, 3),
                    f"{name}_seconds_official": round(official, 3),
                    f"{name}_ratio": round(mine / official, 3),
                    f"{name}_runs": {k: [round(t, 2) for t in ts] for k, ts in times.items()}})
        if not args.json:
            print(name, out)
    return out


def child_race(args) -> dict:
    """One recipe of scripts/photo_gan_race.py, trained for ``--race-cpu-minutes`` of process CPU
    time after ``--race-warmup-steps`` untimed steps (data loading, first allocations)."""
    import importlib.util
    import tempfile
    from pathlib import Path

    from imgtx.gan.train import train_named

    path = Path(__file__).with_name("photo_gan_race.py")
    spec = importlib.util.spec_from_file_location("photo_gan_race", path)
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    entry = race.RECIPES[args.recipe]
    data, generator, discriminator, _ = race.recipe_inputs(entry)
    budget = args.race_cpu_minutes * 60
    clock: dict = {}

    def wrap(step):
        def timed(run, batch):
            if run.state.step == args.race_warmup_steps:
                clock.update(cpu=time.process_time(), images=run.state.images_seen,
                             step=run.state.step)
            figures = step(run, batch)
            if clock and time.process_time() - clock["cpu"] >= budget:
                clock.update(cpu_end=time.process_time(), images_end=run.state.images_seen,
                             step_end=run.state.step + 1)
                run.settings.max_steps = run.state.step + 1
            return figures
        return timed

    with tempfile.TemporaryDirectory() as out:
        train_named(entry["config"], generator=generator, discriminator=discriminator,
                    wrap_step=wrap,
                    **{**entry["settings"], "data": data, "out": out, "seed": 0,
                       "threads": 1, "max_steps": 10**9, "fid_every": 0, "eval_every": 0,
                       "sample_every": 0, "checkpoint_every": 0, "num_samples": 4,
                       "cpu": True})
    hours = (clock["cpu_end"] - clock["cpu"]) / 3600
    d_steps = clock["step_end"] - clock["step"]
    from imgtx.gan.configs import gan_entry

    n_critic = {**gan_entry(entry["config"]).train, **entry["settings"]}.get("n_critic", 1)
    return {"recipe": args.recipe, "cpu_minutes": round(hours * 60, 2),
            "kimg_per_cpu_hour": round((clock["images_end"] - clock["images"]) / 1000 / hours, 2),
            "d_steps_per_cpu_minute": round(d_steps / hours / 60, 2),
            "g_steps_per_cpu_minute": round(d_steps / n_critic / hours / 60, 2)}


# scripts/photo_gan_race.py's recipes: the paper recipe, the first STrans-G/D one with noise
# inputs, and the one shipped as strans-corpus32. toolkit3 to toolkit6 train the same networks
# as toolkit7 at its settings but for the learning rates (toolkit7 only anneals toolkit6's on
# the race's clock, which this bench does not run), so timing them again measures nothing new.
# toolkit8 is toolkit7 conditioned on the source photo (AdaNorm-T and a projection head).
RACE_RECIPES = ("paper", "toolkit2", "toolkit7", "toolkit8")


def race_rates(args) -> dict:
    out = {"threads": 1, "cpu_minutes_each": args.race_cpu_minutes}
    for recipe in RACE_RECIPES:
        out[recipe] = run_child(["--child", "race", "--recipe", recipe, "--race-cpu-minutes",
                                 str(args.race_cpu_minutes), "--race-warmup-steps",
                                 str(args.race_warmup_steps)], args.child_timeout)
    for recipe in RACE_RECIPES[1:]:
        if all("kimg_per_cpu_hour" in out[r] for r in ("paper", recipe)):
            out[f"{recipe}_over_paper"] = round(out[recipe]["kimg_per_cpu_hour"]
                                                / out["paper"]["kimg_per_cpu_hour"], 3)
    return out


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_train_step(args) -> dict:
    """One D step and one G step; peak RSS above the freshly built models."""
    torch.manual_seed(0)
    generator, discriminator = build(args.config, checkpoint_blocks=args.checkpoint)
    g_step, d_step = make_steps(generator, discriminator, args.batch)
    base = max_rss_mb()
    start = time.perf_counter()
    d_step()
    g_step()
    return {"peak_mb_above_models": round(max_rss_mb() - base, 1),
            "seconds": round(time.perf_counter() - start, 2)}


def child_window(args) -> dict:
    """Generator forward+backward at reduced width; peak RSS above the built model."""
    from imgtx.gan.configs import TransGANGeneratorConfig
    from imgtx.gan.transgan import TransGANGenerator

    stages = {64: 4, 128: 5, 256: 6}[args.size]
    upsample = ("bicubic", "bicubic") + ("pixel_shuffle",) * (stages - 3)
    window = 16 if args.window else 0
    config = TransGANGeneratorConfig(
        image_size=args.size, latent_dim=64, dim=args.window_dim, depths=(1,) * stages,
        upsample=upsample, windows=(0, 0, 0) + (window,) * (stages - 3), norm="pn",
        relative_bias=True, heads=args.heads)
    torch.manual_seed(0)
    generator = TransGANGenerator(config).train()
    z = torch.randn(1, 64)
    base = max_rss_mb()
    start = time.perf_counter()
    generator(z).square().mean().backward()
    return {"peak_mb_above_model": round(max_rss_mb() - base, 1),
            "seconds": round(time.perf_counter() - start, 2)}


def run_child(argv: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, *argv]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(args) -> dict:
    common = ["--config", args.config, "--batch", str(args.memory_batch), "--threads",
              str(args.threads)]
    plain = run_child(["--child", "train-step", *common], args.child_timeout)
    checkpointed = run_child(["--child", "train-step", "--checkpoint", *common],
                             args.child_timeout)
    out = {"batch": args.memory_batch, "without_checkpointing": plain,
           "with_checkpointing": checkpointed}
    if "error" not in plain and "error" not in checkpointed:
        out["ratio"] = round(checkpointed["peak_mb_above_models"]
                             / plain["peak_mb_above_models"], 3)
    return out


def window_vs_global(args) -> dict:
    common = ["--window-dim", str(args.window_dim), "--heads", str(args.heads), "--threads",
              str(args.threads)]
    out = {"device": "cpu", "width": args.window_dim, "heads": args.heads, "batch": 1,
           "note": "church layout at reduced width, one block per stage, relative bias on"}
    out["window_256"] = run_child(["--child", "window", "--size", "256", "--window", *common],
                                  args.child_timeout)
    for size in args.global_sizes:
        out[f"window_{size}"] = out["window_256"] if size == 256 else run_child(
            ["--child", "window", "--size", str(size), "--window", *common], args.child_timeout)
        out[f"global_{size}"] = run_child(["--child", "window", "--size", str(size), *common],
                                          args.child_timeout)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="transgan-cifar10")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--memory-batch", type=int, default=32)
    parser.add_argument("--window-dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--global-sizes", type=int, nargs="*", default=[64])
    parser.add_argument("--child-timeout", type=float, default=1800)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-window", action="store_true")
    parser.add_argument("--official", metavar="PATH",
                        help="a VITA-Group/TransGAN checkout: time it side by side with ours")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repeats per side with --official")
    parser.add_argument("--race-cpu-minutes", type=float, default=0,
                        help="kimg per CPU-hour of the photo race's two recipes, each timed for "
                             "this many CPU-minutes (0: skip)")
    parser.add_argument("--race-warmup-steps", type=int, default=5,
                        help="untimed steps before the race rates are measured")
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")
    # internal: one measurement in a fresh process
    parser.add_argument("--child", choices=["train-step", "window", "race"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--recipe", choices=RACE_RECIPES, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--window", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1 if args.child == "race" else args.threads)
    if args.child:
        fn = {"train-step": child_train_step, "window": child_window,
              "race": child_race}[args.child]
        print(json.dumps(fn(args)))
        return

    result = {"config": args.config, "batch": args.batch, "threads": args.threads,
              "dtype": "float32", "torch": torch.__version__, "anchor": ANCHOR}
    if args.official:
        result.update(side_by_side(args))
    if not args.skip_steps:
        result.update(step_times(args))
        if not args.json:
            print(f"G step {result['g_step_seconds']} s, D step {result['d_step_seconds']} s")
    if not args.skip_memory:
        result["memory"] = memory(args)
        if not args.json:
            print("memory:", result["memory"])
    if not args.skip_window:
        result["window_vs_global"] = window_vs_global(args)
    if args.race_cpu_minutes:
        result["photo_race"] = race_rates(args)
        if not args.json:
            print("photo race:", result["photo_race"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
