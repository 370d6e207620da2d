"""Throughput per position against ``transformers``' ImageGPT of the same depth, width and heads.

Both models are built in one process with random weights, at 32x32, and timed interleaved:

* **ours**: the ``small`` config - 4 layers, width 128, 4 heads, FFN 384, local 1D attention
  (block 96), categorical over 256 values per **subpixel**: 3072 positions per image.
* **ImageGPT**: ``ImageGPTForCausalImageModeling`` with ``n_layer=4, n_embd=128, n_head=4,
  n_inner=384``, dropout 0 (as ours), vocabulary 513 (512 palette colours + start token):
  1024 positions per image, **full causal** attention, eager attention kernel (the only one
  ImageGPT has).

Measured (median of ``--repeats``, the two models alternating):

* ``train_positions_ratio``: positions per second of one training step (forward, backward,
  Adam(0.9, 0.98) step) at the same batch of images, ours / theirs.
* ``sample_positions_ratio``: positions per second of KV-cached sampling of whole images at the
  same batch, ours (:func:`imgtx.sampling.decode`) / theirs (a plain loop feeding one token at a
  time with ``past_key_values``; the same loop ``generate`` runs, without its logits-processor
  overhead, so the comparison is kind to ImageGPT).

Caveats: a position is not the same unit. Ours is one 8-bit subpixel (256-way softmax); theirs
is one pixel of a 512-colour palette (a 9-bit k-means quantisation of RGB, lossy). Per *image*,
ours does 3x as many positions, so per-image figures are also printed (``*_images_per_second``).
ImageGPT's cost per position grows with the position (full attention), ours does not (local
attention), so whole images are sampled. Activations differ (ReLU vs quick-GELU) and so do the
output heads (256 vs 512 classes); parameter counts are reported.

    python scripts/bench_vs_imagegpt.py --json          # ~3 min on 2 CPU cores

Needs ``transformers`` (``pip install -e '.[bench]'``). One thread by default (``--threads``), so
``--clock cpu`` (process CPU time) measures the same work as wall time on an idle machine while
other jobs share the cores; both clocks' ratios are reported.
A table goes to stderr; the last line on stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from imgtx.configs import get_config
from imgtx.hub import parameter_count
from imgtx.model import ImageTransformer
from imgtx.sampling import decode

SIZE = 32
OURS_POSITIONS = SIZE * SIZE * 3  # subpixels
THEIRS_POSITIONS = SIZE * SIZE  # palette tokens


def build_imagegpt(config):
    try:
        from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling
    except ImportError as error:
        raise SystemExit("this benchmark needs transformers: pip install -e '.[bench]'") from error
    hf_config = ImageGPTConfig(
        vocab_size=513, n_positions=THEIRS_POSITIONS, n_embd=config.hidden_size,
        n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.ffn_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return ImageGPTForCausalImageModeling(hf_config)


def adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)


def ours_train_step(model: ImageTransformer, optimizer, images: torch.Tensor) -> Callable:
    def step() -> None:
        loss = model.bits_per_dim(images).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def theirs_train_step(model, optimizer, tokens: torch.Tensor) -> Callable:
    def step() -> None:
        # tokens: (B, 1024) = start token + the first 1023 pixels; labels shift inside the model
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def ours_sample(model: ImageTransformer, batch: int, seed: int) -> Callable:
    def run() -> None:
        decode(model, batch, generator=torch.Generator().manual_seed(seed))
    return run


def theirs_sample(model, batch: int, seed: int) -> Callable:
    @torch.no_grad()
    def run() -> None:
        from transformers import DynamicCache

        generator = torch.Generator().manual_seed(seed)
        token = torch.full((batch, 1), model.config.vocab_size - 1)  # the start token
        cache = DynamicCache(config=model.config)
        for _ in range(THEIRS_POSITIONS):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :-1]  # the start token is never sampled
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
    return run


def interleaved(runs: dict[str, Callable], repeats: int, warmup: bool
                ) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of each run, alternating between them ``repeats`` times (after one
    untimed run each if ``warmup``): ``{name: {"wall": [...], "cpu": [...]}}``."""
    if warmup:
        for run in runs.values():
            run()
    times = {name: {"wall": [], "cpu": []} for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="accepted; the JSON line is always "
                        "the last line on stdout")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--sample-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed training repeats")
    parser.add_argument("--sample-repeats", type=int, default=2, help="timed sampling repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain-step", action="store_true",
                        help="sample with each layer's own step instead of the fused one "
                        "(imgtx.fused_step), to compare the two")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="rates from wall-clock time, or from this process's CPU time "
                        "(with one thread, robust to other jobs on a shared machine); the ratios "
                        "by the other clock are reported too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plain_step:
        from imgtx.fused_step import FusedStep

        FusedStep.supports = staticmethod(lambda layer: False)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    config = get_config("small")
    ours = ImageTransformer(config)
    theirs = build_imagegpt(config)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.train_batch, 3, SIZE, SIZE), generator=g,
                           dtype=torch.uint8)
    tokens = torch.randint(0, 512, (args.train_batch, THEIRS_POSITIONS), generator=g)
    tokens[:, 0] = 512  # start token

    ours.train()
    theirs.train()
    train = interleaved({"ours": ours_train_step(ours, adam(ours), images),
                         "theirs": theirs_train_step(theirs, adam(theirs), tokens)},
                        args.repeats, warmup=True)
    ours.eval()
    theirs.eval()
    # No warm-up run: a whole image takes thousands of steps, the first few are noise.
    sample = interleaved({"ours": ours_sample(ours, args.sample_batch, args.seed),
                          "theirs": theirs_sample(theirs, args.sample_batch, args.seed)},
                         args.sample_repeats, warmup=False)

    def rate(times: dict[str, list[float]], positions: int, batch: int,
             clock: str = args.clock) -> float:
        return positions * batch / statistics.median(times[clock])

    result = {
        "train_positions_ratio": rate(train["ours"], OURS_POSITIONS, args.train_batch)
        / rate(train["theirs"], THEIRS_POSITIONS, args.train_batch),
        "sample_positions_ratio": rate(sample["ours"], OURS_POSITIONS, args.sample_batch)
        / rate(sample["theirs"], THEIRS_POSITIONS, args.sample_batch),
        "clock": args.clock,
    }
    other = "cpu" if args.clock == "wall" else "wall"
    for name, times, batch in (("train", train, args.train_batch),
                               ("sample", sample, args.sample_batch)):
        result[f"{name}_positions_ratio_{other}_clock"] = (
            rate(times["ours"], OURS_POSITIONS, batch, other)
            / rate(times["theirs"], THEIRS_POSITIONS, batch, other))
    for who, positions in (("ours", OURS_POSITIONS), ("theirs", THEIRS_POSITIONS)):
        result[f"{who}_train_positions_per_second"] = rate(train[who], positions,
                                                           args.train_batch)
        result[f"{who}_sample_positions_per_second"] = rate(sample[who], positions,
                                                            args.sample_batch)
        result[f"{who}_train_images_per_second"] = rate(train[who], 1, args.train_batch)
        result[f"{who}_sample_images_per_second"] = rate(sample[who], 1, args.sample_batch)
    result.update({
        "ours_positions_per_image": OURS_POSITIONS, "theirs_positions_per_image": THEIRS_POSITIONS,
        "ours_parameters": parameter_count(ours), "theirs_parameters": parameter_count(theirs),
        "train_batch": args.train_batch, "sample_batch": args.sample_batch,
        "repeats": args.repeats, "sample_repeats": args.sample_repeats,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "plain_step": args.plain_step, "load_average": os.getloadavg(),
        "total_seconds": time.perf_counter() - start,
    })
    print(f"{'':8} {'train pos/s':>12} {'sample pos/s':>13} {'train img/s':>12} "
          f"{'sample img/s':>13}", file=sys.stderr)
    for who in ("ours", "theirs"):
        print(f"{who:8} {result[f'{who}_train_positions_per_second']:12.0f} "
              f"{result[f'{who}_sample_positions_per_second']:13.0f} "
              f"{result[f'{who}_train_images_per_second']:12.3f} "
              f"{result[f'{who}_sample_images_per_second']:13.3f}", file=sys.stderr)
    print(f"rates by {args.clock} clock; ratios (ours/theirs, per position): "
          f"train {result['train_positions_ratio']:.2f}, "
          f"sample {result['sample_positions_ratio']:.2f}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
