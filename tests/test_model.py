import math

import pytest
import torch

from conftest import random_model
from vsr_core.archs import PRESETS, VSRPPPv2, count_parameters


@pytest.mark.parametrize("height,width", [(1, 1), (7, 5), (13, 10)])
def test_output_shape_for_any_size(height, width):
    model = VSRPPPv2.from_preset("tiny").eval()
    frames = torch.rand(2, 5, 3, height, width)
    with torch.no_grad():
        out = model(frames)
    assert out.shape == (2, 3, 3 * height, 3 * width)
    assert torch.isfinite(out).all()


def test_untrained_output_is_the_bilinear_anchor():
    # The last conv starts at zero, so an untrained model is bilinear upsampling of the center frame.
    model = VSRPPPv2.from_preset("small").eval()
    frames = torch.rand(1, 5, 3, 9, 11)
    with torch.no_grad():
        out = model(frames)
    anchor = torch.nn.functional.interpolate(frames[:, 2], scale_factor=3, mode="bilinear", align_corners=False)
    assert torch.allclose(out, anchor)


def test_rejects_wrong_window_shape():
    model = VSRPPPv2.from_preset("tiny")
    with pytest.raises(ValueError, match=r"\[B,5,3,H,W\]"):
        model(torch.rand(1, 4, 3, 8, 8))


def test_full_preset_has_about_5_1m_parameters_and_30_blocks():
    model = VSRPPPv2.from_preset("full")
    # 30 HeavyBlocks x 2 conv3x3(96->96) + extraction, 2 fuse 1x1, fusion, upsampling, 3 logits.
    assert count_parameters(model) == 5_128_542
    assert len(model.heavy_blocks) == 30


def test_layer_activity_30_values_in_unit_interval():
    model = VSRPPPv2.from_preset("full").eval()
    with torch.no_grad():
        model(torch.rand(1, 5, 3, 6, 7))
    activity = model.layer_activity()
    assert len(activity) == 30
    assert all(0.0 <= a <= 1.0 for a in activity)
    # Fresh ReLU blocks: roughly half the hidden units fire; not all 0 or all 1.
    assert 0.05 < sum(activity) / 30 < 0.95


def test_layer_activity_matches_a_direct_count():
    model = VSRPPPv2.from_preset("tiny").eval()
    frames = torch.rand(1, 5, 3, 8, 8)
    with torch.no_grad():
        model(frames)
        feats = model.extract_features(frames)
        fused = model.backward_fuse(torch.cat([feats[:, 3], feats[:, 4]], dim=1))
        hidden = torch.relu(model.backward_blocks[0].conv1(fused))
    assert model.layer_activity()[0] == pytest.approx((hidden > 0).float().mean().item())


def test_activity_tracking_can_be_switched_off():
    model = VSRPPPv2.from_preset("tiny").eval()
    model.set_activity_tracking(False)
    with torch.no_grad():
        model(torch.rand(1, 5, 3, 8, 8))
    assert all(math.isnan(a) for a in model.layer_activity())
    model.set_activity_tracking(True)
    with torch.no_grad():
        model(torch.rand(1, 5, 3, 8, 8))
    assert not any(math.isnan(a) for a in model.layer_activity())


def test_temporal_weights_are_softmax_normalised():
    model = VSRPPPv2.from_preset("tiny")
    with torch.no_grad():
        model.temporal_logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
    stats = model.frame_stats
    assert set(stats) == {"backward", "center", "forward"}
    assert sum(stats.values()) == pytest.approx(1.0)
    assert stats["backward"] > stats["forward"] > stats["center"] > 0


def test_temporal_weights_receive_gradients():
    model = random_model("tiny").train()
    model(torch.rand(1, 5, 3, 6, 6)).mean().backward()
    assert model.temporal_logits.grad is not None and model.temporal_logits.grad.abs().sum() > 0


def test_unknown_preset_names_allowed_values():
    with pytest.raises(ValueError, match="allowed"):
        VSRPPPv2.from_preset("huge")
    assert {"full", "small", "tiny"} <= set(PRESETS)
