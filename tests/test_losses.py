"""Tests for vsr_core.losses: offline VGG19 weight loading and perceptual/combined losses.

All fast, CPU-only, and nothing may download (network fetches are patched to fail).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg19

from vsr_core.losses import (
    LossTerms,
    PerceptualLoss,
    VGGWeightsUnavailable,
    combined_loss,
    imagenet_vgg19_cache_path,
    load_vgg19_features,
)

HUB_FILENAME = "vgg19-dcbb9e9d.pth"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests must never download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def reference_features() -> dict[str, torch.Tensor]:
    """features[:36] parameters of a seeded random vgg19, standing in for real weights."""
    torch.manual_seed(1234)
    return {k: v.clone() for k, v in vgg19(weights=None).features[:36].state_dict().items()}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, reference_features) -> dict[str, Path]:
    # Only feature keys are saved: a full vgg19 state dict is ~550 MB.
    directory = tmp_path_factory.mktemp("vgg_weights")
    features_only = directory / "features_only.pth"
    full_layout = directory / "full_layout.pth"
    torch.save(reference_features, features_only)
    torch.save({f"features.{k}": v for k, v in reference_features.items()}, full_layout)
    return {"features_only": features_only, "full_layout": full_layout}


@pytest.fixture(scope="module")
def perceptual_loss(reference_features) -> PerceptualLoss:
    features = vgg19(weights=None).features[:36]
    features.load_state_dict(reference_features)
    return PerceptualLoss(features=features)


def assert_params_equal(features: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = features.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


# --- weight loading ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["features_only", "full_layout"])
def test_load_from_explicit_path_both_key_layouts(weight_files, reference_features, layout):
    torch.manual_seed(999)  # make sure the pre-load random init differs from the reference
    features = load_vgg19_features(weights_path=weight_files[layout])
    assert isinstance(features, nn.Sequential)
    assert len(features) == 36
    assert_params_equal(features, reference_features)


def test_full_state_dict_with_classifier_keys_is_accepted(tmp_path, reference_features):
    state = {f"features.{k}": v for k, v in reference_features.items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # extra non-feature keys are ignored
    path = tmp_path / "with_classifier.pth"
    torch.save(state, path)
    assert_params_equal(load_vgg19_features(weights_path=str(path)), reference_features)


def test_missing_key_error_names_file(tmp_path, reference_features):
    state = dict(reference_features)
    del state["34.weight"]
    path = tmp_path / "incomplete.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="34.weight") as excinfo:
        load_vgg19_features(weights_path=path)
    assert str(path) in str(excinfo.value)


def test_shape_mismatch_error_names_file(tmp_path, reference_features):
    state = dict(reference_features)
    state["0.weight"] = torch.zeros(64, 1, 3, 3)
    path = tmp_path / "wrong_shape.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="0.weight") as excinfo:
        load_vgg19_features(weights_path=path)
    assert str(path) in str(excinfo.value)


def test_explicit_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(VGGWeightsUnavailable, match="nope.pth"):
        load_vgg19_features(weights_path=missing)


def test_torch_home_cache_is_found_and_loaded(monkeypatch, tmp_path, weight_files, reference_features):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # torch.hub.get_dir() reads TORCH_HOME at call time, not at import time.
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    expected = tmp_path / "hub" / "checkpoints" / HUB_FILENAME
    assert imagenet_vgg19_cache_path() == expected

    # The real cached file is a full vgg19 state dict ("features." prefix).
    expected.parent.mkdir(parents=True)
    expected.write_bytes(weight_files["full_layout"].read_bytes())
    assert_params_equal(load_vgg19_features("imagenet"), reference_features)


def test_missing_cache_raises_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / HUB_FILENAME
    with pytest.raises(VGGWeightsUnavailable) as excinfo:
        load_vgg19_features()
    message = str(excinfo.value)
    assert isinstance(excinfo.value, RuntimeError)
    assert str(expected) in message
    assert HUB_FILENAME in message
    assert "random" in message
    assert "VGG_WEIGHTS_PATH" in message and "--vgg-weights" in message


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="smoke tests"):
        features = load_vgg19_features("random")
    assert len(features) == 36


def test_random_with_path_is_rejected(weight_files):
    with pytest.raises(ValueError, match="random"):
        load_vgg19_features("random", weights_path=weight_files["features_only"])


@pytest.mark.parametrize("bad", ["IMAGENET1K_V1", "", "pretrained"])
def test_bad_weights_value(bad):
    with pytest.raises(ValueError) as excinfo:
        load_vgg19_features(bad)
    assert "'imagenet'" in str(excinfo.value) and "'random'" in str(excinfo.value)


# --- PerceptualLoss -----------------------------------------------------------


def test_vgg_is_frozen_and_stays_in_eval(perceptual_loss):
    assert all(not p.requires_grad for p in perceptual_loss.parameters())

    parent = nn.Module()
    parent.head = nn.Conv2d(3, 3, 3)
    parent.perceptual = perceptual_loss
    parent.train()
    assert parent.head.training
    assert perceptual_loss.training  # the wrapper follows its parent...
    assert all(not m.training for m in perceptual_loss.features.modules())  # ...VGG does not
    parent.eval()
    assert all(not m.training for m in perceptual_loss.features.modules())


def test_gradient_reaches_pred_but_not_vgg(perceptual_loss):
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 32, 32)
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss = perceptual_loss(pred, gt)
    assert loss.ndim == 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual_loss.parameters())


def test_identical_images_zero_and_different_positive(perceptual_loss):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert perceptual_loss(image, image.clone()).item() == 0.0
        assert perceptual_loss(image, torch.rand(2, 3, 32, 32)).item() > 0.0


def test_rejects_wrong_shapes(perceptual_loss):
    with pytest.raises(ValueError):
        perceptual_loss(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError):
        perceptual_loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 16, 16))


def test_random_weights_constructor_warns():
    with pytest.warns(UserWarning):
        loss = PerceptualLoss(weights="random")
    assert not loss.features.training


# --- combined_loss ----------------------------------------------------------------


def test_combined_loss_total(perceptual_loss):
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 32, 32)
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    terms = combined_loss(pred, gt, perceptual_loss, perceptual_weight=0.1)
    assert isinstance(terms, LossTerms)
    assert torch.allclose(terms.l1, F.l1_loss(pred, gt))
    assert torch.allclose(terms.perceptual, perceptual_loss(pred, gt))
    assert torch.allclose(terms.total, terms.l1 + 0.1 * terms.perceptual)
    assert terms.perceptual.item() > 0
    terms.total.backward()
    assert pred.grad is not None


def test_combined_loss_weight_zero_skips_vgg(perceptual_loss):
    calls = []
    handle = perceptual_loss.register_forward_hook(lambda *args: calls.append(1))
    try:
        gt = torch.rand(1, 3, 32, 32)
        pred = torch.rand(1, 3, 32, 32)
        terms = combined_loss(pred, gt, perceptual_loss, perceptual_weight=0.0)
        terms_without_module = combined_loss(pred, gt, None, perceptual_weight=0)
    finally:
        handle.remove()
    assert calls == []
    for t in (terms, terms_without_module):
        assert t.perceptual.item() == 0.0
        assert torch.equal(t.total, t.l1)


def test_combined_loss_needs_module_when_weighted():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError):
        combined_loss(x, x, None, perceptual_weight=0.1)
