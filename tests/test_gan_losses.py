"""GAN losses: the gradient penalty against a float64 autograd reference, closed forms for a
linear critic, and penalties through a transformer discriminator."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from imgtx.errors import UserError
from imgtx.gan.configs import TRANSGAN_CONFIGS
from imgtx.gan.losses import (
    HingeLoss,
    LogisticR1Loss,
    WGANGPLoss,
    gradient_penalty,
    make_loss,
    mode_seeking_term,
    r1_penalty,
)
from imgtx.gan.transgan import TransGANDiscriminator


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere."""

    def __init__(self, shape=(3, 4, 4), dtype=torch.float64) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(*shape, dtype=dtype))
        self.b = nn.Parameter(torch.tensor(0.3, dtype=dtype))

    def forward(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1) + self.b


def _tiny_discriminator(dtype=torch.float64) -> TransGANDiscriminator:
    torch.manual_seed(0)
    config = dataclasses.replace(TRANSGAN_CONFIGS["transgan-tiny"].discriminator, diffaug="")
    return TransGANDiscriminator(config).to(dtype).eval()


def _reference_penalty(D, real, fake, epsilon) -> torch.Tensor:
    """Gulrajani et al. 2017, Alg. 1, written out in float64."""
    real, fake = real.double(), fake.double()
    eps = epsilon.double().view(-1, 1, 1, 1)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mixed).sum(), mixed)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def test_gradient_penalty_matches_float64_autograd_reference() -> None:
    D = _tiny_discriminator(torch.float64)
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(3, 3, 32, 32, generator=gen, dtype=torch.float64) * 2 - 1
    fake = torch.rand(3, 3, 32, 32, generator=gen, dtype=torch.float64) * 2 - 1
    epsilon = torch.rand(3, generator=gen, dtype=torch.float64)
    ours = gradient_penalty(D, real, fake, epsilon=epsilon)
    reference = _reference_penalty(D, real, fake, epsilon)
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-12)
    # float32 through the fast attention path agrees with the float64 reference
    D32 = _tiny_discriminator(torch.float32)
    ours32 = gradient_penalty(D32, real.float(), fake.float(), epsilon=epsilon.float())
    assert abs(float(ours32.detach()) - float(reference)) <= 1e-4 * max(1.0, float(reference))


def test_penalties_are_differentiable_through_a_transformer_critic() -> None:
    """Double backward through attention (the fused CPU kernel has none)."""
    D = _tiny_discriminator(torch.float32).train()
    real, fake = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    for penalty in (gradient_penalty(D, real, fake), r1_penalty(D, real)[0]):
        grads = torch.autograd.grad(penalty, [p for p in D.parameters()], allow_unused=True)
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        assert total > 0 and all(torch.isfinite(g).all() for g in grads if g is not None)


def test_gradient_penalty_of_a_linear_critic_is_closed_form() -> None:
    torch.manual_seed(0)
    D = LinearCritic()
    real, fake = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4,
                                                                           dtype=torch.float64)
    expected = (D.w.detach().norm() - 1) ** 2
    assert torch.allclose(gradient_penalty(D, real, fake), expected)
    # and its gradient w.r.t. w is 2 (|w| - 1) w / |w|
    gradient_penalty(D, real, fake).backward()
    w = D.w.detach()
    assert torch.allclose(D.w.grad, 2 * (w.norm() - 1) * w / w.norm())


def test_wgan_gp_loss_value() -> None:
    torch.manual_seed(0)
    D = LinearCritic()
    real, fake = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.randn(4, 3, 4, 4,
                                                                           dtype=torch.float64)
    loss, parts = WGANGPLoss().discriminator(D, real, fake)
    d_real, d_fake = D(real).detach(), D(fake).detach()
    gp = (D.w.detach().norm() - 1) ** 2
    expected = -d_real.mean() + d_fake.mean() + 10 * gp + 1e-3 * d_real.square().mean()
    assert torch.allclose(loss.detach(), expected)
    assert parts["gp"] == pytest.approx(float(gp))
    official = WGANGPLoss(drift_of_mean=True).discriminator(D, real, fake)[0]
    assert torch.allclose(official.detach(), expected - 1e-3 * d_real.square().mean()
                          + 1e-3 * d_real.mean() ** 2)
    assert torch.allclose(WGANGPLoss().generator(D, fake), -d_fake.mean())


