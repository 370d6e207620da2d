"""A new model family needs only its own code: everything a family supplies is written in this
file, and nothing in ``imgtx/cli.py``, ``imgtx/training/run.py`` or ``imgtx/registry.py`` names
it. (The attention core is extended the same way: tests/test_attention.py adds a pattern.)

The toy family has
* a registry of named configs (``RegistryEntry``, with a training recipe),
* a model whose ``forward`` returns its loss (a ``HubModel``: saved with its class name),
* a step on the shared :class:`~imgtx.training.Run`, with a per-step callback,
* a command group ``imgtx toy train``, registered the way the installed families are (a
  ``register(subparsers)`` function, as the ``imgtx.commands`` entry points name), over the
  shared run options.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from imgtx.cli import main
from imgtx.cli_options import add_run_arguments, named_config, settings_from_args
from imgtx.hub import HubModel
from imgtx.registry import RegistryEntry
from imgtx.training import Run, RunSettings, Schedule

# --- the family ----------------------------------------------------------------------------------


@dataclass
class ToyConfig:
    """A per-channel affine map of the image, trained to reproduce its input's mean."""

    channels: int = 3


TOY_CONFIGS: dict[str, RegistryEntry] = {
    "toy": RegistryEntry(ToyConfig(), "a test's own family", train={"batch_size": 2, "lr": 0.05}),
    "toy-bad-recipe": RegistryEntry(ToyConfig(), "a recipe key nothing reads",
                                    train={"batch_size": 2, "sead": 1}),
}


@dataclass
class ToySettings(RunSettings):
    """The run's settings plus the toy's learning rate."""

    lr: float = 1e-3


class ToyModel(HubModel):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.scale = nn.Parameter(torch.zeros(config.channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` uint8 -> scalar loss: mean squared error of ``scale x mean``."""
        x = images.float() / 255  # (B, C, H, W)
        target = x.mean(dim=(2, 3))  # (B, C)
        return ((self.scale * target - target) ** 2).mean()


def toy_step(run: Run, batch: dict) -> dict:
    loss = run.models["model"](batch["image"])
    run.backward(loss)
    run.optimizer_step("model")
    return {"loss": loss.detach()}


STEPS_SEEN: list[tuple[int, float]] = []  # (step, loss) from the per-step callback


def train_toy(config: ToyConfig, settings: ToySettings) -> None:
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader([{"image": image} for image in images],
                                         batch_size=settings.batch_size, shuffle=True,
                                         drop_last=True)
    run = Run(settings)
    model = ToyModel(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
    run.prepare({"model": model}, {"model": optimizer}, {"model": Schedule(0, "constant")},
                data=loader)
    run.fit(toy_step, callbacks=[lambda run, figures: STEPS_SEEN.append(
        (run.state.step, figures["loss"]))])
    run.export("model")
    run.end()


def _train_command(args: argparse.Namespace) -> int:
    config = named_config(TOY_CONFIGS, args.config, args.set, what="toy config")
    train_toy(config, settings_from_args(ToySettings, args, TOY_CONFIGS[args.config].train))
    return 0


def register(subparsers) -> None:
    """``imgtx toy``: the toy family's command group."""
    group = subparsers.add_parser("toy", help="the toy family")
    sub = group.add_subparsers(dest="toy_command", required=True)
    p = sub.add_parser("train", help="train a toy model")
    p.add_argument("--config", required=True)
    p.add_argument("--lr", type=float)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE")
    add_run_arguments(p)
    p.set_defaults(func=_train_command)


# --- the spec ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    STEPS_SEEN.clear()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_a_family_written_in_a_test_trains_through_its_own_command_group(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["toy", "train", "--config", "toy", "--out", str(out), "--max-steps", "2",
                 "--checkpoint-every", "0"], groups={"toy": register})
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["images_seen"]) for r in records] == [(2, 4)]  # recipe: batch 2
    assert [step for step, _ in STEPS_SEEN] == [1, 2]
    assert records[-1]["lr"] == pytest.approx(0.05)  # the recipe's lr
    trained = HubModel.from_pretrained(out / "final")  # its config.json names ToyModel
    assert type(trained) is ToyModel and trained.config == ToyConfig()
    assert trained.scale.abs().sum() > 0  # two SGD steps moved it from zero


def test_flags_override_the_recipe_and_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["toy", "train", "--config", "toy", "--out", str(out), "--max-steps", "1",
                 "--batch-size", "4", "--lr", "0.01", "--set", "channels=3"],
                groups={"toy": register})
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["images_seen"] == 4 and record["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("argv, message", [
    (["--config", "toy-bad-recipe"], "unknown training setting(s) sead for ToySettings; "
                                     "did you mean 'seed'?"),
    (["--config", "toi"], "unknown toy config 'toi'; did you mean 'toy'?"),
    (["--config", "toy", "--set", "colours=3"], "colours=3"),
])
def test_the_family_gets_the_shared_user_errors(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    code = main(["toy", "train", *argv, "--out", str(out), "--max-steps", "1"],
                groups={"toy": register})
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("imgtx toy train: error: ") and message in err
    assert not out.exists()


def test_the_core_names_no_toy():
    from pathlib import Path

    import imgtx.cli
    import imgtx.registry
    import imgtx.training.run

    for module in (imgtx.cli, imgtx.training.run, imgtx.registry):
        assert "toy" not in Path(module.__file__).read_text().lower()
