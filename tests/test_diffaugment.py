"""DiffAugment: every op keeps the shape, is differentiable, and does what it says."""

from __future__ import annotations

import pytest
import torch

from imgtx.errors import UserError
from imgtx.gan.diffaugment import (
    AUGMENTATIONS,
    brightness,
    diff_augment,
    erase_box,
    hue,
    translation,
)

OPS = sorted(AUGMENTATIONS)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_op_keeps_shape_and_passes_gradients(name: str, seed: int) -> None:
    torch.manual_seed(seed)
    x = (torch.rand(4, 3, 48, 48) * 2 - 1).requires_grad_(True)
    y = diff_augment(x, name)
    assert y.shape == x.shape and y.dtype == x.dtype
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_full_policies_compose_and_differentiate() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    for policy in ("translation,cutout,color", "translation,erase_ratio,color,hue",
                   "translation,stl_erase_ratio,color"):
        y = diff_augment(x, policy)
        assert y.shape == x.shape
        (grad,) = torch.autograd.grad(y.square().sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_empty_policy_is_identity_and_unknown_op_is_a_user_error() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert diff_augment(x, "") is x
    with pytest.raises(UserError, match="unknown DiffAugment"):
        diff_augment(x, "translation,rotate")


def _shift_reference(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = image[i + dy, j + dx], zero outside."""
    _, h, w = image.shape
    out = torch.zeros_like(image)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[:, i, j] = image[:, i + dy, j + dx]
    return out


def test_translation_is_a_zero_filled_shift_within_the_ratio() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8) + 1  # strictly positive, so the zero fill is visible
    y = translation(x, ratio=0.25)  # shifts in [-2, 2]
    for image, out in zip(x, y):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(out, _shift_reference(image, dy, dx))]
        assert len(matches) == 1


def test_erase_box_zeroes_exactly_the_box_inside_the_image() -> None:
    torch.manual_seed(3)
    x = torch.ones(64, 3, 16, 16)
    y = erase_box(x, 5, 5)
    zeroed = (y[:, 0] == 0).sum(dim=(1, 2))
    assert (zeroed <= 25).all() and (zeroed > 0).all()
    assert (zeroed == 25).any()  # boxes away from the border are whole
    assert torch.equal(y[:, 0], y[:, 1])  # the same box in every channel


def test_brightness_adds_one_constant_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.rand(5, 3, 4, 4)
    delta = brightness(x) - x
    per_sample = delta.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert (per_sample.abs() <= 0.5).all()


def test_hue_rotation_keeps_the_grey_level_and_colour_distance() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 3, 4, 4, dtype=torch.float64)
    y = hue(x)
    # a rotation about the (1,1,1) axis keeps the channel mean and the distance from grey
    assert torch.allclose(y.mean(dim=1), x.mean(dim=1))
    chroma = (x - x.mean(dim=1, keepdim=True)).norm(dim=1)
    assert torch.allclose((y - y.mean(dim=1, keepdim=True)).norm(dim=1), chroma)
    assert not torch.allclose(y, x)  # some samples were rotated (p = 0.5 each)
