"""Regression pins: what every shipped checkpoint in ``checkpoints/`` computes on small fixed
inputs must not move when the code around the models is reorganised.

* likelihood models: bits/dim of a few ``builtin:photos32`` test images (float32 model, figures
  summed in float64), within 1e-6, and one sample for a seed, bit for bit (sha256);
* super-resolution models: bits/dim of the same targets given their area-downscaled inputs
  (within 1e-6), and the temperature-0 upscale of one fixed 8x8 input, bit for bit (sha256);
* GAN generators: ``generate(n, seed=...)``, bit for bit (sha256);
* the feature network of the FID code: its features of fixed images, within 1e-6.

The pinned values were computed by this file's own helpers with the code of commit 0ca00e3 (one
CPU thread): ``OMP_NUM_THREADS=1 python tests/test_shipped_outputs.py`` prints them again. They
are regression pins, not measurements of quality.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
TEST_IMAGES = (3, 130, 301)  # indices into builtin:photos32's test split

BITS_PER_DIM = {  # per image, TEST_IMAGES order
    "imgtx-photos32-small": [5.817044258117676, 3.989696979522705, 4.527642250061035],
    "imgtx-photos-dmol-small": [5.432976245880127, 3.9159109592437744, 4.04815673828125],
    "sr-photos-8to32-small": [5.045095920562744, 3.4841251373291016, 3.695070743560791],
    "sr-corpus-8to32-small": [5.112670421600342, 3.453559160232544, 3.716851234436035],
    "sr-corpus-8to32-dmol": [5.337111473083496, 3.8614346981048584, 3.9982852935791016],
}
SAMPLE_SHA256 = {  # one image, temperature 1, seed 0 (imgtx.sampling.sample)
    "imgtx-photos32-small": "b591f1fdff2ecb4e9fcc90775fda56bf432d5612a216a22152b5ac21910ca5c5",
    "imgtx-photos-dmol-small": "fca3466b49ff9f075631ae8e9c786be55d1241897541bfa91fe9e5892aa52f7e",
}
UPSCALE_SHA256 = {  # temperature 0, the first test image's 8x8 input
    # the two categorical models keep every anchor here (the bicubic upscale)
    "sr-photos-8to32-small": "dabd055aa16851a9831de74f5232d4b5067303bdf406b3a3698766a951be8fe6",
    "sr-corpus-8to32-small": "dabd055aa16851a9831de74f5232d4b5067303bdf406b3a3698766a951be8fe6",
    "sr-corpus-8to32-dmol": "d32601ff688d6d841c1173c6b962362fb7ced3b9a4f807fa9c61c767a5e45bbd",
}
GAN_SHA256 = {  # generate(4, seed=7)
    "transgan-photos32-small": "bf48f48dcf74d8e0fc71054b6821a10010b74f741cc54a32e08fa290cd5b030a",
    "strans-digits32-cond": "637780ca6add3c01c90fb34af44599de207f5fd5aafc9a10816456b1a2eb2720",
    "strans-corpus32": "e001aed3c09ecf5bdf1f2a24574a4b8a9a47197801ce76b1eaed2ad7c11281f3",
}
# sum of |features| and features[0, :4] of the three test images
FEATURES = [159.28593375091805, 0.2299366444349289, 0.015066422522068024, 0.22993934154510498,
            0.22118455171585083]


def sha256(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def _require(name: str) -> Path:
    path = CHECKPOINTS / name
    if not (path / "model.safetensors").exists():
        pytest.skip(f"checkpoints/{name} is not in this checkout")
    return path


def targets() -> torch.Tensor:
    from imgtx.data import load_images

    source = load_images("builtin:photos32", "test", 32)
    return torch.stack([source[i]["image"] for i in TEST_IMAGES])  # (3, 3, 32, 32) uint8


@torch.no_grad()
def likelihood_bits(name: str, images: torch.Tensor) -> list[float]:
    from imgtx.model import ImageTransformer

    model = ImageTransformer.from_pretrained(_require(name)).eval()
    return model.bits_per_dim(images).double().tolist()


def likelihood_sample(name: str) -> torch.Tensor:
    from imgtx.model import ImageTransformer
    from imgtx.sampling import sample

    model = ImageTransformer.from_pretrained(_require(name)).eval()
    return sample(model, 1, seed=0, progress=False)


@torch.no_grad()
def sr_bits(name: str, images: torch.Tensor) -> list[float]:
    from imgtx.sr.model import SuperResolutionTransformer, make_low_res

    model = SuperResolutionTransformer.from_pretrained(_require(name)).eval()
    return model.bits_per_dim(make_low_res(images, model.config), images).double().tolist()


@torch.no_grad()
def sr_upscale(name: str, images: torch.Tensor) -> torch.Tensor:
    from imgtx.sr.model import SuperResolutionTransformer, make_low_res
    from imgtx.sr.upscale import upscale_batch

    model = SuperResolutionTransformer.from_pretrained(_require(name)).eval()
    return upscale_batch(model, make_low_res(images[:1], model.config), temperature=0)


@torch.no_grad()
def gan_samples(name: str) -> torch.Tensor:
    from imgtx.gan.sample import load_generator

    _require(name)
    return load_generator(str(CHECKPOINTS / name)).generate(4, seed=7)


@torch.no_grad()
def feature_pins(images: torch.Tensor) -> list[float]:
    from imgtx.eval.features import load_small_feature_net

    _require("imgtx-features-small")
    features = load_small_feature_net(CHECKPOINTS / "imgtx-features-small").features(images)
    return [features.double().abs().sum().item(), *features[0, :4].double().tolist()]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return targets()


@pytest.mark.parametrize("name", ["imgtx-photos32-small", "imgtx-photos-dmol-small"])
def test_likelihood_bits_per_dim(name, images):
    assert likelihood_bits(name, images) == pytest.approx(BITS_PER_DIM[name], abs=1e-6)


@pytest.mark.parametrize("name", list(SAMPLE_SHA256))
def test_likelihood_sample_for_a_seed(name):
    samples = likelihood_sample(name)
    assert samples.shape == (1, 3, 32, 32) and samples.dtype == torch.uint8
    assert sha256(samples) == SAMPLE_SHA256[name]


@pytest.mark.parametrize("name", list(UPSCALE_SHA256))
def test_super_resolution_bits_per_dim(name, images):
    assert sr_bits(name, images) == pytest.approx(BITS_PER_DIM[name], abs=1e-6)


@pytest.mark.parametrize("name", list(UPSCALE_SHA256))
def test_super_resolution_upscale_at_temperature_zero(name, images):
    output = sr_upscale(name, images)
    assert output.shape == (1, 3, 32, 32) and output.dtype == torch.uint8
    assert sha256(output) == UPSCALE_SHA256[name]


@pytest.mark.parametrize("name", list(GAN_SHA256))
def test_gan_samples_for_a_seed(name):
    samples = gan_samples(name)
    assert samples.shape == (4, 3, 32, 32) and samples.dtype == torch.uint8
    assert sha256(samples) == GAN_SHA256[name]


def test_feature_network(images):
    assert feature_pins(images) == pytest.approx(FEATURES, abs=1e-6)


if __name__ == "__main__":  # print the pins of the current code
    batch = targets()
    for checkpoint in BITS_PER_DIM:
        bits = (likelihood_bits if checkpoint.startswith("imgtx") else sr_bits)(checkpoint, batch)
        print(f"BITS_PER_DIM[{checkpoint!r}] = {bits!r}")
    for checkpoint in SAMPLE_SHA256:
        print(f"SAMPLE_SHA256[{checkpoint!r}] = {sha256(likelihood_sample(checkpoint))!r}")
    for checkpoint in UPSCALE_SHA256:
        print(f"UPSCALE_SHA256[{checkpoint!r}] = {sha256(sr_upscale(checkpoint, batch))!r}")
    for checkpoint in GAN_SHA256:
        print(f"GAN_SHA256[{checkpoint!r}] = {sha256(gan_samples(checkpoint))!r}")
    print(f"FEATURES = {feature_pins(batch)!r}")
