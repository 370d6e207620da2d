"""The shipped checkpoints load strictly and still do what docs/benchmarks.md says they do, on a
small fixed subset of the builtin:photos32 test split (the full figures take minutes)."""

from __future__ import annotations

import ast
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported

from pathlib import Path

import pytest
import torch

from imgtx import CONFIGS, ImageTransformer
from imgtx.data import load_images
from imgtx.eval.image_metrics import psnr
from imgtx.resample import upscale_bicubic
from imgtx.sr import SuperResolutionTransformer
from imgtx.sr.configs import CONFIGS as SR_CONFIGS
from imgtx.sr.model import make_low_res
from imgtx.sr.upscale import upscale_batch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
IMAGE_TRANSFORMER = ROOT / "checkpoints" / "imgtx-photos32-small"
SUPER_RESOLUTION = ROOT / "checkpoints" / "sr-photos-8to32-small"
SUBSET = range(0, 395, 25)  # 16 test images spread over both photos
REGRESSION_SUBSET = range(0, 384, 6)  # 64 test images spread over both photos

# Mean bits/dim of the shipped checkpoints on REGRESSION_SUBSET, computed with the code of commit
# bab5406 (before TransformerLayer got named sub-layers, the SR anchor moved to imgtx.sr.anchor
# and the attention patterns took over their dispatch): in a `git worktree add /tmp/ref bab5406`
# copied into one `imgtx` package (sr/, eval/ and gan/ as imgtx/sr, imgtx/eval, imgtx/gan) and
# imported with PYTHONPATH pointing there, `model.bits_per_dim(targets).mean()` under no_grad,
# one CPU thread, float32, printed as float64.
REFERENCE_BITS_PER_DIM = {"imgtx-photos32-small": 4.468289562501013,
                          "sr-photos-8to32-small": 3.893828598316759}


@pytest.fixture(scope="module")
def targets() -> torch.Tensor:
    source = load_images("builtin:photos32", "test", 32)
    return torch.stack([source[i]["image"] for i in SUBSET])  # (16, 3, 32, 32)


@pytest.fixture(scope="module")
def models():
    return (ImageTransformer.from_pretrained(IMAGE_TRANSFORMER).eval(),
            SuperResolutionTransformer.from_pretrained(SUPER_RESOLUTION).eval())


@torch.no_grad()
def test_conditioning_on_the_input_lowers_bits_per_dim(models, targets):
    """docs/benchmarks.md: 3.862 conditional vs 4.472 unconditional over all 395 test images
    (4.157 vs 4.821 on this subset)."""
    image_transformer, super_resolution = models
    unconditional = image_transformer.bits_per_dim(targets).mean().item()
    conditional = super_resolution.bits_per_dim(make_low_res(targets, super_resolution.config),
                                                targets).mean().item()
    assert 3.5 < unconditional < 5.5
    assert conditional < unconditional - 0.3, (conditional, unconditional)


@pytest.mark.slow
def test_greedy_upscale_does_not_lose_to_bicubic(models, targets):
    """At temperature 0 the anchor rule keeps the shipped model at bicubic's PSNR (plain argmax
    lost 1.7 dB to drift: docs/sampling.md); so does the model fine-tuned on the corpus."""
    _, model = models
    corpus = SuperResolutionTransformer.from_pretrained(ROOT / "checkpoints" /
                                                        "sr-corpus-8to32-small").eval()
    low_res = make_low_res(targets, model.config)
    bicubic = psnr(upscale_bicubic(low_res, 4), targets)
    for candidate in (model, corpus):
        output = upscale_batch(candidate, low_res, temperature=0)
        assert psnr(output, targets) >= bicubic - 1e-4


@torch.no_grad()
def test_bits_per_dim_are_those_of_the_code_that_trained_the_checkpoints(models):
    """Refactoring the core must not move the shipped models' likelihoods (<= 1e-6 bits/dim)."""
    source = load_images("builtin:photos32", "test", 32)
    targets = torch.stack([source[i]["image"] for i in REGRESSION_SUBSET])  # (64, 3, 32, 32)
    image_transformer, super_resolution = models
    unconditional = image_transformer.bits_per_dim(targets).double().mean().item()
    low_res = make_low_res(targets, super_resolution.config)
    conditional = super_resolution.bits_per_dim(low_res, targets).double().mean().item()
    assert abs(unconditional - REFERENCE_BITS_PER_DIM["imgtx-photos32-small"]) <= 1e-6
    assert abs(conditional - REFERENCE_BITS_PER_DIM["sr-photos-8to32-small"]) <= 1e-6


