"""Spec for the shared training run (imgtx.training) with a toy GAN: two tiny MLPs, G and D, on
random 8-dimensional "images", two optimisers with their own schedules, and an EMA of G.

Every run is in-process, one CPU process; the multi-process behaviour is tests/test_distributed.py.
"""

import json
import math
import sys

import pytest
import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file
from torch import nn

from imgtx.errors import UserError
from imgtx.training import EMA, EMASettings, Run, RunSettings, Schedule, TrainingDiverged, noam
from imgtx.training.curves import plot_curves, read_records

LATENT, WIDTH, DATA = 4, 8, 20  # latent size, "image" size, training examples
LR_G, LR_D = 2e-3, 1e-3


class ToyGenerator(nn.Module, PyTorchModelHubMixin):
    def __init__(self, latent: int = LATENT, width: int = WIDTH) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, 16), nn.ReLU(), nn.Linear(16, width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, width)
        return self.net(z)


def toy_discriminator() -> nn.Module:
    return nn.Sequential(nn.Linear(WIDTH, 16), nn.ReLU(), nn.Linear(16, 1))


class Vectors(torch.utils.data.Dataset):
    """``{"image": (WIDTH,)}`` examples, fixed by a seed."""

    def __init__(self) -> None:
        self.images = torch.randn(DATA, WIDTH, generator=torch.Generator().manual_seed(1)) + 2

    def __len__(self) -> int:
        return DATA

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def gan_step(run: Run, batch: dict) -> dict:
    """Non-saturating GAN losses (Goodfellow et al. 2014, sec. 3): D on real and fake in one
    forward, then G against the frozen D."""
    G, D = run.models["G"], run.models["D"]
    real = batch["image"]
    z = run.this_process(torch.randn(len(real) * run.num_processes, LATENT, device=run.device))
    fake = G(z)
    scores = D(torch.cat([real, fake.detach()]))  # (2B, 1)
    d_loss = (nn.functional.softplus(-scores[: len(real)]).mean()
              + nn.functional.softplus(scores[len(real):]).mean())
    run.backward(d_loss)
    run.optimizer_step("D")
    with run.frozen("D") as plain_d:
        g_loss = nn.functional.softplus(-plain_d(fake)).mean()
        run.backward(g_loss)
    run.optimizer_step("G")
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}


def make_run(tmp_path, ema: EMASettings | None = None, **overrides) -> Run:
    settings = RunSettings(**{"out": str(tmp_path / "run"), "max_steps": 6, "batch_size": 4,
                              "eval_every": 1, "checkpoint_every": 0, **overrides})
    run = Run(settings)
    G, D = ToyGenerator(), toy_discriminator()
    loader = torch.utils.data.DataLoader(Vectors(), batch_size=settings.batch_size,
                                         shuffle=True, drop_last=True)
    run.prepare(models={"G": G, "D": D},
                optimizers={"G": torch.optim.Adam(G.parameters(), LR_G, betas=(0.0, 0.99)),
                            "D": torch.optim.Adam(D.parameters(), LR_D, betas=(0.0, 0.99))},
                schedules={"G": Schedule(3, "noam"), "D": Schedule(2, "constant")},
                ema={"G": ema or EMASettings(half_life_images=16, warmup_ratio=0.5)},
                data=loader)
    return run


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def test_ema_matches_a_hand_computed_reference(tmp_path):
    settings = EMASettings(half_life_images=16, warmup_ratio=0.5)
    run = make_run(tmp_path, ema=settings, max_steps=7)
    weights, averages = [], []

    def snapshot(run: Run) -> dict:  # called after every step, after the EMA update
        weights.append(flat(run.unwrap("G")))
        averages.append(flat(run.ema_model("G")))
        return {}

    run.fit(gan_step, evaluate=snapshot)
    batch = 4  # images per optimiser step
    reference = None
    for k, current in enumerate(weights):
        seen = k * batch  # images seen before step k + 1
        half_life = min(settings.half_life_images, seen * settings.warmup_ratio)
        beta = 0.5 ** (batch / max(half_life, 1e-8))
        reference = current if reference is None else beta * reference + (1 - beta) * current
        assert torch.allclose(averages[k], reference, atol=1e-6, rtol=0), k
    assert torch.equal(averages[0], weights[0])  # beta is 0 at the first step
    assert not torch.allclose(averages[-1], weights[-1], atol=1e-4)  # and it lags behind later
    assert run.emas["G"].updates == 7


def test_ema_forgets_half_in_one_half_life():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, EMASettings(half_life_images=100, warmup_ratio=None))
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(10):  # 10 steps of 10 images = one half-life
        ema.update(model, images_seen=10_000, batch_images=10)
    assert ema.model.weight.item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_each_schedule_steps_once_per_optimizer_step(tmp_path, grad_accum):
    run = make_run(tmp_path, max_steps=5, grad_accum=grad_accum)
    run.fit(gan_step)
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    for r in records:  # the rate logged after step k is the one of step k + 1
        step = r["step"] + 1  # closed forms: noam warm-up 3 steps, constant warm-up 2 steps
        assert r["lr_G"] == pytest.approx(LR_G * min(step / 3, (3 / step) ** 0.5), rel=1e-12)
        assert r["lr_D"] == pytest.approx(LR_D * min(step / 2, 1.0), rel=1e-12)
        assert r["images_seen"] == r["step"] * 4 * grad_accum
        assert math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"])
    assert run.optimizers["G"].state_dict()["state"][0]["step"] == 5  # Adam's own count