def test_hinge_and_logistic_r1_values() -> None:
    torch.manual_seed(0)
    D = LinearCritic()
    real, fake = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.randn(4, 3, 4, 4,
                                                                           dtype=torch.float64)
    d_real, d_fake = D(real).detach(), D(fake).detach()
    hinge, _ = HingeLoss().discriminator(D, real, fake)
    assert torch.allclose(hinge.detach(), torch.relu(1 - d_real).mean()
                          + torch.relu(1 + d_fake).mean())
    logistic, parts = LogisticR1Loss(r1_gamma=2.0).discriminator(D, real, fake)
    r1 = D.w.detach().square().sum()  # |grad_x D|^2 = |w|^2
    expected = nn.functional.softplus(-d_real).mean() + nn.functional.softplus(d_fake).mean() \
        + 1.0 * r1
    assert torch.allclose(logistic.detach(), expected)
    assert parts["r1"] == pytest.approx(float(r1))
    assert torch.allclose(LogisticR1Loss().generator(D, fake),
                          nn.functional.softplus(-d_fake).mean())


def test_fake_is_detached_in_the_discriminator_loss() -> None:
    D = LinearCritic()
    fake = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    loss, _ = WGANGPLoss().discriminator(D, torch.randn(2, 3, 4, 4, dtype=torch.float64), fake)
    loss.backward()
    assert fake.grad is None and D.w.grad is not None


def test_unknown_loss_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown GAN loss"):
        make_loss("least-squares")
    assert isinstance(make_loss("hinge"), HingeLoss)


def test_mode_seeking_term_against_a_loop_over_same_class_pairs() -> None:
    """MSGAN's term, 1 / (mean over same-label pairs of d_I / d_z + eps), written as a loop in
    float64; pairs of different labels do not count."""
    torch.manual_seed(0)
    fake = torch.randn(6, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    ratios = [(fake[i] - fake[j]).abs().mean() / (z[i] - z[j]).abs().mean()
              for i in range(6) for j in range(i + 1, 6) if labels[i] == labels[j]]
    assert len(ratios) == 4  # (0, 2), (0, 5), (2, 5), (1, 4)
    expected = 1 / (torch.stack(ratios).mean() + 1e-5)
    term = mode_seeking_term(fake, z, labels)
    torch.testing.assert_close(term, expected, rtol=1e-12, atol=0)
    unconditional = [(fake[i] - fake[j]).abs().mean() / (z[i] - z[j]).abs().mean()
                     for i in range(6) for j in range(i + 1, 6)]
    torch.testing.assert_close(mode_seeking_term(fake, z),
                               1 / (torch.stack(unconditional).mean() + 1e-5), rtol=1e-12, atol=0)
    # Descending it moves same-class images apart.
    term.backward()
    with torch.no_grad():
        moved = fake - 0.1 * fake.grad
        spread = [(moved[i] - moved[j]).abs().mean() for i, j in ((0, 2), (0, 5), (2, 5))]
        before = [(fake[i] - fake[j]).abs().mean() for i, j in ((0, 2), (0, 5), (2, 5))]
    assert all(a > b for a, b in zip(spread, before))


def test_mode_seeking_term_without_pairs_is_zero_with_a_graph() -> None:
    fake = torch.randn(3, 3, 4, 4, requires_grad=True)
    term = mode_seeking_term(fake, torch.randn(3, 5), torch.tensor([0, 1, 2]))
    assert term.item() == 0
    term.backward()
    assert torch.equal(fake.grad, torch.zeros_like(fake))