def script_recipe(path: Path) -> dict:
    """The ``TrainSettings(...)`` keywords and the ``train(..., decoder_init=...)`` of a training
    script, with ``args.x`` replaced by the default of its ``--x`` option (read with ast)."""
    tree = ast.parse(path.read_text())
    defaults, recipe = {}, {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
        keywords = {k.arg: k.value for k in node.keywords}
        if name == "add_argument" and "default" in keywords:
            option = node.args[0].value.lstrip("-").replace("-", "_")
            defaults[option] = ast.literal_eval(keywords["default"])
        if name in ("TrainSettings", "train"):
            recipe.update(keywords)

    def value(node):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return defaults[node.attr]
        return ast.literal_eval(node)

    return {key: value(node) for key, node in recipe.items()
            if key in ("batch_size", "lr", "warmup", "schedule", "decoder_init")}


@pytest.mark.parametrize("script, entry", [
    ("train_photos32_small.py", CONFIGS["small"]),
    ("train_sr_photos.py", SR_CONFIGS["photos-8to32-small"]),
], ids=["imgtx-small", "sr-photos-8to32-small"])
def test_registry_suggests_the_recipe_of_the_shipped_checkpoint(script, entry):
    recipe = script_recipe(ROOT / "scripts" / script)
    assert {"batch_size", "lr", "warmup", "schedule"} <= set(recipe)
    assert entry.train == recipe


def test_fixed_point_upscale_of_the_shipped_model_equals_subpixel_by_subpixel(models, targets):
    """The default temperature-0 upscale (fixed-point passes from the anchors) returns what the
    KV-cached decoder gives one subpixel at a time, on real photos."""
    _, model = models
    low_res = make_low_res(targets[:6], model.config)
    stats = {}
    fast = upscale_batch(model, low_res, temperature=0, stats=stats)
    slow = upscale_batch(model, low_res, temperature=0, fixed_point=False)
    assert torch.equal(fast, slow)
    assert stats["row_passes"] < 3 * len(low_res)  # the point: a few passes, not 3,072 steps


@pytest.mark.parametrize("card", sorted((ROOT / "checkpoints").glob("*/README.md")),
                         ids=lambda p: p.parent.name)
def test_every_shipped_model_card_imports_what_it_says(card):
    """The Usage block of each card names importable modules and names (a card written before
    the package became one namespace said ``from sr.model import ...``)."""
    import importlib

    lines = [line for line in card.read_text().splitlines() if line.startswith("from ")]
    assert lines, f"{card} has no usage import"
    for line in lines:
        tree = ast.parse(line)
        node = tree.body[0]
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{card}: {line}"


@torch.no_grad()
def test_the_shipped_photo_model_reads_its_neighbours_and_keeps_its_likelihood():
    """checkpoints/imgtx-photos-dmol-small (the demo's model): neighbour inputs trained away from
    zero, means relative to the median edge predictor, the same bits/dim as when it was exported
    (mean over REGRESSION_SUBSET, one thread), and the KV-cached decoder's outputs equal to the
    whole model's on its sample."""
    from imgtx.sampling import decode

    shipped = ROOT / "checkpoints" / "imgtx-photos-dmol-small"
    model = ImageTransformer.from_pretrained(shipped).eval()
    assert model.config.neighbour_inputs and model.neighbours.weight.abs().max() > 0
    assert model.config.predictor == "med"
    source = load_images("builtin:photos32", "test", 32)
    targets = torch.stack([source[i]["image"] for i in REGRESSION_SUBSET])
    assert abs(model.bits_per_dim(targets).double().mean().item() - 4.605763684026897) <= 1e-5
    one = model.bits_per_dim(targets[:4])
    zeroed = ImageTransformer.from_pretrained(ROOT / "checkpoints" / "imgtx-photos-dmol-small")
    zeroed.neighbours.weight.zero_()
    assert (zeroed.eval().bits_per_dim(targets[:4]) - one).abs().mean() > 0.01  # they matter
    images, outputs = decode(model, 2, return_outputs=True,
                             generator=torch.Generator().manual_seed(0))
    # the outputs seen while decoding with the cache are the whole model's on the finished sample
    assert (outputs - model.to_sequence(model(images))).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def block_means_model():
    path = ROOT / "checkpoints" / "sr-corpus-8to32-dmol"
    return SuperResolutionTransformer.from_pretrained(path).eval()


@torch.no_grad()
def test_the_block_means_model_is_the_photo_model_conditioned_exactly(block_means_model,
                                                                      targets):
    """checkpoints/sr-corpus-8to32-dmol: without its block means it is exactly the photo model
    (no training step); with them, below it on every image."""
    model = block_means_model
    photo = ImageTransformer.from_pretrained(ROOT / "checkpoints" / "imgtx-photos-dmol-small")
    low_res = make_low_res(targets, model.config)
    unconditional = photo.eval().bits_per_dim(targets)
    conditional = model.bits_per_dim(low_res, targets)
    model.config.block_means = False
    try:
        unrestricted = model.bits_per_dim(low_res, targets)
    finally:
        model.config.block_means = True
    assert torch.allclose(unrestricted, unconditional, atol=1e-5)
    assert (conditional < unconditional - 1e-3).all()


@pytest.mark.slow
def test_the_block_means_model_beats_bicubic_at_temperature_0(block_means_model, targets):
    """Its greedy upscale (fixed-point passes from the back-projected anchors) is the one-pixel-
    at-a-time result, downscales exactly to the input and beats bicubic's PSNR."""
    model = block_means_model
    low_res = make_low_res(targets, model.config)
    fast = upscale_batch(model, low_res, temperature=0)
    assert torch.equal(make_low_res(fast, model.config), low_res)
    assert psnr(fast, targets) > psnr(upscale_bicubic(low_res, 4), targets) + 0.1
    slow = upscale_batch(model, low_res[:2], temperature=0, fixed_point=False)
    assert torch.equal(fast[:2], slow)
