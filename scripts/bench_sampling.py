"""Benchmark KV-cached sampling against full recompute (what T2T did: the whole model per subpixel).

1. ``16x16``: the ``small`` config (the shipped checkpoint's architecture: 4 layers, width 128,
   local 1D block 96) at ``image_size=16`` (768 subpixels), random weights. Both paths sample the
   same batch from the same seed, every one of the 768 positions:
   ``cached_speedup_16x16 = recompute seconds / cached seconds``;
   ``max_abs_logit_diff`` = max |cached - recompute| over all head outputs of all steps
   (``decode(..., return_outputs=True)``), and ``same_images`` whether the draws agree.
2. ``32x32``: ``seconds_per_image_32x32`` of cached batched sampling with the ``small`` config at
   32x32 (3072 subpixels) - ``checkpoints/imgtx-photos32-small`` when present, else random weights.

Threads: ``--threads 1`` by default. A cached step is ~130 small ops (fused, imgtx.fused_step); on
a shared machine intra-op threads only add stalls, and one thread keeps the two paths on equal
terms. Pass ``--threads 0`` for torch's default. ``--clock cpu`` times by this process's CPU time
instead of the wall clock: with one thread that is the same work, but robust to other jobs sharing
the cores. Recompute's cost grows with the batch and the cached path's hardly does (a cached step
is overhead-bound), so the speed-up grows with ``--batch-16``.

    python scripts/bench_sampling.py --json            # ~2.5 min of one CPU core
    python scripts/bench_sampling.py --json --device cuda

A summary goes to stderr; the last line on stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from imgtx.configs import get_config
from imgtx.model import ImageTransformer
from imgtx.sampling import decode

CHECKPOINT = Path("checkpoints/imgtx-photos32-small")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_decode(model: ImageTransformer, batch: int, seed: int, use_cache: bool
                 ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """``{"wall", "cpu"}`` seconds, images ``(B, 3, H, W)`` and head outputs ``(B, N, 256)`` of
    one decode."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    images, outputs = decode(model, batch, generator=generator, use_cache=use_cache,
                             return_outputs=True)
    _sync(device)
    seconds = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    return seconds, images, outputs


def cached_vs_recompute(batch: int, seed: int, device: torch.device, clock: str) -> dict:
    torch.manual_seed(seed)
    model = ImageTransformer(get_config("small", image_size=16)).to(device).eval()
    n = model.config.sequence_length
    # Warm-up: a forward pass and a few cached steps (first-call allocations, kernel selection).
    with torch.no_grad():
        model(torch.zeros(batch, 3, 16, 16, dtype=torch.uint8, device=device))
    tiny = ImageTransformer(get_config("small", image_size=2)).to(device).eval()
    decode(tiny, batch)
    cached, cached_images, cached_out = timed_decode(model, batch, seed, use_cache=True)
    cached_s = cached[clock]
    print(f"16x16 cached:    {cached_s:7.2f} s  ({1e3 * cached_s / n:.2f} ms per position, "
          f"batch {batch}, {clock} clock)", file=sys.stderr)
    recompute, recompute_images, recompute_out = timed_decode(model, batch, seed,
                                                              use_cache=False)
    recompute_s = recompute[clock]
    print(f"16x16 recompute: {recompute_s:7.2f} s  ({1e3 * recompute_s / n:.2f} ms per position)",
          file=sys.stderr)
    diff = (cached_out.double() - recompute_out.double()).abs().max().item()
    other = "cpu" if clock == "wall" else "wall"
    return {
        "cached_speedup_16x16": recompute_s / cached_s,
        "max_abs_logit_diff": diff,
        "same_images": bool(torch.equal(cached_images, recompute_images)),
        "cached_seconds_16x16": cached_s,
        "recompute_seconds_16x16": recompute_s,
        f"cached_speedup_16x16_{other}_clock": recompute[other] / cached[other],
        "batch_16x16": batch,
        "positions_16x16": n,
    }


def cached_32x32(batch: int, seed: int, device: torch.device, clock: str) -> dict:
    if (CHECKPOINT / "config.json").is_file():
        model = ImageTransformer.from_pretrained(str(CHECKPOINT), device=device)
        weights = str(CHECKPOINT)
    else:
        torch.manual_seed(seed)
        model = ImageTransformer(get_config("small")).to(device).eval()
        weights = "random (small config; checkpoint not found)"
    times, _, _ = timed_decode(model, batch, seed, use_cache=True)
    seconds = times[clock]
    print(f"32x32 cached:    {seconds:7.2f} s for {batch} images ({weights})", file=sys.stderr)
    return {"seconds_per_image_32x32": seconds / batch, "seconds_32x32": seconds,
            "batch_32x32": batch, "weights_32x32": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="accepted; the JSON line is always "
                        "the last line on stdout")
    parser.add_argument("--batch-16", type=int, default=4, help="batch for cached vs recompute")
    parser.add_argument("--batch-32", type=int, default=8, help="batch for 32x32 sampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-32", action="store_true", help="only the 16x16 comparison")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="time by wall clock, or by this process's CPU time (with one "
                        "thread, robust to other jobs on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    result = cached_vs_recompute(args.batch_16, args.seed, device, args.clock)
    if not args.skip_32:
        result.update(cached_32x32(args.batch_32, args.seed, device, args.clock))
    result.update({
        "clock": args.clock,
        "config": "small", "threads": torch.get_num_threads(), "device": str(device),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "total_seconds": time.perf_counter() - start,
    })
    print(f"speed-up {result['cached_speedup_16x16']:.1f}x, max |logit diff| "
          f"{result['max_abs_logit_diff']:.2e}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
