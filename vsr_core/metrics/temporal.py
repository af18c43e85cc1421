"""Temporal consistency of an upscaled clip against its ground truth: tOF and flicker.

PSNR and SSIM score each frame on its own, so they cannot see an output that shimmers or
flickers from frame to frame while every single frame looks fine. Both measures here compare
how the output *changes* between consecutive frames with how the ground truth changes.
Lower is better; an output identical to the ground truth scores 0.

Conventions shared by every function in this module:

* A clip is a sequence of frames in playback order; pair t compares frame t-1 with frame t,
  for t = 1..T-1, and a clip's score is the plain mean over its T-1 pairs. At least 2 frames.
* Frames are HxWx3 **RGB** arrays (``outputs[t]`` and ``gts[t]`` of one shape, the same for all t)
  at the HR size. ``tof`` needs ``uint8`` frames; ``flicker`` takes uint8 or float in [0, 255].
* ``crop_border`` removes that many pixels from each side, as in ``psnr_ssim``
  (typically ``crop_border = scale``).

**tOF** (TecoGAN: Chu et al., "Learning Temporal Coherence via Self-Supervision for GAN-based
Video Generation", 2020, and its ``metrics.py``). For each pair, each frame is converted to
grayscale by OpenCV (``cv2.COLOR_RGB2GRAY``: ``0.299 R + 0.587 G + 0.114 B``, rounded to uint8);
the dense optical flow from frame t-1 to frame t is ``cv2.calcOpticalFlowFarneback(prev, cur,
None, 0.5, 3, 15, 3, 5, 1.2, 0)`` (pyramid scale 0.5, 3 levels, window 15, 3 iterations,
poly_n 5, poly_sigma 1.2, no flags), once for the output and once for the ground truth, on the
whole frames; then ``crop_border`` is removed from both flow fields, and the pair's value is the
mean over pixels of the Euclidean (L2) length of the difference of the two flow vectors. Units:
pixels of the HR frame (per frame step). Unlike TecoGAN's script, the border crop is
``crop_border`` instead of its centered multiple-of-32 crop, and no frame at the clip's ends is
skipped (TecoGAN drops 2 at each end of its test sequences).

**Flicker**: ``mean |(Y(out_t) - Y(out_t-1)) - (Y(gt_t) - Y(gt_t-1))|`` over the pixels of each
pair (after ``crop_border``), with Y the BT.601 luma of ``rgb_to_y`` (values in [16, 235] on the
[0, 255] scale; the unit is one gray level). A constant error (an output that is off by the same
amount in every frame) does not count; a change the ground truth does not have does, such as
brightness jitter, which tOF can barely see.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vsr_core.metrics.psnr_ssim import rgb_to_y

__all__ = ["optical_flow", "clip_flows", "tof_pair", "flicker_pair", "tof", "flicker"]

# TecoGAN's calcOpticalFlowFarneback arguments after (prev, next, flow)
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _check_frame(frame: np.ndarray, what: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{what}: expected an HxWx3 RGB frame, got shape {frame.shape}")
    return frame


def _check_pair(out_prev, out_cur, gt_prev, gt_cur) -> list[np.ndarray]:
    named = ((out_prev, "output t-1"), (out_cur, "output t"), (gt_prev, "ground truth t-1"), (gt_cur, "ground truth t"))
    frames = [_check_frame(frame, name) for frame, name in named]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frame shapes differ (output t-1, t, ground truth t-1, t): {[f.shape for f in frames]}")
    return frames


def _crop(x: np.ndarray, crop_border: int) -> np.ndarray:
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        x = x[crop_border:-crop_border, crop_border:-crop_border]
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"crop_border={crop_border} leaves an empty image")
    return x


def optical_flow(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Farneback flow (TecoGAN's parameters) from uint8 RGB frame ``prev`` to ``cur``: HxWx2
    float32, ``[..., 0]`` horizontal and ``[..., 1]`` vertical, in pixels, such that
    ``prev[y, x] ~ cur[y + flow[y, x, 1], x + flow[y, x, 0]]`` (content moving right gives x > 0)."""
    grays = []
    for frame, what in ((prev, "previous frame"), (cur, "current frame")):
        frame = _check_frame(frame, what)
        if frame.dtype != np.uint8:
            raise ValueError(f"{what}: optical flow needs uint8 frames, got {frame.dtype}")
        grays.append(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY))
    if grays[0].shape != grays[1].shape:
        raise ValueError(f"frame shapes differ: {prev.shape} vs {cur.shape}")
    return cv2.calcOpticalFlowFarneback(grays[0], grays[1], None, **FARNEBACK_PARAMS)


