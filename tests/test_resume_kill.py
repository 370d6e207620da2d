"""Spec for exact resume after a real kill: ``imgtx train``, ``imgtx sr train`` and
``imgtx gan train`` run as child processes, get SIGKILL from the test at a seeded random step,
and are resumed with ``--resume`` to the same total; the final weights must equal, bit for bit,
those of an uninterrupted run of the same length. A kill inside a checkpoint save (between
writing ``checkpoint.partial/`` and its rename) must leave the previous checkpoint to resume from.

The uninterrupted run (in a thread, while the child trains) and the resumed run are in-process
(``imgtx.cli.main``); only the run that is killed is a child process (about 8 s of start-up on
a busy 2-core machine). CPU, one thread, tiny registry configs with dropout, checkpoints every
step.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from imgtx.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerate_state")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONUNBUFFERED": "1"}
STEPS = 12  # total optimiser steps; the kill lands after step 2..STEPS // 2
RUN = ["--max-steps", str(STEPS), "--batch-size", "2", "--checkpoint-every", "1",
       "--eval-every", "0", "--threads", "1", "--seed", "3"]
# Dropout: the RNG states must be restored too.
COMMON = [*RUN, "--eval-images", "2", "--set", "dropout=0.1"]



def image_folder(root: Path, size: int, train: int = 7, test: int = 2) -> Path:
    """``train`` (odd: epochs end mid-run and the last batch is dropped) and ``test`` random RGB
    PNGs of ``size`` x ``size``."""
    rng = np.random.default_rng(size)
    for split, count in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            PIL.Image.fromarray(image).save(root / split / f"{i:02d}.png")
    return root


def launch(argv: list[str], log: Path, prelude: str = "") -> subprocess.Popen:
    """``imgtx ARGV`` in a child process (``prelude``: Python run first, e.g. a patch)."""
    code = f"import sys\n{prelude}\nfrom imgtx.cli import main\nsys.exit(main({argv!r}))"
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=stream,
                                stderr=subprocess.STDOUT)


def saved_step(run: Path) -> int:
    try:
        return json.loads((run / "progress.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def kill_after(process: subprocess.Popen, run: Path, step: int, log: Path,
               rng: random.Random) -> int:
    """SIGKILL ``process`` a random fraction of a step after its checkpoint of ``step``
    appears (so the kill may fall in a step or inside the next save); returns the step of the
    last checkpoint the process wrote."""
    deadline = time.time() + 240
    while saved_step(run) < step:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the run never reached the step"
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.05))
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL, "the run ended before the kill"
    return saved_step(run)


def in_background(function, *args) -> Future:
    """``function(*args)`` in a thread of this process (the polling for the kill must not wait
    for it): the uninterrupted reference run, while the child process trains."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)
    return future


def final_weights(run: Path, name: str = "") -> dict[str, torch.Tensor]:
    return load_file(run / "final" / name / "model.safetensors")


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}: max " \
        f"{(a[different[0]].double() - b[different[0]].double()).abs().max().item():.3g}"


def kill_and_resume(tmp_path: Path, argv: list[str], seed: int,
                    exported: tuple[str, ...] = ("",)) -> int:
    """The uninterrupted run, the killed run and its resumption; asserts bit-identical exports
    and returns the step the kill came after."""
    rng = random.Random(seed)
    kill_step = rng.randint(2, STEPS // 2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    process = launch([*argv, "--out", str(killed)], tmp_path / "killed.log")
    reference = in_background(main, [*argv, "--out", str(straight)])  # the straight run
    last = kill_after(process, killed, kill_step, tmp_path / "killed.log", rng)
    assert reference.result(timeout=300) == 0
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    assert kill_step <= last < STEPS and not (killed / "final").exists()
    assert main([*argv, "--out", str(killed), "--resume"]) == 0
    for name in exported:
        assert_bit_identical(final_weights(straight, name), final_weights(killed, name))
    steps = [json.loads(line)["step"] for line in
             (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [STEPS]  # one evaluation, at the end; none logged twice
    return last


def test_imgtx_train_killed_at_a_random_step_resumes_exactly(tmp_path):
    data = image_folder(tmp_path / "data", 8)
    kill_and_resume(tmp_path, ["train", "--config", "tiny", "--data", str(data), *COMMON],
                    seed=1)


def test_imgtx_sr_train_killed_at_a_random_step_resumes_exactly(tmp_path):
    data = image_folder(tmp_path / "data", 16)
    kill_and_resume(tmp_path, ["sr", "train", "--config", "tiny", "--data", str(data),
                               "--decoder-init", "none", *COMMON], seed=2)


# accelerate's save_state writes checkpoint.partial/ whole; the process then dies (os._exit, no
# clean-up) before the rename, at the save of step KILL_AT.
DIE_INSIDE_THE_SAVE = """
import os
import accelerate
_save_state, _calls = accelerate.Accelerator.save_state, []
def save_state(self, output_dir=None, **kwargs):
    result = _save_state(self, output_dir, **kwargs)
    _calls.append(output_dir)
    if len(_calls) == {kill_at}:
        os._exit(9)
    return result
accelerate.Accelerator.save_state = save_state
"""


def test_a_kill_inside_a_save_leaves_the_previous_checkpoint_and_resume_is_exact(tmp_path):
    data = image_folder(tmp_path / "data", 8)
    argv = ["train", "--config", "tiny", "--data", str(data), *COMMON]
    kill_at = random.Random(4).randint(2, STEPS - 1)
    killed = tmp_path / "killed"
    process = launch([*argv, "--out", str(killed)], tmp_path / "killed.log",
                     prelude=DIE_INSIDE_THE_SAVE.format(kill_at=kill_at))
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0  # meanwhile, the reference
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    assert process.wait(240) == 9, (tmp_path / "killed.log").read_text()[-3000:]
    assert (killed / "checkpoint.partial" / "model.safetensors").exists()  # written, not renamed
    assert saved_step(killed) == kill_at - 1
    assert main([*argv, "--out", str(killed), "--resume"]) == 0
    assert_bit_identical(final_weights(tmp_path / "straight"), final_weights(killed))
    assert not (killed / "checkpoint.partial").exists()


def test_gan_train_killed_at_a_random_step_resumes_exactly(tmp_path):
    """WGAN-GP, DiffAugment and D's noise injection (every random draw of TransGAN's recipe),
    a G step every second D step, and G's EMA."""
    kill_and_resume(tmp_path, ["gan", "train", "--config", "transgan-tiny", "--data",
                               "builtin:digits", "--n-critic", "2", "--num-samples", "0",
                               *RUN], seed=5, exported=("", "discriminator"))


def test_a_save_after_resuming_from_the_old_checkpoint_keeps_it_until_the_new_one_is_whole(
        tmp_path, monkeypatch):
    """A kill between the two renames of a save leaves only checkpoint.old/; the run resumes
    from it. Its next save must not delete checkpoint.old/ before checkpoint/ exists again."""
    from accelerate import Accelerator

    from imgtx.training.checkpoints import RunState, find_checkpoint, save_checkpoint

    accelerator, state = Accelerator(cpu=True), RunState()
    accelerator.register_for_checkpointing(state)
    save_checkpoint(accelerator, tmp_path, state)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # killed between the renames
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    rename = Path.rename

    def killed_before_the_new_checkpoint_is_in_place(self, target):
        if self.name == "checkpoint.partial":
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_the_new_checkpoint_is_in_place)
    state.step = 1
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, state)
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
