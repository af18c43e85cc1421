"""The backend and precision choice gives the same frames through `vsr upscale` (frame folders,
no lossy codec) and through the Serve window endpoint, and /v1/model shows the choice."""
from __future__ import annotations

import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import requests

from conftest import make_clip
from test_serve import Server, decode_png, free_port, max_diff
from vsr_core.inference import Upscaler

pytestmark = pytest.mark.ray

TRAINED_SMALL = Path(__file__).parent / "data" / "small_60steps.pth"
H, W = 24, 30


class ChoiceServer(Server):
    """test_serve's app with ``precision`` / ``backend`` in its user_config."""

    def serve(self, **choice) -> dict:
        self.extra = choice
        self.deploy(self.checkpoints["small"])
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                info = requests.get(self.url + "/v1/model", timeout=10).json()
                if info.get("backend") == choice["backend"] and info.get("reload_error") is None and \
                        choice["precision"] in ("auto", info.get("precision")):
                    return info
            except (requests.RequestException, ValueError):  # starting up (slow on a busy machine)
                pass
            time.sleep(0.3)
        pytest.fail(f"{choice} not served after 240 s")


@pytest.fixture(scope="module")
def server(ray_session):
    from ray import serve

    srv = ChoiceServer(free_port(), {"small": TRAINED_SMALL})
    yield srv
    try:
        serve.delete("vsr")
    finally:
        serve.shutdown()


def cli_frames(tmp_path: Path, clip: np.ndarray, *options: str) -> np.ndarray:
    from vsr_core.cli import main

    source, target = tmp_path / "in", tmp_path / f"out{'_'.join(options)}"
    source.mkdir(exist_ok=True)
    for i, frame in enumerate(clip):
        iio.imwrite(source / f"{i:03d}.png", frame)
    assert main(["upscale", str(source), str(target), "--checkpoint", str(TRAINED_SMALL), "--device", "cpu",
                 *options]) == 0
    return np.stack([iio.imread(path) for path in sorted(target.glob("*.png"))])


def test_cli_and_serve_give_the_same_frames_per_backend(server, tmp_path):
    clip = make_clip(5, H, W, seed=21)  # frame 2's window is the clip itself: what the endpoint gets
    reference = Upscaler.from_checkpoint(TRAINED_SMALL, device="cpu", precision="fp32").upscale_window_uint8(clip)

    info = server.serve(backend="onnxruntime", precision="auto")
    assert (info["precision"], info["backend"], info["window_backend"]) == ("fp32", "onnxruntime", "onnxruntime")
    window = decode_png(server.post_window(clip))
    cli = cli_frames(tmp_path, clip, "--backend", "onnxruntime")
    assert max_diff(window, cli[2]) <= 1 and max_diff(window, reference) <= 1

    # torch-compile is for video jobs: windows run eagerly (no compile in any window request)
    info = server.serve(backend="torch-compile", precision="bf16")
    assert (info["precision"], info["backend"], info["window_backend"]) == ("bf16", "torch-compile", "torch")
    started = time.perf_counter()
    response = server.post_window(clip)
    assert response.status_code == 200 and time.perf_counter() - started < 20  # a compile takes 30-60 s
    window = decode_png(response)
    cli = cli_frames(tmp_path, clip, "--precision", "bf16")
    assert max_diff(window, cli[2]) <= 1
    assert 0 < max_diff(window, reference) <= 3  # bf16 ran, and is close to fp32
