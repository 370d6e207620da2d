"""Parts 1 and 2 of ``scripts/gpu_check.py``: attention correctness and attention speed.

Correctness holds every backend to the float64 reference (:func:`imgtx.attention.
reference_attention`) the way ``tests/test_attention.py`` does, at the sizes the models use. The
reference is computed from the very inputs the backend saw (bf16 inputs are rounded first), so
the error is the kernel's alone. The tolerance is relative to the largest reference value
(``tolerance = RELATIVE_TOLERANCE[dtype] * max(1, max |reference|)``).

Shapes: B batch, H heads, N sequence length, E head dim.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

from imgtx.attention import (
    Causal,
    Full,
    Local1D,
    Local2D,
    Pattern,
    RelativePositionBias,
    Window,
    attend,
    make_cache,
    reference_attention,
    shifted_window,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Max error over max(1, max |reference|). fp32: the CPU tests hold 1e-5 absolute at toy sizes;
# bf16 keeps 8 significant bits (2^-8 = 0.0039 per rounding) and its kernels round the softmax
# weights too, so a few roundings' worth.
RELATIVE_TOLERANCE = {"fp32": 1e-4, "bf16": 2**-5}
BACKENDS = ("blocked", "xformers", "flex")
XFORMERS_MISSING = "xformers is not installed: pip install -e '.[gpu]'"


def xformers_missing() -> str | None:
    """The reason xformers items skip, or None when it is importable."""
    return None if importlib.util.find_spec("xformers") else XFORMERS_MISSING


def allow_flex_recompiles() -> None:
    """Compiled FlexAttention recompiles per block shape; raise dynamo's limit (default 8)."""
    dynamo_config = importlib.import_module("torch._dynamo").config
    for name in ("recompile_limit", "cache_size_limit"):  # the name before torch 2.6
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 64)


# --------------------------------------------------------------------------------------------
# 1. Correctness
# --------------------------------------------------------------------------------------------


def attention_cases(dry_run: bool) -> list[tuple[str, Pattern, int, int, int, int, bool]]:
    """``(name, pattern, B, H, N, E, with_bias)`` per pattern, most used first."""
    if dry_run:
        return [("local1d", Local1D(8), 2, 2, 40, 16, False),
                ("local2d", Local2D(8, 12, (2, 4), (2, 4)), 2, 2, 96, 16, False),
                ("window", Window(8, 8, 4), 2, 2, 64, 16, True),
                ("shifted_window", shifted_window(8, 8, 4), 2, 2, 64, 16, True),
                ("full", Full(), 2, 2, 16, 16, True),
                ("causal", Causal(), 2, 2, 24, 16, False)]
    return [
        # imagenet32-cat-1d: 3072 subpixels, block 256, 4 heads of 512/4 = 128
        ("local1d", Local1D(256), 1, 4, 3072, 128, False),
        # cifar10-cat-2d: 32 x 96 grid, query (16, 16), flange (16, 32), 8 heads of 64
        ("local2d", Local2D(32, 96, (16, 16), (16, 32)), 1, 8, 3072, 64, False),
        # transgan-celebahq256/church256 at 64^2 tokens: 16x16 windows, width 256, 4 heads, bias
        ("window", Window(64, 64, 16), 1, 4, 4096, 64, True),
        # strans-cifar10 at 32^2 tokens: Swin 8x8 windows shifted by 4, width 128, 2 heads
        ("shifted_window", shifted_window(32, 32, 8), 2, 2, 1024, 64, True),
        # transgan-cifar10 stage 1: 8x8 tokens, width 1024, 4 heads of 256, relative bias
        ("full", Full(), 2, 4, 64, 256, True),
        # small at 16x16: 768 subpixels (causal patterns of small images), 4 heads of 32
        ("causal", Causal(), 2, 4, 768, 32, False),
    ]


