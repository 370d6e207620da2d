"""TransGAN models: official parameter counts, window attention against the dense reference,
a training step, checkpointing, Hub round trips and deterministic generation."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from imgtx.errors import UserError
from imgtx.gan.blocks import TransGANBlock
from imgtx.gan.cli import build_gan, register
from imgtx.gan.configs import TRANSGAN_CONFIGS, gan_entry
from imgtx.gan.losses import WGANGPLoss
from imgtx.gan.transgan import TransGANDiscriminator, TransGANGenerator, layer_kwargs
from imgtx.hub import CheckpointMismatchError, parameter_count

TINY = TRANSGAN_CONFIGS["transgan-tiny"]

# Counted by instantiating VITA-Group/TransGAN@6b85440 (CIFAR-10 and STL-10 exactly; the 256^2
# configs to 0.1M).
OFFICIAL = {
    "transgan-cifar10": (83_312_495, 10_210_400, 0.01, 0.02),
    "transgan-stl10": (168_466_623, 10_341_536, 0.01, 0.02),
    "transgan-celebahq256": (212.9e6, 13.3e6, 0.001, 0.005),
    "transgan-church256": (205.3e6, 17.8e6, 0.001, 0.005),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_counts_match_the_official_code(name: str) -> None:
    generator, discriminator = build_gan(name, device="meta")
    g_expected, d_expected, g_tol, d_tol = OFFICIAL[name]
    assert abs(parameter_count(generator) / g_expected - 1) <= g_tol
    assert abs(parameter_count(discriminator) / d_expected - 1) <= d_tol


def test_cifar10_and_stl10_counts_are_exact() -> None:
    for name in ("transgan-cifar10", "transgan-stl10"):
        generator, discriminator = build_gan(name, device="meta")
        assert (parameter_count(generator), parameter_count(discriminator)) == OFFICIAL[name][:2]


def test_gan_info_json(capsys) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["gan", "info", "--config", "transgan-cifar10", "--json"])
    assert args.func(args) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["generator_params"] == 83_312_495 and row["discriminator_params"] == 10_210_400
    assert row["generator"]["depths"] == [5, 4, 2]
    with pytest.raises(UserError, match="unknown GAN config"):
        gan_entry("transgan-imagenet")


@pytest.mark.parametrize("side,window,check_grad", [(64, 16, False), (32, 16, True),
                                                     (16, 0, True)])
def test_block_attention_equals_dense_masked_reference(side: int, window: int,
                                                       check_grad: bool) -> None:
    """Window attention at 64^2 tokens (gradients at 32^2), and global attention with a
    grid-sized relative bias, through the GAN block equal dense masked attention in float64."""
    torch.manual_seed(0)
    kwargs = dict(relative_bias=True, **layer_kwargs("ln"))
    fast = TransGANBlock(8, 2, 16, side, window, **kwargs).double()
    reference = TransGANBlock(8, 2, 16, side, window, backend="reference", **kwargs).double()
    with torch.no_grad():
        fast.rel_bias.table.normal_()  # a bias large enough to matter
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(1, side * side, 8, dtype=torch.float64, requires_grad=check_grad)
    out_fast, out_ref = fast(x), reference(x)
    assert torch.allclose(out_fast, out_ref, atol=1e-10)
    if check_grad:
        weights = torch.randn_like(out_ref)
        grad_fast = torch.autograd.grad((out_fast * weights).sum(), [x, fast.rel_bias.table])
        grad_ref = torch.autograd.grad((out_ref * weights).sum(), [x, reference.rel_bias.table])
        for a, b in zip(grad_fast, grad_ref):
            assert torch.allclose(a, b, atol=1e-9)
    if window:  # tokens in different windows do not see each other
        x2 = x.detach().clone()
        x2[:, -1] += 1.0  # the last token lies in the last window
        changed = (fast(x2) - fast(x.detach())).abs().sum(-1)[0]
        assert changed[: side * (side - window)].max() == 0


def _tiny_pair(**overrides):
    torch.manual_seed(0)
    g_config = dataclasses.replace(TINY.config, **overrides)
    d_fields = {k: v for k, v in overrides.items() if k in ("num_classes", "checkpoint_blocks")}
    d_config = dataclasses.replace(TINY.discriminator, **d_fields)
    return TransGANGenerator(g_config), TransGANDiscriminator(d_config)


def test_one_training_step_changes_both_networks() -> None:
    generator, discriminator = _tiny_pair(noise=True)
    before_g = {k: v.clone() for k, v in generator.state_dict().items()}
    before_d = {k: v.clone() for k, v in discriminator.state_dict().items()}
    opt_g = torch.optim.Adam(generator.parameters(), 1e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(discriminator.parameters(), 1e-3, betas=(0.0, 0.99))
    loss, z = WGANGPLoss(), torch.randn(4, TINY.config.latent_dim)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    d_loss, parts = loss.discriminator(discriminator, real, generator(z))
    d_loss.backward()
    opt_d.step()
    discriminator.zero_grad(set_to_none=True)
    discriminator.requires_grad_(False)
    loss.generator(discriminator, generator(z)).backward()
    opt_g.step()
    assert all(p.grad is None for p in discriminator.parameters())  # frozen: no new grads
    for model, before in ((generator, before_g), (discriminator, before_d)):
        params = dict(model.named_parameters())
        changed = [k for k in params if not torch.equal(params[k].detach(), before[k])]
        assert len(changed) == len(params), set(params) - set(changed)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())


def test_checkpointed_blocks_give_the_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    for extra in ({}, {"noise": True}):
        plain, _ = _tiny_pair(**extra)
        ckpt, _ = _tiny_pair(checkpoint_blocks=True, **extra)
        with torch.no_grad():
            for p in plain.parameters():
                if p.dim() == 0:
                    p.fill_(0.5)  # noise on, so its replay in the recomputation is tested
        ckpt.load_state_dict(plain.state_dict())
        z = torch.randn(2, TINY.config.latent_dim)
        torch.manual_seed(7)
        out_plain = plain(z)
        out_plain.square().sum().backward()
        torch.manual_seed(7)
        out_ckpt = ckpt(z)
        out_ckpt.square().sum().backward()
        assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
        for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


def test_checkpointing_in_batch_slices_is_exact(monkeypatch) -> None:
    import imgtx.gan.blocks as blocks

    plain, _ = _tiny_pair(noise=True)
    sliced, _ = _tiny_pair(noise=True, checkpoint_blocks=True)
    sliced.load_state_dict(plain.state_dict())
    block = sliced.stages[-1][0]
    monkeypatch.setattr(blocks, "CHECKPOINT_SCORE_BUDGET", block.scores_per_sample * 2)
    assert len(blocks._slices(5, block)) == 3  # batch 5 in slices of 2, 2, 1
    z = torch.randn(5, TINY.config.latent_dim)
    for model in (plain, sliced):
        torch.manual_seed(3)
        model(z).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), sliced.parameters()):
        # (noise strengths start at 0; with noise on, slices draw other, equally valid noise)
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


def test_checkpointed_discriminator_matches_through_the_gradient_penalty() -> None:
    """The penalty's double backward recomputes checkpointed blocks on the same SDPA path."""
    generator, plain = _tiny_pair()
    _, ckpt = _tiny_pair(checkpoint_blocks=True)
    ckpt.load_state_dict(plain.state_dict())
    z, real = torch.randn(2, TINY.config.latent_dim), torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        fake = generator(z)
    losses = []
    for model in (plain, ckpt):
        torch.manual_seed(5)  # same augmentations and interpolation weights
        loss, _ = WGANGPLoss().discriminator(model, real, fake)
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


