import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def make_clip(num_frames: int = 9, height: int = 24, width: int = 30, seed: int = 0) -> np.ndarray:
    """A small synthetic clip with structure (moving gradients + noise), uint8 [T,H,W,3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(num_frames):
        r = 127 + 100 * np.sin((xx + 2 * t) / 5.0)
        g = 127 + 100 * np.cos((yy - t) / 4.0)
        b = 127 + 80 * np.sin((xx + yy + 3 * t) / 7.0)
        frame = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, (height, width, 3))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture
def clip() -> np.ndarray:
    return make_clip()