@pytest.mark.parametrize("d_model, warmup", [(512, 4000), (64, 10), (1024, 1)])
def test_noam_is_the_t2t_formula(d_model, warmup):
    """Vaswani et al. 2017, eq. 3 (T2T ``rsqrt_decay*linear_warmup``): the rate at step s is
    ``lr d^-0.5 min(s w^-1.5, s^-0.5)``; imgtx's multiplier times the peak ``lr d^-0.5 w^-0.5``
    gives it."""
    lr = 0.2
    peak = lr * d_model**-0.5 * warmup**-0.5
    for step in (1, 2, warmup // 2 + 1, warmup, warmup + 1, 3 * warmup, 100 * warmup):
        t2t = lr * d_model**-0.5 * min(step * warmup**-1.5, step**-0.5)
        assert peak * noam(step, warmup, "noam") == pytest.approx(t2t, rel=1e-12), step


def test_schedule_values_by_hand():
    assert [noam(s, 4, "noam") for s in (1, 2, 4, 16, 64)] == [0.25, 0.5, 1.0, 0.5, 0.25]
    assert [noam(s, 4, "constant") for s in (1, 3, 4, 1000)] == [0.25, 0.75, 1.0, 1.0]
    assert [Schedule(4, "noam")(i) for i in (0, 3, 15)] == [0.25, 1.0, 0.5]  # LambdaLR's index


def test_noam_without_warmup_starts_at_the_peak_and_decays():
    """``--warmup 0`` with the noam schedule: the peak at the first step, then 1/sqrt(step) (it
    used to be a learning rate of 0 at every step, so nothing trained)."""
    assert [noam(s, 0, "noam") for s in (1, 4, 16, 100)] == [1.0, 0.5, 0.25, 0.1]
    assert [noam(s, 0, "constant") for s in (1, 50)] == [1.0, 1.0]


def test_cosine_schedule_endpoints_and_midpoint():
    """Loshchilov & Hutter 2017 without restarts, after a linear warm-up: the peak at the end of
    warm-up, half the peak halfway through the decay, 0 at the last step and after it."""
    warmup, total = 10, 110
    assert noam(5, warmup, "cosine", total) == pytest.approx(0.5)  # warming up linearly
    assert noam(warmup, warmup, "cosine", total) == 1.0
    assert noam(60, warmup, "cosine", total) == pytest.approx(0.5, abs=1e-12)
    assert noam(35, warmup, "cosine", total) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.25)), abs=1e-12)
    assert noam(total, warmup, "cosine", total) == pytest.approx(0.0, abs=1e-12)
    assert noam(2 * total, warmup, "cosine", total) == pytest.approx(0.0, abs=1e-12)
    rates = [noam(s, warmup, "cosine", total) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # decays monotonically
    with pytest.raises(ValueError, match="max_steps"):
        Schedule(10, "cosine")


def test_the_frozen_model_gets_no_gradient_and_is_restored(tmp_path):
    run = make_run(tmp_path)
    with run.frozen("D") as plain_d:
        assert not any(p.requires_grad for p in plain_d.parameters())
        fake = torch.randn(2, WIDTH, requires_grad=True)  # as if from G
        plain_d(fake).sum().backward()
        assert fake.grad is not None  # the gradient reaches G ...
        assert all(p.grad is None for p in plain_d.parameters())  # ... and not D
    assert all(p.requires_grad for p in run.unwrap("D").parameters())


def test_resume_continues_exactly_and_export_loads(tmp_path):
    straight = make_run(tmp_path / "a", max_steps=7)  # crosses an epoch end (5 batches each)
    straight.fit(gan_step)
    reference = {name: flat(straight.unwrap(name)) for name in ("G", "D")}
    reference_ema = flat(straight.ema_model("G"))

    first = make_run(tmp_path / "b", max_steps=3, checkpoint_every=2)
    first.fit(gan_step)
    progress = json.loads((tmp_path / "b" / "run" / "progress.json").read_text())
    assert progress["step"] == 3 and progress["images_seen"] == 12
    resumed = make_run(tmp_path / "b", max_steps=7, resume=True)
    assert resumed.state.step == 3 and resumed.state.batches_in_epoch == 3
    resumed.fit(gan_step)
    for name in ("G", "D"):
        assert torch.equal(flat(resumed.unwrap(name)), reference[name]), name
    assert torch.equal(flat(resumed.ema_model("G")), reference_ema)
    steps = [r["step"] for r in read_records(tmp_path / "b" / "run" / "metrics.jsonl")]
    assert steps == list(range(1, 8))  # no line twice, none missing

    path = resumed.export("G", ema=True)
    assert path == tmp_path / "b" / "run" / "final" / "G_ema"
    loaded = ToyGenerator.from_pretrained(path)
    assert torch.equal(flat(loaded), reference_ema)
    d_path = resumed.export("D")
    weights = load_file(d_path / "model.safetensors")
    assert torch.equal(weights["2.weight"], resumed.unwrap("D")[2].weight.detach())
    assert not list((tmp_path / "b" / "run").rglob("*.partial"))


def test_a_save_cut_short_leaves_the_previous_checkpoint_to_resume_from(tmp_path, monkeypatch):
    straight = make_run(tmp_path / "straight", max_steps=3)
    straight.fit(gan_step)
    make_run(tmp_path, max_steps=2, checkpoint_every=1).fit(gan_step)
    dying = make_run(tmp_path, max_steps=3, resume=True)
    save_state = dying.accelerator.save_state

    def killed_inside_the_save(path: str) -> None:
        save_state(path)
        raise KeyboardInterrupt  # the process dies before the new checkpoint is renamed

    monkeypatch.setattr(dying.accelerator, "save_state", killed_inside_the_save)
    with pytest.raises(KeyboardInterrupt):
        dying.fit(gan_step)
    assert (tmp_path / "run" / "checkpoint.partial").exists()
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["step"] == 2
    resumed = make_run(tmp_path, max_steps=3, resume=True)
    assert resumed.state.step == 2
    resumed.fit(gan_step)
    assert torch.equal(flat(resumed.unwrap("G")), flat(straight.unwrap("G")))
    assert not (tmp_path / "run" / "checkpoint.partial").exists()


def test_a_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path):
    def diverging(run: Run, batch: dict) -> dict:
        figures = gan_step(run, batch)
        if run.state.step == 2:  # the third step
            figures["g_loss"] = torch.tensor(float("nan"))
        return figures

    run = make_run(tmp_path, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="step 3: g_loss is nan"):
        run.fit(diverging)
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["step"] == 2
    assert issubclass(TrainingDiverged, UserError)


