"""Two GAN recipes on the photo corpus at equal CPU time, judged by FID/KID against its val split.

    python scripts/photo_gan_race.py paper   --cpu-minutes 90 --out runs/race/paper   --seed 0
    python scripts/photo_gan_race.py toolkit --cpu-minutes 90 --out runs/race/toolkit --seed 0
    python scripts/photo_gan_race.py yardstick              # the floor and extractor checks
    python scripts/photo_gan_race.py plot --runs runs/race/paper runs/race/toolkit --out docs
    python scripts/photo_gan_race.py export --runs runs/race/toolkit \
        --out checkpoints/strans-corpus32 [--best [--select-on train]]
    python scripts/photo_gan_race.py paper --cpu-minutes 0.33 --out /tmp/race  # a smoke run
    python scripts/photo_gan_race.py toolkit6 --cpu-minutes 240 --out runs/race/toolkit6 --extend

Each run trains one recipe of :data:`RECIPES` on ``runs/photo_corpus`` (``train`` split; build it
with ``scripts/fetch_photo_corpus.sh``) in one process on one thread, until its **process CPU
time** spent training reaches the budget (``time.process_time``: other jobs on the machine do not
change how much training a budget buys; the CPU time of the FID ticks is not counted). Every
``--tick-minutes`` CPU-minutes, and at 0 and at the end, the EMA generator is measured against
``val`` (``--fid-samples`` samples and val crops, ``imgtx-small`` features) beside the floor
(as many ``train`` crops against the same val crops): one JSON line per tick in
``OUT/race.jsonl``, a sample grid per tick in ``OUT/race_samples/``, and a final JSON line on
stdout. ``OUT/final`` is the EMA generator (``imgtx gan eval --model OUT/final``). ``--extend``
continues a finished run from its checkpoint (weights, optimisers, EMA, data order) up to a larger
total budget; its CPU-minutes count on from the run's last tick.

``plot`` draws FID against CPU-minutes of the runs into ``OUT/photo_gan_race.png`` (floor
dashed), copies each run's last sample grid to ``OUT/photo_gan_race_<run>.png`` and writes 64
val crops at the same scale to ``OUT/photo_gan_race_val.png``.

``export`` ships a run's EMA generator (``OUT/final``) as a checkpoint folder: the model, its
discriminator, the race log (``race.jsonl``), the last sample grid, 64 real ``val`` crops
(``val_crops.png``, one pixel per pixel, for side-by-side views offline) and the command. Every
tick also saves its EMA generator in ``OUT/ticks/``; ``export --best`` ships the tick with the
lowest val FID (checkpoint selection, as StyleGAN's reported snapshots: say so beside its FID);
with ``--select-on train`` each tick's generator is measured against ``train`` crops instead and
the lowest ships, so val plays no part in the choice (``selection.json``).

``yardstick`` prints the floor and the feature-extractor checks of docs/gan.md: FID of val crops
against blurred and noised copies of themselves, and FID between crop sets of one photo against
that between different photos.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from imgtx.errors import UserError
from imgtx.eval.fid import frechet_distance, kernel_inception_distance
from imgtx.gan.base import labels_in_blocks
from imgtx.gan.evaluate import KID_SUBSETS, evaluate_generator, reference_statistics

DATA = "runs/photo_corpus"
FEATURES = "imgtx-small"

# (a) TransGAN's CIFAR-10 recipe as the registry gives it (transgan-cifar10: VITA-Group/TransGAN
# @6b85440 exps/cifar_train.py): WGAN-GP with the drift term, Adam(1e-4, betas (0, 0.99)),
# clipping at 5, n_critic 4, D batch 64, G batch 128, EMA half-life 500 kimg with warm-up 0.1,
# DiffAugment translation,cutout,color. Only the networks are scaled down, keeping the
# layout of ViT_custom_rp (global attention, PixelShuffle between stages, latent 256) and of
# ViT_custom_scale2_rp_noise (two scales, patch 2): G width 1024 -> 192 with 2/1/0 blocks
# instead of 5/4/2, D width 384 -> 64 with 1/1 blocks instead of 3/3 (the shipped
# transgan-photos32-small's sizes; at width 256 with blocks 2/2/1, one global block over the
# 1,024 tokens of 32x32, the first paper-recipe step took 32 CPU-seconds).
# (b) The toolkit's recipe. Each choice and its source:
# - STrans-G/D (Xu et al. 2021, arXiv 2110.13107): Swin windows of 8 from the 16x16 stage and
#   a stride-2 stem in D, so no stage attends over 1,024 tokens (the step that costs most here).
# - Hinge loss, one D step per G step, no gradient penalty (Miyato et al. 2018 with SNGAN's
#   n_critic 1; pilots in docs/gan.md: WGAN-GP's double backward halved the G steps bought).
# - Adam 2e-4, betas (0, 0.99) (Zhang et al. 2019 SAGAN-style rates, StyleGAN2's betas).
# - DiffAugment translation,color (Zhao et al. 2020, arXiv 2006.10738: the policy they use
#   with little data; cutout hides half of a 32x32 texture crop).
# - EMA half-life 2 kimg with warm-up 0.05 (Karras et al. 2020 ema_kimg scaled to batch 32 as
#   StyleGAN2-ADA does for small batches, and the 2k of the shipped photos32 run).
# - D frozen during the G step (isolate_d). TransGAN's loop (functions.py::train) leaves the G
#   loss's gradient in D's .grad for D's next step; with the hinge loss at n_critic 1 that
#   gradient, -E[D(G(z))], cancels (in expectation) the fake term of D's loss, +E[D(G(z))] while
#   D(G(z)) > -1, so D only pushes D(real) up and G climbs a D that no longer learns: the first
#   race's toolkit run went from FID 47 to 2,231 in 10 CPU-minutes, d_real 2.39 and d_fake 2.46,
#   64 identical cyan squares. The paper recipe keeps the official loop.
# - Identity residuals in D: they beat the skip projections on FID in the digits ablation
#   (docs/strans.md, one seed, 400 steps), as in strans-digits32-cond.
# (b2) The toolkit recipe with three generator changes for texture. The first toolkit run's
# samples were flat patches on an 8-pixel grid: their mean absolute step across rows and columns
# at multiples of 8 was 3.2 times the step elsewhere (1.03 in real crops).
# - The 32x32 stage gets two blocks, a regular-window one and a shifted-window one (Liu et al.
#   2021, Swin, sec. 3.2). With one block, its 8x8 windows never exchange information, and each
#   window came out as a patch with its own colour: the 8-pixel grid.
# - StyleGAN's noise inputs at every stage's input (Karras et al. 2019, arXiv 1812.04948,
#   sec. 2): stochastic detail such as grain comes from per-pixel noise, not from the latent.
# - upsample="norm_bilinear": LayerNorm and Linear per token before the bilinear x2, not after,
#   so interpolated tokens are not renormalised one by one (same parameters as StyleSwin's).
# (b3) toolkit2 with two changes against its mode hopping (FID 15 -> 23 -> 15 -> 30 -> 38 -> 21
# at the 15-minute ticks; most late samples one mauve crop):
# - Lazy R1 on real images, gamma 1 every 16 D steps (Mescheder et al. 2018, "Which training
#   methods for GANs actually converge?": gradient penalties on real data make the simultaneous
#   updates converge locally; lazy as StyleGAN2, Karras et al. 2020 sec. 3.1). toolkit2's final
#   D had R1 = 0.57 on val crops, so gamma 1 weighs about 0.3 beside a hinge loss near 2.
# - EMA half-life 10 kimg, StyleGAN2-ADA's ema_kimg at batch 32 (Karras et al. 2020b, train.py
#   ``ema_kimg = batch * 10 / 32``), so the EMA generator averages over G's hops instead of
#   following them (still capped at 0.05 x images seen: 7.9 kimg at the end of 90 minutes).
# Tried and stopped at 30 CPU-minutes: FID 27.2 at 15 (toolkit2: 15.1) and 58.5 at 30 (23.2),
# samples in two colours with 4-pixel blocks. gamma 1 was a guess; R1 is kept as an option.
# (b4) toolkit2 with two changes against the mode dropping (no blue, grey or orange crops in
# toolkit2's last grid, while val has all three):
# - MSGAN's mode-seeking term, weight 0.5 (Mao et al. 2019, arXiv 1903.05628; their weight 1,
#   which overshot the variety of real digits here): two latents' images are pushed apart in
#   proportion to the latents' distance, over all pairs of the D step's batch.
# - EMA half-life 10 kimg, as in (b3).
# (b5) toolkit2 with the two time-scale update rule against the mode hopping: G at 1e-4, D at
# 4e-4 (Heusel et al. 2017, arXiv 1706.08500; the rates of SAGAN, Zhang et al. 2019, sec. 5,
# and BigGAN). A slower G gives D time to follow it, so G cannot hop to a mode D has forgotten.
# (b6) toolkit5 with the EMA half-life of (b3)/(b4), 10 kimg (StyleGAN2-ADA's ema_kimg at batch
# 32): toolkit5's G still hopped (FID 10.0 -> 15.6 -> 8.5 -> 16.3 at 75..120 CPU-minutes), and a
# longer average over G's weights smooths what the 2 kimg EMA followed.
# (b7) toolkit6 with both learning rates held for the first half of the CPU budget and then
# falling linearly to 0 at its end ("anneal": the fraction of the budget over which they fall):
# CycleGAN's schedule (Zhu et al. 2017, arXiv 1703.10593, sec. 4: constant for the first half,
# linear decay to zero over the second), and TransGAN's ``LinearLrDecay`` to 0 (official
# utils.py). toolkit6's G hopped between modes at FID 10 to 20 from tick to tick; with a step
# size that goes to 0, G and D stop where they are instead of hopping on.
# (b8) toolkit7 conditioned on the photo each crop was cut from (8 training photos, one class
# each; sampling cycles through them, as the crops are balanced across photos). toolkit7's grids
# cover a few photos and miss others (no grey pier, no leaf blades): the generator drops modes.
# A label from the data itself fixes that: self-conditioned GANs (Liu et al. 2020, arXiv
# 2006.10496) cluster unlabelled data and condition on the cluster against mode collapse; here the
# source photo is a free, exact cluster. G: AdaNorm-T on the trunk (Xu et al. 2021, the placement
# their conditional-generator figure favours); D: the projection head (Miyato & Koyama 2018), no
# auxiliary classifier (its class loss narrowed the variety within a class on the digits here).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "config": "transgan-cifar10",
        "generator": {"latent_dim": 256, "dim": 192, "depths": (2, 1, 0)},
        "discriminator": {"dim": 64, "embed_dims": (48, 16), "depths": ((1,), (1,))},
        "settings": {},  # the registry recipe as it is
    },
    "toolkit": {
        "config": "strans-cifar10",
        "generator": {"latent_dim": 128, "dims": (256, 128, 64, 32), "depths": (1, 2, 2, 1),
                      "heads": (4, 4, 2, 1), "window": 8, "swin_from": 16, "mlp_ratio": 2.0},
        "discriminator": {"stem_stride": 2, "dims": (64, 128, 128), "depths": (2, 2),
                          "heads": (2, 4), "window": 8, "mlp_ratio": 2.0,
                          "residual": "identity", "diffaug": "translation,color"},
        "settings": {"loss": "hinge", "loss_options": {}, "n_critic": 1, "lr": 2e-4,
                     "betas": (0.0, 0.99), "batch_size": 32, "g_batch_size": 32,
                     "clip_grad_norm": 5.0, "ema_kimg": 2.0, "ema_warmup": 0.05,
                     "isolate_d": True},
    },
}
RECIPES["toolkit2"] = {
    **RECIPES["toolkit"],
    "generator": {**RECIPES["toolkit"]["generator"], "depths": (1, 2, 2, 2), "noise": True,
                  "upsample": "norm_bilinear"},
}

RECIPES["toolkit3"] = {
    **RECIPES["toolkit2"],
    "settings": {**RECIPES["toolkit2"]["settings"], "ema_kimg": 10.0, "r1_gamma": 1.0,
                 "r1_every": 16},
}

RECIPES["toolkit4"] = {
    **RECIPES["toolkit2"],
    "settings": {**RECIPES["toolkit2"]["settings"], "ema_kimg": 10.0, "mode_seeking": 0.5},
}

RECIPES["toolkit5"] = {
    **RECIPES["toolkit2"],
    "settings": {**RECIPES["toolkit2"]["settings"], "lr": 1e-4, "lr_d": 4e-4},
}

RECIPES["toolkit6"] = {
    **RECIPES["toolkit5"],
    "settings": {**RECIPES["toolkit5"]["settings"], "ema_kimg": 10.0},
}

RECIPES["toolkit7"] = {**RECIPES["toolkit6"], "anneal": 0.5}

RECIPES["toolkit8"] = {
    **RECIPES["toolkit7"],
    "generator": {**RECIPES["toolkit7"]["generator"], "class_embed_dim": 64, "adanorm": "trunk"},
    "labels": "photo",  # num_classes: the training photos, set from the data
}


def photo_of(name: str) -> str:
    """The source photo of a crop file (``make_photo_crops.py`` writes ``PHOTO-KIND-NNNN.png``)."""
    return name.rsplit("-", 2)[0]


def by_photo(split: str = "train") -> tuple[str, list[str]]:
    """``DATA``'s ``split`` with one class subfolder per source photo, as hard links in
    ``DATA_by_photo/split/PHOTO/`` (labels sorted by photo name, as the folder loader numbers
    them); returns the view's path and the photo names, label 0 first."""
    import os
    import shutil

    files = sorted((Path(DATA) / split).glob("*.png"))
    if not files:
        raise UserError(f"{DATA}/{split} holds no crops: run scripts/fetch_photo_corpus.sh")
    root = Path(DATA + "_by_photo")
    for file in files:
        target = root / split / photo_of(file.name) / file.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, target)
            except OSError:  # another file system, or no hard links there
                shutil.copy(file, target)
    return str(root), sorted({photo_of(file.name) for file in files})


