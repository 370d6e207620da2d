"""Feature extractors for FID/KID/IS, selected by name with :func:`get_extractor`.

Every extractor maps a uint8 batch ``(B, 3, H, W)`` to float features ``(B, dim)``; those that also
give class probabilities have a ``probabilities`` method ``(B, 3, H, W) -> (B, C)``.

* ``"inception"`` -- TF-Inception pool features (2048-d), as published FID/KID/IS use: through
  torch-fidelity where it imports (it needs torchvision), or ``"inception:PATH"`` with the
  TorchScript translation ``inception-2015-12-05.pt`` that StyleGAN2-ADA's metrics download
  (Karras et al. 2020, ``metrics/metric_utils.py``); loading it needs no torchvision.
* ``"imgtx-small"`` -- :class:`SmallFeatureNet`, a 290k-parameter CNN whose weights ship in
  ``checkpoints/imgtx-features-small`` (trained on real handwritten digits and on photo
  identity by :mod:`imgtx.eval.feature_training`; recipe: ``scripts/train_feature_net.py``).
  Offline, 128-d; its digit head gives probabilities. ``"imgtx-small:DIR"`` loads the same
  network from another folder.
* ``"random"`` -- :class:`RandomConvFeatures`, a fixed random network for tests.

Numbers from different extractors are not comparable with each other.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from imgtx.errors import UserError

__all__ = [
    "EXTRACTOR_NAMES",
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomConvFeatures",
    "SmallFeatureConfig",
    "SmallFeatureNet",
    "TorchScriptInception",
    "compute_features",
    "default_features_dir",
    "get_extractor",
    "inception_extractor",
    "load_small_feature_net",
]

EXTRACTOR_NAMES = ("inception", "inception:PATH", "imgtx-small", "imgtx-small:DIR", "random")


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps a uint8 batch ``(B, 3, H, W)`` to float features ``(B, dim)``."""

    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def compute_features(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 64):
    """Run ``extractor`` over ``(N, 3, H, W)`` uint8 images in batches -> ``(N, dim)`` float64."""
    chunks = [extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).double().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Random features (tests)
# ----------------------------------------------------------------------------------------------