def test_the_learning_curve_is_drawn_next_to_the_metrics(tmp_path):
    run = make_run(tmp_path, max_steps=3)
    record = run.fit(gan_step)
    assert set(record) >= {"step", "images_seen", "hours", "d_loss", "g_loss", "lr_G", "lr_D"}
    from PIL import Image

    with Image.open(tmp_path / "run" / "metrics.png") as image:
        assert image.format == "PNG" and image.size[0] >= 400
    assert plot_curves([{"step": 1, "images_seen": 4}], tmp_path / "none.png") is None


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 0}, "batch size must be >= 1"),
    ({"max_steps": None, "minutes": None}, "max_steps or minutes"),
    ({"minutes": -1.0}, "minutes must be > 0"),
    ({"report_to": "nowhere"}, "report_to"),
])
def test_unusable_settings_are_user_errors(tmp_path, overrides, message):
    settings = RunSettings(out=str(tmp_path / "run"), max_steps=1, **{
        k: v for k, v in overrides.items() if k != "max_steps"})
    if "max_steps" in overrides:
        settings.max_steps = overrides["max_steps"]
    with pytest.raises(UserError, match=message):
        Run(settings)
    assert not (tmp_path / "run").exists()


def test_names_must_match(tmp_path):
    run = Run(RunSettings(out=str(tmp_path / "run"), max_steps=1))
    G = ToyGenerator()
    with pytest.raises(ValueError, match=r"optimizer names \['D'\]"):
        run.prepare({"G": G}, {"D": torch.optim.SGD(G.parameters(), 0.1)})


if __name__ == "__main__":
    # ``torchrun --nproc_per_node N tests/test_training.py OUT BATCH``: the toy GAN for
    # tests/test_distributed.py, exporting G, D and G's EMA under OUT/run/final.
    from pathlib import Path

    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    run = make_run(out, max_steps=3, batch_size=batch, eval_every=0)
    run.fit(gan_step)
    run.export("G")
    run.export("D")
    run.export("G", ema=True)
    run.end()


def test_counters_and_learning_rates_are_not_drawn_as_curves():
    """``kimg`` grows without bound; drawn beside losses it would flatten them."""
    from imgtx.training.curves import curve_names

    records = [{"step": 1, "images_seen": 16, "kimg": 0.016, "hours": 0.1, "lr_G": 1e-4,
                "d_loss": 1.2, "g_loss": 0.7, "done": True}]
    assert curve_names(records) == ["d_loss", "g_loss"]


def test_exported_model_card_names_where_the_model_lives(tmp_path):
    """The card's usage line names the final folder, then the shipped copy; never the temporary
    ``.partial`` folder it was written in."""
    from imgtx import ImageTransformer, get_config
    from imgtx.training.checkpoints import export_model, export_run

    final = export_model(ImageTransformer(get_config("tiny")), tmp_path / "run" / "final")
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert f'from_pretrained("{final}")' in (final / "README.md").read_text()
    shipped = export_run(final, tmp_path / "shipped")
    card = (shipped / "README.md").read_text()
    assert f'from_pretrained("{shipped}")' in card and "partial" not in card