def recipe_inputs(entry: dict[str, Any]) -> tuple[str, dict, dict, list[str] | None]:
    """A recipe's training data and its G and D config fields; a photo-conditional recipe
    trains on :func:`by_photo`'s view, with one class per photo (returned, label 0 first)."""
    if entry.get("labels") != "photo":
        return DATA, entry["generator"], entry["discriminator"], None
    data, photos = by_photo("train")
    return (data, {**entry["generator"], "num_classes": len(photos)},
            {**entry["discriminator"], "num_classes": len(photos)}, photos)


def floor(count: int, seed: int = 0) -> dict[str, float]:
    """FID/KID of ``count`` train crops against ``count`` val crops: what the training data
    itself scores (:func:`imgtx.gan.evaluate.evaluate_generator`'s ``floor_*``)."""
    from imgtx.eval.features import get_extractor

    extractor = get_extractor(FEATURES, "cpu")
    val = reference_statistics(DATA, "val", 32, count, FEATURES, extractor)
    train = reference_statistics(DATA, "train", 32, count, FEATURES, extractor)
    subset = min(1000, max(2, min(len(val.features), len(train.features)) // 2))
    kid, kid_std = kernel_inception_distance(train.features, val.features, KID_SUBSETS, subset,
                                             seed)
    return {"floor_fid": frechet_distance(train.mu, train.sigma, val.mu, val.sigma),
            "floor_kid": kid, "floor_kid_std": kid_std}


class CPUBudget:
    """Wraps the GAN step: stops the run once ``budget_s`` CPU-seconds of training are spent and
    measures the EMA generator every ``tick_s`` of them (their own CPU time not counted)."""

    def __init__(self, step, budget_s: float, tick_s: float, out: Path, fid_samples: int,
                 seed: int, reference: dict[str, float], spent_s: float = 0.0,
                 anneal_s: float = 0.0):
        self.step, self.budget_s, self.tick_s = step, budget_s, tick_s
        self.anneal_s = anneal_s  # the last CPU-seconds, over which the LRs fall linearly to 0
        self.out, self.fid_samples, self.seed, self.reference = out, fid_samples, seed, reference
        self.start: float | None = None
        self.spent_s = spent_s  # CPU-seconds of training before this process (``--extend``)
        self.not_training = 0.0  # CPU-seconds of ticks
        # an extended run's last tick was taken where it stopped: the next is one tick later
        self.next_tick = spent_s + tick_s if spent_s else 0.0
        self.stopped_at: float | None = None  # CPU-seconds of training when the budget ran out
        self.run = None

    def used(self) -> float:
        """CPU-seconds spent training so far."""
        if self.stopped_at is not None:
            return self.stopped_at
        return self.spent_s + time.process_time() - self.start - self.not_training

    def lr_factor(self) -> float:
        """The learning rates' multiplier now: 1 until the last ``anneal_s`` CPU-seconds of the
        budget, then falling linearly to 0 at its end."""
        if not self.anneal_s:
            return 1.0
        return min(1.0, max(0.0, (self.budget_s - self.used()) / self.anneal_s))

    def tick(self, run) -> dict[str, Any]:
        """Measure the EMA G against val; append to race.jsonl and draw a grid."""
        from imgtx.images import save_grid

        begin = time.process_time()
        used = self.used()
        generator = run.ema_model("G")
        result = evaluate_generator(generator, DATA, "val", self.fid_samples, FEATURES,
                                    seed=self.seed)
        record = {"cpu_minutes": round(used / 60, 3), "step": run.state.step,
                  "kimg": run.state.images_seen / 1000, "lr_factor": round(self.lr_factor(), 4),
                  **{k: result[k] for k in ("fid", "kid", "kid_std")}, **self.reference}
        with torch.no_grad():
            # a photo-conditional G: one photo per row, as the val crops' grid has them
            labels = labels_in_blocks(64, generator.config.num_classes)
            grid = generator.generate(64, labels=labels, seed=self.seed)
        (self.out / "race_samples").mkdir(parents=True, exist_ok=True)
        name = f"cpu_{used / 60:07.2f}min"
        save_grid(grid, self.out / "race_samples" / f"{name}.png", scale=2)
        generator.save_pretrained(self.out / "ticks" / name)  # for ``export --best``
        run.unwrap("D").save_pretrained(self.out / "ticks" / name / "discriminator")
        record["snapshot"] = f"ticks/{name}"
        with open(self.out / "race.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        self.not_training += time.process_time() - begin
        return record

    def __call__(self, run, batch):
        if self.start is None:
            self.start, self.run = time.process_time(), run
        if self.used() >= self.next_tick:
            self.tick(run)
            self.next_tick += self.tick_s
        if self.anneal_s:
            # set before the step; the run's own (constant) LambdaLR schedules write the
            # base rates back after each optimiser step
            factor = self.lr_factor()
            for optimizer in run.optimizers.values():
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
        figures = self.step(run, batch)
        if self.used() >= self.budget_s:
            self.stopped_at = self.used()
            # The run loop stops once its step count reaches max_steps: this step is the last.
            run.settings.max_steps = run.state.step + 1
        return figures


def race(recipe: str, cpu_minutes: float, out: Path, seed: int, tick_minutes: float,
         fid_samples: int, extend: bool = False) -> dict[str, Any]:
    """Train ``recipe`` for ``cpu_minutes`` of process CPU time; returns the final figures.
    ``extend`` resumes the finished run in ``out`` and trains on until ``cpu_minutes`` in all."""
    from imgtx.gan.train import train_named

    torch.set_num_threads(1)
    spent_s = 0.0
    if extend:
        if not (out / "checkpoint").is_dir() or not (out / "race.jsonl").exists():
            raise SystemExit(f"--extend: {out} holds no finished race run with a checkpoint/")
        last = json.loads((out / "race.jsonl").read_text().splitlines()[-1])
        saved = json.loads((out / "settings.json").read_text())["train"]
        if saved["seed"] != seed:
            raise SystemExit(f"--extend: {out} ran with --seed {saved['seed']}, not {seed}")
        spent_s = last["cpu_minutes"] * 60
        if spent_s >= cpu_minutes * 60:
            raise SystemExit(f"--extend: {out} already trained {last['cpu_minutes']:.1f} "
                             f"CPU-minutes; give a larger --cpu-minutes")
        reference = {k: last[k] for k in last if k.startswith("floor_")}
    else:
        if (out / "race.jsonl").exists():
            raise SystemExit(f"{out} already holds a race run; give a new --out (or --extend)")
        out.mkdir(parents=True, exist_ok=True)
        reference = floor(fid_samples, seed)
    entry = RECIPES[recipe]
    data, generator, discriminator, photos = recipe_inputs(entry)
    if photos:
        (out / "classes.json").write_text(json.dumps(photos) + "\n")
    budget = CPUBudget(None, cpu_minutes * 60, tick_minutes * 60, out, fid_samples, seed,
                       reference, spent_s, entry.get("anneal", 0.0) * cpu_minutes * 60)

    def wrap(step):
        budget.step = step
        return budget

    final = train_named(entry["config"], generator=generator, discriminator=discriminator,
                        wrap_step=wrap,
                        **{**entry["settings"], "data": data, "out": str(out), "seed": seed,
                           "threads": 1, "max_steps": 10**9, "fid_every": 0,
                           "eval_every": 50, "checkpoint_every": 0, "num_samples": 64,
                           "cpu": True, "resume": extend})
    record = budget.tick(budget.run)  # the EMA G as exported to final/
    return {"recipe": recipe, "seed": seed, "cpu_minutes_budget": cpu_minutes, **record,
            "fid_samples": fid_samples, "final": str(final)}


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(N, 3, H, W)`` uint8 with reflect padding (kernel radius 3 sigma)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).float()
    pixels = images.float()
    pad = torch.nn.functional.pad(pixels, (radius,) * 4, mode="reflect")
    rows = torch.nn.functional.conv2d(pad.reshape(-1, 1, *pad.shape[2:]),
                                      kernel.view(1, 1, 1, -1))
    both = torch.nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1))
    return both.reshape(images.shape).round().clamp(0, 255).to(torch.uint8)


