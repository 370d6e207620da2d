"""The training run every family shares: :class:`Run` (see :mod:`imgtx.training` for a guide)."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from imgtx.errors import UserError
from imgtx.training.checkpoints import RunState, batch_images, find_checkpoint
from imgtx.training.curves import read_records
from imgtx.training.ema import EMA, EMASettings
from imgtx.training.outputs import RunOutputs
from imgtx.training.settings import RunSettings

__all__ = ["Run", "TrainingDiverged", "StepFunction", "StepCallback"]

StepFunction = Callable[["Run", Any], "dict[str, Any] | None"]
StepCallback = Callable[["Run", "dict[str, float]"], None]


class TrainingDiverged(UserError):
    """A training figure became NaN or infinite; the last checkpoint is left as it was."""


class Run(RunOutputs):
    """One training run: accelerator, run directory, budget, checkpoints, EMA, metrics, export
    (the files it writes: :class:`imgtx.training.outputs.RunOutputs`).

    Construct it first (it seeds every random generator), then build the models, then
    :meth:`prepare` them; or pass everything to the constructor. ``schedules`` maps optimiser
    names to ``LambdaLR`` multipliers; ``ema`` maps model names to :class:`EMASettings`;
    ``data`` is the training ``DataLoader`` (sharded across processes by accelerate).
    """

    def __init__(self, settings: RunSettings, models: dict[str, nn.Module] | None = None,
                 optimizers: dict[str, torch.optim.Optimizer] | None = None,
                 schedules: dict[str, Callable[[int], float]] | None = None,
                 ema: dict[str, EMASettings] | None = None, data=None) -> None:
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed

        settings.validate()
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.out = Path(settings.out)
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = Accelerator(
            # Several processes without CUDA share the work on CPUs (gloo); accelerate only
            # looks for that combination when told to run on the CPU.
            cpu=settings.cpu or (processes > 1 and not torch.cuda.is_available()),
            # Our loop ends an optimiser step every grad_accum micro-batches, epoch ends included.
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=settings.grad_accum, sync_with_dataloader=False),
            mixed_precision=settings.mixed_precision,
            log_with=None if settings.report_to == "none" else settings.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.out),
                                                logging_dir=str(self.out / "logs")),
            # The shuffle order of epoch e is a function of (seed, e): resumable, and the same on
            # every process, each of which takes its own share of every global batch.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                      data_seed=settings.seed))
        set_seed(settings.seed)
        self.state = RunState()
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.emas: dict[str, EMA] = {}
        self.data = None
        self._stepped: set[str] = set()
        self._made_out = False
        self._start, self._hours_before = time.time(), 0.0
        if models is not None:
            self.prepare(models, optimizers or {}, schedules, ema, data)

    # -- set-up ----------------------------------------------------------------------------

    def prepare(self, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                schedules: dict[str, Callable[[int], float]] | None = None,
                ema: dict[str, EMASettings] | None = None, data=None) -> None:
        """Wrap models, optimisers and the training loader for the processes (DDP, device,
        mixed precision, sharding), make the LR schedulers and EMA copies, register everything
        for checkpointing and, with ``settings.resume``, load the last checkpoint."""
        schedules, ema = schedules or {}, ema or {}
        for kind, names, known in (("optimizer", optimizers, models), ("schedule", schedules,
                                   optimizers), ("ema", ema, models)):
            missing = set(names) - set(known)
            if missing:
                raise ValueError(f"{kind} names {sorted(missing)} match no entry of {list(known)}")
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(optimizers[name], schedule)
                           for name, schedule in schedules.items()}
        objects = [*models.values(), *optimizers.values()] + ([data] if data is not None else [])
        prepared = self.accelerator.prepare(*objects)
        prepared = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
        self.models = dict(zip(models, prepared[: len(models)]))
        self.optimizers = dict(zip(optimizers, prepared[len(models):][: len(optimizers)]))
        self.data = prepared[-1] if data is not None else None
        self.emas = {name: EMA(self.unwrap(name), settings) for name, settings in ema.items()}
        # Registration order is the order of custom_checkpoint_<i>.pkl: keep it fixed.
        self.accelerator.register_for_checkpointing(
            self.state, *self.schedulers.values(), *self.emas.values())
        self._made_out = not self.out.exists()  # a failed start removes what it made (fit)
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.settings.resume:
            self._resume()
        elif self.accelerator.is_main_process:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run, a fresh curve
        if self.settings.report_to != "none":
            config = {k: v for k, v in asdict(self.settings).items()
                      if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers(self.out.name or "imgtx", config=config)
        self.accelerator.wait_for_everyone()

    def prepare_loader(self, loader):
        """An evaluation ``DataLoader`` sharded across processes (pair it with
        :func:`imgtx.eval.bits_per_dim.per_image_values` or ``gather_for_metrics``)."""
        return self.accelerator.prepare(loader)

    def _resume(self) -> None:
        checkpoint = find_checkpoint(self.out)
        if checkpoint is None:
            self.print(f"--resume: nothing to resume in {self.out / 'checkpoint'}; starting fresh")
            return
        self.accelerator.load_state(str(checkpoint))
        self._hours_before = self.state.hours
        if self.accelerator.is_main_process:  # figures logged after the checkpoint come again
            records = [r for r in read_records(self.out / "metrics.jsonl")
                       if r["step"] <= self.state.step]
            (self.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        self.print(f"resumed from {checkpoint} at step {self.state.step} "
                   f"({self.state.images_seen} images)")

    # -- what a step function uses -----------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def unwrap(self, name: str) -> nn.Module:
        """The model ``name`` without its distributed / mixed-precision wrapper."""
        return self.accelerator.unwrap_model(self.models[name])

    def ema_model(self, name: str) -> nn.Module:
        """The EMA copy of model ``name``."""
        return self.emas[name].model

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` with loss scaling and the 1/grad_accum factor of accumulation."""
        self.accelerator.backward(loss)

    def optimizer_step(self, name: str = "model", max_grad_norm: float | None = None) -> None:
        """Step optimiser ``name`` (a no-op on micro-batches that only accumulate), then its LR
        schedule exactly once per real step, then zero its gradients. ``max_grad_norm`` clips
        the model's gradient norm first."""
        optimizer = self.optimizers[name]
        sync = self.accelerator.sync_gradients
        if max_grad_norm is not None and sync:
            self.accelerator.clip_grad_norm_(self.models[name].parameters(), max_grad_norm)
        optimizer.step()
        if sync and not optimizer.step_was_skipped:  # fp16 skips steps with inf gradients
            if name in self.schedulers:
                self.schedulers[name].step()
            self._stepped.add(name)
        optimizer.zero_grad(set_to_none=True)

    @contextmanager
    def frozen(self, name: str):
        """Model ``name`` without gradients for the block (a GAN's D during the G step); yields
        the unwrapped model, which the block should call: a forward through the distributed
        wrapper would wait for gradients that never come."""
        model = self.unwrap(name)
        flags = [p.requires_grad for p in model.parameters()]
        model.requires_grad_(False)
        try:
            yield model
        finally:
            for parameter, flag in zip(model.parameters(), flags):
                parameter.requires_grad_(flag)

    def this_process(self, values: torch.Tensor) -> torch.Tensor:
        """This process's share of a tensor made for the global batch (dim 0 split evenly):
        draw noise for ``batch x processes`` with the shared seed and keep a share, and N
        processes see the noise one process with N times the batch would."""
        return values.chunk(self.num_processes)[self.process_index]

    def learning_rates(self) -> dict[str, float]:
        """``{"lr": ...}`` for one optimiser, else ``{"lr_<name>": ...}`` per optimiser."""
        rates = {name: optimizer.param_groups[0]["lr"]
                 for name, optimizer in self.optimizers.items()}
        if len(rates) == 1:
            return {"lr": next(iter(rates.values()))}
        return {f"lr_{name}": rate for name, rate in rates.items()}

    def hours(self) -> float:
        return self._hours_before + (time.time() - self._start) / 3600

    # -- the loop ------------------------------------------------------------------------------

    def _batches(self) -> Iterator[Any]:
        """The training batches forever, from the saved position (epoch, batches consumed)."""
        if self.data is None:
            while True:
                yield None
        while True:
            self.data.set_epoch(self.state.epoch)
            skip = self.state.batches_in_epoch
            iterator = iter(self.data)
            # Starting an epoch draws a worker seed from torch's global generator: keep that
            # draw out of the training's random stream, or a resumed run (which starts an
            # epoch where the uninterrupted one did not) would see other noise.
            with torch.random.fork_rng(devices=[]):
                first = next(iterator, None)
            if first is None:
                raise UserError("the training data gave no batch: it has fewer images than "
                                "batch size x processes")
            for index, batch in enumerate(itertools.chain([first], iterator)):
                if index < skip:
                    continue  # consumed before the checkpoint this run resumed from
                self.state.batches_in_epoch = index + 1
                yield batch
            self.state.epoch += 1
            self.state.batches_in_epoch = 0

    def _time_is_up(self, deadline: float | None) -> bool:
        if deadline is None:
            return False
        flag = torch.tensor(float(time.time() >= deadline), device=self.device)
        if self.num_processes > 1:  # every process must stop at the same step
            flag = self.accelerator.reduce(flag, "max")
        return bool(flag.item())

    def fit(self, step: StepFunction, *, evaluate: Callable[[Run], dict] | None = None,
            samples: Callable[[Run], torch.Tensor] | None = None,
            callbacks: Sequence[StepCallback] = ()) -> dict:
        """Train until ``max_steps`` or ``minutes`` runs out; returns the last metrics record.

        Each optimiser step calls ``step(run, batch)`` once per micro-batch inside one
        ``accelerator.accumulate(*models)``; it returns training figures to log
        (``{name: float or scalar tensor}``). Every ``eval_every`` steps and at the end,
        ``evaluate(run)`` (on every process) adds figures and a line goes to ``metrics.jsonl``;
        every ``sample_every`` steps ``samples(run)`` (main process only) gives images
        ``(N, 3, H, W)`` uint8 for ``samples/step_<step>.png``; every ``checkpoint_every`` steps
        and at the end the state is saved to ``checkpoint/``. After every optimiser step, each
        of ``callbacks`` is called as ``callback(run, figures)`` on every process, with the
        step's training figures (averaged over its micro-batches) and the counters already
        advanced: a family's per-step diagnostics hook in here, not into its step.

        When a step fails (unreadable data, a non-finite loss, ...) before any checkpoint was
        saved, the run directory is removed if this run made it; a run with a checkpoint keeps
        it, to resume from.
        """
        try:
            return self._fit(step, evaluate, samples, callbacks)
        except Exception:
            if (self._made_out and self.accelerator.is_main_process
                    and find_checkpoint(self.out) is None):
                shutil.rmtree(self.out, ignore_errors=True)
            raise

    def _fit(self, step: StepFunction, evaluate: Callable[[Run], dict] | None,
             samples: Callable[[Run], torch.Tensor] | None,
             callbacks: Sequence[StepCallback]) -> dict:
        settings, accelerator = self.settings, self.accelerator
        self._start = time.time()
        deadline = self._start + 60 * settings.minutes if settings.minutes else None
        bar = tqdm(total=settings.max_steps, initial=self.state.step, desc="train", unit="step",
                   disable=not accelerator.is_main_process)
        batches = self._batches()
        record, logged_at = {}, None
        for model in self.models.values():
            model.train()
        try:  # the bar ends its line even when a step fails, so an error starts a line
            while settings.max_steps is None or self.state.step < settings.max_steps:
                if self._time_is_up(deadline):
                    bar.write(f"time budget of {settings.minutes} min used up at step "
                              f"{self.state.step}")
                    break
                figures = self._one_step(step, batches)
                for callback in callbacks:
                    callback(self, figures)
                bar.update(1)
                bar.set_postfix({**{k: f"{v:.3f}" for k, v in self.state.running.items()},
                                 "img": self.state.images_seen})
                current = self.state.step
                if settings.eval_every and current % settings.eval_every == 0:
                    record, logged_at = self.log_evaluation(evaluate, bar.write), current
                if settings.sample_every and current % settings.sample_every == 0:
                    self.save_samples(samples)
                if settings.checkpoint_every and current % settings.checkpoint_every == 0:
                    self.checkpoint()
        finally:
            bar.close()
        if logged_at != self.state.step:
            record = self.log_evaluation(evaluate, self.print)
        self.checkpoint()
        return record

    def _one_step(self, step: StepFunction, batches: Iterator[Any]) -> dict[str, float]:
        settings = self.settings
        self._stepped.clear()
        sums: dict[str, float] = {}
        images = 0
        for _ in range(settings.grad_accum):
            batch = next(batches)
            with self.accelerator.accumulate(*self.models.values()):
                figures = step(self, batch) or {}
            for key, value in figures.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            images += (batch_images(batch) or settings.batch_size) * self.num_processes
        figures = {key: value / settings.grad_accum for key, value in sums.items()}
        for key, value in figures.items():
            if not math.isfinite(value):
                kept = find_checkpoint(self.out)
                raise TrainingDiverged(
                    f"training stopped at step {self.state.step + 1}: {key} is {value}. " + (
                        f"The last checkpoint ({kept}) is intact; resume from it with --resume "
                        "and a lower learning rate" if kept else "No checkpoint was written "
                        "yet; start again with a lower learning rate"))
        for name, ema in self.emas.items():
            if name in self._stepped or name not in self.optimizers:
                ema.update(self.unwrap(name), self.state.images_seen, images)
        self.state.images_seen += images
        self.state.step += 1
        for key, value in figures.items():
            old = self.state.running.get(key)
            self.state.running[key] = value if old is None else 0.98 * old + 0.02 * value
        return figures
