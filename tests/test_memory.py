"""Spec for bounded memory: ``imgtx eval-bpd`` over a local folder of 20,000 images peaks at
the memory of the same command over 2,000 (within 10%). Nothing may grow with the number of
images: not the folder index, not the per-image figures, not memory the allocator keeps.

The images are 32x32 PNGs written to the test's temporary folder (64 distinct encodings, written
round-robin: the files' content does not matter here); the model is a freshly saved 32x32 Image
Transformer as small as the config allows (no layers, width 4, one logistic per pixel), so that
evaluating 22,000 images takes well under a minute. Each figure is the peak resident set size
(``ru_maxrss``) of its own process.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
MEASURE = """
import resource, sys
from imgtx.cli import main
code = main(sys.argv[1:])
print("peak_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def png_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    encodings = []
    for _ in range(64):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        encodings.append(buffer.getvalue())
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"{i:05d}.png").write_bytes(encodings[i % len(encodings)])
    return root


def peak_memory(model: Path, data: Path) -> tuple[int, dict]:
    """Peak RSS (KB) of ``imgtx eval-bpd`` on ``data``, and its JSON result."""
    argv = ["eval-bpd", "--model", str(model), "--data", str(data), "--no-baselines", "--json",
            "--threads", "1", "--batch-size", "100"]
    result = subprocess.run([sys.executable, "-c", MEASURE, *argv], env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    peak = int(result.stderr.split("peak_kb")[-1].split()[0])
    return peak, json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_bpd_memory_does_not_grow_with_the_number_of_images(tmp_path):
    from imgtx import ImageTransformer, get_config

    torch.manual_seed(0)
    config = get_config("tiny", image_size=32, likelihood="dmol", num_mixtures=1, num_layers=0,
                        hidden_size=4, ffn_size=4, num_heads=1, block_length=32)
    ImageTransformer(config).save_pretrained(tmp_path / "model")
    many = png_folder(tmp_path / "many", 20_000)
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(many.iterdir())[:2_000]:
        os.link(path, few / path.name)

    few_peak, few_result = peak_memory(tmp_path / "model", few)
    many_peak, many_result = peak_memory(tmp_path / "model", many)
    assert few_result["num_images"] == 2_000 and many_result["num_images"] == 20_000
    assert many_peak <= 1.10 * few_peak, f"{many_peak / 1024:.0f} MB for 20,000 images vs " \
        f"{few_peak / 1024:.0f} MB for 2,000"
