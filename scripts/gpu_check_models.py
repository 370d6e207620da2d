"""Parts 3 and 4 of ``scripts/gpu_check.py``: the GAN and the likelihood model on one GPU.

The GAN step pair is ``scripts/bench_gan.py``'s (G step: G forward, frozen D, WGAN generator loss,
backward; D step: D on real images and on fakes made without gradients, the gradient penalty,
backward), written here again because ``bench_gan.make_steps`` and ``official_steps`` draw their
inputs on the CPU. Everything else is the library's or a bench script's own function.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from gpu_check_attention import BACKENDS, xformers_missing

ROOT = Path(__file__).resolve().parents[1]
SMALL_CHECKPOINT = ROOT / "checkpoints" / "imgtx-photos32-small"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bf16_autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# --------------------------------------------------------------------------------------------
# 3. GAN
# --------------------------------------------------------------------------------------------


def gan_steps(generator: torch.nn.Module, discriminator: torch.nn.Module, batch: int,
              image_size: int, latent_dim: int, device: torch.device, bf16: bool,
              generate: Callable[[torch.Tensor], torch.Tensor] | None = None, loss=None):
    """``(g_step, d_step)`` closures on ``device`` (as bench_gan.make_steps): WGAN-GP with the
    drift term, inputs drawn once. ``generate(z)`` defaults to ``generator(z)``."""
    from imgtx.gan.losses import WGANGPLoss

    loss = loss or WGANGPLoss()
    generate = generate or generator
    gen = torch.Generator(device=device).manual_seed(0)
    real = torch.rand(batch, 3, image_size, image_size, generator=gen, device=device) * 2 - 1
    z = torch.randn(batch, latent_dim, generator=gen, device=device)

    def g_step() -> None:
        discriminator.requires_grad_(False)
        generator.zero_grad(set_to_none=True)
        with bf16_autocast(device, bf16):
            g_loss = loss.generator(discriminator, generate(z))
        g_loss.backward()
        discriminator.requires_grad_(True)

    def d_step() -> None:
        discriminator.zero_grad(set_to_none=True)
        with torch.no_grad(), bf16_autocast(device, bf16):
            fake = generate(z)
        with bf16_autocast(device, bf16):
            d_loss, _ = loss.discriminator(discriminator, real, fake)
        d_loss.backward()

    return g_step, d_step


def step_time(config: str, batch: int, bf16: bool, device: torch.device, repeats: int) -> dict:
    """Median G-step and D-step seconds of a named GAN config."""
    from imgtx.gan.cli import build_gan

    torch.manual_seed(0)
    generator, discriminator = (m.train() for m in build_gan(config, device=device))
    c = generator.config
    g_step, d_step = gan_steps(generator, discriminator, batch, c.image_size, c.latent_dim,
                               device, bf16)
    g_seconds = median_seconds(g_step, device, repeats)
    d_seconds = median_seconds(d_step, device, repeats)
    return {"batch": batch, "g_step_seconds": g_seconds, "d_step_seconds": d_seconds}


def train_step_memory(config: str, checkpoint: bool, recipe_batch: int,
                      device: torch.device) -> dict:
    """Peak CUDA memory of one D step then one G step (fp32) at the recipe batch, halving the
    batch until it fits."""
    from imgtx.gan.cli import build_gan

    batch = recipe_batch
    while batch >= 1:
        out_of_memory = False
        try:
            torch.manual_seed(0)
            generator, discriminator = (m.train() for m in build_gan(
                config, device=device, checkpoint_blocks=checkpoint))
            c = generator.config
            g_step, d_step = gan_steps(generator, discriminator, batch, c.image_size,
                                       c.latent_dim, device, bf16=False)
            sync(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            d_step()
            g_step()
            sync(device)
            peak = torch.cuda.max_memory_allocated(device)
            return {"batch": batch, "recipe_batch": recipe_batch,
                    "fits_recipe_batch": batch == recipe_batch,
                    "peak_mb": peak / 2**20, "peak_mb_above_models": (peak - base) / 2**20,
                    "step_seconds": time.perf_counter() - start}
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            generator = discriminator = g_step = d_step = None
            torch.cuda.empty_cache()
            batch //= 2
    raise RuntimeError(f"{config}: even batch 1 runs out of memory")


def random_image_folder(root: Path, count: int, size: int) -> Path:
    """``count`` PNGs of uniform random pixels, ``size`` x ``size``, in ``root/train``."""
    import numpy as np
    from PIL import Image

    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return root


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state (each imgtx Run makes its own Accelerator)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train_on_random_images(config: str, steps: int, batch: int, seconds: float,
                           device: torch.device) -> dict:
    """``imgtx gan train`` (train_gan) in bf16 on random images for ``steps`` D steps or
    ``seconds``, whichever ends first. A non-finite loss stops the run (TrainingDiverged); the
    curve is the run's logged running mean of the D loss. ``run_seconds`` includes building
    the models and saving the checkpoint and the export."""
    from imgtx.gan.configs import gan_entry
    from imgtx.gan.train import settings_from_registry, train_gan

    entry = gan_entry(config)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_gan_"))
    try:
        data = random_image_folder(scratch / "data", max(4 * batch, 64), entry.config.image_size)
        settings = settings_from_registry(
            entry.train, out=str(scratch / "run"), data=str(data), batch_size=batch,
            max_steps=steps, minutes=seconds / 60, mixed_precision="bf16",
            eval_every=max(2, steps // 6), checkpoint_every=0, num_samples=0,
            cpu=device.type != "cuda", seed=0)
        reset_accelerate()
        start = time.perf_counter()
        # The run's progress bar and messages would drown the check's own lines.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            train_gan(entry.config, entry.discriminator, settings)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in
                   (scratch / "run" / "metrics.jsonl").read_text().splitlines()]
    finally:
        reset_accelerate()
        shutil.rmtree(scratch, ignore_errors=True)
    last = records[-1]
    losses = {key: [r[key] for r in records if key in r] for key in ("d_loss", "g_loss")}
    finite = all(math.isfinite(v) for values in losses.values() for v in values)
    return {"steps": last["step"], "batch": batch, "mixed_precision": "bf16",
            "d_loss": last.get("d_loss"), "g_loss": last.get("g_loss"),
            "d_loss_curve": losses["d_loss"], "run_seconds": wall,
            "ok": finite and bool(losses["d_loss"])}


def find_official(given: str | None) -> Path | None:
    """A VITA-Group/TransGAN clone: ``given``, or a folder in the tree (two levels down) that
    holds ``models_search/ViT_custom_rp.py``."""
    if given:
        return Path(given)
    for marker in sorted(ROOT.glob("*/models_search/ViT_custom_rp.py")) + sorted(
            ROOT.glob("*/*/models_search/ViT_custom_rp.py")):
        if ".venv" not in marker.parts:
            return marker.parent.parent
    return None


def official_step_time(path: Path, batch: int, device: torch.device, repeats: int) -> dict:
    """The official CIFAR-10 G and D steps (bench_gan.load_official; their loss ``wgangp-eps``
    is WGANGPLoss with ``drift_of_mean``), and ours beside them, interleaved per repeat."""
    import bench_gan

    from imgtx.gan.losses import WGANGPLoss

    their_g, their_d, their_args = bench_gan.load_official(str(path))
    their_g, their_d = their_g.to(device), their_d.to(device)
    theirs = gan_steps(their_g, their_d, batch, their_args.img_size, their_args.latent_dim,
                       device, bf16=False, generate=lambda z: their_g(z, 0),
                       loss=WGANGPLoss(drift_of_mean=True))
    ours = step_time("transgan-cifar10", batch, False, device, repeats)
    return {"batch": batch, "official_g_step_seconds": median_seconds(theirs[0], device, repeats),
            "official_d_step_seconds": median_seconds(theirs[1], device, repeats),
            "ours_g_step_seconds": ours["g_step_seconds"],
            "ours_d_step_seconds": ours["d_step_seconds"]}


def gan(ctx) -> None:
    """Part 3: step time (fp32, bf16), 256^2 memory, a bf16 training run, the official code."""
    from imgtx.gan.configs import gan_entry

    dry = ctx.dry_run
    config, batch, repeats = ("transgan-tiny", 4, 1) if dry else ("transgan-cifar10", 64, 5)
    for precision in ("fp32", "bf16"):
        ctx.run(f"step_time/{config}/{precision}", functools.partial(
            step_time, config, batch, precision == "bf16", ctx.device, repeats),
            need_s=1 if dry else 10)
    steps, train_batch = (6, 4) if dry else (300, 64)
    ctx.run(f"train_bf16_random_data/{config}", lambda: train_on_random_images(
        config, steps, train_batch, min(ctx.left() - 5, 8 if dry else 60), ctx.device),
        need_s=2 if dry else 25)
    for name in ("transgan-celebahq256", "transgan-church256"):
        for checkpoint in (False, True):
            label = f"memory/{name}/{'checkpoint_blocks' if checkpoint else 'plain'}"
            ctx.run(label, functools.partial(train_step_memory, name, checkpoint,
                                             gan_entry(name).train["batch_size"], ctx.device),
                    need_s=10, cuda_only=True)
    official = find_official(ctx.options.get("official"))
    missing = None if official else ("no official TransGAN clone in the tree (a folder with "
                                     "models_search/ViT_custom_rp.py); pass --official PATH")
    ctx.run("official_transgan/step_time", functools.partial(
        official_step_time, official, 8 if dry else 64, ctx.device, repeats),
        need_s=2 if dry else 20, missing=missing)


# --------------------------------------------------------------------------------------------
# 4. Likelihood model
# --------------------------------------------------------------------------------------------


def train_speed(config: str, backend: str, bf16: bool, device: torch.device,
                repeats: int) -> dict:
    """Training positions/s at the config's recipe batch: loss (bits/dim), backward, Adam."""
    from imgtx.configs import CONFIGS, get_config
    from imgtx.model import ImageTransformer
    from imgtx.train import image_transformer_loss

    torch.manual_seed(0)
    model = ImageTransformer(get_config(config), backend=backend).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    batch = CONFIGS[config].train["batch_size"]
    size = model.config.image_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)

    def step() -> None:
        with bf16_autocast(device, bf16):
            loss = image_transformer_loss(model, {"image": images})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_seconds(step, device, repeats)
    positions = batch * model.config.sequence_length
    return {"batch": batch, "step_seconds": seconds, "positions_per_second": positions / seconds}