def test_save_and_from_pretrained_round_trip_strictly(tmp_path) -> None:
    generator, discriminator = _tiny_pair(noise=True)
    z = torch.randn(3, TINY.config.latent_dim)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    for model, cls, inputs in ((generator, TransGANGenerator, z),
                               (discriminator, TransGANDiscriminator, images)):
        folder = tmp_path / cls.__name__
        model.save_pretrained(folder)
        loaded = cls.from_pretrained(folder)
        assert loaded.config == model.config
        model.eval()
        assert torch.equal(loaded(inputs), model(inputs))
        weights = load_file(folder / "model.safetensors")
        first = sorted(weights)[0]
        weights[first + "_renamed"] = weights.pop(first)
        save_file(weights, folder / "model.safetensors")
        with pytest.raises(CheckpointMismatchError):
            cls.from_pretrained(folder)


def test_generate_is_deterministic_uint8_and_restores_training_mode() -> None:
    generator, _ = _tiny_pair(noise=True)
    with torch.no_grad():
        for block in generator.stages[0]:
            block.layer.attn.strength.fill_(1.0)  # noise must not break determinism
    generator.train()
    first = generator.generate(5, seed=3, batch_size=2)
    assert first.shape == (5, 3, 32, 32) and first.dtype == torch.uint8
    torch.manual_seed(123)
    again = generator.generate(5, seed=3, batch_size=2)
    torch.manual_seed(0)
    assert torch.equal(first, generator.generate(5, seed=3, batch_size=2))
    assert torch.equal(first, again)
    assert not torch.equal(first, generator.generate(5, seed=4, batch_size=2))
    assert generator.training
    assert generator.config.latent_dim == 32 and generator.config.image_size == 32
    assert generator.config.num_classes == 0


