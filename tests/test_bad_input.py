"""Spec for bad input to every ``imgtx`` command: a missing path, a corrupt, truncated or
non-image file in a folder, an empty folder, an unknown config name, a checkpoint of another
model family, a ``config.json`` with unknown or ill-typed fields, a pickle-only checkpoint and
nonsensical numbers. Each must end with exit status 2, a message of at most two lines and no
traceback, and leave no output file or run directory behind.

The commands run in-process (``imgtx.cli.main``) on tiny models and 8x8 images; the fixtures
(models, folders, broken checkpoints) are made once for the module.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from imgtx.cli import main

# A command, and the bad inputs that apply to it. Placeholders: {it} / {sr} a tiny Image
# Transformer / super-resolution checkpoint; {it_...} / {sr_...} one of them broken (see
# `broken_checkpoints`); {data} a good folder; {corrupt} {truncated} {notimage} {empty} bad
# folders; {missing} a path that does not exist; {image} / {badimage} an image file / a file that
# is not one; {out} / {outdir} where outputs would go (must not exist afterwards).
TRAIN = "train --config tiny --data {data} --out {outdir} --max-steps 2 --batch-size 2"
SR_TRAIN = ("sr train --config tiny --data {data} --out {outdir} --max-steps 2 --batch-size 2 "
            "--decoder-init none")
EVAL_BPD = "eval-bpd --model {it} --data {data} --no-baselines"
SAMPLE = "sample --model {it} --num 2 --out {out}"
UPSCALE = "sr upscale --model {sr} {image} {out}"
SR_EVAL = "sr eval --model {sr} --data {data} --grid {out}"
GAN_TRAIN = ("gan train --config transgan-tiny --data {data} --out {outdir} --max-steps 2 "
             "--batch-size 2 --num-samples 0")
GAN_SAMPLE = "gan sample --model {gan} --num 2 --out {out}"
GAN_EVAL = "gan eval --model {gan} --data {data} --num-samples 8 --features random"

# bad input: (placeholder, a fragment the message must hold). A fragment may be a tuple of
# fragments that must all appear, with placeholders filled in like the command's.
BAD_DATA = {"missing": ("{missing}", "no-such-path"), "corrupt": ("{corrupt}", "5x.png"),
            "truncated": ("{truncated}", "5x.png"), "not-an-image": ("{notimage}", "5x.png"),
            "empty": ("{empty}", "no image")}
BAD_CHECKPOINTS = {"unknown-field": "no_such_field", "ill-typed-field": None,  # see cases()
                   "not-json": "JSON", "pickle-only": "pytorch_model.bin",
                   "no-weights": "model.safetensors"}


# The int config field each family's ill-typed checkpoint gets the string "two" in.
FIELDS = {"{it}": "num_heads", "{sr}": "num_heads", "{gan}": "latent_dim"}


def cases():
    """``(id, argv template, a fragment the message must hold)`` for every command x every bad
    input that applies to it."""
    def swap(template: str, old: str, new: str) -> str:
        assert old in template, (template, old)
        return template.replace(old, new, 1)

    for name in ("info", "sr info", "gan info"):
        yield f"{name}/unknown-config", f"{name} --config no-such-config", "no-such-config"
    for name, train in (("train", TRAIN), ("sr train", SR_TRAIN), ("gan train", GAN_TRAIN)):
        for bad, (path, fragment) in BAD_DATA.items():
            yield f"{name}/data-{bad}", swap(train, "{data}", path), fragment
        if name != "gan train":  # its real images for FID are --fid-data
            yield f"{name}/eval-data-missing", train + " --eval-data {missing}", "no-such-path"
        yield (f"{name}/unknown-config", re.sub(r"--config \S+", "--config no-such-config",
                                                train), "no-such-config")
        yield f"{name}/batch-larger-than-data", swap(train, "--batch-size 2", "--batch-size 64"), \
               ("64", "lower --batch-size")
        for option in ("--set bogus=1", "--set num_heads=abc", "--set hidden_size=0",
                       "--set num_heads=-2", "--batch-size 0", "--batch-size -4",
                       "--max-steps 0", "--max-steps -1", "--minutes 0", "--grad-accum 0",
                       "--lr -0.1", "--eval-images 0", "--threads 0"):
            if name == "gan train":  # the GAN configs' fields; no held-out evaluation
                option = {"--set num_heads=abc": "--set latent_dim=abc",
                          "--set hidden_size=0": "--set dim=0",
                          "--set num_heads=-2": "--set-d dim=-2",
                          "--eval-images 0": "--n-critic 0"}.get(option, option)
            flag, value = option.split()
            fragment = value.split("=")[0] if flag.startswith("--set") else flag
            yield f"{name}/{option[2:].replace(' ', '')}", f"{train} {option}", fragment
    yield "sr train/decoder-init-missing", swap(SR_TRAIN, "none", "{missing}"), "no-such-path"
    yield "sr train/decoder-init-wrong-family", swap(SR_TRAIN, "none", "{sr}"), \
        ("{sr}/config.json", "SuperResolutionTransformer", "load it with")
    for bad, (path, fragment) in BAD_DATA.items():
        for name, template in (("eval-bpd", EVAL_BPD), ("sr eval", SR_EVAL),
                               ("gan eval", GAN_EVAL)):
            yield f"{name}/data-{bad}", swap(template, "{data}", path), fragment
    for name, template, own, other in (("eval-bpd", EVAL_BPD, "{it}", "{sr}"),
                                       ("sample", SAMPLE, "{it}", "{sr}"),
                                       ("sr upscale", UPSCALE, "{sr}", "{it}"),
                                       ("sr eval", SR_EVAL, "{sr}", "{it}"),
                                       ("gan sample", GAN_SAMPLE, "{gan}", "{it}"),
                                       ("gan eval", GAN_EVAL, "{gan}", "{sr}")):
        yield f"{name}/model-missing", swap(template, own, "{missing}"), "no-such-path"
        # the other family's config.json, and how to load it instead
        yield f"{name}/model-wrong-family", swap(template, own, other), \
            (other[:-1] + "}/config.json", "load it with")
        for bad, fragment in BAD_CHECKPOINTS.items():
            if bad == "ill-typed-field":  # the field, its type, the bad value and the fix
                fragment = (FIELDS[own] + " should be int", "'two'", "fix the value")
            yield f"{name}/model-{bad}", swap(template, own, own[:-1] + "_" + bad + "}"), fragment
    yield ("sr eval/unconditional-model-wrong-family", SR_EVAL + " --unconditional-model {sr}",
           ("{sr}/config.json", "SuperResolutionTransformer", "load it with"))
    yield "sr upscale/input-missing", swap(UPSCALE, "{image}", "{missing}"), "no-such-path"
    yield "sr upscale/input-not-an-image", swap(UPSCALE, "{image}", "{badimage}"), "5x.png"
    for name, template, options in (
            ("eval-bpd", EVAL_BPD, ["--limit 0", "--limit -3", "--batch-size 0",
                                    "--threads 0"]),
            ("sample", SAMPLE, ["--num 0", "--num -1", "--temperature -0.5", "--batch-size 0",
                                "--scale 0", "--threads 0"]),
            ("sr upscale", UPSCALE, ["--temperature -1", "--batch-size 0", "--threads 0"]),
            ("sr eval", SR_EVAL, ["--limit 0", "--batch-size 0", "--temperature -1",
                                  "--threads 0"]),
            ("gan sample", GAN_SAMPLE, ["--num 0", "--num -1", "--batch-size 0", "--scale 0",
                                        "--threads 0"]),
            ("gan eval", GAN_EVAL, ["--num-samples 0", "--num-samples 1", "--batch-size 0",
                                    "--threads 0"])):
        for option in options:
            yield f"{name}/{option[2:].replace(' ', '')}", f"{template} {option}", \
                option.split()[0]


CASES = {case: (template, fragment) for case, template, fragment in cases()}


def save_png(path: Path, seed: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    PIL.Image.fromarray(array).save(path)


def folder_with(root: Path, bad_name: str | None = None, bad_bytes: bytes = b"") -> Path:
    for i in range(6):
        save_png(root / f"{i}.png", seed=i)
    if bad_name is not None:
        (root / bad_name).write_bytes(bad_bytes)
    return root


def broken_checkpoints(good: Path, root: Path, field: str) -> dict[str, Path]:
    """Copies of checkpoint ``good`` with one thing wrong each (``field``: an int field of its
    config, given a string)."""
    made = {}
    for bad in BAD_CHECKPOINTS:
        path = made[bad] = root / bad
        shutil.copytree(good, path)
        config = json.loads((path / "config.json").read_text())
        if bad == "unknown-field":
            config["no_such_field"] = 3
        elif bad == "ill-typed-field":
            config[field] = "two"
        (path / "config.json").write_text(json.dumps(config))
        if bad == "not-json":
            (path / "config.json").write_text(f"{{\"{field}\": 2,")
        elif bad == "pickle-only":
            from safetensors.torch import load_file

            torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
            (path / "model.safetensors").unlink()
        elif bad == "no-weights":
            (path / "model.safetensors").unlink()
    return made


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    from imgtx import ImageTransformer, get_config
    from imgtx.gan.configs import gan_entry
    from imgtx.gan.train import build_models
    from imgtx.sr.configs import get_config as sr_config
    from imgtx.sr.model import SuperResolutionTransformer

    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    ImageTransformer(get_config("tiny")).save_pretrained(root / "it")
    SuperResolutionTransformer(sr_config("tiny")).save_pretrained(root / "sr")
    folder_with(root / "data")
    good_png = (root / "data" / "0.png").read_bytes()
    values = {
        "it": root / "it", "sr": root / "sr", "data": root / "data",
        "corrupt": folder_with(root / "corrupt", "5x.png", b"\x89PNG\r\n\x1a\n" + bytes(40)),
        "truncated": folder_with(root / "truncated", "5x.png", good_png[: len(good_png) // 2]),
        "notimage": folder_with(root / "notimage", "5x.png", b"just some text\n"),
        "empty": root / "empty", "missing": root / "no-such-path",
        "image": root / "data" / "0.png", "badimage": root / "notimage" / "5x.png",
    }
    (root / "empty").mkdir()
    tiny_gan = gan_entry("transgan-tiny")
    build_models(tiny_gan.config, tiny_gan.discriminator)[0].save_pretrained(root / "gan")
    values["gan"] = root / "gan"
    for family, field in (("it", "num_heads"), ("sr", "num_heads"), ("gan", "latent_dim")):
        broken = broken_checkpoints(root / family, root / f"{family}-broken", field)
        for bad, path in broken.items():
            values[f"{family}_{bad}"] = path
    return {key: str(value) for key, value in values.items()}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The end of a tqdm line: [elapsed<remaining, rate, postfix]
PROGRESS = re.compile(r"\[\d+:\d\d(<[^\]]*)?(, [^\]]*)?\]$")


def message_lines(stderr: str) -> list[str]:
    """The lines a terminal shows for ``stderr`` (a carriage return rewrites its line, cursor
    moves dropped), less progress bars and blank lines."""
    shown = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).rsplit("\r", 1)[-1]
             for line in stderr.split("\n")]
    return [line for line in shown if line.strip() and not PROGRESS.search(line.strip())]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_a_short_message_and_leaves_nothing(case, paths, tmp_path,
                                                                   capsys):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    values = {**paths, "out": str(outputs / "out.png"), "outdir": str(outputs / "run")}
    template, fragment = CASES[case]
    fragments = [part.format(**values) for part in
                 ((fragment,) if isinstance(fragment, str) else fragment)]
    argv = [part.format(**values) for part in template.split()]
    inputs_before = sorted(Path(paths["data"]).parent.rglob("*"))

    code = main(argv)
    captured = capsys.readouterr()

    lines = message_lines(captured.err)
    assert code == 2, captured.err[-2000:]
    assert "Traceback" not in captured.err
    assert 1 <= len(lines) <= 2, captured.err
    assert lines[0].startswith(f"imgtx {case.split('/')[0]}: error: "), lines
    said = " ".join(lines)
    for part in fragments:  # what was wrong, and the fix where the message gives one
        assert part in said or part.lstrip("-").replace("-", "_") in said, (part, lines)
    assert "Traceback" not in captured.out and '"' not in captured.out  # no result line
    assert list(outputs.iterdir()) == []  # no run directory, grid or image left behind
    assert sorted(Path(paths["data"]).parent.rglob("*")) == inputs_before  # inputs untouched
