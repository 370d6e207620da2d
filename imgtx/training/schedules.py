"""Learning-rate schedules: multipliers of a peak learning rate, one per optimiser step.

``noam`` is the schedule of Vaswani et al. 2017, "Attention Is All You Need", eq. 3
(T2T's ``learning_rate_schedule="rsqrt_decay*linear_warmup"``, named ``noam``): a linear warm-up
to the peak, then decay with the inverse square root of the step. With ``peak = lr * d^-0.5 *
w^-0.5`` it equals T2T's ``lr * d^-0.5 * min(step * w^-1.5, step^-0.5)``. ``constant`` keeps the
peak after warm-up; ``cosine`` decays to 0 at ``total`` steps (Loshchilov & Hutter 2017, SGDR,
without restarts).

A schedule is a picklable callable ``multiplier(step_index) -> float`` as
``torch.optim.lr_scheduler.LambdaLR`` calls it (``step_index`` 0 before the first optimiser step),
so it is saved with the scheduler's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SCHEDULES", "noam", "Schedule"]

SCHEDULES = ("noam", "constant", "cosine")


def noam(step: int, warmup: int, schedule: str = "noam", total: int | None = None) -> float:
    """Learning-rate multiplier of the peak at optimiser step ``step`` (1-based).

    Args:
        step: the optimiser step about to be taken (1 for the first).
        warmup: steps of linear warm-up to the peak.
        schedule: ``"noam"`` (inverse square root decay), ``"constant"`` or ``"cosine"``.
        total: the last step, for ``"cosine"``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    step = max(step, 1)
    warm = min(1.0, step / max(warmup, 1))
    if schedule == "constant":
        return warm
    if schedule == "cosine":
        if not total:
            raise ValueError("the cosine schedule needs max_steps")
        progress = min(1.0, max(0, step - warmup) / max(1, total - warmup))
        return warm * 0.5 * (1 + math.cos(math.pi * progress))
    # without warm-up the peak is the first step's rate, then the same 1/sqrt(step) decay
    return min(warm, math.sqrt(max(warmup, 1) / step))


@dataclass
class Schedule:
    """:func:`noam` as a ``LambdaLR`` multiplier: ``Schedule(...)(i)`` is the multiplier of the
    optimiser step ``i + 1`` (LambdaLR counts from 0)."""

    warmup: int
    kind: str = "noam"
    total: int | None = None

    def __post_init__(self) -> None:
        noam(1, self.warmup, self.kind, self.total)  # validate now, not at the first step

    def __call__(self, step_index: int) -> float:
        return noam(step_index + 1, self.warmup, self.kind, self.total)