def test_generate_without_noise_matches_forward() -> None:
    generator, _ = _tiny_pair()
    z = torch.randn(4, TINY.config.latent_dim, generator=torch.Generator().manual_seed(9))
    expected = ((generator.eval()(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(generator.generate(4, seed=9), expected)


def test_class_conditional_pair() -> None:
    """The label reaches G and D per sample: another label changes that sample's output only,
    and a batch gives each sample what it gets alone. (D in eval mode: no augmentation; its
    noise strength stays 0.)"""
    generator, discriminator = _tiny_pair(num_classes=3)
    generator.eval(), discriminator.eval()
    with torch.no_grad():
        for model in (generator, discriminator):  # zero-initialised conditioning layers
            for name, param in model.named_parameters():
                if not param.any() and not name.endswith("strength"):  # noise stays off
                    param.normal_(std=0.1)
        z = torch.randn(2, TINY.config.latent_dim, generator=torch.Generator().manual_seed(1))
        images = generator(z, torch.tensor([0, 2]))
        relabelled = generator(z, torch.tensor([1, 2]))
        assert not torch.allclose(images[0], relabelled[0], atol=1e-4)  # G reads the label
        torch.testing.assert_close(images[1], relabelled[1])  # of its own sample only
        torch.testing.assert_close(generator(z[1:], torch.tensor([2])), images[1:])
        scores = discriminator(images, torch.tensor([0, 2]))
        assert scores.shape == (2,)
        rescored = discriminator(images, torch.tensor([1, 2]))
        assert abs(scores[0] - rescored[0]) > 1e-4  # D reads the label
        torch.testing.assert_close(rescored[1], scores[1])
        torch.testing.assert_close(discriminator(images[1:], torch.tensor([2])), scores[1:])
    one, two = generator.generate(4, labels=1, seed=5), generator.generate(4, labels=2, seed=5)
    assert one.shape == (4, 3, 32, 32) and not torch.equal(one, two)
    with pytest.raises(UserError):
        generator(z)  # labels missing
    unconditional, _ = _tiny_pair()
    with pytest.raises(UserError):
        unconditional(z, torch.tensor([0, 2]))


def test_celeba_style_generator_and_discriminator_run() -> None:
    """Cross-attention to the latent embedding, bicubic and anti-alias updown upsampling,
    windows and noise (the 256^2 features) on a 32^2 model."""
    torch.manual_seed(0)
    g_config = dataclasses.replace(
        TINY.config, bottom_width=4, depths=(0, 1, 1, 1),
        upsample=("bicubic", "pixel_shuffle", "updown_pixel_shuffle"), windows=(0, 0, 8, 8),
        norm="pn", noise=True, latent_attention=True)
    d_config = dataclasses.replace(
        TINY.discriminator, embed_dims=(16, 16, 32), depths=((1,), (1, 1), (1,)),
        windows=((4,), (4, 0), (0,)), overlap_first=True, relative_bias=False, noise=False,
        diffaug="translation,erase_ratio,color,hue")
    generator, discriminator = TransGANGenerator(g_config), TransGANDiscriminator(d_config)
    fake = generator(torch.randn(2, g_config.latent_dim))
    assert fake.shape == (2, 3, 32, 32)
    out = discriminator(fake, augment=True)
    out.sum().backward()
    assert out.shape == (2,) and generator.latent_embed.weight.grad.abs().sum() > 0


def test_wrong_shapes_are_user_errors() -> None:
    generator, discriminator = _tiny_pair()
    with pytest.raises(UserError, match="latents"):
        generator(torch.randn(2, 7))
    with pytest.raises(UserError, match="images"):
        discriminator(torch.randn(2, 3, 16, 16))
    with pytest.raises(UserError):
        dataclasses.replace(TINY.config, windows=(0, 0, 12))
