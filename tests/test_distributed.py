"""Spec for several processes sharing one job (``torchrun --nproc_per_node 2``, gloo, CPU).

Two processes must really share the work: each takes its share of every global batch, DDP
averages the gradients, images are counted over both, only the main process writes, and an
evaluation counts every held-out image exactly once. The reference is one process with the
same global batch. Tiny ``tiny`` models on a folder of 8x8 images keep each job to seconds of
compute; most of the time is the start-up of the processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from imgtx.cli import main

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TRAIN = ["--config", "tiny", "--max-steps", "2", "--eval-every", "1", "--eval-images", "5",
         "--checkpoint-every", "0", "--threads", "1"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Datasets' cache in the temporary folder (also for the launched processes), and a blank
    accelerate state for the in-process reference runs."""
    import datasets
    from accelerate.state import AcceleratorState, GradientState

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    ENV["HF_DATASETS_CACHE"] = str(tmp_path / "hf-cache")
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def folder(tmp_path) -> Path:
    """12 training and 5 (an odd number) test images, 8x8 random RGB."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 5)):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            PIL.Image.fromarray(image).save(tmp_path / "data" / split / f"{i:02d}.png")
    return tmp_path / "data"


def torchrun(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "imgtx.cli", *argv]
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def fraction_differing(a: dict, b: dict, tolerance: float = 1e-6) -> float:
    """The fraction of all weights that differ by more than ``tolerance``."""
    differing = sum(int((a[k] - b[k]).abs().gt(tolerance).sum()) for k in a)
    return differing / sum(a[k].numel() for k in a)


def test_two_processes_share_the_batches_of_one_process(tmp_path, folder):
    shared = tmp_path / "two-by-2"
    result = torchrun("train", *TRAIN, "--data", str(folder), "--out", str(shared),
                      "--batch-size", "2", cwd=tmp_path)
    assert main(["train", *TRAIN, "--data", str(folder), "--out", str(tmp_path / "one-by-4"),
                 "--batch-size", "4"]) == 0
    assert main(["train", *TRAIN, "--data", str(folder), "--out", str(tmp_path / "one-by-2"),
                 "--batch-size", "2"]) == 0

    # Images seen count both processes: 2 processes x batch 2 x 2 steps.
    assert json.loads((shared / "progress.json").read_text())["images_seen"] == 8
    lines = (shared / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 2  # one line per evaluation, none twice
    shared_records = records(shared)
    assert [r["images_seen"] for r in shared_records] == [4, 8]
    for other in ("one-by-4", "one-by-2"):  # the schedule counts optimiser steps only
        assert [r["lr"] for r in shared_records] == [r["lr"] for r in records(tmp_path / other)]

    # DDP averages the gradients: 2 x batch 2 is 1 x batch 4, not 1 x batch 2.
    assert max_difference(weights(shared), weights(tmp_path / "one-by-4")) <= 1e-5
    assert max_difference(weights(shared), weights(tmp_path / "one-by-2")) > 1e-4
    # The held-out figure is gathered over both processes: every image once.
    assert shared_records[-1]["eval_bits_per_dim"] == pytest.approx(
        records(tmp_path / "one-by-4")[-1]["eval_bits_per_dim"], abs=1e-6)

    # Only the main process writes: the run holds the files of a one-process run, plus the
    # second process's RNG state that accelerate's save_state keeps for an exact resume.
    assert files(shared) - files(tmp_path / "one-by-4") == {"checkpoint/random_states_1.pkl"}
    assert files(tmp_path / "one-by-4") <= files(shared)
    assert result.stdout.count("exported") == 1 and result.stdout.count("model:") == 1


def test_eval_bpd_over_two_processes_counts_every_image_once(tmp_path, folder):
    from imgtx import ImageTransformer, get_config
    from imgtx.eval.bits_per_dim import evaluate_model

    torch.manual_seed(0)
    ImageTransformer(get_config("tiny")).save_pretrained(tmp_path / "model")
    result = torchrun("eval-bpd", "--model", str(tmp_path / "model"), "--data", str(folder),
                      "--batch-size", "2", "--json", "--threads", "1", "--no-baselines",
                      cwd=tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # the main process reports
    shared = json.loads(lines[0])
    alone = evaluate_model(str(tmp_path / "model"), str(folder), batch_size=2, baselines=False,
                           progress=False)
    assert shared["processes"] == 2
    assert shared["num_images"] == alone["num_images"] == 5  # 5 = 2 + 2 + 1 padded: once each
    assert shared["bits_per_dim"] == pytest.approx(alone["bits_per_dim"], abs=1e-6)


def test_a_gan_on_the_shared_run_shares_the_batches_too(tmp_path):
    """The toy G/D of tests/test_training.py: two optimisers, D frozen in the G step, noise
    drawn for the global batch and split (Run.this_process), and G's EMA."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import test_training
    finally:
        sys.path.pop(0)
    script = Path(test_training.__file__)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(tmp_path / "two-by-2"), "2"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for batch in (4, 2):
        run = test_training.make_run(tmp_path / f"one-by-{batch}", max_steps=3, batch_size=batch,
                                     eval_every=0)
        run.fit(test_training.gan_step)
        for name, ema in (("G", False), ("D", False), ("G", True)):
            run.export(name, ema=ema)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    def exported(run: str, name: str) -> dict:
        return load_file(tmp_path / run / "run" / "final" / name / "model.safetensors")

    for name in ("G", "D", "G_ema"):
        shared = exported("two-by-2", name)
        assert max_difference(shared, exported("one-by-4", name)) <= 1e-5, name
        assert max_difference(shared, exported("one-by-2", name)) > 1e-4, name
    progress = json.loads((tmp_path / "two-by-2" / "run" / "progress.json").read_text())
    assert progress["images_seen"] == 3 * 2 * 2