def random_inputs(pattern: Pattern, batch: int, heads: int, length: int, head_dim: int,
                  with_bias: bool, dtype: torch.dtype, device: torch.device
                  ) -> list[torch.Tensor | None]:
    """q, k, v ``(B, H, N, E)``, a bias (window-local for Window patterns) or None, and an
    output gradient, in ``dtype`` (drawn in float32 and rounded)."""
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(batch, heads, length, head_dim, generator=g) for _ in range(4))
    bias = None
    if with_bias and isinstance(pattern, Window):
        rel = RelativePositionBias(pattern.window, heads)
        with torch.no_grad():
            rel.table.copy_(torch.randn(rel.table.shape, generator=g))
        bias = rel().detach()  # (H, w*w, w*w)
    elif with_bias:
        bias = torch.randn(heads, length, length, generator=g)  # (H, N, N)
    return [None if t is None else t.to(device=device, dtype=dtype)
            for t in (q, k, v, bias, grad)]


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max |actual - expected|, max |expected|)."""
    return ((actual.double() - expected).abs().max().item(), expected.abs().max().item())


def compare(pattern: Pattern, backend: str, inputs: list, dtype_name: str,
            gradients: bool) -> dict:
    """``attend`` with ``backend`` against the float64 reference on the same inputs: forward
    and, with ``gradients``, d/dq, d/dk, d/dv (and d/dbias). Figures: errors, tolerance, ok."""
    q, k, v, bias, grad = inputs
    leaves = [t for t in (q, k, v, bias) if t is not None]
    low = [t.clone().requires_grad_(gradients) for t in leaves]
    high = [t.double().requires_grad_(gradients) for t in leaves]
    with torch.set_grad_enabled(gradients):
        out = attend(*low[:3], pattern, bias=low[3] if bias is not None else None,
                     backend=backend)
    expected = reference_attention(*high[:3], pattern, high[3] if bias is not None else None)
    rel = RELATIVE_TOLERANCE[dtype_name]
    error, scale = max_error(out, expected)
    figures = {"forward_error": error, "forward_tolerance": rel * max(1.0, scale)}
    ok = error <= figures["forward_tolerance"]
    if gradients:
        got = torch.autograd.grad(out, low, grad)
        want = torch.autograd.grad(expected, high, grad.double())
        # Each gradient against its own scale; the figures name the worst one.
        checks = [(name, *max_error(g, w)) for name, g, w in zip("q k v bias".split(), got, want)]
        leaf, error, scale = max(checks, key=lambda c: c[1] / (rel * max(1.0, c[2])))
        figures.update(backward_error=error, backward_tolerance=rel * max(1.0, scale),
                       backward_worst=f"d/d{leaf}")
        ok = ok and error <= figures["backward_tolerance"]
    figures["ok"] = bool(ok)
    return figures


def cache_vs_reference(pattern: Pattern, inputs: list, dtype_name: str) -> dict:
    """Decode every position with the pattern's KV cache; each step against the float64
    reference of the full sequence."""
    q, k, v, _, _ = inputs
    batch, heads, length, head_dim = q.shape
    expected = reference_attention(q.double(), k.double(), v.double(), pattern)  # (B, H, N, E)
    cache = make_cache(pattern, batch, heads, head_dim, length, q.device, q.dtype)
    steps = [cache.step(q[:, :, p:p + 1], k[:, :, p:p + 1], v[:, :, p:p + 1])
             for p in range(length)]  # each (B, H, 1, E)
    error, scale = max_error(torch.cat(steps, dim=2), expected)
    tolerance = RELATIVE_TOLERANCE[dtype_name] * max(1.0, scale)
    return {"max_error": error, "tolerance": tolerance, "positions": length,
            "ok": error <= tolerance}


@torch.no_grad()
def decoder_vs_forward(config_name: str, batch: int, device: torch.device) -> dict:
    """The model's cached decoder (teacher-forced on random images) against its full forward:
    max |logit difference| over every position."""
    from imgtx.configs import get_config
    from imgtx.model import ImageTransformer

    torch.manual_seed(0)
    model = ImageTransformer(get_config(config_name)).to(device).eval()
    size = model.config.image_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    full = model.to_sequence(model(images))  # (B, N, 256), model order
    values = model.to_sequence(model.targets(images))  # (B, N)
    decoder = model.incremental_decoder(batch)
    steps = []
    for t in range(values.shape[1]):
        steps.append(decoder.outputs())  # (B, 256)
        decoder.feed(values[:, t])
    error, scale = max_error(torch.stack(steps, dim=1), full.double())
    tolerance = RELATIVE_TOLERANCE["fp32"] * max(1.0, scale)
    return {"max_error": error, "tolerance": tolerance, "positions": values.shape[1],
            "ok": error <= tolerance}


def correctness(ctx) -> None:
    """Part 1: every backend x pattern x dtype, forward and backward; caches; decoders."""
    if ctx.cuda:
        allow_flex_recompiles()
    xformers = xformers_missing()
    cases = attention_cases(ctx.dry_run)
    need = 0.5 if ctx.dry_run else 3.0

    def backend_items(backends: tuple[str, ...]) -> None:
        for dtype_name in ("fp32", "bf16"):
            for name, pattern, batch, heads, length, head_dim, with_bias in cases:
                inputs = random_inputs(pattern, batch, heads, length, head_dim, with_bias,
                                       DTYPES[dtype_name], ctx.device)
                for backend in backends:
                    label = f"{name}/{backend}/{dtype_name}"
                    check = functools.partial(compare, pattern, backend, inputs, dtype_name)
                    if backend == "blocked" or ctx.cuda:
                        ctx.run(f"{label}/forward+backward", functools.partial(check, True),
                                need_s=need,
                                missing=xformers if backend == "xformers" else None)
                    elif backend == "flex":  # CPU FlexAttention runs forward only
                        ctx.run(f"{label}/forward", functools.partial(check, False),
                                need_s=need)
                        ctx.record(f"{label}/backward", "skipped", "no CUDA")
                    else:
                        ctx.record(f"{label}/forward+backward", "skipped", "no CUDA")
                del inputs

    # FlexAttention last: its first call per shape and dtype compiles (seconds on a GPU each).
    backend_items(("blocked", "xformers"))
    for name, pattern, batch, heads, length, head_dim, _ in cases:
        if not pattern.causal:
            continue
        for dtype_name in ("fp32", "bf16"):
            inputs = random_inputs(pattern, batch, heads, length, head_dim, False,
                                   DTYPES[dtype_name], ctx.device)
            ctx.run(f"{name}/kv_cache_step/{dtype_name}",
                    functools.partial(cache_vs_reference, pattern, inputs, dtype_name),
                    need_s=need)
    decoders(ctx, need)
    backend_items(("flex",))


def decoders(ctx, need: float) -> None:
    """The models' cached decoders against their full forward (fp32)."""
    configs = ["tiny"] if ctx.dry_run else ["small", "small-2d", "imagenet32-cat-1d"]
    for config_name in configs:
        ctx.run(f"decoder_vs_forward/{config_name}/fp32",
                functools.partial(decoder_vs_forward, config_name, 2, ctx.device),
                need_s=need * 2)


