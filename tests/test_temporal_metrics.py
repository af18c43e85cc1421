"""tOF and flicker (vsr_core/metrics/temporal.py) on hand-made clips whose answer is known, and in
`evaluate_frames` against the same metrics computed on independently upscaled frames."""
import cv2
import numpy as np
import pytest

from conftest import make_clip
from vsr_core.data.degradation import bicubic_upsample, crop_to_scale
from vsr_core.evaluate import degrade_frame, evaluate_frames
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.inference import Upscaler
from vsr_core.metrics.temporal import clip_flows, flicker, optical_flow, tof

DX, DY = 2, 1  # the moving scene's shift per frame, in pixels (right, down)


def texture(height: int = 200, width: int = 240, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (Gaussian-blurred noise) in [30, 220]: Farneback tracks it well,
    and a +-8 brightness change never clips."""
    noise = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 3)
    return np.clip((noise - noise.mean()) / noise.std() * 35 + 128, 30, 220).astype(np.uint8)


def moving_scene(frames: int = 5, height: int = 96, width: int = 120) -> list[np.ndarray]:
    """A window over the texture moving up-left, so the content moves DX right and DY down per frame."""
    big = texture()
    return [big[40 - DY * t : 40 - DY * t + height, 40 - DX * t : 40 - DX * t + width] for t in range(frames)]


def blurred(frames: list[np.ndarray]) -> list[np.ndarray]:
    """A steady but imperfect 'output': every frame softened the same way."""
    return [cv2.GaussianBlur(f, (0, 0), 1.5) for f in frames]


def jittered(frames: list[np.ndarray], amount: int = 8) -> list[np.ndarray]:
    """Brightness flicker: -amount, +amount, -amount, ... gray levels on every channel."""
    return [(f.astype(np.int16) + (amount if t % 2 else -amount)).astype(np.uint8) for t, f in enumerate(frames)]


def test_a_static_scene_scores_zero():
    still = [texture(96, 120)] * 4
    assert tof(still, still) == 0.0 and flicker(still, still) == 0.0
    # an imperfect output that does not change either: no temporal error, whatever its PSNR
    assert tof(blurred(still), still, 3) < 1e-3
    assert flicker(blurred(still), still, 3) == 0.0


def test_a_flickering_output_scores_worse_than_a_steady_one():
    still = [texture(96, 120)] * 4
    steady, flickering = blurred(still), jittered(blurred(still))
    # each pair changes by +-16 levels on R, G and B: Y changes by 16 * (65.481 + 128.553 + 24.966) / 255
    assert flicker(flickering, still, 3) == pytest.approx(16 * 219 / 255, abs=1e-9)
    assert flicker(steady, still, 3) == 0.0
    assert tof(flickering, still, 3) >= tof(steady, still, 3)  # a global brightness change moves nothing
    moving = moving_scene()
    steady, flickering = blurred(moving), jittered(blurred(moving))
    assert flicker(flickering, moving, 3) > flicker(steady, moving, 3) + 10
    # details that shimmer (fresh noise every frame) disturb the motion too: both measures see it
    rng = np.random.default_rng(1)
    shimmering = [np.clip(f + rng.normal(0, 6, f.shape), 0, 255).astype(np.uint8) for f in steady]
    assert tof(shimmering, moving, 3) > 3 * tof(steady, moving, 3)
    assert flicker(shimmering, moving, 3) > flicker(steady, moving, 3) + 1


def test_the_flow_of_a_known_shift_and_the_tof_of_a_frozen_output():
    moving = moving_scene()
    flow = optical_flow(moving[0], moving[1])
    assert flow.shape == (96, 120, 2) and flow.dtype == np.float32
    inside = flow[8:-8, 8:-8]  # the content entering at the edges has no match in the previous frame
    np.testing.assert_allclose(inside.reshape(-1, 2).mean(axis=0), [DX, DY], atol=0.02)
    assert np.abs(inside - [DX, DY]).max() < 0.25
    np.testing.assert_allclose(optical_flow(moving[1], moving[0])[8:-8, 8:-8].mean(axis=(0, 1)), [-DX, -DY], atol=0.02)

    assert tof(moving, moving, 3) == 0.0  # the output moves exactly like the ground truth
    frozen = [moving[0]] * len(moving)  # an output that does not move: its flow is 0
    assert tof(frozen, moving, 3) == pytest.approx(np.hypot(DX, DY), abs=0.05)
    # the ground truth's flows computed once (as validation does) give the same number
    assert tof(frozen, moving, 3, gt_flows=clip_flows(moving)) == tof(frozen, moving, 3)


def test_degenerate_input_gets_a_clear_error():
    moving = moving_scene(3)
    for metric in (tof, flicker):
        with pytest.raises(ValueError, match="at least 2 consecutive frames, got 1"):
            metric(moving[:1], moving[:1])
        with pytest.raises(ValueError, match="as many output frames as ground-truth frames, got 3 and 2"):
            metric(moving, moving[:2])
        with pytest.raises(ValueError, match=r"frame shapes differ .*\(96, 120, 3\).*\(96, 118, 3\)"):
            metric(moving, [f[:, :118] for f in moving])
        with pytest.raises(ValueError, match=r"frame shapes differ"):  # a frame of another size inside the clip
            metric([moving[0], moving[1][:90]], [moving[0], moving[1][:90]])
        with pytest.raises(ValueError, match=r"HxWx3 RGB frame, got shape \(96, 120\)"):
            metric([f[..., 0] for f in moving], [f[..., 0] for f in moving])
        with pytest.raises(ValueError, match="crop_border=60 leaves an empty image"):
            metric(moving, moving, 60)
    with pytest.raises(ValueError, match="need 2 ground-truth flows for 3 frames, got 1"):
        tof(moving, moving, gt_flows=clip_flows(moving)[:1])
    with pytest.raises(ValueError, match=r"ground truth's flow has shape \(48, 60, 2\), the frames \(96, 120, 3\)"):
        tof(moving, moving, gt_flows=[f[::2, ::2] for f in clip_flows(moving)])
    with pytest.raises(ValueError, match="optical flow needs uint8 frames, got float64"):
        tof([f.astype(np.float64) for f in moving], moving)
    assert flicker([f.astype(np.float64) for f in moving], moving) == 0.0  # flicker takes float frames


def test_evaluate_frames_scores_the_clip_it_upscales():
    clip = make_clip(num_frames=6, height=36, width=42)
    scores, _ = evaluate_frames(Upscaler.bicubic(device="cpu"), iter(clip), "clip")
    # independently: each frame degraded and interpolated on its own
    hrs = [crop_to_scale(f) for f in clip]
    srs = [to_uint8(bicubic_upsample(to_tensor(degrade_frame(hr))[None]))[0] for hr in hrs]
    assert scores.frames == 6
    assert scores.tof == pytest.approx(tof(srs, hrs, 3), rel=1e-9)
    assert scores.flicker == pytest.approx(flicker(srs, hrs, 3), rel=1e-9)
    assert scores.tof > 0 and scores.flicker > 0  # bicubic cannot follow the noise
    single, _ = evaluate_frames(Upscaler.bicubic(device="cpu"), iter(clip[:1]), "one")
    assert single.tof is None and single.flicker is None and single.frames == 1