def tof_pair(out_prev, out_cur, gt_prev, gt_cur, crop_border: int = 0, gt_flow: np.ndarray | None = None) -> float:
    """tOF of one frame pair: mean L2 distance between the output's and the ground truth's flow
    from t-1 to t, in HR pixels (see the module docstring). ``gt_flow``: ``optical_flow(gt_prev,
    gt_cur)`` when already computed (it does not depend on the output)."""
    out_prev, out_cur, gt_prev, gt_cur = _check_pair(out_prev, out_cur, gt_prev, gt_cur)
    _crop(out_prev, crop_border)  # fail before the expensive flows
    if gt_flow is None:
        gt_flow = optical_flow(gt_prev, gt_cur)
    elif gt_flow.shape != (*out_prev.shape[:2], 2):
        raise ValueError(f"the ground truth's flow has shape {gt_flow.shape}, the frames {out_prev.shape}")
    diff = _crop(optical_flow(out_prev, out_cur), crop_border) - _crop(gt_flow, crop_border)
    return float(np.sqrt(np.sum(diff.astype(np.float64) ** 2, axis=-1)).mean())


def clip_flows(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``optical_flow(frames[t-1], frames[t])`` for t = 1..T-1: a ground truth's flows, computed once
    for the ``tof`` of several outputs of the same frames."""
    return [optical_flow(frames[t - 1], frames[t]) for t in range(1, len(frames))]


def flicker_pair(out_prev, out_cur, gt_prev, gt_cur, crop_border: int = 0) -> float:
    """Flicker of one frame pair: mean |change of the output's Y - change of the ground truth's Y|."""
    out_prev, out_cur, gt_prev, gt_cur = (_crop(rgb_to_y(f), crop_border)
                                          for f in _check_pair(out_prev, out_cur, gt_prev, gt_cur))
    return float(np.abs((out_cur - out_prev) - (gt_cur - gt_prev)).mean())


def _mean_over_pairs(pair_metric, outputs: Sequence[np.ndarray], gts: Sequence[np.ndarray], crop_border: int) -> float:
    if len(outputs) != len(gts):
        raise ValueError(f"need as many output frames as ground-truth frames, got {len(outputs)} and {len(gts)}")
    if len(outputs) < 2:
        raise ValueError(f"a temporal metric needs at least 2 consecutive frames, got {len(outputs)}")
    return float(np.mean([pair_metric(outputs[t - 1], outputs[t], gts[t - 1], gts[t], crop_border)
                          for t in range(1, len(outputs))]))


def tof(outputs: Sequence[np.ndarray], gts: Sequence[np.ndarray], crop_border: int = 0,
        gt_flows: Sequence[np.ndarray] | None = None) -> float:
    """tOF of a clip: the mean of ``tof_pair`` over its consecutive frame pairs (uint8 RGB frames).
    ``gt_flows``: ``clip_flows(gts)`` when already computed."""
    if gt_flows is not None and len(gt_flows) != len(gts) - 1:
        raise ValueError(f"need {len(gts) - 1} ground-truth flows for {len(gts)} frames, got {len(gt_flows)}")
    flows = iter(gt_flows if gt_flows is not None else [])

    def pair(out_prev, out_cur, gt_prev, gt_cur, crop_border: int) -> float:
        return tof_pair(out_prev, out_cur, gt_prev, gt_cur, crop_border, next(flows, None))

    return _mean_over_pairs(pair, outputs, gts, crop_border)


def flicker(outputs: Sequence[np.ndarray], gts: Sequence[np.ndarray], crop_border: int = 0) -> float:
    """Flicker of a clip: the mean of ``flicker_pair`` over its consecutive frame pairs."""
    return _mean_over_pairs(flicker_pair, outputs, gts, crop_border)