# --------------------------------------------------------------------------------------------
# 2. Attention speed and memory
# --------------------------------------------------------------------------------------------


def speed_cases(dry_run: bool) -> dict:
    """``scripts/bench_attention.py``'s cases (12,288 and 64x64 first), or toy ones."""
    import bench_attention as bench

    if dry_run:
        return {"local1d_96": bench.Case(Local1D(16), 96, "masked"),
                "local2d_192": bench.Case(Local2D(8, 24, (4, 8), (4, 8)), 192, "masked"),
                "window_16x16": bench.Case(Window(16, 16, 4), 256, "full")}
    order = ["local1d_12288", "local2d_12288", "window_64x64", "local1d_3072", "local2d_3072"]
    return {**{name: bench.CASES[name] for name in order}, **bench.CUDA_CASES}


def time_and_memory(name: str, case, backend: str, device: torch.device, dry_run: bool,
                    dense: dict) -> dict:
    """Median seconds of one forward+backward of ``backend`` (and, the first time per case, of
    dense SDPA: kept in ``dense``), timed interleaved by bench_attention.time_side_by_side; on
    CUDA the peak memory of each (bench_attention.measure_in_this_process). Speed-up and memory
    ratio against dense attention, as the bench reports them."""
    import bench_attention as bench

    kind = device.type
    inputs = bench.make_inputs(case.length, kind)
    fns = {backend: bench.step_fn(case, backend, inputs, None)}
    mask = None
    if name not in dense:
        mask = bench.dense_mask(case, kind)
        fns["dense"] = bench.step_fn(case, "dense", inputs, mask)
    seconds = bench.time_side_by_side(fns, repeats=1 if dry_run else 3, warmup=set(fns),
                                      device=kind)
    del inputs, mask, fns
    if "dense" in seconds:
        dense[name] = {"seconds": seconds["dense"]}
        if kind == "cuda":
            dense[name]["peak_mb"] = bench.measure_in_this_process(name, "dense", kind)["peak_mb"]
    figures = {"seconds": seconds[backend], "dense_seconds": dense[name]["seconds"],
               "speedup": dense[name]["seconds"] / seconds[backend]}
    if kind == "cuda":
        local = bench.measure_in_this_process(name, backend, kind)["peak_mb"]
        figures.update(peak_mb=local, dense_peak_mb=dense[name]["peak_mb"],
                       mem_ratio=local / dense[name]["peak_mb"])
    return figures


def attention_speed(ctx) -> None:
    """Part 2: per case and backend, speed-up and memory ratio against dense attention."""
    if ctx.cuda:
        allow_flex_recompiles()
    xformers = xformers_missing()
    need = 0.5 if ctx.dry_run else 5.0
    dense: dict[str, dict] = {}  # dense attention's figures per case, measured once
    cases = speed_cases(ctx.dry_run)
    # FlexAttention last: its first call per shape compiles.
    for backends in (("blocked", "xformers"), ("flex",)):
        for name, case in cases.items():
            for backend in backends:
                label = f"{name}/{backend}"
                if backend != "blocked" and not ctx.cuda:  # xformers: CUDA; flex: no CPU backward
                    ctx.record(label, "skipped", "no CUDA")
                    continue
                ctx.run(label, functools.partial(time_and_memory, name, case, backend,
                                                 ctx.device, ctx.dry_run, dense),
                        need_s=need, missing=xformers if backend == "xformers" else None)
    if not ctx.cuda:
        for name in cases:
            ctx.record(f"{name}/peak_memory", "skipped", "no CUDA")
