"""The training run every family shares (Image Transformer, super-resolution, GANs).

A family supplies its models, optimisers, a step function and an evaluation; :class:`Run` owns
the rest: the ``accelerate`` accelerator (devices, DDP, mixed precision, sharded data), the run
directory, the seed, the budget (``max_steps``, ``minutes``), per-optimiser learning-rate
schedules, EMA copies, images seen over all processes, ``metrics.jsonl`` with its learning curve
``metrics.png`` and the trackers (``report_to``), sample grids, checkpoints and ``resume``
(accelerate's ``save_state``/``load_state``), and export (``save_pretrained``). Only the main
process prints, writes files and shows progress bars.

Files: :mod:`~imgtx.training.run` (the run and its loop), :mod:`~imgtx.training.outputs` (what
it writes: metrics, sample grids, checkpoints, export), :mod:`~imgtx.training.settings` (its
settings),
:mod:`~imgtx.training.ema`, :mod:`~imgtx.training.schedules`, :mod:`~imgtx.training.curves`
(``metrics.jsonl`` and its PNG), :mod:`~imgtx.training.checkpoints` (atomic checkpoints and
exports), :mod:`~imgtx.training.likelihood` (one model, Adam and noam: ``imgtx train`` and
``imgtx sr train``).

A GAN on the run::

    from imgtx.training import EMASettings, Run, RunSettings, Schedule

    run = Run(RunSettings(out="runs/gan", max_steps=10_000, batch_size=32))  # seeds everything
    G, D = Generator(cfg), Discriminator(cfg)          # built after seeding: reproducible init
    opt_g = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), 1e-4, betas=(0.0, 0.99))
    run.prepare(models={"G": G, "D": D}, optimizers={"G": opt_g, "D": opt_d},
                schedules={"G": Schedule(500, "constant"), "D": Schedule(500, "constant")},
                ema={"G": EMASettings(half_life_images=10_000, warmup_ratio=0.05)},
                data=loader)                              # a DataLoader; sharded per process

    def step(run, batch):                  # called once per micro-batch, inside ONE
        G, D = run.models["G"], run.models["D"]          # accelerator.accumulate(G, D)
        real = batch["image"]
        z = run.this_process(torch.randn(len(real) * run.num_processes, 128, device=run.device))
        fake = G(z)
        scores = D(torch.cat([real, fake.detach()]))     # one D forward for real and fake
        d_loss = discriminator_loss(scores)
        run.backward(d_loss)
        run.optimizer_step("D")            # steps D's schedule once per real optimiser step
        with run.frozen("D") as plain_d:   # D without gradients; call the unwrapped D
            g_loss = generator_loss(plain_d(fake))
            run.backward(g_loss)
        run.optimizer_step("G")            # then G's EMA follows (after the micro-batches)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    record = run.fit(step, evaluate=lambda run: {"fid": ...}, samples=lambda run: ...,
                     callbacks=[lambda run, figures: ...])   # after every optimiser step
    run.export("G", ema=True)              # final/G_ema (save_pretrained)
    run.end()

Rules of the road:

* ``step`` must go through the models in ``run.models`` (the distributed wrappers) for every
  loss whose gradients train them, so that DDP averages the gradients; the frozen model of a
  GAN's G step is called unwrapped (:meth:`Run.frozen`).
* ``run.optimizer_step(name)`` steps optimiser ``name``, its schedule (exactly once per real
  optimiser step: not on micro-batches that only accumulate, not when fp16 skips a step) and,
  after the step, the EMA of model ``name``. Schedules are ``LambdaLR`` multipliers counted in
  optimiser steps, the same for any number of processes.
* Images seen count ``per-process batch x processes x grad_accum`` per optimiser step.
* ``evaluate(run)`` runs on every process (gather with ``run.accelerator.gather_for_metrics``
  or :func:`imgtx.eval.bits_per_dim.per_image_values`); ``samples(run)`` runs on the main
  process only and must not communicate with the others.
* ``settings.resume=True`` continues from ``checkpoint/``: weights, optimisers, schedules, EMA,
  counters, the position in the data and every process's RNG states.
"""

from imgtx.training.ema import EMA, EMASettings, ema_beta
from imgtx.training.run import Run, StepCallback, StepFunction, TrainingDiverged
from imgtx.training.schedules import Schedule, noam
from imgtx.training.settings import RunSettings

__all__ = ["Run", "RunSettings", "EMA", "EMASettings", "ema_beta", "Schedule", "noam",
           "TrainingDiverged", "StepFunction", "StepCallback"]
