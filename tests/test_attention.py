"""Spec for imgtx.attention.

1. The dense masks (the definition of each pattern) against hand-written loops.
2. The float64 reference against attention written out query by query (a softmax over the keys
   each query sees, from the definitions of section 1); then every pattern x every fast backend
   against that reference: forward and gradients wrt q, k, v and the bias, max abs error <= 1e-5
   in float32. GPU-only backends skip without CUDA.
3. Incremental decoding with the KV caches against the full forward.
4. The attention modules, error messages, and the linear-cost guarantee of the blocked layout.

Shapes: B batch, H heads, Nq / Nk query / key lengths, E head dim, w window size.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from imgtx.attention import (
    BackendUnavailable,
    Causal,
    Full,
    Local1D,
    Local2D,
    MultiHeadAttention,
    RelativePositionBias,
    Window,
    attend,
    available_backends,
    block_raster_to_raster,
    make_cache,
    raster_to_block_raster,
    reference_attention,
    resolve_backend,
    set_backend,
    shifted_window,
)
from imgtx.attention.backends import to_blocks
from imgtx.attention.blocks import Blocks
from imgtx.attention.patterns import Pattern

TOL = 1e-5  # max abs error of float32 against the float64 reference
HEAD_DIM = 16  # FlexAttention on CUDA needs E >= 16

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_xformers = pytest.mark.skipif(importlib.util.find_spec("xformers") is None,
                                    reason="needs the xformers package")
FEW_EXAMPLES = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These shapes are tiny: one intra-op thread is faster than two and keeps the file fast on a
    shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def random_qkv(batch: int, heads: int, num_queries: int, num_keys: int, *, seed: int = 0,
               device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 q ``(B, H, Nq, E)``, k and v ``(B, H, Nk, E)``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, num_queries, HEAD_DIM, generator=g)
    k = torch.randn(batch, heads, num_keys, HEAD_DIM, generator=g)
    v = torch.randn(batch, heads, num_keys, HEAD_DIM, generator=g)
    return q.to(device), k.to(device), v.to(device)


def random_bias(kind: str | None, pattern, batch: int, heads: int, num_queries: int,
                num_keys: int, *, seed: int = 1, device: str = "cpu") -> torch.Tensor | None:
    """An additive bias of the named layout: ``qk`` (Nq, Nk), ``hqk`` (H, Nq, Nk), ``bhqk``
    (B, H, Nq, Nk), or ``window``: a RelativePositionBias (H, w*w, w*w) with a random table."""
    if kind is None:
        return None
    if kind == "window":
        torch.manual_seed(seed)
        return RelativePositionBias(pattern.window, heads)().detach().to(device)
    shape = {"qk": (num_queries, num_keys), "hqk": (heads, num_queries, num_keys),
             "bhqk": (batch, heads, num_queries, num_keys)}[kind]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device)


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item()


def assert_matches_reference(pattern, backend: str, q, k, v, bias=None, *,
                             gradients: bool = True) -> None:
    """``attend`` in float32 against autograd through the float64 reference.

    With ``gradients``: also d/dq, d/dk, d/dv and d/dbias for a random output gradient. Without:
    the forward runs under ``torch.no_grad()`` (on inputs that require grad, as a caller's would).
    """
    inputs = [q, k, v] + ([] if bias is None else [bias])
    leaves32 = [t.detach().clone().requires_grad_() for t in inputs]
    leaves64 = [t.detach().double().requires_grad_() for t in inputs]
    bias32 = leaves32[3] if bias is not None else None
    bias64 = leaves64[3] if bias is not None else None

    with torch.set_grad_enabled(gradients):
        out = attend(*leaves32[:3], pattern, bias=bias32, backend=backend)
    expected = reference_attention(*leaves64[:3], pattern, bias64)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert max_error(out, expected) <= TOL, f"forward error {max_error(out, expected):.2e}"
    if not gradients:
        return
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2),
                           dtype=torch.float64).to(expected.device)
    grads32 = torch.autograd.grad(out, leaves32, grad_out.float())
    grads64 = torch.autograd.grad(expected, leaves64, grad_out)
    for name, got, want in zip("q k v bias".split(), grads32, grads64):
        assert got.shape == want.shape
        assert max_error(got, want) <= TOL, f"d/d{name} error {max_error(got, want):.2e}"


# Every pattern with lengths that stress it; `None` lengths mean the pattern's grid length.
PATTERNS = [
    ("full", Full(), 7, 7),
    ("full-cross", Full(), 5, 11),  # cross-attention, Nq != Nk
    ("causal", Causal(), 13, 13),
    ("local1d-b1", Local1D(1), 6, 6),
    ("local1d-shorter-than-block", Local1D(4), 3, 3),
    ("local1d-two-blocks", Local1D(4), 8, 8),
    ("local1d-not-divisible", Local1D(4), 13, 13),
    ("local1d-divisible", Local1D(3), 12, 12),
    ("local2d-8x12-q2x4-f2x4", Local2D(8, 12, (2, 4), (2, 4)), None, None),
    ("local2d-4x6-q2x3-f3x1", Local2D(4, 6, (2, 3), (3, 1)), None, None),  # fh > qh
    ("local2d-6x9-q3x3-f0x3", Local2D(6, 9, (3, 3), (0, 3)), None, None),  # no top flange
    ("local2d-4x8-q2x2-f1x3", Local2D(4, 8, (2, 2), (1, 3)), None, None),  # fw > qw
    ("local2d-4x4-q2x2-f0x0", Local2D(4, 4, (2, 2), (0, 0)), None, None),  # block only
    ("window-8x8-w4", Window(8, 8, 4), None, None),
    ("window-4x6-w2", Window(4, 6, 2), None, None),
    ("shifted-8x8-w4", shifted_window(8, 8, 4), None, None),
    ("shifted-8x12-w4", shifted_window(8, 12, 4), None, None),
    ("shifted-6x6-w3-s1-wrap", Window(6, 6, 3, shift=1, mask_wraparound=False), None, None),
]


def _cases():
    for name, pattern, nq, nk in PATTERNS:
        nq = nq or pattern.length
        nk = nk or pattern.length
        kinds = [None, "window"] if isinstance(pattern, Window) else [None, "qk", "hqk", "bhqk"]
        for kind in kinds:
            yield pytest.param(pattern, nq, nk, kind, id=f"{name}-bias_{kind}")


CASES = list(_cases())
BATCH_HEADS = [pytest.param((1, 2), id="B1H2"), pytest.param((2, 3), id="B2H3")]


# --------------------------------------------------------------------------------------------
# 1. The dense masks against hand-written definitions
# --------------------------------------------------------------------------------------------


def loop_local1d_mask(length: int, block: int) -> torch.Tensor:
    """T2T masked_local_attention_1d: query i in block k = i // b sees key j iff
    (k-1)*b <= j <= i."""
    mask = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        k = i // block
        for j in range(length):
            mask[i, j] = (k - 1) * block <= j <= i
    return mask


@pytest.mark.parametrize("block", range(1, 9))
def test_local1d_dense_mask_is_the_definition(block):
    for length in sorted({1, max(block - 1, 1), block, 2 * block, 2 * block + 1, 3 * block + 2,
                          20}):
        mask = Local1D(block).dense_mask(length, length)
        assert torch.equal(mask, loop_local1d_mask(length, block)), length
        if length <= 2 * block:  # two blocks or fewer: plain causal attention
            assert torch.equal(mask, Causal().dense_mask(length, length))


def loop_local2d_raster_mask(height, width, query_shape, flange) -> torch.Tensor:
    """T2T's masked local 2D rule, from scratch, in raster coordinates (row-major grid index)."""
    qh, qw = query_shape
    fh, fw = flange
    mask = torch.zeros(height * width, height * width, dtype=torch.bool)
    for yq in range(height):
        for xq in range(width):
            top, left = yq // qh * qh, xq // qw * qw  # the query's block
            for yk in range(height):
                for xk in range(width):
                    top_flange = (top - fh <= yk < top) and (left - fw <= xk < left + qw + fw)
                    block_rows = top <= yk < top + qh
                    left_flange = block_rows and left - fw <= xk < left
                    same_block = block_rows and left <= xk < left + qw
                    earlier = (yk, xk) <= (yq, xq)  # raster order
                    mask[yq * width + xq, yk * width + xk] = (
                        top_flange or left_flange or (same_block and earlier))
    return mask


def to_block_raster_mask(raster_mask: torch.Tensor, height, width, query_shape) -> torch.Tensor:
    """Reorder both axes of an (N, N) raster-order mask to block-raster order."""
    rows = raster_to_block_raster(raster_mask[None], height, width, query_shape)[0]
    return raster_to_block_raster(rows.T[None], height, width, query_shape)[0].T


local2d_grids = st.tuples(
    st.integers(1, 3), st.integers(1, 4),  # query_shape
    st.integers(1, 3), st.integers(1, 3),  # blocks along rows, columns
    st.integers(0, 4), st.integers(0, 5),  # flange
)


@FEW_EXAMPLES
@given(local2d_grids)
@example((2, 4, 4, 3, 2, 4))  # grid (8, 12), query (2, 4), flange (2, 4)
@example((2, 3, 2, 2, 3, 1))  # grid (4, 6), query (2, 3), flange (3, 1): fh > qh
@example((3, 3, 2, 3, 0, 3))  # grid (6, 9), query (3, 3), flange (0, 3): no top flange
@example((2, 2, 2, 4, 1, 3))  # grid (4, 8), query (2, 2), flange (1, 3): fw > qw
def test_local2d_dense_mask_is_t2t_rule(grid):
    qh, qw, blocks_y, blocks_x, fh, fw = grid
    height, width = qh * blocks_y, qw * blocks_x
    pattern = Local2D(height, width, (qh, qw), (fh, fw))
    n = pattern.length
    mask = pattern.dense_mask(n, n)
    expected = to_block_raster_mask(loop_local2d_raster_mask(height, width, (qh, qw), (fh, fw)),
                                    height, width, (qh, qw))
    assert torch.equal(mask, expected)
    # Causal in block-raster order: every visible key precedes (or is) the query; each query
    # sees itself.
    assert not (mask & ~torch.ones(n, n, dtype=torch.bool).tril()).any()
    assert mask.diagonal().all()

    # The gather tables of the fast backends say exactly the same thing, with no slot twice.
    index, table_mask = pattern.block_tables()  # (nb, M), (nb, Q, M)
    nb, q_len = index.shape[0], qh * qw
    from_tables = torch.zeros(n, n, dtype=torch.long)
    for block in range(nb):
        for row in range(q_len):
            visible = index[block][table_mask[block, row]]
            from_tables[block * q_len + row].index_add_(0, visible, torch.ones_like(visible))
    assert from_tables.max() <= 1
    assert torch.equal(from_tables.bool(), mask)


@pytest.mark.parametrize("height, width, query_shape", [(4, 6, (2, 3)), (6, 9, (3, 3)),
                                                        (8, 12, (2, 4)), (5, 7, (1, 1))])
def test_block_raster_order_round_trip(height, width, query_shape):
    x = torch.randn(2, height * width, 3)
    assert torch.equal(block_raster_to_raster(
        raster_to_block_raster(x, height, width, query_shape), height, width, query_shape), x)
    assert torch.equal(raster_to_block_raster(
        block_raster_to_raster(x, height, width, query_shape), height, width, query_shape), x)


def test_block_raster_order_example():
    # A 2x4 grid in 2x2 blocks: raster 0 1 2 3 / 4 5 6 7 -> blocks [0 1 4 5] [2 3 6 7].
    raster = torch.arange(8).view(1, 8)
    assert raster_to_block_raster(raster, 2, 4, (2, 2)).tolist() == [[0, 1, 4, 5, 2, 3, 6, 7]]


WINDOW_GRIDS = [(4, 4, 2), (8, 8, 4), (8, 12, 4), (6, 9, 3)]


@pytest.mark.parametrize("height, width, window", WINDOW_GRIDS)
def test_window_query_sees_exactly_its_window(height, width, window):
    mask = Window(height, width, window).dense_mask(height * width, height * width)
    for i in range(height * width):
        yi, xi = divmod(i, width)
        for j in range(height * width):
            yj, xj = divmod(j, width)
            same = yi // window == yj // window and xi // window == xj // window
            assert mask[i, j].item() == same


def loop_swin_shifted_mask(height: int, width: int, window: int, shift: int,
                           mask_wraparound: bool = True) -> torch.Tensor:
    """Swin (SwinTransformerBlock): roll the grid by -shift, label regions of the rolled grid by
    the slices (0, -w), (-w, -s), (-s, None) per axis (``img_mask``), then a query sees the keys
    in its window of the rolled grid that carry its label."""
    rows, cols = list(range(height)), list(range(width))
    rolled_rows = rows[shift:] + rows[:shift]  # rolled_rows[r] = original row at rolled row r
    rolled_cols = cols[shift:] + cols[:shift]
    img_mask = [[0] * width for _ in range(height)]
    label = 0
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for h in slices:
        for w in slices:
            for r in range(height)[h]:
                for c in range(width)[w]:
                    img_mask[r][c] = label
            label += 1
    where = {}  # original token -> (rolled row, rolled column)
    for r, y in enumerate(rolled_rows):
        for c, x in enumerate(rolled_cols):
            where[y * width + x] = (r, c)
    n = height * width
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        ri, ci = where[i]
        for j in range(n):
            rj, cj = where[j]
            same_window = ri // window == rj // window and ci // window == cj // window
            same_label = img_mask[ri][ci] == img_mask[rj][cj] or not mask_wraparound
            mask[i, j] = same_window and same_label
    return mask


@pytest.mark.parametrize("height, width, window", WINDOW_GRIDS)
@pytest.mark.parametrize("mask_wraparound", [True, False])
def test_shifted_window_is_swin(height, width, window, mask_wraparound):
    for shift in sorted({1, window // 2, window - 1} - {0}):
        pattern = Window(height, width, window, shift=shift, mask_wraparound=mask_wraparound)
        expected = loop_swin_shifted_mask(height, width, window, shift, mask_wraparound)
        assert torch.equal(pattern.dense_mask(height * width, height * width), expected), shift
    assert shifted_window(height, width, window).shift == window // 2


# --------------------------------------------------------------------------------------------
# 2. Every pattern x every backend against the float64 reference
# --------------------------------------------------------------------------------------------

GRADIENT_RUNS = [
    pytest.param("blocked", "cpu", id="blocked-cpu"),
    pytest.param("blocked", "cuda", marks=needs_cuda, id="blocked-cuda"),
    pytest.param("flex", "cuda", marks=needs_cuda, id="flex-cuda"),
    pytest.param("xformers", "cuda", marks=[needs_cuda, needs_xformers], id="xformers-cuda"),
]


@functools.cache
def loop_visible_keys(pattern, num_queries: int, num_keys: int) -> torch.Tensor:
    """``(Nq, Nk)`` bool: which keys each query sees, from the hand-written definitions of
    section 1 (not from ``pattern.dense_mask``)."""
    if isinstance(pattern, Full):
        return torch.ones(num_queries, num_keys, dtype=torch.bool)
    if isinstance(pattern, Causal):
        return torch.ones(num_queries, num_keys, dtype=torch.bool).tril()
    if isinstance(pattern, Local1D):
        return loop_local1d_mask(num_queries, pattern.block)
    if isinstance(pattern, Local2D):
        raster = loop_local2d_raster_mask(pattern.height, pattern.width, pattern.query_shape,
                                          pattern.memory_flange)
        return to_block_raster_mask(raster, pattern.height, pattern.width, pattern.query_shape)
    if pattern.shift:
        return loop_swin_shifted_mask(pattern.height, pattern.width, pattern.window,
                                      pattern.shift, pattern.mask_wraparound)
    h, w, size = pattern.height, pattern.width, pattern.window
    same = [[(i // w // size, i % w // size) == (j // w // size, j % w // size)
             for j in range(h * w)] for i in range(h * w)]
    return torch.tensor(same)


def loop_window_bias(pattern, window_bias: torch.Tensor, query: int, key: int) -> torch.Tensor:
    """The window-local bias ``(H, w*w, w*w)`` entry of a query/key pair: their slots in their
    window of the grid rolled by ``-shift`` (Swin's relative position index)."""
    size, shift = pattern.window, pattern.shift

    def slot(token: int) -> int:
        row = (token // pattern.width - shift) % pattern.height
        col = (token % pattern.width - shift) % pattern.width
        return (row % size) * size + col % size

    return window_bias[:, slot(query), slot(key)]  # (H,)


def per_query_softmax(pattern, q, k, v, bias=None) -> torch.Tensor:
    """Attention written out query by query, in float64: the scores of the keys the query sees,
    ``q.k / sqrt(E)`` plus the bias, a softmax over those keys only, the weighted sum of their
    values. Queries that see no key would be undefined; none of the patterns has one."""
    b_size, heads, num_queries, head_dim = q.shape
    visible = loop_visible_keys(pattern, num_queries, k.shape[-2])
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros(b_size, heads, num_queries, head_dim, dtype=torch.float64)
    for b in range(b_size):
        for i in range(num_queries):
            keys = visible[i].nonzero().flatten().tolist()
            scores = (k[b][:, keys] @ q[b, :, i, :, None])[..., 0] / head_dim**0.5  # (H, n)
            if bias is not None and isinstance(pattern, Window):
                scores = scores + torch.stack([loop_window_bias(pattern, bias.double(), i, j)
                                               for j in keys], dim=-1)
            elif bias is not None:  # (Nq, Nk), (H, Nq, Nk) or (B, H, Nq, Nk)
                full = bias.double().expand(b_size, heads, num_queries, k.shape[-2])
                scores = scores + full[b][:, i, keys]
            weights = scores.exp() / scores.exp().sum(-1, keepdim=True)  # (H, n)
            out[b, :, i] = (weights[..., None] * v[b][:, keys]).sum(-2)
    return out


# Each pattern without a bias and with its richest bias layout.
LOOP_CASES = [case for case in CASES if case.id.endswith(("bias_None", "bias_bhqk", "bias_window"))]


@pytest.mark.parametrize("pattern, num_queries, num_keys, bias_kind", LOOP_CASES)
def test_reference_attention_is_the_per_query_softmax(pattern, num_queries, num_keys,
                                                      bias_kind):
    """The float64 reference every backend is held to, against attention written out one query
    at a time from the definitions of section 1."""
    q, k, v = random_qkv(2, 2, num_queries, num_keys, seed=5)
    bias = random_bias(bias_kind, pattern, 2, 2, num_queries, num_keys, seed=6)
    expected = per_query_softmax(pattern, q, k, v, bias)
    got = reference_attention(q, k, v, pattern, bias)
    assert got.dtype == torch.float64
    assert (got - expected).abs().max().item() <= 1e-12


def test_per_query_softmax_tells_patterns_and_biases_apart():
    """Negative control: the loop above distinguishes a pattern from its neighbour (the same
    Local2D without its flange, an unshifted window) and a bias from none."""
    q, k, v = random_qkv(1, 2, 24, 24, seed=5)
    with_flange, block_only = Local2D(4, 6, (2, 3), (1, 1)), Local2D(4, 6, (2, 3), (0, 0))
    assert not torch.allclose(per_query_softmax(with_flange, q, k, v),
                              reference_attention(q, k, v, block_only))
    q, k, v = random_qkv(1, 2, 64, 64, seed=5)
    shifted = shifted_window(8, 8, 4)
    assert not torch.allclose(per_query_softmax(shifted, q, k, v),
                              reference_attention(q, k, v, Window(8, 8, 4)))
    bias = random_bias("window", shifted, 1, 2, 64, 64)
    assert not torch.allclose(per_query_softmax(shifted, q, k, v, bias),
                              reference_attention(q, k, v, shifted))


@pytest.mark.parametrize("backend, device", GRADIENT_RUNS)
@pytest.mark.parametrize("batch_heads", BATCH_HEADS)
@pytest.mark.parametrize("pattern, num_queries, num_keys, bias_kind", CASES)
def test_forward_and_gradients_match_reference(backend, device, batch_heads, pattern,
                                               num_queries, num_keys, bias_kind):
    batch, heads = batch_heads
    q, k, v = random_qkv(batch, heads, num_queries, num_keys, device=device)
    bias = random_bias(bias_kind, pattern, batch, heads, num_queries, num_keys, device=device)
    assert_matches_reference(pattern, backend, q, k, v, bias)


@pytest.mark.parametrize("pattern, num_queries, num_keys, bias_kind", CASES)
def test_flex_cpu_forward_matches_reference(pattern, num_queries, num_keys, bias_kind):
    # Forward only: FlexAttention has no CPU backward. Batch 1 is covered by the random tests.
    batch, heads = 2, 3
    q, k, v = random_qkv(batch, heads, num_queries, num_keys)
    bias = random_bias(bias_kind, pattern, batch, heads, num_queries, num_keys)
    assert_matches_reference(pattern, "flex", q, k, v, bias, gradients=False)


@FEW_EXAMPLES
@given(block=st.integers(1, 8), length=st.integers(1, 40), batch=st.integers(1, 2),
       heads=st.integers(1, 3), bias_kind=st.sampled_from([None, "qk", "hqk", "bhqk"]),
       seed=st.integers(0, 1000))
def test_local1d_random_shapes_match_reference(block, length, batch, heads, bias_kind, seed):
    pattern = Local1D(block)
    q, k, v = random_qkv(batch, heads, length, length, seed=seed)
    bias = random_bias(bias_kind, pattern, batch, heads, length, length, seed=seed + 1)
    assert_matches_reference(pattern, "blocked", q, k, v, bias)
    assert_matches_reference(pattern, "flex", q, k, v, bias, gradients=False)


@FEW_EXAMPLES
@given(grid=local2d_grids, batch=st.integers(1, 2), heads=st.integers(1, 3),
       bias_kind=st.sampled_from([None, "qk", "hqk", "bhqk"]), seed=st.integers(0, 1000))
def test_local2d_random_shapes_match_reference(grid, batch, heads, bias_kind, seed):
    qh, qw, blocks_y, blocks_x, fh, fw = grid
    pattern = Local2D(qh * blocks_y, qw * blocks_x, (qh, qw), (fh, fw))
    n = pattern.length
    q, k, v = random_qkv(batch, heads, n, n, seed=seed)
    bias = random_bias(bias_kind, pattern, batch, heads, n, n, seed=seed + 1)
    assert_matches_reference(pattern, "blocked", q, k, v, bias)
    assert_matches_reference(pattern, "flex", q, k, v, bias, gradients=False)


def test_flex_with_gradients_on_cpu_is_refused():
    q, k, v = random_qkv(1, 2, 8, 8)
    with pytest.raises(BackendUnavailable, match="no backward pass on CPU"):
        attend(q.requires_grad_(), k, v, Causal(), backend="flex")
    q, k, v = random_qkv(1, 2, 8, 8)
    with pytest.raises(BackendUnavailable, match="no backward pass on CPU"):
        attend(q, k.requires_grad_(), v, Causal(), backend="flex")


def test_xformers_on_cpu_is_refused_with_a_cuda_hint():
    q, k, v = random_qkv(1, 2, 8, 8)
    with pytest.raises(BackendUnavailable, match="CUDA"):
        attend(q, k, v, Causal(), backend="xformers")


def test_backend_selection():
    q = torch.zeros(1, 1, 4, HEAD_DIM)
    assert resolve_backend("auto", q) == "blocked"
    cpu = available_backends("cpu")
    assert {"blocked", "reference", "flex"} <= set(cpu) and "xformers" not in cpu
    with pytest.raises(ValueError, match="unknown attention backend 'fastest'.*blocked"):
        attend(q, q, q, Full(), backend="fastest")


# --------------------------------------------------------------------------------------------
# 3. KV caches: incremental decoding equals the full forward
# --------------------------------------------------------------------------------------------

CACHE_PATTERNS = [
    pytest.param(Causal(), 11, id="causal"),
    pytest.param(Local1D(3), 14, id="local1d-b3-not-divisible"),
    pytest.param(Local1D(4), 8, id="local1d-two-blocks"),
    pytest.param(Local1D(1), 5, id="local1d-b1"),
    pytest.param(Local2D(4, 6, (2, 3), (2, 1)), 24, id="local2d-4x6-q2x3-f2x1"),
    pytest.param(Local2D(6, 8, (2, 2), (3, 3)), 48, id="local2d-6x8-q2x2-f3x3"),
]


@pytest.mark.parametrize("pattern, length", CACHE_PATTERNS)
def test_cache_steps_match_full_forward(pattern, length):
    batch, heads = 2, 3
    q, k, v = random_qkv(batch, heads, length, length)
    full = reference_attention(q, k, v, pattern)  # (B, H, N, E) float64
    cache = make_cache(pattern, batch, heads, HEAD_DIM, length)
    for p in range(length):
        out = cache.step(q[:, :, p:p + 1], k[:, :, p:p + 1], v[:, :, p:p + 1])  # (B, H, 1, E)
        assert out.shape == (batch, heads, 1, HEAD_DIM)
        assert max_error(out[:, :, 0], full[:, :, p]) <= TOL, p
    with pytest.raises(IndexError, match="full"):
        cache.step(q[:, :, :1], k[:, :, :1], v[:, :, :1])


def test_local1d_cache_holds_at_most_two_blocks():
    block, length = 3, 40
    pattern = Local1D(block)
    q, k, v = random_qkv(1, 2, length, length, seed=3)
    full = reference_attention(q, k, v, pattern)
    cache = make_cache(pattern, 1, 2, HEAD_DIM, length)
    for p in range(length):
        out = cache.step(q[:, :, p:p + 1], k[:, :, p:p + 1], v[:, :, p:p + 1])
        assert cache.slots == cache.keys.shape[2] == cache.values.shape[2] == 2 * block
        assert max_error(out[:, :, 0], full[:, :, p]) <= TOL, p


def test_cache_takes_one_position_at_a_time():
    cache = make_cache(Causal(), 1, 1, HEAD_DIM, 4)
    q, k, v = random_qkv(1, 1, 2, 2)
    with pytest.raises(ValueError, match="one position at a time"):
        cache.step(q, k, v)


@pytest.mark.parametrize("pattern", [Full(), Window(4, 4, 2)], ids=["full", "window"])
def test_cache_needs_a_causal_pattern(pattern):
    with pytest.raises(ValueError, match="causal pattern"):
        make_cache(pattern, 1, 1, HEAD_DIM, 16)


def test_local2d_cache_decodes_the_whole_grid():
    with pytest.raises(ValueError, match="24-position grid"):
        make_cache(Local2D(4, 6, (2, 3), (1, 1)), 1, 1, HEAD_DIM, 20)


@pytest.mark.parametrize("pattern, length", CACHE_PATTERNS)
def test_module_step_matches_forward(pattern, length):
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, pattern, qkv_bias=True).eval()
    x = torch.randn(2, length, 24)
    with torch.no_grad():
        full = mha(x)  # (B, N, D)
        cache = mha.new_cache(2, length)
        for p in range(length):
            out = mha.step(x[:, p:p + 1], cache)  # (B, 1, D)
            assert max_error(out[:, 0], full[:, p]) <= TOL, p


# --------------------------------------------------------------------------------------------
# 4. Modules, errors, linear cost
# --------------------------------------------------------------------------------------------


def reference_module_output(mha: MultiHeadAttention, x, context, pattern, bias=None):
    """Project by hand, attend with the float64 reference, project out."""
    def heads(t):  # (B, N, H*E) -> (B, H, N, E)
        return t.view(t.shape[0], t.shape[1], mha.heads, -1).transpose(1, 2)

    q = heads(mha.to_q(x))
    k, v = (heads(t) for t in mha.to_kv(context).chunk(2, dim=-1))
    out = reference_attention(q, k, v, pattern, bias).float()  # (B, H, Nq, E)
    return mha.proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


def test_cross_attention_module_matches_reference():
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, Full(), context_dim=10, attn_dim=48)
    x, context = torch.randn(2, 5, 24), torch.randn(2, 9, 10)
    with torch.no_grad():
        out = mha(x, context=context)
        assert out.shape == (2, 5, 24)
        assert max_error(out, reference_module_output(mha, x, context, Full())) <= TOL
        assert torch.equal(mha(x, context_kv=mha.context_kv(context)), out)


@pytest.mark.parametrize("pattern", [Window(8, 8, 4), shifted_window(8, 8, 4)],
                         ids=["window", "shifted"])
def test_window_module_with_relative_position_bias_matches_reference(pattern):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, pattern)
    rel = RelativePositionBias(4, 4)
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        bias = rel()
        assert max_error(mha(x, bias=bias), reference_module_output(mha, x, x, pattern, bias)) \
            <= TOL


def test_relative_position_bias_depends_only_on_offset():
    window, heads = 3, 2
    bias = RelativePositionBias(window, heads)().detach()
    assert bias.shape == (heads, window**2, window**2)
    by_offset: dict[tuple[int, int], torch.Tensor] = {}
    for i in range(window**2):
        for j in range(window**2):
            offset = (i // window - j // window, i % window - j % window)
            seen = by_offset.setdefault(offset, bias[:, i, j])
            assert torch.equal(seen, bias[:, i, j]), (i, j)
    assert len(by_offset) == (2 * window - 1) ** 2
    # Each offset has its own table row: with a random table, distinct offsets differ.
    assert len({tuple(t.tolist()) for t in by_offset.values()}) == (2 * window - 1) ** 2


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, Local1D(4), dropout=0.5)
    plain = MultiHeadAttention(16, 2, Local1D(4))
    plain.load_state_dict(mha.state_dict())
    x = torch.randn(2, 13, 16)
    mha.train()
    assert not torch.allclose(mha(x), mha(x))
    mha.eval()
    assert torch.equal(mha(x), mha(x))
    assert torch.equal(mha(x), plain.eval()(x))


@pytest.mark.parametrize("pattern, grid", [(Local2D(4, 6, (2, 3), (1, 1)), "4x6 grid"),
                                           (Window(4, 6, 2), "4x6 grid")],
                         ids=["local2d", "window"])
def test_wrong_length_for_a_grid_pattern_says_what_was_expected(pattern, grid):
    q = torch.zeros(1, 1, 20, HEAD_DIM)
    for backend in ("blocked", "reference"):
        with pytest.raises(ValueError, match=f"{grid} .*24 .*got a sequence of 20"):
            attend(q, q, q, pattern, backend=backend)


def test_bad_pattern_shapes_say_what_to_do():
    with pytest.raises(ValueError, match="not divisible by the query block 2x3.*query_shape"):
        Local2D(5, 6, (2, 3), (1, 1))
    with pytest.raises(ValueError, match="divisible by the window size 4"):
        Window(6, 8, 4)
    with pytest.raises(ValueError, match="use Full\\(\\) for cross-attention"):
        attend(torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 6, 8), torch.zeros(1, 1, 6, 8),
               Causal())


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_local1d_blocked_cost_is_linear():
    n, block, batch, heads, head_dim = 3072, 256, 1, 8, 64
    g = batch * heads
    q = torch.randn(batch, heads, n, head_dim, requires_grad=True)
    k = torch.randn(batch, heads, n, head_dim, requires_grad=True)
    v = torch.randn(batch, heads, n, head_dim, requires_grad=True)
    blocks = to_blocks(q, k, v, Local1D(block))
    assert blocks.k.numel() <= 2 * n * head_dim * g  # each key stored for two query blocks
    assert blocks.v.numel() <= 2 * n * head_dim * g
    assert blocks.mask.numel() <= n * 2 * block
    # Forward and backward: no op creates anything near N x N (9.4M elements here).
    with LargestTensor() as largest:
        attend(q, k, v, Local1D(block)).sum().backward()
    assert largest.numel <= 2 * n * head_dim * g < n * n


# --------------------------------------------------------------------------------------------
# 5. A pattern owns its dispatch; the backend is chosen at run time
# --------------------------------------------------------------------------------------------


class Strided(Pattern):
    """A pattern written in this test only: key j is visible to query i iff i - j is a multiple
    of ``stride``. Defining its mask, blocks and (no) cache here is all it takes."""

    def __init__(self, stride: int) -> None:
        self.stride = stride

    def dense_mask(self, num_queries, num_keys):
        i, j = torch.arange(num_queries)[:, None], torch.arange(num_keys)[None, :]
        return (i - j) % self.stride == 0

    def blocks(self, q, k, v, bias=None):
        b, h, n, e = q.shape
        mask = self.dense_mask(n, n).to(q.device)  # one dense block, explicit mask
        bias4 = None if bias is None else bias.expand(b, h, n, n).reshape(b * h, 1, n, n)
        return Blocks(q.reshape(b * h, 1, n, e), k.reshape(b * h, 1, n, e),
                      v.reshape(b * h, 1, n, e), mask, bias4, False,
                      lambda out: out.reshape(b, h, n, e))


@pytest.mark.parametrize("with_bias", [False, True])
def test_a_new_pattern_needs_only_its_own_class(with_bias):
    q, k, v = random_qkv(2, 3, 10, 10, seed=7)
    bias = torch.randn(3, 10, 10) if with_bias else None
    assert_matches_reference(Strided(3), "blocked", q, k, v, bias)
    mha = MultiHeadAttention(24, 3, Strided(2)).eval()
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        assert max_error(mha(x), reference_module_output(mha, x, x, Strided(2))) <= TOL
    with pytest.raises(ValueError, match="causal pattern"):
        mha.new_cache(2, 9)


@pytest.mark.parametrize("pattern", [Causal(), Local1D(4), Local2D(4, 6, (2, 3), (1, 1))],
                         ids=["causal", "local1d", "local2d"])
def test_each_causal_pattern_makes_its_own_cache(pattern):
    cache = pattern.new_cache(1, 2, HEAD_DIM, 24)
    assert cache.length == 24 and cache.position == 0
    assert type(make_cache(pattern, 1, 2, HEAD_DIM, 24)) is type(cache)


def test_set_backend_reaches_every_attention_module_and_checks_the_name():
    torch.manual_seed(0)
    model = torch.nn.Sequential(MultiHeadAttention(16, 2, Local1D(3)),
                                MultiHeadAttention(16, 2, Full(), context_dim=8))
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        blocked = model[0](x)
        assert set_backend(model, "reference") == 2
        assert [m.backend for m in model] == ["reference", "reference"]
        assert max_error(model[0](x), blocked) <= TOL
    with pytest.raises(ValueError, match="unknown attention backend 'fastest'"):
        set_backend(model, "fastest")
