"""One prepared GPU check: every CUDA path imgtx has, measured in one command within a budget.

    python scripts/gpu_check.py                          # a CUDA machine: ~7 min (--budget-s)
    python scripts/gpu_check.py --dry-run --out /tmp/gc  # toy sizes on the CPU (CI runs this)
    python scripts/gpu_check.py --parts correctness,gan  # a subset, in the usual order

Parts, in order of value (each time-boxed; a part skips itself when too little of the budget is
left, and an item that outruns its part's box is stopped and recorded as skipped):

1. ``correctness``: blocked SDPA, xformers and FlexAttention against the float64 reference for
   every pattern (causal, local 1D, local 2D, window, shifted window, full) at the sizes the
   models use, forward and backward, fp32 and bf16, with the max error and its tolerance; the
   KV-cache step and the model's cached decoder against the full forward.
2. ``attention_speed``: ``scripts/bench_attention.py``'s cases (N = 12,288, 64x64 tokens, ...):
   speed-up and memory ratio against dense attention, per backend.
3. ``gan``: ``transgan-cifar10`` G/D step time at batch 64 in fp32 and bf16; peak memory of the
   256^2 configs with and without block checkpointing; a few hundred bf16 training steps on
   random images (losses must stay finite); the official TransGAN step beside ours when a clone
   of it is in the tree.
4. ``likelihood``: training positions/s per backend, cached sampling images/s, ``eval-bpd``
   images/s.
5. ``environment``: torch, CUDA and xformers versions, the GPU, the peak memory of each part.

Writes ``gpu_check.json`` (every part, measured or skipped with its reason) and ``gpu_check.md``
(the figures as Markdown tables) into ``--out`` (default ``$OUT`` when set, else
``runs/gpu_check``), after every part. One progress line per part (and per item) goes to stderr;
the last stdout line is a JSON summary. Exit status 0: all ran within tolerance; 1: an item
failed or exceeded its tolerance; 2: a usage error (e.g. no CUDA without ``--dry-run``).
Installs nothing: a missing package (xformers) makes its items skip with the install line.
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # the budget counts from here, imports included

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

NO_CUDA = "no CUDA"


class TimeBoxReached(Exception):
    """Raised by the alarm at the end of a part's time box."""


@dataclass
class Context:
    """What a part is given: where it runs, its deadline, and where its items are recorded.

    A part calls :meth:`run` once per item. An item is skipped (with the reason) when it needs
    CUDA and there is none, when a dependency is missing, or when less than ``need_s`` seconds of
    the part's box are left; an exception becomes a ``failed`` item, and the alarm at the box's
    end stops the item running then.
    """

    device: torch.device
    dry_run: bool
    out: Path
    deadline: float  # time.monotonic() at the end of the part's box
    options: dict = field(default_factory=dict)  # e.g. the official TransGAN clone's path
    items: list[dict] = field(default_factory=list)
    peak_cuda_mb: float = 0.0  # the largest peak of any item so far

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        """Seconds left in this part's box."""
        return self.deadline - time.monotonic()

    def record(self, name: str, status: str, reason: str | None = None, **figures) -> dict:
        """Append an item ``{"name", "status", "reason"?, "figures"?}`` and print it."""
        item: dict[str, Any] = {"name": name, "status": status}
        if reason:
            item["reason"] = reason
        if figures:
            item["figures"] = figures
        self.items.append(item)
        shown = reason or format_figures(figures)
        print(f"    {name}: {status}{' - ' + shown if shown else ''}", file=sys.stderr,
              flush=True)
        return item

    def run(self, name: str, measure: Callable[[], dict], *, need_s: float = 1.0,
            cuda_only: bool = False, missing: str | None = None) -> dict | None:
        """Measure one item; returns its figures, or None when it was skipped or failed."""
        if cuda_only and not self.cuda:
            self.record(name, "skipped", NO_CUDA)
            return None
        if missing:
            self.record(name, "skipped", missing)
            return None
        if self.left() < need_s:
            self.record(name, "skipped", f"not enough time: {max(self.left(), 0):.0f} s left in "
                        f"the part's box, the item needs ~{need_s:.0f} s")
            return None
        start = time.monotonic()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            figures = measure()
        except TimeBoxReached:
            self.record(name, "skipped", "time box reached while measuring")
            return None
        except Exception as error:  # recorded, and the next item runs
            if os.environ.get("IMGTX_DEBUG") == "1":
                traceback.print_exc()
            self.record(name, "failed", one_line(error))
            free_memory()
            return None
        finally:
            if self.cuda:  # this item's peak, then its memory back for the next item
                peak = torch.cuda.max_memory_allocated(self.device) / 2**20
                self.peak_cuda_mb = max(self.peak_cuda_mb, round(peak, 1))
                free_memory()
        figures = {**figures, "seconds": round(time.monotonic() - start, 2)}
        self.record(name, "measured", **figures)
        return figures


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def format_figures(figures: dict) -> str:
    """``key=value`` pairs, floats to 4 significant digits."""
    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return "{" + format_figures(value) + "}"
        return str(value)

    return ", ".join(f"{key}={show(value)}" for key, value in figures.items())


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A part: its function, its box on a GPU (seconds) and the least time worth starting it."""

    name: str
    title: str
    function: Callable[[Context], None]
    box_s: float
    min_s: float


def environment(ctx: Context) -> None:
    """Versions, the device, and (filled in by :func:`main`) each part's peak memory."""
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def versions() -> dict:
        figures = {"python": platform.python_version(), "torch": torch.__version__,
                   "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                   "xformers": version("xformers"), "triton": version("triton"),
                   "accelerate": version("accelerate"), "imgtx": version("imgtx"),
                   "platform": platform.platform(), "cpu_count": os.cpu_count(),
                   "torch_threads": torch.get_num_threads()}
        return figures

    ctx.run("versions", versions, need_s=0)

    def gpu() -> dict:
        props = torch.cuda.get_device_properties(ctx.device)
        return {"name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gb": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count}

    ctx.run("gpu", gpu, need_s=0, cuda_only=True)
    peaks = ctx.options.get("peak_cuda_mb_per_part", {})
    ctx.run("peak_memory_per_part", lambda: {"peak_cuda_mb": peaks}, need_s=0, cuda_only=True)


