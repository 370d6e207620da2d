"""What every training run takes, whatever the family: budget, batch, checkpoints, logging."""

from __future__ import annotations

from dataclasses import dataclass

from imgtx.errors import UserError, check_at_least, check_positive

__all__ = ["RunSettings", "MIXED_PRECISION", "REPORT_TO"]

MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("none", "tensorboard", "wandb", "all")


@dataclass
class RunSettings:
    """Settings of :class:`imgtx.training.Run`. Counts are optimiser steps unless named
    otherwise; ``batch_size`` is per process (the global batch is ``batch_size x processes x
    grad_accum``)."""

    out: str = "runs/imgtx"  # run directory
    max_steps: int | None = None  # optimiser steps; the run stops at the first budget reached
    minutes: float | None = None  # wall-clock budget; training stops cleanly when it runs out
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    mixed_precision: str = "no"  # accelerate: "no" | "bf16" | "fp16"
    eval_every: int = 200  # steps between evaluations and metrics.jsonl lines (0: at the end)
    sample_every: int = 0  # steps between sample grids (0: only at the end)
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end)
    resume: bool = False  # continue from out/checkpoint if there is one
    seed: int = 0
    num_workers: int = 0  # data-loading worker processes
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    report_to: str = "none"  # accelerate trackers: "none" | "tensorboard" | "wandb" | "all"
    cpu: bool = False  # train on the CPU even where an accelerator is available

    def validate(self) -> None:
        """Raise :class:`~imgtx.errors.UserError` for settings no run can use."""
        check_at_least("batch size", self.batch_size, 1)
        check_at_least("grad_accum", self.grad_accum, 1)
        check_at_least("max_steps", self.max_steps, 1)
        check_positive("minutes", self.minutes)
        check_at_least("threads", self.threads, 1)
        check_at_least("num_workers", self.num_workers, 0)
        for name in ("eval_every", "sample_every", "checkpoint_every"):
            check_at_least(name, getattr(self, name), 0)
        if self.max_steps is None and self.minutes is None:
            raise UserError("give --max-steps or --minutes (max_steps or minutes in Python), or "
                            "both, so training knows when to stop")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"mixed_precision={self.mixed_precision!r} is not one of "
                            f"{list(MIXED_PRECISION)}")
        if self.report_to not in REPORT_TO:
            raise UserError(f"report_to={self.report_to!r} is not one of {list(REPORT_TO)}")
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        if self.report_to == "tensorboard" and not is_tensorboard_available():
            raise UserError("--report-to tensorboard needs TensorBoard: pip install tensorboard")
        if self.report_to == "wandb" and not is_wandb_available():
            raise UserError("--report-to wandb needs Weights & Biases: pip install wandb")
