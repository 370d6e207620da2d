"""DiffAugment: every op keeps the shape, is differentiable, and does what it says."""

from __future__ import annotations

import pytest
import torch

from imgtx.errors import UserError
from imgtx.gan.diffaugment import (
    AUGMENTATIONS,
    brightness,
    contrast,
    cutout,
    diff_augment,
    erase_box,
    erase_ratio,
    hue,
    saturation,
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


# --------------------------------------------------------------------------------------------
# Closed forms of the DiffAugment paper's code (Zhao et al. 2020, DiffAugment_pytorch.py:
# rand_saturation, rand_contrast, rand_cutout), with the ops' random draws recorded
# --------------------------------------------------------------------------------------------


class RecordedDraws:
    """Wraps ``torch.rand`` and ``torch.randint`` while active: every value an op draws is kept,
    in order, so the test can evaluate the paper's formula on the same numbers. ``coin`` (if
    given) replaces every scalar ``torch.rand(())``: the once-per-batch erase coin."""

    def __init__(self, monkeypatch, coin: float | None = None) -> None:
        self.rand: list[torch.Tensor] = []
        self.randint: list[torch.Tensor] = []
        rand, randint = torch.rand, torch.randint

        def recorded_rand(*args, **kwargs):
            value = rand(*args, **kwargs)
            if coin is not None and value.dim() == 0:
                value = torch.tensor(coin, dtype=value.dtype)
            self.rand.append(value)
            return value

        def recorded_randint(*args, **kwargs):
            value = randint(*args, **kwargs)
            self.randint.append(value)
            return value

        monkeypatch.setattr(torch, "rand", recorded_rand)
        monkeypatch.setattr(torch, "randint", recorded_randint)

    def per_sample(self, kind: str) -> list[torch.Tensor]:
        """The recorded draws of one value per sample (shape ``(B, ...)``), in order."""
        return [v for v in getattr(self, kind) if v.dim() > 0]


def paper_saturation(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """rand_saturation: ``(x - mean over channels) * (rand * 2) + mean``."""
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * (r * 2) + x_mean


def paper_contrast(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """rand_contrast: ``(x - mean over C, H, W) * (rand + 0.5) + mean``."""
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * (r + 0.5) + x_mean


def paper_cutout_mask(height: int, width: int, size: tuple[int, int], offset_rows: torch.Tensor,
                      offset_cols: torch.Tensor) -> torch.Tensor:
    """rand_cutout's mask, ``(B, H, W)``: a ``size`` box of zeros at each sample's offset minus
    half the size, its indices clamped into the image (which clips the box at the border)."""
    batch = offset_rows.shape[0]
    mask = torch.ones(batch, height, width)
    for b in range(batch):
        for i in range(size[0]):
            for j in range(size[1]):
                row = min(max(int(offset_rows[b]) + i - size[0] // 2, 0), height - 1)
                col = min(max(int(offset_cols[b]) + j - size[1] // 2, 0), width - 1)
                mask[b, row, col] = 0
    return mask


def is_clipped_box_cutout(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int],
                          offset_rows: torch.Tensor, offset_cols: torch.Tensor) -> bool:
    """Whether ``y`` is ``x`` with exactly rand_cutout's box zeroed (every channel)."""
    mask = paper_cutout_mask(x.shape[2], x.shape[3], size, offset_rows, offset_cols)
    return torch.equal(y, x * mask[:, None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturation_is_the_papers_formula(monkeypatch, dtype):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 5, 7, dtype=dtype) * 2 - 1
    draws = RecordedDraws(monkeypatch)
    y = saturation(x)
    (r,) = draws.per_sample("rand")
    assert r.shape == (6, 1, 1, 1) and r.dtype == dtype  # one factor per sample
    torch.testing.assert_close(y, paper_saturation(x, r), rtol=0, atol=1e-6)
    # control: the formula's check tells a per-image mean (contrast's) from the channel mean
    assert not torch.allclose(paper_contrast(x, r * 2 - 0.5), y, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contrast_is_the_papers_formula(monkeypatch, dtype):
    torch.manual_seed(1)
    x = torch.rand(6, 3, 5, 7, dtype=dtype) * 2 - 1
    draws = RecordedDraws(monkeypatch)
    y = contrast(x)
    (r,) = draws.per_sample("rand")
    assert r.shape == (6, 1, 1, 1) and r.dtype == dtype
    torch.testing.assert_close(y, paper_contrast(x, r), rtol=0, atol=1e-6)
    # control: a per-channel mean (over H, W only) is caught
    per_channel = x.mean(dim=(2, 3), keepdim=True)
    assert not torch.allclose((x - per_channel) * (r + 0.5) + per_channel, y, atol=1e-3)


def test_color_policy_is_brightness_then_saturation_then_contrast(monkeypatch):
    torch.manual_seed(2)
    x = torch.rand(4, 3, 6, 6) * 2 - 1
    draws = RecordedDraws(monkeypatch)
    y = diff_augment(x, "color")
    shift, saturate, scale = draws.per_sample("rand")
    expected = paper_contrast(paper_saturation(x + (shift - 0.5), saturate), scale)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)


def test_erase_box_zeroes_exactly_the_clipped_box_and_keeps_the_rest(monkeypatch):
    torch.manual_seed(3)
    x = torch.rand(64, 3, 16, 16) + 1  # no zeros of its own
    draws = RecordedDraws(monkeypatch)
    y = erase_box(x, 5, 5)
    rows, cols = draws.per_sample("randint")
    assert rows.shape == cols.shape == (64, 1, 1)
    # rand_cutout's offset range for an odd side: [0, side)
    assert 0 <= rows.min() and rows.max() < 16 and 0 <= cols.min() and cols.max() < 16
    assert is_clipped_box_cutout(x, y, (5, 5), rows, cols)
    zeroed = (y == 0).sum(dim=(1, 2, 3)) // 3
    assert (zeroed < 25).any() and (zeroed == 25).any()  # both clipped and whole boxes occur


def test_box_check_rejects_boxes_that_are_not_the_clipped_5x5():
    """Negative controls: the check above fails on a box one pixel off, a box wrapped around
    the border instead of clipped, a 4x6 box, 25 scattered zeros, and a box in one channel."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 16, 16, generator=g) + 1
    rows = torch.randint(0, 16, (8, 1, 1), generator=g)
    cols = torch.randint(0, 16, (8, 1, 1), generator=g)
    rows[0] = 0  # sample 0 at the top border: its box is clipped to 3 rows
    y = x * paper_cutout_mask(16, 16, (5, 5), rows, cols)[:, None]
    assert is_clipped_box_cutout(x, y, (5, 5), rows, cols)

    shifted = x * paper_cutout_mask(16, 16, (5, 5), rows + 1, cols)[:, None]
    assert not is_clipped_box_cutout(x, shifted, (5, 5), rows, cols)
    wrapped = y.clone()  # sample 0's box rolled onto the bottom rows instead of clipped
    wrap_mask = torch.ones(16, 16)
    for i in range(-2, 3):
        wrap_mask[i % 16, [(int(cols[0]) + j) % 16 for j in range(-2, 3)]] = 0
    wrapped[0] = x[0] * wrap_mask
    assert not is_clipped_box_cutout(x, wrapped, (5, 5), rows, cols)
    other_shape = x * paper_cutout_mask(16, 16, (4, 6), rows, cols)[:, None]
    assert not is_clipped_box_cutout(x, other_shape, (5, 5), rows, cols)
    scattered = x.clone()
    scattered.view(8, 3, -1)[:, :, torch.randperm(256, generator=g)[:25]] = 0
    assert not is_clipped_box_cutout(x, scattered, (5, 5), rows, cols)
    one_channel = y.clone()
    one_channel[:, 1:] = x[:, 1:]
    assert not is_clipped_box_cutout(x, one_channel, (5, 5), rows, cols)


@pytest.mark.parametrize("side", [16, 15])
def test_cutout_is_the_papers_rand_cutout_once_the_coin_says_so(monkeypatch, side):
    """TransGAN's rand_cutout: with the batch's coin below 0.3, DiffAugment's box of half the
    side (rounded) in every sample; at 0.3 or above, the input unchanged."""
    torch.manual_seed(4)
    x = torch.rand(32, 3, side, side) + 1
    draws = RecordedDraws(monkeypatch, coin=0.29)
    y = cutout(x)
    rows, cols = draws.per_sample("randint")
    box = int(side * 0.5 + 0.5)
    assert rows.max() < side + (1 - box % 2) and cols.max() < side + (1 - box % 2)
    assert is_clipped_box_cutout(x, y, (box, box), rows, cols)
    RecordedDraws(monkeypatch, coin=0.3)
    assert torch.equal(cutout(x), x)


def test_erase_ratio_is_a_cutout_with_sides_in_02_to_07(monkeypatch):
    """TransGAN's rand_erase_ratio: a box with integer sides in [int(0.2 side), int(0.7 side)],
    then rand_cutout's box placement, behind the once-per-batch coin."""
    torch.manual_seed(5)
    x = torch.rand(16, 3, 20, 20) + 1
    sides = set()
    for _ in range(12):
        draws = RecordedDraws(monkeypatch, coin=0.0)
        y = erase_ratio(x)
        box_h, box_w = (int(v) for v in draws.randint if v.dim() == 0)
        rows, cols = draws.per_sample("randint")
        assert 4 <= box_h <= 14 and 4 <= box_w <= 14
        assert is_clipped_box_cutout(x, y, (box_h, box_w), rows, cols)
        sides.update((box_h, box_w))
    assert len(sides) > 3  # the sides are drawn, not fixed
    RecordedDraws(monkeypatch, coin=0.5)
    assert torch.equal(erase_ratio(x), x)
