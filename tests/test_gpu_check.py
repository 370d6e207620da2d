"""Spec for scripts/gpu_check.py, the prepared GPU check, on a machine without CUDA.

1. ``--dry-run`` runs every part at toy sizes on the CPU in under 60 s of CPU time and writes
   ``gpu_check.json``: every part present; the CUDA-only items skipped with the reason "no CUDA";
   the CPU-runnable items measured, within tolerance.
2. A tiny ``--budget-s`` makes the parts skip themselves for lack of time.
3. An item that outruns its part's box is stopped by the alarm; the next item is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
PARTS = ["correctness", "attention_speed", "gan", "likelihood", "environment"]
PATTERNS = ["local1d", "local2d", "window", "shifted_window", "full", "causal"]


def run_check(out: Path, *extra: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess,
                                                                     dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    report = json.loads((out / "gpu_check.json").read_text())
    return done, report


def items(report: dict, part: str) -> dict[str, dict]:
    return {item["name"]: item for item in report["parts"][part]["items"]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, float]:
    out = tmp_path_factory.mktemp("gpu_check")
    start = time.perf_counter()
    done, report = run_check(out, "--dry-run")
    return done, report, time.perf_counter() - start


def test_dry_run_passes_in_under_a_minute_with_every_part(dry_run):
    done, report, seconds = dry_run
    assert done.returncode == 0, done.stderr[-2000:]
    # Under 60 s of work on 2 cores (CPU time: wall time also counts other jobs on a shared
    # machine; on an idle one the two are close). The wall clock gets a loose bound.
    assert report["cpu_s"] < 60 and seconds < 180
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert list(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        assert part["status"] == "measured", (name, part.get("reason"))
        assert part["items"], name
        for item in part["items"]:
            assert item["status"] in ("measured", "skipped"), (name, item)
            if item["status"] == "skipped":
                assert item["reason"], (name, item)
    assert report["failures"] == []
    # One progress line per part, a JSON summary last on stdout, and the Markdown table.
    for index, name in enumerate(PARTS, 1):
        assert f"part {index}/5 {name}: measured" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["parts"] == {name: "measured" for name in PARTS}
    markdown = (Path(summary["out"]).parent / "gpu_check.md").read_text()
    assert "| item | status | figures |" in markdown and "## gan: measured" in markdown


def test_dry_run_skips_exactly_the_cuda_items_with_no_cuda(dry_run):
    _, report, _ = dry_run
    correctness = items(report, "correctness")
    for pattern in PATTERNS:
        for dtype in ("fp32", "bf16"):
            assert correctness[f"{pattern}/xformers/{dtype}/forward+backward"]["reason"] == \
                "no CUDA"
            assert correctness[f"{pattern}/flex/{dtype}/backward"]["reason"] == "no CUDA"
    speed = items(report, "attention_speed")
    for case in ("local1d_96", "local2d_192", "window_16x16"):
        for what in ("xformers", "flex", "peak_memory"):
            assert speed[f"{case}/{what}"]["reason"] == "no CUDA"
    gan = items(report, "gan")
    for config in ("transgan-celebahq256", "transgan-church256"):
        for mode in ("plain", "checkpoint_blocks"):
            assert gan[f"memory/{config}/{mode}"]["reason"] == "no CUDA"
    assert "--official PATH" in gan["official_transgan/step_time"]["reason"]
    likelihood = items(report, "likelihood")
    for backend in ("xformers", "flex"):
        for dtype in ("fp32", "bf16"):
            assert likelihood[f"train/tiny/{backend}/{dtype}"]["reason"] == "no CUDA"
    assert items(report, "environment")["gpu"]["reason"] == "no CUDA"


def test_dry_run_measures_the_cpu_pieces_within_tolerance(dry_run):
    _, report, _ = dry_run
    correctness = items(report, "correctness")
    for pattern in PATTERNS:
        for dtype in ("fp32", "bf16"):
            for name in (f"{pattern}/blocked/{dtype}/forward+backward",
                         f"{pattern}/flex/{dtype}/forward"):
                figures = correctness[name]["figures"]
                assert figures["ok"] is True, name
                assert 0 <= figures["forward_error"] <= figures["forward_tolerance"], name
            backward = correctness[f"{pattern}/blocked/{dtype}/forward+backward"]["figures"]
            assert backward["backward_error"] <= backward["backward_tolerance"]
    # fp32 is held far tighter than bf16, and the CPU kernels meet it with room to spare.
    fp32 = correctness["local1d/blocked/fp32/forward+backward"]["figures"]
    bf16 = correctness["local1d/blocked/bf16/forward+backward"]["figures"]
    assert fp32["forward_error"] < 1e-5 < bf16["forward_error"]
    for pattern in ("local1d", "local2d", "causal"):
        for dtype in ("fp32", "bf16"):
            assert correctness[f"{pattern}/kv_cache_step/{dtype}"]["figures"]["ok"] is True
    assert correctness["decoder_vs_forward/tiny/fp32"]["figures"]["max_error"] < 1e-4

    speed = items(report, "attention_speed")
    for case in ("local1d_96", "local2d_192", "window_16x16"):
        assert speed[f"{case}/blocked"]["figures"]["speedup"] > 0

    gan = items(report, "gan")
    for precision in ("fp32", "bf16"):
        assert gan[f"step_time/transgan-tiny/{precision}"]["figures"]["g_step_seconds"] > 0
    training = gan["train_bf16_random_data/transgan-tiny"]["figures"]
    assert training["ok"] is True and training["steps"] == 6
    assert all(abs(loss) < 1e6 for loss in training["d_loss_curve"])

    likelihood = items(report, "likelihood")
    for name in ("train/tiny/blocked/fp32", "train/tiny/blocked/bf16"):
        assert likelihood[name]["figures"]["positions_per_second"] > 0
    assert likelihood["sample_cached/tiny"]["figures"]["images_per_second"] > 0
    evaluation = likelihood["eval_bpd/tiny/builtin:photos"]["figures"]
    assert evaluation["num_images"] == 16 and evaluation["images_per_second"] > 0
    versions = items(report, "environment")["versions"]["figures"]
    assert versions["torch"] == torch.__version__


def test_tiny_budget_skips_the_parts_for_lack_of_time(tmp_path):
    done, report = run_check(tmp_path, "--dry-run", "--budget-s", "1", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in PARTS[:-1]:
        part = report["parts"][name]
        assert part["status"] == "skipped"
        assert part["reason"].startswith("not enough time"), part["reason"]
        assert "items" not in part
    assert report["parts"]["environment"]["status"] == "measured"  # reporting needs no time


# --------------------------------------------------------------------------------------------
# In-process: the time box of one part
# --------------------------------------------------------------------------------------------


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import gpu_check

    return gpu_check


def test_an_item_that_outruns_the_box_is_stopped_and_the_rest_skipped(gpu_check, tmp_path):
    def part(ctx):
        ctx.run("fast", lambda: {"value": 1.0}, need_s=0)
        ctx.run("slow", lambda: time.sleep(30) or {}, need_s=0)
        ctx.run("after", lambda: {"value": 2.0}, need_s=0.1)

    args = Namespace(box_scale=1.0, dry_run=True, official=None)
    start = time.monotonic()
    entry = gpu_check.run_part(gpu_check.Part("toy", "toy", part, box_s=0.5, min_s=0),
                               {"parts": {}}, args, torch.device("cpu"), tmp_path,
                               deadline=time.monotonic() + 60)
    assert time.monotonic() - start < 5
    status = {item["name"]: (item["status"], item.get("reason", "")) for item in entry["items"]}
    assert status["fast"] == ("measured", "")
    assert status["slow"] == ("skipped", "time box reached while measuring")
    assert status["after"][0] == "skipped" and status["after"][1].startswith("not enough time")
    assert entry["status"] == "measured" and entry["box_s"] == 0.5


def test_a_failing_item_is_recorded_and_counted_as_a_failure(gpu_check, tmp_path):
    def part(ctx):
        ctx.run("broken", lambda: 1 / 0, need_s=0)
        ctx.run("over_tolerance", lambda: {"max_error": 1.0, "tolerance": 0.1, "ok": False},
                need_s=0)

    args = Namespace(box_scale=1.0, dry_run=True, official=None)
    entry = gpu_check.run_part(gpu_check.Part("toy", "toy", part, box_s=10, min_s=0),
                               {"parts": {}}, args, torch.device("cpu"), tmp_path,
                               deadline=time.monotonic() + 60)
    assert entry["items"][0] == {"name": "broken", "status": "failed",
                                 "reason": "ZeroDivisionError: division by zero"}
    lines = gpu_check.failures({"parts": {"toy": entry}})
    assert lines[0] == "toy/broken: ZeroDivisionError: division by zero"
    assert lines[1].startswith("toy/over_tolerance: over tolerance")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_a_real_run_says_to_use_dry_run(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "--dry-run" in message
    assert not (tmp_path / "gpu_check.json").exists()
    assert gpu_check.main(["--dry-run", "--parts", "speed"]) == 2
    assert "unknown part" in capsys.readouterr().err
