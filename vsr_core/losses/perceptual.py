"""VGG19 perceptual loss with offline-only weight loading.

Nothing here ever downloads: training machines may have no internet, and a
silent fallback to random VGG weights would make the perceptual term
meaningless without anyone noticing. Weights therefore come from torch hub's
cache, from an explicit file, or from an explicit ``"random"`` opt-in.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG19_Weights, vgg19

# features[:36] ends at relu5_4, i.e. it drops the last max-pool (ESRGAN-style).
VGG19_FEATURE_LAYERS = 36
ALLOWED_VGG_WEIGHTS = ("imagenet", "random")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsUnavailable(RuntimeError):
    """The ImageNet VGG19 weights are not on disk and we refuse to download them."""


def imagenet_vgg19_cache_path() -> Path:
    """Where torchvision would cache VGG19_Weights.IMAGENET1K_V1 (honours TORCH_HOME)."""
    filename = os.path.basename(urlparse(VGG19_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_state_dict_into_features(features: nn.Sequential, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"Could not read VGG19 weights file {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise RuntimeError(f"VGG19 weights file {path} does not contain a state dict")

    # Accept both a full vgg19 state dict ("features.0.weight", "classifier...")
    # and a features-only one ("0.weight"); only the feature keys matter here.
    if any(key.startswith("features.") for key in state):
        state = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}

    expected = features.state_dict()
    missing = [key for key in expected if key not in state]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs expected {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or mismatched:
        details = []
        if missing:
            details.append(f"missing keys {missing}")
        if mismatched:
            details.append(f"shape mismatches {mismatched}")
        raise RuntimeError(
            f"VGG19 weights file {path} does not match vgg19 features[:{VGG19_FEATURE_LAYERS}]: "
            + "; ".join(details)
        )
    features.load_state_dict({key: state[key] for key in expected})


def load_vgg19_features(weights: str = "imagenet", weights_path: str | os.PathLike | None = None) -> nn.Sequential:
    """Return VGG19 ``features[:36]`` with the requested weights, never downloading.

    weights="imagenet": use ``weights_path`` if given, else torch hub's cached
    IMAGENET1K_V1 file (raises VGGWeightsUnavailable if it is absent).
    weights="random": torch's default init from the current RNG; smoke tests only.
    """
    if weights not in ALLOWED_VGG_WEIGHTS:
        raise ValueError(f"Unknown VGG weights {weights!r}; allowed values are {', '.join(map(repr, ALLOWED_VGG_WEIGHTS))}")
    if weights == "random":
        if weights_path is not None:
            raise ValueError('VGG weights="random" contradicts an explicit weights_path; pass one or the other')
        warnings.warn(
            "VGG19 is randomly initialised (VGG_WEIGHTS='random'): the perceptual loss is not "
            "meaningful beyond smoke tests.",
            stacklevel=2,
        )
        return vgg19(weights=None).features[:VGG19_FEATURE_LAYERS]

    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise VGGWeightsUnavailable(f"VGG19 weights file {path} (VGG_WEIGHTS_PATH / --vgg-weights) does not exist")
    else:
        path = imagenet_vgg19_cache_path()
        if not path.is_file():
            raise VGGWeightsUnavailable(
                f"ImageNet VGG19 weights for the perceptual loss were not found at {path} and will not be "
                f"downloaded. Either copy {path.name} (from {VGG19_Weights.IMAGENET1K_V1.url}) to exactly "
                f"{path} (the directory follows TORCH_HOME), or pass an explicit file via the config key "
                f"VGG_WEIGHTS_PATH / CLI --vgg-weights, or set VGG_WEIGHTS=\"random\" for offline smoke "
                f"tests only (the perceptual loss is then meaningless)."
            )
    # Built only after the path is known to exist: vgg19() costs ~1 s and ~550 MB.
    features = vgg19(weights=None).features[:VGG19_FEATURE_LAYERS]
    _load_state_dict_into_features(features, path)
    return features


class PerceptualLoss(nn.Module):
    """L1 distance between VGG19 features[:36] of prediction and ground truth.

    Inputs are [B, 3, H, W] RGB in [0, 1]; ImageNet normalisation happens inside.
    """

    def __init__(
        self,
        weights: str = "imagenet",
        weights_path: str | os.PathLike | None = None,
        features: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.features = features if features is not None else load_vgg19_features(weights, weights_path)
        self.features.requires_grad_(False)
        self.features.eval()
        # Non-persistent: constants, no reason to put them into checkpoints.
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        # A parent's .train() recurses into us; VGG must stay a fixed feature
        # extractor (and future BN/dropout variants must not change behaviour).
        super().train(mode)
        self.features.eval()
        return self

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"expected pred and gt of equal shape [B, 3, H, W], got {tuple(pred.shape)} and {tuple(gt.shape)}")
        pred_features = self.features(self._normalise(pred))
        with torch.no_grad():
            gt_features = self.features(self._normalise(gt))
        return F.l1_loss(pred_features, gt_features)


class LossTerms(NamedTuple):
    l1: torch.Tensor
    perceptual: torch.Tensor
    total: torch.Tensor


def combined_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    perceptual: PerceptualLoss | None,
    perceptual_weight: float = 0.1,
) -> LossTerms:
    """Pixel L1 plus ``perceptual_weight`` * VGG perceptual loss.

    With ``perceptual_weight == 0`` VGG is never run (it is the expensive part),
    so ``perceptual`` may be None.
    """
    if perceptual_weight < 0:
        raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
    l1 = F.l1_loss(pred, gt)
    if perceptual_weight == 0:
        return LossTerms(l1=l1, perceptual=l1.new_zeros(()), total=l1)
    if perceptual is None:
        raise ValueError(f"perceptual_weight={perceptual_weight} but no PerceptualLoss module was given")
    perceptual_term = perceptual(pred, gt)
    return LossTerms(l1=l1, perceptual=perceptual_term, total=l1 + perceptual_weight * perceptual_term)