def load_model(config: str, device: torch.device):
    """``small`` from the shipped checkpoint when present; otherwise random weights."""
    from imgtx.configs import get_config
    from imgtx.model import ImageTransformer

    if config == "small" and (SMALL_CHECKPOINT / "config.json").is_file():
        return ImageTransformer.from_pretrained(str(SMALL_CHECKPOINT), device=device).eval(), \
            SMALL_CHECKPOINT.name
    torch.manual_seed(0)
    return ImageTransformer(get_config(config)).to(device).eval(), "random weights"


def sampling_speed(config: str, batch: int, device: torch.device) -> dict:
    """Cached sampling images/s (bench_sampling.timed_decode), after a warm-up decode."""
    import bench_sampling

    from imgtx.configs import get_config
    from imgtx.model import ImageTransformer
    from imgtx.sampling import decode

    model, weights = load_model(config, device)
    decode(ImageTransformer(get_config("small", image_size=2)).to(device).eval(), batch)
    seconds, _, _ = bench_sampling.timed_decode(model, batch, seed=0, use_cache=True)
    return {"batch": batch, "weights": weights, "seconds": seconds["wall"],
            "images_per_second": batch / seconds["wall"]}


def eval_speed(config: str, data: str, limit: int | None, batch: int,
               device: torch.device) -> dict:
    """``imgtx eval-bpd`` throughput: evaluate_model's images/s (model forward passes)."""
    from imgtx.eval.bits_per_dim import evaluate_model

    model, weights = load_model(config, device)
    result = evaluate_model(model, data, split="test", limit=limit, batch_size=batch,
                            baselines=False, progress=False, device=str(device))
    return {"data": data, "weights": weights, "num_images": result["num_images"],
            "batch": batch, "bits_per_dim": result["bits_per_dim"],
            "images_per_second": result["images_per_second"]}


