"""The fused decoding step and the trimmed Local2D cache compute what the plain step computes,
with fewer ops."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from imgtx import ImageTransformer, get_config  # noqa: E402
from imgtx.attention import Causal, Local1D, Local2D  # noqa: E402
from imgtx.attention.grid import local2d_flanges, local2d_tables  # noqa: E402
from imgtx.fused_step import FusedStep  # noqa: E402
from imgtx.sampling import decode  # noqa: E402
from imgtx.transformer import TransformerLayer  # noqa: E402

PATTERNS = {
    "causal": (Causal(), 12),
    "local1d": (Local1D(4), 14),
    "local2d": (Local2D(4, 6, (2, 3), (2, 1)), 24),
}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def make_layer(pattern, norm: str, cross: bool, bias: bool = False) -> TransformerLayer:
    torch.manual_seed(0)
    return TransformerLayer(16, 2, 24, pattern, norm=norm, qkv_bias=bias,
                            context_dim=8 if cross else None).eval()


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("batch", [2, 20], ids=["sdpa", "matmul"])  # 4 or 40 (batch, head) rows
def test_fused_step_equals_the_layer_step_and_forward(pattern, norm, cross, batch):
    pattern, length = PATTERNS[pattern]
    layer = make_layer(pattern, norm, cross, bias=cross)
    x = torch.randn(batch, length, 16)
    context = torch.randn(batch, 5, 8) if cross else None
    with torch.no_grad():
        kv = layer.context_kv(context) if cross else None
        full = layer(x, kv)  # (B, N, D)
        fused, cache = FusedStep(layer), layer.attn.new_cache(batch, length)
        plain_cache = layer.attn.new_cache(batch, length)
        for t in range(length):
            got = fused(x[:, t], cache, kv)  # (B, D)
            plain = layer.step(x[:, t : t + 1], plain_cache, kv)[:, 0]
            assert (got - plain).abs().max().item() <= 1e-5, t
            assert (got - full[:, t]).abs().max().item() <= 1e-5, t


def test_fused_step_refuses_layers_it_does_not_reproduce():
    layer = TransformerLayer(16, 2, 24, Causal(), residual="projection")
    assert not FusedStep.supports(layer)
    with pytest.raises(ValueError, match="TransformerLayer.step"):
        FusedStep(layer)
    assert FusedStep.supports(make_layer(Causal(), "pre", True))


def test_fused_step_runs_about_half_the_ops():
    layer = make_layer(Local1D(4), "pre", cross=True)
    x, context = torch.randn(2, 1, 16), torch.randn(2, 5, 8)
    with torch.no_grad():
        kv = tuple(t.contiguous() for t in layer.context_kv(context))
        fused = FusedStep(layer)
        caches = [layer.attn.new_cache(2, 8) for _ in range(2)]
        with OpCounter() as fused_ops:
            fused(x[:, 0], caches[0], kv)
        with OpCounter() as plain_ops:
            layer.step(x, caches[1], kv)
    # aten ops, views included: 30 against 62 when this was written
    assert fused_ops.count <= 30
    assert fused_ops.count < 0.55 * plain_ops.count


@pytest.mark.parametrize("overrides", [
    dict(), dict(norm="post", positions="learned"),
    dict(attention="local2d", query_shape=(2, 8), memory_flange=(2, 4)),
], ids=["1d-pre", "1d-post", "2d"])
def test_fused_and_plain_decoding_give_the_same_samples(overrides):
    torch.manual_seed(0)
    model = ImageTransformer(get_config("tiny", **overrides)).eval()
    fused_decoder = model.incremental_decoder(2)
    assert fused_decoder.fused is not None
    assert model.incremental_decoder(2, fused=False).fused is None
    images, fused = decode(model, 2, return_outputs=True,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain_decoder = model.incremental_decoder(2, fused=False)
        for t in range(fused.shape[1]):
            plain = plain_decoder.outputs()
            assert (plain - fused[:, t]).abs().max().item() <= 1e-4, t
            plain_decoder.feed(model.to_sequence(model.targets(images))[:, t])


def test_a_training_model_decodes_with_the_plain_step():
    torch.manual_seed(0)
    model = ImageTransformer(get_config("tiny")).train()
    assert model.incremental_decoder(1).fused is None


@pytest.mark.parametrize("shape", [((4, 6), (2, 3), (2, 1)), ((6, 8), (2, 2), (3, 3)),
                                   ((8, 24), (2, 8), (2, 4))])
def test_local2d_flange_is_exactly_what_every_query_of_the_block_sees(shape):
    grid, query_shape, flange = shape
    index, mask = local2d_tables(*grid, query_shape, flange)  # (nb, M), (nb, Q, M)
    flanges = local2d_flanges(*grid, query_shape, flange)
    (qh, qw), (fh, fw) = query_shape, flange
    block_size = qh * qw
    for block, kept in enumerate(flanges):
        seen = {int(index[block, s]) for s in range(index.shape[1]) if mask[block, 0, s]}
        own = set(range(block * block_size, block * block_size + 1))
        assert set(kept.tolist()) == seen - own  # query 0 sees the flange and itself
        assert len(kept) == len(set(kept.tolist())) <= fh * (qw + 2 * fw) + qh * fw
        assert all(int(p) < block * block_size for p in kept)  # earlier blocks only
        for row in range(block_size):  # every later query sees the same flange
            seen_row = {int(index[block, s]) for s in range(index.shape[1])
                        if mask[block, row, s]}
            assert seen_row - set(range(block * block_size, (block + 1) * block_size)) == \
                set(kept.tolist())