class RandomConvFeatures(nn.Module):
    """A tiny fixed random conv net; deterministic given ``seed``. For tests and smoke runs only.

    Three 3x3 convolutions (stride 2, 2, 1; He-scaled Gaussian weights from a seeded generator,
    zero biases) with ReLU, then a global average pool: ``(B, 3, H, W)`` uint8 -> ``(B, dim)``.
    """

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__()
        self.dim = dim
        generator = torch.Generator().manual_seed(seed)
        widths = [3, 16, 32, dim]
        strides = [2, 2, 1]
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides):
            conv = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)
            with torch.no_grad():
                std = math.sqrt(2.0 / (c_in * 9))
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, dim)`` float32."""
        x = images.to(self.net[0].weight.device, torch.float32) / 127.5 - 1.0  # (B, 3, H, W)
        return self.net(x).mean(dim=(2, 3))  # (B, dim)


# ----------------------------------------------------------------------------------------------
# The shipped small feature network
# ----------------------------------------------------------------------------------------------


@dataclass
class SmallFeatureConfig:
    """Architecture of :class:`SmallFeatureNet` (stored as ``config.json`` beside the weights)."""

    image_size: int = 32  # inputs of another size are resized (bilinear) to this
    widths: tuple[int, ...] = (32, 64, 128)  # channels of the three stages; the last is ``dim``
    num_digit_classes: int = 10  # head 1: handwritten digit class (builtin:digits)
    num_photo_classes: int = 7  # head 2: which training photo a patch came from


class SmallFeatureNet(nn.Module):
    """A VGG-style CNN: three stages of two (3x3 conv, BatchNorm, ReLU), 2x2 max pooling between
    stages, global average pooling to ``dim = widths[-1]`` features, and two linear heads.

    ``(B, 3, H, W)`` uint8 -> features ``(B, dim)``; :meth:`logits` gives the digit and photo
    logits from the features. Always used in eval mode after training.
    """

    def __init__(self, config: SmallFeatureConfig | None = None):
        super().__init__()
        self.config = config or SmallFeatureConfig()
        layers: list[nn.Module] = []
        c_in = 3
        for stage, width in enumerate(self.config.widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                c_in = width
        self.body = nn.Sequential(*layers)
        self.dim = c_in
        self.digit_head = nn.Linear(c_in, self.config.num_digit_classes)
        self.photo_head = nn.Linear(c_in, self.config.num_photo_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 (or float in [0, 255]) -> ``(B, dim)`` float32."""
        device = self.digit_head.weight.device
        x = images.to(device, torch.float32) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return self.body(x).mean(dim=(2, 3))  # (B, dim)

    def logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, dim)`` -> digit logits ``(B, 10)`` and photo logits ``(B, 7)``."""
        return self.digit_head(features), self.photo_head(features)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature-extractor call: ``(B, 3, H, W)`` uint8 -> ``(B, dim)`` float32, no grad."""
        return self.features(images)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Digit-class probabilities ``(B, 10)``: softmax of the digit head."""
        return self.digit_head(self.features(images)).softmax(dim=-1)


def default_features_dir() -> Path:
    """``checkpoints/imgtx-features-small`` of the source tree this package runs from."""
    return Path(__file__).resolve().parent.parent / "checkpoints" / "imgtx-features-small"


def load_small_feature_net(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> SmallFeatureNet:
    """Load :class:`SmallFeatureNet` from a folder with ``config.json`` + ``model.safetensors``.

    Loading is strict (every key must match). The network is returned in eval mode, frozen.
    ``config.json`` may carry extra fields (training figures); they are kept in ``net.card``.
    """
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else default_features_dir()
    weights, config_file = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file() or not config_file.is_file():
        raise UserError(
            f"no feature network in {folder} (expected config.json and model.safetensors); the "
            "repo ships one in checkpoints/imgtx-features-small, or run "
            "scripts/train_feature_net.py --out RUN and pass 'imgtx-small:RUN/final'"
        )
    card = json.loads(config_file.read_text())
    fields = {k: card[k] for k in asdict(SmallFeatureConfig()) if k in card}
    fields["widths"] = tuple(fields.get("widths", SmallFeatureConfig.widths))
    net = SmallFeatureNet(SmallFeatureConfig(**fields))
    net.load_state_dict(load_file(str(weights)), strict=True)
    net.card = card
    return net.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Inception
# ----------------------------------------------------------------------------------------------

# Output width of each torch-fidelity InceptionV3 feature.
_INCEPTION_DIMS = {
    "64": 64,
    "192": 192,
    "768": 768,
    "2048": 2048,
    "logits_unbiased": 1008,
    "logits": 1008,
}


class InceptionFeatures:
    """torch-fidelity's TF-compatible InceptionV3 behind the ``FeatureExtractor`` protocol."""

    def __init__(self, network: nn.Module, feature: str):
        self.network = network
        self.feature = feature
        self.dim = _INCEPTION_DIMS[feature]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 (any size; resized to 299 inside) -> ``(B, dim)`` float32."""
        (features,) = self.network(images)
        return features.reshape(len(images), -1).float()


def inception_extractor(
    feature: str = "2048", device: str | torch.device = "cpu"
) -> InceptionFeatures:
    """TF-Inception features via torch-fidelity, as used for published FID/KID/IS.

    Args:
        feature: ``"2048"`` (pool features, for FID/KID) or ``"logits_unbiased"`` (for IS, after a
            softmax); also ``"64"``, ``"192"``, ``"768"``, ``"logits"``.
        device: where to run the network.

    Returns:
        A ``FeatureExtractor``. torch-fidelity downloads its weights on first use.

    Raises:
        ImportError: torch-fidelity (or torchvision, which it imports) is missing.
    """
    if feature not in _INCEPTION_DIMS:
        raise ValueError(f"feature must be one of {sorted(_INCEPTION_DIMS)}, got {feature!r}")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as error:
        raise ImportError(
            "Inception features need torch-fidelity, which also needs torchvision: "
            "`pip install 'imgtx[fid]'` on a machine where torchvision installs. For tests or "
            "smoke runs use imgtx.eval.fid.RandomConvFeatures (its numbers are not comparable to "
            f"published FID). Import error: {error}"
        ) from error
    network = FeatureExtractorInceptionV3("inception-v3-compat", [feature]).to(device).eval()
    return InceptionFeatures(network, feature)


class _FidelityInception:
    """torch-fidelity pool features plus softmax probabilities (``logits_unbiased``) for IS."""

    dim = 2048

    def __init__(self, device: str | torch.device):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.device = torch.device(device)
        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"]
        ).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, 2048)`` float32."""
        features = self.network(images.to(self.device))[0]
        return features.reshape(len(images), -1).float()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, 1008)`` softmax of the unbiased logits."""
        logits = self.network(images.to(self.device))[1]
        return logits.reshape(len(images), -1).float().softmax(-1)


class TorchScriptInception:
    """The TorchScript TF-Inception of StyleGAN2-ADA (``inception-2015-12-05.pt``).

    Its ``forward(images, return_features=..., no_output_bias=...)`` takes uint8 ``(B, 3, H, W)``
    at any size (it resizes to 299 inside) and returns the 2048-d pool features, or, with
    ``no_output_bias=True``, class probabilities (softmax without the output bias, as the original
    TF IS code).
    """

    dim = 2048

    def __init__(self, module: torch.jit.ScriptModule, device: str | torch.device):
        self.module, self.device = module, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, 2048)`` float32."""
        out = self.module(images.to(self.device), return_features=True)
        return out.reshape(len(images), -1).float()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, 1008)`` class probabilities."""
        out = self.module(images.to(self.device), no_output_bias=True)
        return out.reshape(len(images), -1).float()


def _inception(path: str | None, device: str | torch.device):
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"inception weights {file} not found; pass an existing file")
        try:
            module = torch.jit.load(str(file), map_location=device)
        except RuntimeError as error:
            raise UserError(
                f"{file} is not a TorchScript module. 'inception:PATH' takes StyleGAN2-ADA's "
                "TorchScript Inception 'inception-2015-12-05.pt' (download it where the network "
                "is reachable); a state dict (e.g. pytorch-fid's pt_inception-2015-12-05-*.pth) "
                f"needs torchvision to build the network, which is not supported here ({error})"
            ) from error
        return TorchScriptInception(module.eval(), device)
    try:
        return _FidelityInception(device)
    except ImportError as error:
        raise UserError(
            "Inception features need torch-fidelity, which needs torchvision "
            f"(import failed: {error}). Either `pip install 'imgtx[fid]'` where torchvision "
            "installs, or pass --features inception:PATH with StyleGAN2-ADA's TorchScript "
            "inception-2015-12-05.pt, or use --features imgtx-small (offline, not comparable to "
            "published FID)"
        ) from error


# ----------------------------------------------------------------------------------------------
# Selection by name
# ----------------------------------------------------------------------------------------------


def get_extractor(name: str, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The feature extractor called ``name`` (one of :data:`EXTRACTOR_NAMES`).

    Args:
        name: ``"inception"``, ``"inception:PATH"``, ``"imgtx-small"``, ``"imgtx-small:DIR"`` or
            ``"random"``.
        device: where the network runs.

    Returns:
        A callable ``(B, 3, H, W) uint8 -> (B, dim)``; ``probabilities`` where it has classes.

    Raises:
        UserError: unknown name, missing weights, or Inception unavailable here (says why).
    """
    kind, _, argument = name.partition(":")
    if kind == "inception":
        return _inception(argument or None, device)
    if kind == "imgtx-small":
        return load_small_feature_net(argument or None, device)
    if kind == "random" and not argument:
        return RandomConvFeatures().to(device)
    raise UserError(f"unknown feature extractor {name!r}; choose one of {list(EXTRACTOR_NAMES)}")