def likelihood(ctx) -> None:
    """Part 4: training positions/s per backend, sampling images/s, eval-bpd images/s."""
    dry = ctx.dry_run
    xformers = xformers_missing()
    configs = ["tiny"] if dry else ["imagenet32-cat-1d", "small"]
    repeats, need = (1, 1) if dry else (3, 8)

    def train(config: str, backend: str) -> None:
        for precision in ("fp32", "bf16"):
            label = f"train/{config}/{backend}/{precision}"
            if backend != "blocked" and not ctx.cuda:  # xformers: CUDA; flex: no CPU backward
                ctx.record(label, "skipped", "no CUDA")
                continue
            ctx.run(label, functools.partial(train_speed, config, backend, precision == "bf16",
                                             ctx.device, repeats),
                    need_s=need, missing=xformers if backend == "xformers" else None)

    # FlexAttention last: its first call per shape compiles (tens of seconds on a GPU).
    for config in configs:
        for backend in BACKENDS:
            if backend != "flex":
                train(config, backend)
    sampling = [("tiny", 2)] if dry else [("small", 64), ("imagenet32-cat-1d", 16)]
    for config, batch in sampling:
        ctx.run(f"sample_cached/{config}", functools.partial(
            sampling_speed, config, batch, ctx.device), need_s=need)
    evaluations = [("tiny", "builtin:photos", 16, 8)] if dry else [
        ("small", "builtin:photos32", None, 64), ("imagenet32-cat-1d", "builtin:photos32",
                                                   None, 16)]
    for config, data, limit, batch in evaluations:
        ctx.run(f"eval_bpd/{config}/{data}", functools.partial(
            eval_speed, config, data, limit, batch, ctx.device), need_s=need)
    for config in configs:
        train(config, "flex")
