"""Training STrans on labelled digits: a conditional ``strans-tiny`` on ``builtin:digits`` at
16x16 through ``imgtx gan train``, class samples through ``imgtx gan sample --class-label``, the
residual norm-ratio probe of ``imgtx.gan.ratio_logging``, and the shipped-checkpoint script."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from imgtx.cli import main
from imgtx.data import image_loader, load_images
from imgtx.gan.configs import gan_entry
from imgtx.gan.losses import make_loss
from imgtx.gan.ratio_logging import RatioProbe, measure_ratios
from imgtx.gan.sample import load_generator
from imgtx.gan.step import GANStep
from imgtx.gan.train import GANTrainSettings, build_models
from imgtx.training import EMASettings, Run, Schedule

ROOT = Path(__file__).parents[1]
TINY = gan_entry("strans-tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two steps of a class-conditional strans-tiny on real digits at 16x16."""
    out = tmp_path_factory.mktemp("strans")
    assert main(["gan", "train", "--config", "strans-tiny", "--data", "builtin:digits",
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--threads", "1",
                 "--num-samples", "0", "--loss", "hinge", "--set", "num_classes=10"]) == 0
    return out / "final"


def png_pixels(folder: Path) -> torch.Tensor:
    """The PNGs of ``folder`` in name order as ``(N, 3, H, W)`` uint8."""
    return torch.stack([torch.from_numpy(np.array(PIL.Image.open(path).convert("RGB")))
                        .permute(2, 0, 1) for path in sorted(folder.glob("*.png"))])


def test_cli_sample_class_label_writes_pngs_of_that_class(trained, tmp_path, capsys):
    generator = load_generator(str(trained))
    for label in (3, 4):
        assert main(["gan", "sample", "--model", str(trained), "--num", "5", "--class-label",
                     str(label), "--out-dir", str(tmp_path / str(label)), "--seed", "1"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"] == 5
        pixels = png_pixels(tmp_path / str(label))
        assert pixels.shape == (5, 3, 16, 16)
        assert torch.equal(pixels, generator.generate(5, labels=label, seed=1))
    # the label matters: same latents (seed 1), other class, other images
    assert not torch.equal(png_pixels(tmp_path / "3"), png_pixels(tmp_path / "4"))


def test_a_sampler_that_ignores_the_class_label_is_caught(trained, tmp_path, monkeypatch):
    """Negative control: a ``gan sample`` whose generator draws class 0 whatever
    ``--class-label`` says fails the pixel check above."""
    generator = load_generator(str(trained))
    expected = generator.generate(5, labels=3, seed=1)
    generate = type(generator).generate
    monkeypatch.setattr(type(generator), "generate", lambda model, num, labels=None, **kwargs:
                        generate(model, num, labels=0, **kwargs))
    assert main(["gan", "sample", "--model", str(trained), "--num", "5", "--class-label", "3",
                 "--out-dir", str(tmp_path / "3"), "--seed", "1"]) == 0
    assert not torch.equal(png_pixels(tmp_path / "3"), expected)


def test_class_label_out_of_range_is_a_user_error(trained, tmp_path, capsys):
    code = main(["gan", "sample", "--model", str(trained), "--num", "2", "--class-label", "10",
                 "--out-dir", str(tmp_path / "x")])
    assert code == 2 and "10 classes" in capsys.readouterr().err


def conditional_run(tmp_path: Path, every: int | None, steps: int = 3):
    """strans-tiny with 10 classes on 16x16 digits, on a bare Run, with or without the probe."""
    settings = GANTrainSettings(out=str(tmp_path), max_steps=steps, batch_size=4, eval_every=0,
                                checkpoint_every=0, seed=3)
    run = Run(settings)
    g_config = copy.deepcopy(TINY.config)
    g_config.num_classes = 10
    G, D = build_models(g_config, TINY.discriminator)
    optimizers = {name: torch.optim.Adam(model.parameters(), 1e-3, betas=(0.0, 0.99))
                  for name, model in (("G", G), ("D", D))}
    source = load_images("builtin:digits", split="train", image_size=16, seed=3, limit=16)
    run.prepare({"G": G, "D": D}, optimizers, {n: Schedule(0, "constant") for n in optimizers},
                {"G": EMASettings(1000)}, data=image_loader(source, 4, shuffle=True))
    step = GANStep(make_loss("hinge"), 1, 5.0, G.config.latent_dim, 10)
    if every is not None:
        step = RatioProbe(step, every, probe_size=4)
    run.fit(step)
    return run, step


def test_ratio_probe_records_every_sublayer_without_changing_training(tmp_path):
    plain, _ = conditional_run(tmp_path / "plain", None)
    probed, probe = conditional_run(tmp_path / "probed", every=2)
    for name in ("G", "D"):  # the probe uses its own latents and no gradients
        for a, b in zip(plain.unwrap(name).parameters(), probed.unwrap(name).parameters()):
            assert torch.equal(a, b)
        assert probed.unwrap(name).training  # train mode restored
        curves = json.loads((tmp_path / "probed" / f"ratios_{name}.json").read_text())
        # strans-tiny: G 3 layers, D 2 layers, each with attn and ffn; probes at steps 0 and 2.
        assert len(curves) == {"G": 6, "D": 4}[name]
        assert all([s for s, _ in points] == [0, 2] for points in curves.values())
        assert all(v > 0 for points in curves.values() for _, v in points)
        assert (tmp_path / "probed" / f"ratios_{name}.png").exists()
    assert probe.latent_dim == TINY.config.latent_dim  # the wrapped step's attributes


def test_measure_ratios_matches_a_hand_computed_ratio():
    G, _ = build_models(TINY.config, TINY.discriminator)
    z = torch.randn(2, TINY.config.latent_dim)
    layer = G.stages[0][0].layer
    seen = {}
    hook = layer.attn.register_forward_hook(lambda m, i, o: seen.setdefault("branch", o))
    pre = layer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    ratios = measure_ratios(G, z)
    hook.remove()
    pre.remove()
    expected = seen["branch"].norm() / seen["x"].norm()  # identity shortcut, no activation
    assert ratios["stages.0.0.attn"] == pytest.approx(float(expected), rel=1e-5)
    assert G.training


def test_training_script_exports_a_class_grid(tmp_path):
    spec = importlib.util.spec_from_file_location("train_strans_digits",
                                                  ROOT / "scripts" / "train_strans_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    export = tmp_path / "export"
    script.main(["--config", "strans-tiny", "--set", "num_classes=10", "--max-steps", "2",
                 "--batch-size", "4", "--ratio-every", "1", "--eval-every", "1",
                 "--num-samples", "0", "--threads", "1", "--out", str(tmp_path / "run"),
                 "--export", str(export)])
    for name in ("config.json", "model.safetensors", "training_curve.jsonl", "ratios_D.png",
                 "ratios_G.json", "class_grid.png", "train_command.txt"):
        assert (export / name).exists(), name
    # 10 rows (one per class) of 10 samples, 16 px + 2 px padding, enlarged x2.
    assert PIL.Image.open(export / "class_grid.png").size == (2 * (10 * 18 + 2),) * 2
