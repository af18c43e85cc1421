"""The Ray Serve app over real HTTP: correctness against the in-process Upscaler, the
npy and video paths, every bad input -> a JSON 4xx (and the replica keeps serving),
and a hot swap under load with zero failed requests.

The app is deployed from serve/config.yaml (test limits, 0.5 CPU, one replica) the way
`serve run serve/config.yaml` does it, so redeploying with a new user_config is an
in-place `reconfigure`, exactly like `serve deploy` in production.
"""
from __future__ import annotations

import io
import json
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

import ray  # noqa: E402

_RAY_UP_BEFORE_IMPORT = ray.is_initialized()
import serve.app as serve_app  # noqa: E402

_RAY_UP_AFTER_IMPORT = ray.is_initialized()

from conftest import make_clip, random_model, ray_processes  # noqa: E402
from vsr_core.checkpoint import BestInfo, save_checkpoint, write_best  # noqa: E402
from vsr_core.data.video_io import FrameWriter, probe_video, read_frames  # noqa: E402
from vsr_core.inference import Upscaler, upscale_grouped  # noqa: E402
from vsr_core.netutil import free_port  # noqa: E402,F401 (test_reliability_serve and test_jobs import it from here)

pytestmark = pytest.mark.ray

APP_NAME = "vsr"
LIMITS = {"max_body_bytes": 512 * 1024, "max_pixels_per_frame": 64 * 64, "max_video_frames": 12,
          "max_stream_frames": 12, "stream_idle_timeout_s": 3.0}
H, W = 24, 30


