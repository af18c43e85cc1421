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


def random_model(preset: str = "tiny", seed: int = 0):
    """A model whose output depends on all 5 frames (the last conv is zero at init)."""
    from vsr_core.archs import VSRPPPv2

    torch.manual_seed(seed)
    model = VSRPPPv2.from_preset(preset)
    torch.nn.init.normal_(model.upsample[0].weight, std=0.05)
    with torch.no_grad():
        model.temporal_logits.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return model.eval()


@pytest.fixture
def clip() -> np.ndarray:
    return make_clip()


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole test session (starting Ray costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=256 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
