"""Loss in forward, generation on the model, and decoding policies.

* ``forward(..., with_loss=True)`` returns the outputs and each image's bits/dim, equal to a
  float64 reference written out here; ``imgtx.likelihood.bits_per_dim`` is the one place where
  nats become bits/dim.
* ``ImageTransformer.generate`` / ``SuperResolutionTransformer.generate`` are the sampling entry
  points; the old functions give the same images.
* ``imgtx.sampling.decode`` walks the positions in order and a policy chooses every value; the
  core decoder has no family-specific parameter.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import pytest
import torch

from imgtx.configs import get_config
from imgtx.model import ImageTransformer, LikelihoodOutput
from imgtx.sampling import Draw, Position, decode, decode_fixed_point, sample
from imgtx.sr.anchor import StayNearAnchor
from imgtx.sr.configs import get_config as sr_config
from imgtx.sr.model import SuperResolutionTransformer, make_low_res
from imgtx.sr.upscale import upscale_batch, upscale_image

ROOT = Path(__file__).resolve().parent.parent


def tiny(**overrides) -> ImageTransformer:
    torch.manual_seed(0)
    return ImageTransformer(get_config("tiny", image_size=4, **overrides)).eval()


def images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
def test_forward_with_loss_returns_the_bits_per_dim_of_the_reference(likelihood):
    model = tiny(likelihood=likelihood)
    batch = images(3, 4)
    with torch.no_grad():
        result = model(batch, with_loss=True)
        outputs = model(batch)
    assert isinstance(result, LikelihoodOutput)
    assert torch.equal(result.outputs, outputs)
    pixels = batch.long().permute(0, 2, 3, 1)  # (B, H, W, 3)
    if likelihood == "cat":  # float64 log-softmax at each subpixel's value
        logp = torch.log_softmax(outputs.double(), dim=-1)
        nats = -logp.gather(-1, pixels.flatten(1)[..., None])[..., 0].sum(1)
    else:  # the DMOL pmf is tested against brute force in test_likelihood.py
        from imgtx.likelihood import dmol_nll_per_pixel

        nats = dmol_nll_per_pixel(outputs.double(), pixels.flatten(1, 2)).sum(1)
    reference = nats / (3 * 4 * 4 * math.log(2))
    assert torch.allclose(result.bits_per_dim.double(), reference, atol=1e-5)
    assert torch.allclose(model.bits_per_dim(batch), result.bits_per_dim)
    assert result.loss.item() == pytest.approx(result.bits_per_dim.mean().item())


def test_the_bits_per_dim_normalisation_is_written_once():
    """Code dividing by ``ln 2`` appears once: in imgtx.likelihood.bits_per_dim."""
    pattern = re.compile(r"\.log\(2|\bLN2\b")  # nats / ln 2 (log2 of a pmf is another thing)
    found = []
    for folder in ("imgtx", "sr", "eval"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}")
    assert len(found) == 1 and found[0].startswith("imgtx/likelihood.py:"), found
    source = (ROOT / "imgtx" / "likelihood.py").read_text().splitlines()
    line = int(found[0].split(":")[1])
    above = [text for text in source[:line] if text.startswith("def ")]
    assert above[-1].startswith("def bits_per_dim(")


def test_decoders_take_a_policy_and_nothing_family_specific():
    for function in (decode, decode_fixed_point):
        names = set(inspect.signature(function).parameters)
        assert "policy" in names and not names & {"rule", "constraint"}


class Recording:
    """A policy that writes ``value(t)`` at position t and records what it was shown."""

    def __init__(self):
        self.seen: list[tuple[int, list[int]]] = []

    def choose(self, outputs: torch.Tensor, position: Position) -> torch.Tensor:
        t = position.index.start
        assert outputs.shape[:2] == (2, 1) and position.rows is None
        self.seen.append((t, position.values[0, :t].tolist()))
        return torch.full(outputs.shape[:2], (7 * t) % 256, dtype=torch.long)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "recompute"])
def test_decode_walks_every_position_once_in_order_and_feeds_the_choices_back(use_cache):
    model = tiny()
    policy = Recording()
    out = decode(model, 2, policy=policy, use_cache=use_cache)
    n = model.config.sequence_length
    assert [t for t, _ in policy.seen] == list(range(n))
    assert all(prefix == [(7 * s) % 256 for s in range(t)] for t, prefix in policy.seen)
    expected = torch.tensor([(7 * t) % 256 for t in range(n)]).view(4, 4, 3).permute(2, 0, 1)
    assert torch.equal(out, expected.expand(2, -1, -1, -1).to(torch.uint8))


@pytest.mark.parametrize("likelihood", ["cat", "dmol"])
def test_fixed_point_with_the_argmax_policy_is_greedy_decoding(likelihood):
    model = tiny(likelihood=likelihood)
    greedy = decode(model, 2, policy=Draw(likelihood, 0.0), use_cache=False)
    assert torch.equal(decode(model, 2, temperature=0), greedy)
    assert torch.equal(decode_fixed_point(model, images(2, 4, seed=5)), greedy)


def test_generate_is_sample_and_reproducible_for_a_seed():
    model = tiny()
    first = model.generate(3, seed=4, batch_size=2)
    assert first.shape == (3, 3, 4, 4) and first.dtype == torch.uint8
    assert torch.equal(first, model.generate(3, seed=4, batch_size=2))
    assert torch.equal(first, sample(model, 3, seed=4, batch_size=2, progress=False))
    assert not torch.equal(first, model.generate(3, seed=5, batch_size=2))
    generator = torch.Generator().manual_seed(4)
    assert torch.equal(first[:2], decode(model, 2, policy=Draw("cat", 1.0, generator)))


def test_generate_checks_class_labels():
    model = tiny(num_classes=3)
    assert model.generate(2, labels=1, seed=0).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="class-conditional"):
        model.generate(2, seed=0)


def sr_model(**overrides) -> SuperResolutionTransformer:
    torch.manual_seed(0)
    model = SuperResolutionTransformer(sr_config("tiny", input_size=2, **overrides)).eval()
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


@pytest.mark.parametrize("anchor", ["none", "bicubic"])
def test_super_resolution_generate_is_upscale_batch_and_tiles_other_sizes(anchor):
    model = sr_model(anchor=anchor)
    low = images(2, 2, seed=1)
    assert torch.equal(model.generate(low, temperature=0), upscale_batch(model, low,
                                                                         temperature=0))
    sampled = model.generate(low, temperature=1.0, seed=3)
    assert torch.equal(sampled, upscale_batch(model, low, temperature=1.0,
                                              generator=torch.Generator().manual_seed(3)))
    image = images(1, 5, seed=2)[0]  # 5x5: 3x3 tiles of 2x2, padded
    assert torch.equal(model.generate(image, temperature=0),
                       upscale_image(model, image, temperature=0))
    assert model.generate(image, temperature=0).shape == (3, 20, 20)  # scale 4


def test_super_resolution_loss_is_in_forward():
    model = sr_model(anchor="bicubic", block_means=True)
    high = images(2, 8, seed=4)
    low = make_low_res(high, model.config)
    result = model(low, high, with_loss=True)
    nats = model.nll(low, high).double().sum(1)
    assert torch.allclose(result.bits_per_dim.double(), nats / (3 * 64 * math.log(2)),
                          atol=1e-5)
    assert torch.equal(result.outputs, model(low, high))


def test_the_core_decoder_takes_a_policy_and_no_sr_parameters():
    """The stay-near-anchor rule enters the core decoder as a policy only: ``decode`` has no
    ``rule`` or ``constraint`` parameter."""
    import inspect

    from imgtx.sampling import decode_fixed_point

    model = sr_model(anchor="bicubic")
    low = images(2, 2, seed=1)
    anchors, context = model.anchors(low), model.encode(low)
    policy = StayNearAnchor(0.0, 0.0).policy(model.decoder.side_values(anchors, 2))  # argmax
    chosen = decode(model.decoder, 2, temperature=0, context=context, side=anchors, policy=policy)
    assert (chosen != anchors).sum() > 0  # the rule had choices to make
    for function in (decode, decode_fixed_point):
        assert not {"rule", "constraint"} & set(inspect.signature(function).parameters)
    with pytest.raises(TypeError):
        decode(model.decoder, 2, context=context, side=anchors, rule=StayNearAnchor(0.0, 0.0))