def test_sr_eval_over_two_processes_equals_one_process(tmp_path, folder):
    """Bits/dim, greedy (temperature 0) PSNR/SSIM and the bicubic baseline, gathered over two
    processes, on 5 test images: the figures of one process, every image counted once. (At a
    temperature above 0 the draws depend on how the images are batched, so only temperature 0
    is comparable across process counts.)"""
    from imgtx.sr.configs import get_config as sr_config
    from imgtx.sr.evaluate import evaluate_model
    from imgtx.sr.model import SuperResolutionTransformer

    torch.manual_seed(0)
    SuperResolutionTransformer(sr_config("tiny")).save_pretrained(tmp_path / "sr")
    result = torchrun("sr", "eval", "--model", str(tmp_path / "sr"), "--data", str(folder),
                      "--batch-size", "2", "--temperature", "0", "--json", "--threads", "1",
                      cwd=tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # the main process reports
    shared = json.loads(lines[0])
    alone = evaluate_model(str(tmp_path / "sr"), str(folder), batch_size=2, temperature=0,
                           progress=False)
    assert shared["num_images"] == alone["num_images"] == 5
    for key in ("bits_per_dim", "bits_per_dim_ci95", "psnr", "ssim", "bicubic_psnr",
                "psnr_minus_bicubic"):
        assert shared[key] == pytest.approx(alone[key], abs=1e-5), key


GAN = ["gan", "train", "--config", "transgan-tiny", "--data", "builtin:digits", "--max-steps",
       "2", "--n-critic", "1", "--eval-every", "0", "--checkpoint-every", "0", "--num-samples",
       "0", "--threads", "1", "--seed", "1"]
# The default recipe: WGAN-GP (interpolation weights), DiffAugment and D's injected noise all draw
# per-image random numbers for the global batch (imgtx.training.draws), like the latents
# (Run.this_process), so two processes see exactly the numbers of one process with their batch.
DEFAULT_RECIPE: list[str] = []


def test_gan_train_on_two_processes_equals_one_process_with_their_batch(tmp_path):
    torchrun(*GAN, *DEFAULT_RECIPE, "--out", str(tmp_path / "two-by-2"), "--batch-size", "2",
             cwd=tmp_path)
    for batch in (4, 2):
        assert main([*GAN, *DEFAULT_RECIPE, "--out", str(tmp_path / f"one-by-{batch}"),
                     "--batch-size", str(batch)]) == 0
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    # Adam divides each step by sqrt(v): a weight whose gradient is nearly zero turns the rounding
    # difference of the all-reduce (two partial sums averaged) into a visible step. On some CPUs 3
    # of ~16k D weights move by ~1e-5 that way, so the check is "all but a few weights agree to
    # 1e-6, none by more than 5e-5"; the control (one process, batch 2) moves every weight ~5e-4.
    for part in ("", "discriminator"):  # G's EMA (the export) and D
        shared = load_file(tmp_path / "two-by-2" / "final" / part / "model.safetensors")
        alone = load_file(tmp_path / "one-by-4" / "final" / part / "model.safetensors")
        control = load_file(tmp_path / "one-by-2" / "final" / part / "model.safetensors")
        assert max_difference(shared, alone) <= 5e-5, part
        assert fraction_differing(shared, alone) <= 1e-3, part
        assert max_difference(shared, control) > 2e-4, part
        assert fraction_differing(shared, control) > 0.1, part
    progress = json.loads((tmp_path / "two-by-2" / "progress.json").read_text())
    assert progress["images_seen"] == 2 * 2 * 2


@pytest.mark.parametrize("draw, args", [("rand_for_batch", (3, 2)), ("randn_for_batch", (3,)),
                                        ("randint_for_batch", (-4, 5, 3, 1, 1))])
def test_draws_for_the_global_batch_give_each_process_its_share(draw, args, monkeypatch):
    """Two processes (faked) each keep their slice of the draws one process makes for both
    batches; one process draws what plain torch draws."""
    import imgtx.training.draws as draws

    function = getattr(draws, draw)
    plain = {"rand_for_batch": torch.rand, "randn_for_batch": torch.randn,
             "randint_for_batch": lambda low, high, *size: torch.randint(low, high, size)}[draw]
    torch.manual_seed(7)
    alone = function(*args)
    torch.manual_seed(7)
    assert torch.equal(alone, plain(*args))
    batch_at = 2 if draw == "randint_for_batch" else 0
    doubled = list(args)
    doubled[batch_at] *= 2
    torch.manual_seed(7)
    one_process = plain(*doubled)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(draws, "process_share", lambda rank=rank: (2, rank))
        torch.manual_seed(7)
        shares.append(function(*args))
    assert torch.equal(torch.cat(shares), one_process)


def test_gan_eval_over_two_processes_shares_the_samples_and_equals_one_process(tmp_path):
    """``imgtx gan eval`` under torchrun: each process makes every other batch of samples (10
    samples in batches of 4: batches 0 and 2 on process 0, batch 1 on process 1), the features
    are gathered, and FID/KID and the baselines are those of one process."""
    from imgtx.gan.cli import build_gan
    from imgtx.gan.evaluate import evaluate_generator

    torch.manual_seed(0)
    generator, _ = build_gan("transgan-tiny")
    generator.save_pretrained(tmp_path / "g")
    ENV["IMGTX_CACHE"] = str(tmp_path / "cache")  # the real statistics' cache, kept here
    try:
        result = torchrun("gan", "eval", "--model", str(tmp_path / "g"), "--data",
                          "builtin:photos32", "--num-samples", "10", "--batch-size", "4",
                          "--features", "random", "--baselines", "--json", "--threads", "1",
                          cwd=tmp_path)
    finally:
        del ENV["IMGTX_CACHE"]
    assert any((tmp_path / "cache").rglob("*")), "the main process cached the real statistics"
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # the main process reports
    shared = json.loads(lines[0])
    assert shared["processes"] == 2
    assert shared["samples_per_process"] == [6, 4]
    alone = evaluate_generator(type(generator).from_pretrained(tmp_path / "g"),
                               "builtin:photos32", num_samples=10, features="random",
                               baselines=True, batch_size=4, use_cache=False)
    for key in ("fid", "kid", "kid_std", "untrained_fid", "untrained_kid", "floor_fid"):
        assert shared[key] == pytest.approx(alone[key], rel=1e-6, abs=1e-9), key