# --- helpers -----------------------------------------------------------------------------
def save_test_checkpoint(path: Path, seed: int, step: int) -> Path:
    model = random_model("tiny", seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return save_checkpoint(
        {
            "step": step,
            "epoch": step // 50,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scaler_state_dict": scaler.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "config": {"PRESET": "tiny"},
            "training_phase": "pretrain",
        },
        path,
    )


def png_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (gray HxW or RGB HxWx3) written by hand: Pillow cannot write 16-bit RGB."""
    h, w = array.shape[:2]
    color_type = 0 if array.ndim == 2 else 2
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def frame_files(blobs: list[bytes], ext: str = "png") -> list:
    return [("frames", (f"f{i}.{ext}", blob, "application/octet-stream")) for i, blob in enumerate(blobs)]


def decode_png(response: requests.Response) -> np.ndarray:
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())




def replica_pid() -> int:
    """The pid of the one replica process of this session (the API does not reveal pids)."""
    pids = [p.pid for p in ray_processes("ServeReplica:vsr:VSRUpscaler")]
    assert len(pids) == 1, pids
    return pids[0]


class Server:
    def __init__(self, port: int, checkpoints: dict[str, Path]):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.checkpoints = checkpoints
        self.jobs_dir = tempfile.mkdtemp(prefix="vsr-test-jobs-")
        self.extra: dict = {}  # more user_config keys for the next deploy (a test's own limits, keys, choices)

    def config(self, checkpoint: Path) -> dict:
        """serve/config.yaml with the test's port, resources, limits, checkpoint and ``extra``."""
        config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        (app,) = config["applications"]
        assert app["name"] == APP_NAME and app["import_path"] == "serve.app:app"
        (deployment,) = app["deployments"]
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
        deployment["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}
        deployment["user_config"].update(LIMITS, checkpoint=str(checkpoint), batch_wait_timeout_s=0.05,
                                         jobs_dir=self.jobs_dir, job_workers=1)
        deployment["user_config"].update(self.extra)
        return config

    def deploy(self, checkpoint: Path) -> None:
        from ray.serve._private.api import serve_start  # what `serve run config.yaml` uses
        from ray.serve.schema import ServeDeploySchema

        client = serve_start(http_options={"host": "127.0.0.1", "port": self.port})
        client.deploy_apps(ServeDeploySchema.model_validate(self.config(checkpoint)), _blocking=False)

    def wait_for_step(self, step: int, timeout: float = 60) -> dict:
        from ray import serve

        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            status = serve.status().applications.get(APP_NAME)
            if status is not None and status.status == "DEPLOY_FAILED":
                pytest.fail(f"deploy failed: {status.message}")
            try:
                last = requests.get(self.url + "/v1/model", timeout=5)
                if last.status_code == 200 and last.json()["step"] == step:
                    return last.json()
            except requests.RequestException:  # not up yet (a proxy may also time out while a replica starts)
                pass
            time.sleep(0.2)
        pytest.fail(f"model step {step} not served after {timeout}s; last: {last and last.text}")

    def post_window(self, window: np.ndarray, **kwargs) -> requests.Response:
        return requests.post(self.url + "/v1/upscale", files=frame_files([png_bytes(f) for f in window]), timeout=60,
                             **kwargs)


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_ckpts")
    run_a = root / "run_a"
    save_test_checkpoint(run_a / "latest.pth", seed=1, step=100)
    best = root / "sweep" / "best"
    save_test_checkpoint(best / "trial_7.pth", seed=2, step=200)
    write_best(best, BestInfo(checkpoint_file="trial_7.pth", metrics={"psnr_y": 31.25, "ssim_y": 0.91},
                              trial_id="trial_7"))
    return {"a": run_a, "b": best}


@pytest.fixture(scope="module")
def upscalers(checkpoints) -> dict[str, Upscaler]:
    return {name: Upscaler.from_checkpoint(path, device="cpu") for name, path in checkpoints.items()}


@pytest.fixture(scope="module")
def server(ray_session, checkpoints):
    from ray import serve

    srv = Server(free_port(), checkpoints)
    srv.deploy(checkpoints["a"])
    srv.wait_for_step(100)
    yield srv
    try:
        serve.delete(APP_NAME)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def window() -> np.ndarray:
    return make_clip(5, H, W, seed=3)


def assert_good_request(server: Server, window: np.ndarray, upscaler: Upscaler) -> None:
    response = server.post_window(window)
    assert response.status_code == 200, response.text
    assert max_diff(decode_png(response), upscaler.upscale_window_uint8(window)) <= 1


# --- no server ---------------------------------------------------------------------------------
def test_import_starts_nothing():
    assert _RAY_UP_BEFORE_IMPORT or not _RAY_UP_AFTER_IMPORT
    assert isinstance(serve_app.app, ray.serve.Application)


def test_config_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    assert config.http_options.host == "127.0.0.1" and config.http_options.port == 8000
    (app,) = config.applications
    (deployment,) = app.deployments
    assert deployment.name == serve_app.DEPLOYMENT_NAME
    settings = serve_app.ServeSettings.model_validate(deployment.user_config)
    assert settings.checkpoint and settings.max_batch_size <= deployment.max_ongoing_requests


def test_build_app_validates_args():
    assert isinstance(serve_app.build_app({"checkpoint": "x.pth", "num_cpus": "0.5", "max_batch_size": "3"}),
                      ray.serve.Application)
    with pytest.raises(ValueError, match="bogus"):
        serve_app.build_app({"checkpoint": "x.pth", "bogus": 1})
    with pytest.raises(ValueError, match="max_pixels_per_frame"):
        serve_app.build_app({"max_pixels_per_frame": 0})


def test_grouped_batches_match_single_windows(upscalers):
    upscaler = upscalers["a"]
    windows = [make_clip(5, H, W, seed=s) for s in range(3)] + [make_clip(5, 18, 21, seed=9)]
    windows.insert(1, windows.pop())  # sizes interleaved
    results = upscale_grouped(upscaler, windows)
    assert [batch for _, batch in results] == [3, 1, 3, 3]
    for window, (output, _) in zip(windows, results):
        assert max_diff(output, upscaler.upscale_window_uint8(window)) <= 1
    split = upscale_grouped(upscaler, windows, max_batch_pixels=2 * H * W)  # 2 windows per pass
    assert [batch for _, batch in split] == [2, 1, 2, 1]
    assert all(max_diff(a, b) <= 1 for (a, _), (b, _) in zip(results, split))


# --- over HTTP -----------------------------------------------------------------------------------
def test_docs_and_openapi(server):
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/v1/upscale", "/v1/upscale/video", "/v1/model", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/upscale"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(body)


def test_model_info(server, checkpoints):
    info = requests.get(server.url + "/v1/model", timeout=10).json()
    assert info["checkpoint"] == "latest.pth" and len(info["checkpoint_id"]) == 12
    assert str(checkpoints["a"]) not in json.dumps(info)  # no server paths unless expose_paths
    assert (info["step"], info["epoch"], info["preset"], info["scale"]) == (100, 2, "tiny", 3)
    assert info["architecture"] == {"channels": 8, "blocks_per_branch": 1}  # what the preset is
    assert info["training_phase"] == "pretrain" and info["device"] == "cpu"
    assert info["metrics"] is None and info["reload_error"] is None
    assert LIMITS.items() <= info["limits"].items()
    assert not {"pid", "hostname", "node_id"} & set(info)
    assert info["num_threads"] == 1  # 0.5 CPU -> 1 torch thread
    assert requests.get(server.url + "/healthz", timeout=10).json()["status"] == "ok"


def test_upscale_png_matches_in_process(server, window, upscalers):
    response = server.post_window(window)
    assert response.status_code == 200, response.text
    out = decode_png(response)
    assert out.shape == (3 * H, 3 * W, 3)
    assert max_diff(out, upscalers["a"].upscale_window_uint8(window)) <= 1
    assert response.headers["X-VSR-Step"] == "100"


def test_upscale_npy_matches_in_process(server, window, upscalers):
    response = requests.post(server.url + "/v1/upscale", data=npy_bytes(window),
                             headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert response.status_code == 200, response.text
    assert max_diff(decode_png(response), upscalers["a"].upscale_window_uint8(window)) <= 1


def test_concurrent_windows_are_batched_by_size(server, upscalers):
    windows = [make_clip(5, H, W, seed=10 + i) if i % 3 else make_clip(5, 18, 21, seed=10 + i) for i in range(9)]
    with ThreadPoolExecutor(len(windows)) as pool:
        responses = list(pool.map(server.post_window, windows))
    batches = []
    for window, response in zip(windows, responses):
        assert response.status_code == 200, response.text
        assert max_diff(decode_png(response), upscalers["a"].upscale_window_uint8(window)) <= 1
        batches.append(int(response.headers["X-VSR-Batch"]))
    assert max(batches) > 1, f"no request was batched: {batches}"


def test_converted_inputs(server, window, upscalers):
    """Grayscale, RGBA, 16-bit and JPEG inputs are converted to RGB8 (documented), not rejected."""
    gray = window[..., 1]
    cases = {
        "gray": ([png_bytes(f) for f in gray], np.repeat(gray[..., None], 3, axis=3)),
        "rgba": ([png_bytes(np.dstack([f, np.full(f.shape[:2], 7, np.uint8)])) for f in window], window),
        # 16-bit -> 8-bit keeps the high byte
        "gray16": ([png16(f.astype(np.uint16) << 8 | 0x7F) for f in gray], np.repeat(gray[..., None], 3, axis=3)),
        "rgb16": ([png16(f.astype(np.uint16) << 8 | 0x7F) for f in window], window),
    }
    for name, (blobs, expected_window) in cases.items():
        response = requests.post(server.url + "/v1/upscale", files=frame_files(blobs), timeout=60)
        assert response.status_code == 200, (name, response.text)
        assert max_diff(decode_png(response), upscalers["a"].upscale_window_uint8(expected_window)) <= 1, name
    jpegs = []
    for frame in window:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
        jpegs.append(buffer.getvalue())
    response = requests.post(server.url + "/v1/upscale", files=frame_files(jpegs, "jpg"), timeout=60)
    assert response.status_code == 200, response.text
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
    assert max_diff(decode_png(response), upscalers["a"].upscale_window_uint8(decoded)) <= 1


def _write_clip(path: Path, frames: np.ndarray, fps: float) -> Path:
    with FrameWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_video_keeps_frame_count_and_fps(server, tmp_path, upscalers):
    clip = make_clip(7, H, W, seed=4)
    source = _write_clip(tmp_path / "in.mp4", clip, fps=12)
    for how in ("body", "multipart"):
        if how == "body":
            response = requests.post(server.url + "/v1/upscale/video", data=source.read_bytes(),
                                     headers={"Content-Type": "video/mp4"}, timeout=120)
        else:
            response = requests.post(server.url + "/v1/upscale/video", timeout=120,
                                     files={"video": ("in.mp4", source.read_bytes(), "video/mp4")})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "video/mp4"
        out_path = tmp_path / f"out_{how}.mp4"
        out_path.write_bytes(response.content)
        info = probe_video(out_path)
        assert (info.num_frames, info.fps, info.height, info.width) == (7, 12.0, 3 * H, 3 * W)
    # Same frames as the in-process stream over the decoded input, up to H.264 coding noise.
    expected = np.stack(list(upscalers["a"].stream(read_frames(source))))
    got = read_frames(out_path)
    mse = np.mean((got.astype(np.float64) - expected) ** 2)
    assert 10 * np.log10(255**2 / mse) > 28  # measured ~32 dB


# --- bad input: a JSON 4xx naming the problem; the replica keeps serving ------------------------------
def _bad_cases(window: np.ndarray, tmp: Path) -> dict:
    pngs = [png_bytes(f) for f in window]
    other = make_clip(1, H + 3, W, seed=5)[0]
    big = make_clip(1, 70, 70, seed=6)[0]  # 4900 px > 4096 (between the limit and PIL's 2x bomb limit)
    bomb = png_bytes(np.zeros((3000, 3000), np.uint8))  # 9 Mpx, a few kB
    gif = io.BytesIO()
    Image.fromarray(window[0]).save(gif, format="GIF")
    npy_headers = {"Content-Type": "application/octet-stream"}
    npy_good = npy_bytes(window)
    header = io.BytesIO()  # claims 5 x 100k x 100k x 3 bytes, holds 16
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (5, 100_000, 100_000, 3)})
    huge_npy = header.getvalue() + b"\0" * 16
    long_clip = _write_clip(tmp / "long.mp4", make_clip(LIMITS["max_video_frames"] + 3, 12, 12), fps=10).read_bytes()
    big_clip = _write_clip(tmp / "big.mp4", make_clip(2, 72, 72), fps=10).read_bytes()
    video = "/v1/upscale/video"

    def chunked(total: int):
        for _ in range(total // 65536 + 1):
            yield b"\0" * 65536

    return {
        # name: (path, requests kwargs, status, error)
        "4 frames": ("/v1/upscale", {"files": frame_files(pngs[:4])}, 400, "wrong_frame_count"),
        "6 frames": ("/v1/upscale", {"files": frame_files(pngs + pngs[:1])}, 400, "wrong_frame_count"),
        "no frames field": ("/v1/upscale", {"files": {"image": ("a.png", pngs[0])}}, 400, "missing_frames"),
        "frames not files": ("/v1/upscale", {"data": {"frames": ["a"] * 5},
                                             "files": {"x": ("x", b"x")}}, 400, "invalid_multipart"),
        "mismatched sizes": ("/v1/upscale", {"files": frame_files(pngs[:4] + [png_bytes(other)])}, 400,
                             "frame_size_mismatch"),
        "not an image": ("/v1/upscale", {"files": frame_files(pngs[:4] + [b"hello, not a png"])}, 400,
                         "invalid_image"),
        "truncated png": ("/v1/upscale", {"files": frame_files(pngs[:4] + [pngs[4][: len(pngs[4]) // 2]])}, 400,
                          "invalid_image"),
        "empty file": ("/v1/upscale", {"files": frame_files(pngs[:4] + [b""])}, 400, "invalid_image"),
        "gif": ("/v1/upscale", {"files": frame_files(pngs[:4] + [gif.getvalue()])}, 415, "unsupported_image"),
        "frame too large": ("/v1/upscale", {"files": frame_files([png_bytes(big)] * 5)}, 413, "frame_too_large"),
        "decompression bomb": ("/v1/upscale", {"files": frame_files([bomb] * 5)}, 413, "frame_too_large"),
        "body too large": ("/v1/upscale", {"data": b"\0" * (LIMITS["max_body_bytes"] + 1), "headers": npy_headers},
                           413, "body_too_large"),
        "chunked body too large": ("/v1/upscale", {"data": chunked(LIMITS["max_body_bytes"]),
                                                   "headers": npy_headers}, 413, "body_too_large"),
        "multipart too large": ("/v1/upscale", {"files": frame_files([b"\0" * LIMITS["max_body_bytes"]] * 5)}, 413,
                                "body_too_large"),
        "text/plain": ("/v1/upscale", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
                       "unsupported_media_type"),
        "json": ("/v1/upscale", {"json": {"frames": []}}, 415, "unsupported_media_type"),
        "no content type": ("/v1/upscale", {"data": b""}, 415, "unsupported_media_type"),
        "multipart without boundary": ("/v1/upscale", {"data": b"x", "headers": {
            "Content-Type": "multipart/form-data"}}, 400, "invalid_multipart"),
        "npy garbage": ("/v1/upscale", {"data": b"\x93NUMPY garbage", "headers": npy_headers}, 400, "invalid_npy"),
        "npy pickle": ("/v1/upscale", {"data": npy_bytes(np.array([{"a": 1}] * 5, dtype=object)),
                                       "headers": npy_headers}, 400, "invalid_npy"),
        "npy float": ("/v1/upscale", {"data": npy_bytes(window.astype(np.float32)), "headers": npy_headers}, 400,
                      "invalid_npy"),
        "npy 4 frames": ("/v1/upscale", {"data": npy_bytes(window[:4]), "headers": npy_headers}, 400,
                         "wrong_frame_count"),
        "npy wrong shape": ("/v1/upscale", {"data": npy_bytes(window[..., 0].reshape(-1)), "headers": npy_headers},
                            400, "invalid_npy"),
        "npy truncated": ("/v1/upscale", {"data": npy_good[:-10], "headers": npy_headers}, 400, "invalid_npy"),
        "npy huge header": ("/v1/upscale", {"data": huge_npy, "headers": npy_headers}, 413, "frame_too_large"),
        "video garbage": (video, {"data": b"definitely not an mp4" * 10, "headers": {"Content-Type": "video/mp4"}},
                          400, "invalid_video"),
        "video empty": (video, {"data": b"", "headers": {"Content-Type": "video/mp4"}}, 400, "empty_body"),
        "video truncated": (video, {"data": long_clip[: len(long_clip) // 3], "headers": {
            "Content-Type": "video/mp4"}}, 400, "invalid_video"),
        "video too many frames": (video, {"data": long_clip, "headers": {"Content-Type": "video/mp4"}}, 413,
                                  "too_many_frames"),
        "video frames too large": (video, {"data": big_clip, "headers": {"Content-Type": "video/mp4"}}, 413,
                                   "frame_too_large"),
        "video body too large": (video, {"data": b"\0" * (LIMITS["max_body_bytes"] + 1), "headers": {
            "Content-Type": "video/mp4"}}, 413, "body_too_large"),
        "video wrong type": (video, {"data": b"x", "headers": {"Content-Type": "image/png"}}, 415,
                             "unsupported_media_type"),
        "video multipart no field": (video, {"files": {"clip": ("a.mp4", b"x")}}, 400, "missing_video"),
        "GET upscale": ("/v1/upscale", {"method": "GET"}, 405, "method_not_allowed"),
        "unknown path": ("/v2/nothing", {"method": "GET"}, 404, "not_found"),
    }


def test_bad_inputs_return_json_4xx_and_the_replica_keeps_serving(server, window, upscalers, tmp_path):
    pid = replica_pid()
    failures = []
    for name, (path, kwargs, status, error) in _bad_cases(window, tmp_path).items():
        kwargs = dict(kwargs)
        method = kwargs.pop("method", "POST")
        try:
            response = requests.request(method, server.url + path, timeout=60, **kwargs)
        except requests.ConnectionError as exc:
            failures.append(f"{name}: connection error {exc}")
            continue
        body = response.json() if response.headers.get("content-type") == "application/json" else None
        if response.status_code != status or not body or body.get("error") != error or not body.get("detail"):
            failures.append(f"{name}: expected {status} {error}, got {response.status_code} {response.text[:300]}")
        assert_good_request(server, window, upscalers["a"])
    assert not failures, "\n".join(failures)
    info = requests.get(server.url + "/v1/model", timeout=10).json()
    assert replica_pid() == pid and info["step"] == 100  # same replica process, same model


# --- hot swap ----------------------------------------------------------------------------------------
def test_hot_swap_under_load(server, checkpoints, window, upscalers):
    """Redeploy with another checkpoint while a client keeps sending windows: the replica
    reconfigures in place (same process), no request fails, and every response matches the
    model named in its X-VSR-Step header."""
    expected = {"100": upscalers["a"].upscale_window_uint8(window), "200": upscalers["b"].upscale_window_uint8(window)}
    pid = replica_pid()
    results: list[tuple[int, str | None, np.ndarray | None]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                response = server.post_window(window)
                ok = response.status_code == 200
                results.append((response.status_code, response.headers.get("X-VSR-Step"),
                                decode_png(response) if ok else None))
            except Exception as exc:  # noqa: BLE001 - counted as a failure
                results.append((-1, repr(exc), None))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        server.deploy(checkpoints["b"])
        info = server.wait_for_step(200)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    failed = [r[:2] for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    steps = [step for _, step, _ in results]
    assert "100" in steps and "200" in steps and steps[-1] == "200", steps
    for _, step, output in results:
        assert max_diff(output, expected[step]) <= 1
    assert max_diff(expected["100"], expected["200"]) > 1  # the swap changed the outputs
    assert replica_pid() == pid  # reconfigured in place, not a new replica
    assert info["checkpoint"] == "trial_7.pth"
    assert info["metrics"] == {"psnr_y": 31.25, "ssim_y": 0.91}
    assert info["trial_id"] == "trial_7" and info["reload_error"] is None

    # A bad hot swap keeps serving the current model and reports the error.
    server.deploy(checkpoints["a"].parent / "does_not_exist.pth")
    deadline = time.time() + 30
    while time.time() < deadline:
        info = requests.get(server.url + "/v1/model", timeout=10).json()
        if info["reload_error"]:
            break
        time.sleep(0.2)
    assert "does_not_exist" in info["reload_error"] and info["step"] == 200
    assert_good_request(server, window, upscalers["b"])


def test_a_new_revision_reloads_a_checkpoint_overwritten_in_place(checkpoints):
    from serve.model import model_key
    from serve.settings import ServeSettings

    same = ServeSettings(checkpoint=str(checkpoints["a"]), revision="1")
    assert model_key(same) == model_key(ServeSettings(checkpoint=str(checkpoints["a"]), revision="1"))
    assert model_key(same) != model_key(ServeSettings(checkpoint=str(checkpoints["a"]), revision="2"))