def noised(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Add Gaussian noise of ``std`` grey levels, clipped to [0, 255]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def yardstick(count: int) -> dict[str, Any]:
    """The floor, and FID of val crops against blurred / noised copies and between photos."""
    from imgtx.eval.features import compute_features, get_extractor
    from imgtx.eval.fid import fid_from_features
    from imgtx.gan.evaluate import real_images

    extractor = get_extractor(FEATURES, "cpu")
    result: dict[str, Any] = floor(count)
    val = real_images(DATA, "val", 32, count)
    clean = compute_features(extractor, val)

    def distances(changed: torch.Tensor) -> dict[str, float]:
        features = compute_features(extractor, changed)
        kid, kid_std = kernel_inception_distance(clean, features, KID_SUBSETS,
                                                 min(1000, max(2, len(val) // 2)))
        return {"fid": fid_from_features(clean, features), "kid": kid, "kid_std": kid_std}

    result["blur"] = {sigma: distances(blurred(val, sigma)) for sigma in (0.5, 1.0, 1.5, 2.0, 3.0)}
    result["noise"] = {std: distances(noised(val, std)) for std in (4, 8, 16, 32, 64)}
    # Photos apart: the val crops of each training photo in two halves (even/odd files).
    names = sorted(p.name for p in (Path(DATA) / "val").glob("*.png"))
    photos = sorted({photo_of(name) for name in names})
    halves = {}
    for photo in photos:
        files = [n for n in names if n.startswith(photo + "-")]
        images = torch.stack([torch.from_numpy(np.array(PIL.Image.open(
            Path(DATA) / "val" / f).convert("RGB"))).permute(2, 0, 1) for f in files])
        features = compute_features(extractor, images)
        halves[photo] = (features[0::2], features[1::2])
    same = [fid_from_features(*halves[p]) for p in photos]
    different = [fid_from_features(halves[p][0], halves[q][1])
                 for p in photos for q in photos if p != q]
    result["same_photo_fid"] = dict(zip(photos, same))
    result["different_photo_fid_min"] = min(different)
    result["different_photo_fid_median"] = float(np.median(different))
    result["same_photo_fid_max"] = max(same)
    result["crops_per_half"] = len(halves[photos[0]][0])
    return result


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]  # matplotlib's tab10


def plot(runs: list[Path], out: Path) -> dict[str, str]:
    """FID (log scale) against CPU-minutes of each run (Pillow, 760x400), the last grids and real
    crops."""
    import shutil

    from PIL import ImageDraw

    from imgtx.gan.evaluate import real_images
    from imgtx.images import save_grid

    out.mkdir(parents=True, exist_ok=True)
    curves = {run.name: [json.loads(line) for line in (run / "race.jsonl").open()]
              for run in runs}
    points = [r for records in curves.values() for r in records]
    # log FID: the curves span 0.5 (floor) to 200, and the late ticks differ by a few units
    top = max(max(r["fid"] for r in points), 1e-9) * 1.2
    low = max(min(min(r["fid"], r.get("floor_fid", r["fid"])) for r in points), 1e-3) / 1.2
    right = max(max(r["cpu_minutes"] for r in points), 1e-9)
    if len(curves) > len(COLOURS):
        raise UserError(f"plot draws at most {len(COLOURS)} runs, got {len(curves)}")
    image = PIL.Image.new("RGB", (760, 400), "white")
    draw = ImageDraw.Draw(image)
    left, bottom, width, height = 60, 360, 560, 330

    def xy(minutes: float, fid: float) -> tuple[float, float]:
        up = np.log(max(fid, low) / low) / np.log(top / low)
        return left + width * minutes / right, bottom - height * up

    draw.line([(left, bottom - height), (left, bottom), (left + width, bottom)], fill="black")
    for fid in (1, 2, 5, 10, 20, 50, 100, 200):
        if low <= fid <= top:
            y = xy(0, fid)[1]
            draw.line([(left - 4, y), (left, y)], fill="black")
            draw.text((left - 30, y - 6), f"{fid}", fill="black")
    for frac in (0, 0.5, 1):
        draw.text((left + width * frac - 10, bottom + 8), f"{right * frac:.3g}", fill="black")
    draw.text((left + width // 2 - 60, bottom + 24), "CPU-minutes of training", fill="black")
    draw.text((left + 5, 8), "FID against val (imgtx-small), log scale; dashed: floor",
              fill="black")
    for index, ((name, records), colour) in enumerate(zip(curves.items(), COLOURS)):
        draw.line([xy(r["cpu_minutes"], r["fid"]) for r in records], fill=colour, width=2)
        floor_y = xy(0, records[-1]["floor_fid"])[1]
        for x in range(left, left + width, 12):
            draw.line([(x, floor_y), (x + 6, floor_y)], fill=colour)
        # a legend right of the plot: name and last FID, one line each (curves cross at the end)
        y = bottom - height + 20 * index
        draw.line([(left + width + 12, y + 6), (left + width + 30, y + 6)], fill=colour, width=2)
        draw.text((left + width + 36, y), f"{name}: FID {records[-1]['fid']:.1f}", fill=colour)
    image.save(out / "photo_gan_race.png")
    written = {"curve": str(out / "photo_gan_race.png")}
    for run in runs:
        last = sorted((run / "race_samples").glob("*.png"))[-1]
        shutil.copy(last, out / f"photo_gan_race_{run.name}.png")
        written[run.name] = str(out / f"photo_gan_race_{run.name}.png")
    save_grid(real_images(DATA, "val", 32, 64), out / "photo_gan_race_val.png", scale=2)
    written["val"] = str(out / "photo_gan_race_val.png")
    return written


def export(run: Path, target: Path, command: str, best: bool = False, select_on: str = "val",
           samples: int = 1024) -> dict[str, str]:
    """Copy ``run/final`` to ``target`` with the race log, the last grid and 64 val crops; with
    ``best``, the EMA generator of the tick with the lowest FID (``ticks/``) and its grid
    instead. ``select_on="val"`` takes the FIDs the ticks logged against val (a choice made on
    val: its FID is no longer an unbiased figure for val); ``"train"`` measures every tick's
    generator against ``samples`` train crops instead (``selection.json``), so that val is not
    used to choose and the chosen tick's val FID stays a fair figure."""
    import shutil

    from imgtx.gan.evaluate import real_images
    from imgtx.images import save_grid
    from imgtx.training.checkpoints import export_run

    if best:
        ticks = [json.loads(line) for line in (run / "race.jsonl").open()]
        ticks = [t for t in ticks if (run / t.get("snapshot", "-")).is_dir()]
        if not ticks:
            raise UserError(f"{run} has no tick snapshots (ticks/): run it with this script")
        if select_on == "train":
            from imgtx.gan.base import Generator

            for tick in ticks:
                generator = Generator.from_pretrained(run / tick["snapshot"])
                tick["train_fid"] = evaluate_generator(generator, DATA, "train", samples,
                                                       FEATURES)["fid"]
            chosen = min(ticks, key=lambda t: t["train_fid"])
        elif select_on == "val":
            chosen = min(ticks, key=lambda t: t["fid"])
        else:
            raise UserError(f"select on 'val' or 'train', got {select_on!r}")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run / chosen["snapshot"], target)
        shutil.copy(run / "metrics.jsonl", target / "training_curve.jsonl")
        grid = run / "race_samples" / (Path(chosen["snapshot"]).name + ".png")
        command += (f"  # then export --best --select-on {select_on}: the tick at "
                    f"{chosen['cpu_minutes']:.0f} CPU-minutes")
    else:
        export_run(run / "final", target)
        grid = sorted((run / "race_samples").glob("*.png"))[-1]
    shutil.copy(run / "race.jsonl", target / "race.jsonl")
    if (run / "classes.json").exists():  # a photo-conditional run: label i is photo i
        shutil.copy(run / "classes.json", target / "classes.json")
    shutil.copy(grid, target / "samples.png")
    save_grid(real_images(DATA, "val", 32, 64), target / "val_crops.png")
    if best:
        (target / "selection.json").write_text(json.dumps(
            {"select_on": select_on, "chosen": chosen, "ticks": ticks}, indent=1) + "\n")
    (target / "train_command.txt").write_text(command + "\n")
    return {"export": str(target), "tick": str(grid.stem) if best else "final"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=[*RECIPES, "yardstick", "plot", "export"])
    parser.add_argument("--runs", type=Path, nargs="+", help="run folders to plot")
    parser.add_argument("--cpu-minutes", type=float, default=90.0,
                        help="process CPU time spent training (ticks not counted)")
    parser.add_argument("--tick-minutes", type=float, default=15.0,
                        help="CPU-minutes between FID/KID ticks")
    parser.add_argument("--fid-samples", type=int, default=1024,
                        help="samples (and val / train crops) per tick")
    parser.add_argument("--out", type=Path, help="run folder (recipes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extend", action="store_true",
                        help="continue the finished run in --out up to --cpu-minutes in all")
    parser.add_argument("--best", action="store_true",
                        help="export: the tick with the lowest FID instead of the end")
    parser.add_argument("--select-on", choices=("val", "train"), default="val",
                        help="export --best: the FIDs logged against val (optimistic for val), "
                             "or each tick measured against train crops (val left unseen)")
    args = parser.parse_args()
    if not (Path(DATA) / "val").is_dir():
        raise SystemExit(f"{DATA}/val is missing: run scripts/fetch_photo_corpus.sh, or "
                         f"scripts/make_photo_crops.py --photos runs/photo_corpus_src/photos "
                         f"--out {DATA} --add-val")
    if args.what == "yardstick":
        print(json.dumps(yardstick(args.fid_samples)))
        return
    if args.what == "export":
        if not args.runs or len(args.runs) != 1 or args.out is None:
            raise SystemExit("export needs one --runs folder and --out")
        run = args.runs[0]
        last = json.loads((run / "race.jsonl").read_text().splitlines()[-1])
        seed = json.loads((run / "settings.json").read_text())["train"]["seed"]
        recipe = run.name if run.name in RECIPES else "<recipe>"
        command = (f"python scripts/photo_gan_race.py {recipe} --cpu-minutes "
                   f"{last['cpu_minutes']:.0f} --seed {seed} --out {run}")
        print(json.dumps(export(run, args.out, command, args.best, args.select_on,
                                args.fid_samples)))
        return
    if args.what == "plot":
        print(json.dumps(plot(args.runs or [], args.out or Path("docs"))))
        return
    if args.out is None:
        raise SystemExit("give --out DIR for the run")
    print(json.dumps(race(args.what, args.cpu_minutes, args.out, args.seed, args.tick_minutes,
                          args.fid_samples, args.extend)))


if __name__ == "__main__":
    main()
