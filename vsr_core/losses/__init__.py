"""Training losses: pixel L1 and VGG19 perceptual loss."""

from vsr_core.losses.perceptual import (
    ALLOWED_VGG_WEIGHTS,
    LossTerms,
    PerceptualLoss,
    VGGWeightsUnavailable,
    combined_loss,
    imagenet_vgg19_cache_path,
    load_vgg19_features,
)

__all__ = [
    "ALLOWED_VGG_WEIGHTS",
    "LossTerms",
    "PerceptualLoss",
    "VGGWeightsUnavailable",
    "combined_loss",
    "imagenet_vgg19_cache_path",
    "load_vgg19_features",
]
