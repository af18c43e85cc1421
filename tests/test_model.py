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


def _reference_forward(model, frames):
    """The model's formula as the seed wrote it (PixelShuffle of the residual + bilinear
    interpolation of the center frame over the 3x frame), in float64: an independent reference
    for the sub-pixel path the model runs."""
    from vsr_core.archs.vsrppp_v2 import CENTER

    model = model.double()
    frames = frames.double()
    feats = model.extract_features(frames)
    backward = model.backward_blocks(model.backward_fuse(torch.cat([feats[:, 3], feats[:, 4]], dim=1)))
    forward = model.forward_blocks(model.forward_fuse(torch.cat([feats[:, 0], feats[:, 1]], dim=1)))
    w = torch.softmax(model.temporal_logits, dim=0)
    weighted = backward * w[0] + feats[:, CENTER] * w[1] + forward * w[2]
    residual = model.upsample(model.fusion(weighted))
    return residual + torch.nn.functional.interpolate(frames[:, CENTER], scale_factor=3, mode="bilinear",
                                                      align_corners=False)


@pytest.mark.parametrize("height,width", [(1, 1), (4, 7), (45, 80)])
def test_forward_matches_the_seed_formula_within_float_rounding(height, width):
    import copy

    model = random_model("tiny", seed=5)
    torch.nn.init.normal_(model.upsample[0].bias, std=0.05)
    frames = torch.rand(2, 5, 3, height, width)
    with torch.no_grad():
        got = model(frames)
        expected = _reference_forward(copy.deepcopy(model), frames)  # the same weights in float64
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (9, 11), (180, 320)])
def test_the_anchor_at_lr_resolution_is_bilinear_upsampling(height, width):
    from vsr_core.archs.subpixels import bilinear_subpixels, shuffle_subpixels

    frames = torch.rand(2, 3, height, width)
    exact = torch.nn.functional.interpolate(frames.double(), scale_factor=3, mode="bilinear", align_corners=False)
    got = shuffle_subpixels(bilinear_subpixels(frames)).permute(0, 3, 1, 2)
    assert (got.double() - exact).abs().max() < 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the anchor stays fp32 under autocast
        under_autocast = bilinear_subpixels(frames)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(shuffle_subpixels(under_autocast).permute(0, 3, 1, 2), got)


def test_subpixel_channels_are_pixel_shuffle_channels_reordered():
    from vsr_core.archs.subpixels import ORDER, shuffle_subpixels

    assert sorted(ORDER) == list(range(27))
    subpixels = torch.rand(2, 27, 4, 5)
    in_pixel_shuffle_order = torch.empty_like(subpixels)
    in_pixel_shuffle_order[:, list(ORDER)] = subpixels
    expected = torch.nn.functional.pixel_shuffle(in_pixel_shuffle_order, 3)  # [B,3,3H,3W]
    assert torch.equal(shuffle_subpixels(subpixels).permute(0, 3, 1, 2), expected)


def test_checkpoints_keep_their_keys():
    # the anchor's fixed filter is no parameter or buffer: state dicts are what they were
    keys = set(VSRPPPv2.from_preset("tiny").state_dict())
    assert "upsample.0.weight" in keys and "upsample.0.bias" in keys
    assert not [k for k in keys if "bilinear" in k or "anchor" in k]


def _parameters_of_the_diagram(c: int, n: int) -> int:
    """The architecture's parameter count written out from the diagram (an independent count)."""
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731 (weights + bias)
    return (conv(3, c, 3) + 2 * conv(2 * c, c, 1) + 2 * n * 2 * conv(c, c, 3) + 3 + conv(c, c, 3)
            + conv(c, 27, 3))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_the_same_diagram(preset):
    model = VSRPPPv2.from_preset(preset)
    spec = PRESETS[preset]
    assert count_parameters(model) == _parameters_of_the_diagram(spec.channels, spec.blocks_per_branch)
    assert len(model.heavy_blocks) == 2 * spec.blocks_per_branch


def test_the_realtime_preset():
    from vsr_core.config import TrainConfig

    model = VSRPPPv2.from_preset("realtime").eval()
    assert (model.spec.channels, model.spec.blocks_per_branch) == (16, 1)
    assert count_parameters(model) == 17_022  # 0.1x small's 170,078
    with torch.no_grad():
        out = model(torch.rand(2, 5, 3, 18, 32))
    assert out.shape == (2, 3, 54, 96)
    assert len(model.layer_activity()) == 2
    assert TrainConfig(preset="realtime", train_data=["a.mp4"]).preset == "realtime"  # a training config accepts it
