"""The inference path as it was before the speed work (the "before" of benchmarks/README.md),
kept so that every speed-up is measured side by side with it in the same run.

Differences from vsr_core.inference today: NCHW activations, out-of-place ReLU and residual
add, and every window runs the whole model (no per-frame feature reuse in streams).
Same weights, same outputs (up to float rounding).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vsr_core.archs import CENTER, SCALE
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.frames import window_indices


def _blocks(blocks, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        hidden = F.relu(block.conv1(x))
        if block.track_activity:
            block.last_activity = (hidden.detach() > 0).float().mean()
        x = x + block.conv2(hidden)
    return x


def legacy_forward(model, frames: torch.Tensor) -> torch.Tensor:
    """VSRPPPv2.forward as it was: [B,5,3,H,W] -> [B,3,3H,3W], NCHW throughout."""
    b, t, _, h, w = frames.shape
    feats = model.feature_extract(frames.reshape(b * t, 3, h, w).contiguous()).reshape(b, t, -1, h, w)
    backward = _blocks(model.backward_blocks, model.backward_fuse(torch.cat([feats[:, 3], feats[:, 4]], dim=1)))
    forward = _blocks(model.forward_blocks, model.forward_fuse(torch.cat([feats[:, 0], feats[:, 1]], dim=1)))
    w = torch.softmax(model.temporal_logits, dim=0)
    weighted = backward * w[0] + feats[:, CENTER] * w[1] + forward * w[2]
    residual = model.upsample(model.fusion(weighted))
    anchor = F.interpolate(frames[:, CENTER], scale_factor=SCALE, mode="bilinear", align_corners=False)
    return residual + anchor


class LegacyUpscaler:
    """Upscaler.upscale_windows / stream as they were (CPU, no tiling)."""

    def __init__(self, model, batch_size: int = 4):
        self.model = model.eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def upscale_windows(self, windows: torch.Tensor) -> torch.Tensor:
        return legacy_forward(self.model, windows).float().clamp_(0, 1)

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        buffer: dict[int, torch.Tensor] = {}
        source = iter(frames)
        num_read, next_out, total = 0, 0, None
        while True:
            while total is None and num_read < next_out + self.batch_size + CENTER:
                frame = next(source, None)
                if frame is None:
                    total = num_read
                    break
                buffer[num_read] = to_tensor(frame)
                num_read += 1
            ready = total if total is not None else num_read - CENTER
            centers = range(next_out, min(next_out + self.batch_size, ready))
            if not centers:
                return
            n = total if total is not None else 2 ** 62
            windows = torch.stack([torch.stack([buffer[j] for j in window_indices(c, n)]) for c in centers])
            yield from to_uint8(self.upscale_windows(windows))
            next_out = centers[-1] + 1
            for j in [j for j in buffer if j < next_out - CENTER]:
                del buffer[j]