def parts() -> list[Part]:
    """The parts in order of value."""
    import gpu_check_attention as attention
    import gpu_check_models as models

    return [
        Part("correctness", "Correctness of every backend against the float64 reference",
             attention.correctness, box_s=130, min_s=20),
        Part("attention_speed", "Attention speed and memory against dense attention",
             attention.attention_speed, box_s=75, min_s=15),
        Part("gan", "GAN on one GPU", models.gan, box_s=115, min_s=20),
        Part("likelihood", "Likelihood model: training, sampling, eval-bpd", models.likelihood,
             box_s=75, min_s=15),
        Part("environment", "Environment", environment, box_s=10, min_s=0),
    ]


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def failures(report: dict) -> list[str]:
    """One line per failed item and per item over its tolerance (``ok`` false)."""
    lines = []
    for name, part in report["parts"].items():
        if part["status"] == "failed":
            lines.append(f"{name}: {part.get('reason')}")
        for item in part.get("items", []):
            if item["status"] == "failed":
                lines.append(f"{name}/{item['name']}: {item.get('reason')}")
            elif item.get("figures", {}).get("ok") is False:
                lines.append(f"{name}/{item['name']}: over tolerance "
                             f"({format_figures(item['figures'])})")
    return lines


def markdown(report: dict) -> str:
    """The report as Markdown: a header line, then one table per part."""
    card = report.get("card") or "no GPU"
    lines = [f"# imgtx GPU check, {report['date']} ({card})", "",
             f"{'Dry run (toy sizes, CPU). ' if report['dry_run'] else ''}"
             f"torch {torch.__version__}, CUDA {torch.version.cuda}; budget "
             f"{report['budget_s']} s, wall {report.get('wall_s')} s; "
             f"command: `{report['command']}`", ""]
    for name, part in report["parts"].items():
        head = f"## {name}: {part['status']}"
        if part.get("reason"):
            head += f" ({part['reason']})"
        extra = [f"{part['seconds']} s" if "seconds" in part else None,
                 f"peak {part['peak_cuda_mb']} MB on the GPU" if part.get("peak_cuda_mb")
                 else None]
        lines += [head, "", "; ".join(e for e in extra if e) or "-", ""]
        if part.get("items"):
            lines += ["| item | status | figures |", "|---|---|---|"]
            for item in part["items"]:
                shown = item.get("reason") or format_figures(item.get("figures", {}))
                lines.append(f"| {item['name']} | {item['status']} | {shown.replace('|', '/')} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out`` (rewritten after every part)."""
    report["failures"] = failures(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _alarm(signum, frame) -> None:
    raise TimeBoxReached()


def run_part(part: Part, report: dict, args, device: torch.device, out: Path,
             deadline: float) -> dict:
    """Run one part inside its box; returns its entry for the report."""
    left = deadline - time.monotonic()
    min_s = part.min_s * args.box_scale
    # A part that needs no time (the environment: reporting only) runs whatever is left.
    box = part.box_s * args.box_scale if not min_s else min(part.box_s * args.box_scale, left)
    entry: dict[str, Any] = {"title": part.title}
    if min_s and left < min_s:
        entry.update(status="skipped", reason=f"not enough time: {max(left, 0):.0f} s of the "
                     f"budget left, the part needs at least {min_s:.0f} s")
        return entry
    options = {"official": args.official,
               "peak_cuda_mb_per_part": {n: p.get("peak_cuda_mb")
                                         for n, p in report["parts"].items()}}
    ctx = Context(device, args.dry_run, out, time.monotonic() + box, options)
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(box, 0.01))
    try:
        part.function(ctx)
        entry["status"] = "measured" if any(i["status"] != "skipped" for i in ctx.items) \
            else "skipped"
        if entry["status"] == "skipped":
            entry["reason"] = "every item was skipped"
    except TimeBoxReached:
        entry.update(status="measured", reason=f"time box of {box:.0f} s reached")
    except Exception as error:
        if os.environ.get("IMGTX_DEBUG") == "1":
            traceback.print_exc()
        entry.update(status="failed", reason=one_line(error))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    entry.update(seconds=round(time.monotonic() - start, 1), box_s=round(box, 1),
                 items=ctx.items)
    if device.type == "cuda":
        entry["peak_cuda_mb"] = ctx.peak_cuda_mb
    free_memory()
    return entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every part at toy sizes on the CPU (CUDA-only items skip)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check",
                        help="output folder (default: $OUT when set, else runs/gpu_check)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="stop starting work after this many seconds (imports included)")
    parser.add_argument("--parts", default="all",
                        help="comma-separated part names to run (default: all, in order)")
    parser.add_argument("--official", metavar="PATH",
                        help="a VITA-Group/TransGAN clone (default: looked for in the tree)")
    args = parser.parse_args(argv)
    # Toy sizes take a fraction of the GPU boxes, but a busy CPU machine can be several times
    # slower than an idle one: the dry run keeps the full boxes, so only the budget can skip.
    args.box_scale = 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status."""
    args = parse_args(argv)
    all_parts = parts()
    names = [p.name for p in all_parts]
    wanted = names if args.parts == "all" else [n.strip() for n in args.parts.split(",")]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"gpu_check: unknown part(s) {unknown}; choose from {names}", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch; run on a CUDA machine, or pass "
              "--dry-run to run every part at toy sizes on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:  # toy sizes: one thread is as fast, and never spins against other jobs
        torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = _STARTED + args.budget_s
    report: dict[str, Any] = {
        "check": "imgtx scripts/gpu_check.py", "version": 1, "dry_run": args.dry_run,
        "device": str(device), "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"), "budget_s": args.budget_s,
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "command": "python scripts/gpu_check.py " + " ".join(sys.argv[1:] if argv is None
                                                            else argv),
        "official": args.official, "parts": {}}
    chosen = [p for p in all_parts if p.name in wanted]
    for index, part in enumerate(chosen, 1):
        left = deadline - time.monotonic()
        print(f"[gpu_check] part {index}/{len(chosen)} {part.name}: starting "
              f"({left:.0f} s of the budget left)", file=sys.stderr, flush=True)
        entry = run_part(part, report, args, device, out, deadline)
        report["parts"][part.name] = entry
        counts = {s: sum(i["status"] == s for i in entry.get("items", []))
                  for s in ("measured", "skipped", "failed")}
        print(f"[gpu_check] part {index}/{len(chosen)} {part.name}: {entry['status']}"
              f"{' (' + entry['reason'] + ')' if entry.get('reason') else ''}; "
              f"{counts['measured']} measured, {counts['skipped']} skipped, "
              f"{counts['failed']} failed in {entry.get('seconds', 0)} s",
              file=sys.stderr, flush=True)
        report.update(wall_s=round(time.monotonic() - _STARTED, 1),
                      cpu_s=round(time.process_time(), 1))
        write(report, out)
    print(json.dumps({"out": str(out / "gpu_check.json"), "wall_s": report["wall_s"],
                      "parts": {n: p["status"] for n, p in report["parts"].items()},
                      "failures": len(report["failures"])}))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
