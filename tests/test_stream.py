"""WS /v1/stream over the real Serve app (deployed as in tests/test_serve.py): the output equals
`vsr upscale`'s (Upscaler.stream) on the same frames, bad frames end the stream with a JSON
error and a close, a disconnect frees the session; and the negotiated formats of /v1/upscale.

Equality is up to 1 grey level: the stream's windows run through the replica's batches as
whole windows, `vsr upscale` extracts each frame's features once and reuses them, and CPU
convolutions round the two ways differently in the last bit (the tolerance /v1/upscale is
tested with). Each test also checks that a wrong border reflection would differ by more.
"""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image
from websockets.sync.client import connect

from conftest import make_clip
from serve.client import StreamFailed, stream_frames
from serve.formats import negotiate
from test_serve import (  # noqa: F401 - checkpoints, upscalers, server, window are fixtures
    H,
    LIMITS,
    W,
    checkpoints,
    max_diff,
    npy_bytes,
    png_bytes,
    server,
    upscalers,
    window,
)

pytestmark = pytest.mark.ray


def ws_url(server) -> str:
    return server.url.replace("http", "ws", 1) + "/v1/stream"


def replicated_border_reference(upscaler, clip: np.ndarray) -> np.ndarray:
    """What a stream that pads by repeating the border frame (a plausible bug) would give."""
    n = len(clip)
    return np.stack([upscaler.upscale_window_uint8(clip[[min(max(c + o, 0), n - 1) for o in range(-2, 3)]])
                     for c in range(n)])


def streams_active(server) -> int:
    return requests.get(server.url + "/v1/model", timeout=10).json()["streams"]["active"]


@pytest.mark.parametrize("num_frames", [1, 2, 3, 11])
def test_stream_matches_vsr_upscale(server, upscalers, num_frames):
    clip = make_clip(num_frames, H, W, seed=20 + num_frames)
    expected = np.stack(list(upscalers["a"].stream(iter(clip))))  # what `vsr upscale` computes
    fmt, output = ("raw", "raw") if num_frames != 3 else ("png", "png")
    got = np.stack(list(stream_frames(server.url, clip, fmt=fmt, output=output, timeout=60)))
    assert got.shape == expected.shape == (num_frames, 3 * H, 3 * W, 3)
    assert max_diff(got, expected) <= 1
    assert np.mean(got != expected) < 1e-3
    if num_frames > 1:  # the tolerance cannot hide a wrong reflection at the borders
        assert max_diff(replicated_border_reference(upscalers["a"], clip), expected) > 1


def test_frames_come_back_two_behind(server, upscalers):
    clip = make_clip(5, H, W, seed=31)
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps({"width": W, "height": H, "format": "raw", "output": "raw"}))
        ready = json.loads(ws.recv(30))
        assert ready["type"] == "ready" and ready["frames_behind"] == 2 and ready["scale"] == 3
        for frame in clip[:3]:
            ws.send(frame.tobytes())
        first = np.frombuffer(ws.recv(30), np.uint8).reshape(3 * H, 3 * W, 3)  # window [2,1,0,1,2] complete
        for frame in clip[3:]:
            ws.send(frame.tobytes())
        ws.send(json.dumps({"type": "end"}))
        rest = [ws.recv(30) for _ in range(4)]
        end = json.loads(ws.recv(30))
    assert end["type"] == "end" and end["frames"] == 5
    assert {"decode_ms", "batch_ms", "model_ms", "encode_ms"} <= set(end["timing"])
    # frame 0's window ran alone (its answer came before frame 3 was sent): 2 to 5 passes for 5 windows
    assert 1.0 <= end["timing"]["windows_per_pass"] <= 2.5
    assert 0 < end["timing"]["model_busy"] <= 1
    assert all(isinstance(r, bytes) for r in rest)
    assert max_diff(first, upscalers["a"].upscale_window_uint8(clip[[2, 1, 0, 1, 2]])) <= 1


def test_wrong_frame_size_mid_stream_is_a_json_error_and_a_close(server):
    clip = make_clip(3, H, W, seed=32)
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps({"width": W, "height": H, "format": "png", "output": "png"}))
        assert json.loads(ws.recv(30))["type"] == "ready"
        for frame in clip:
            ws.send(png_bytes(frame))
        ws.send(png_bytes(make_clip(1, H, W + 2)[0]))
        messages = []
        with pytest.raises(Exception) as closed:  # ConnectionClosed once the server has closed
            while True:
                messages.append(ws.recv(30))
    error = json.loads(messages[-1])
    assert error == {"type": "error", "error": "wrong_frame_size",
                     "detail": f"frame 3 is {W + 2}x{H}; the stream's header said {W}x{H}"}
    assert [type(m) for m in messages[:-1]] == [bytes]  # frame 0 (its window was complete) came first
    assert ws.close_code == 1003, closed.value


@pytest.mark.parametrize("header, error, field", [
    ("not json", "invalid_header", "JSON"),
    ({"width": W, "height": H, "format": "gif"}, "invalid_header", "'format'"),
    ({"width": 0, "height": H, "format": "raw"}, "invalid_header", "'width'"),
    ({"width": W, "height": H, "format": "raw", "colour": 1}, "invalid_header", "colour"),
    ({"width": 100, "height": 100, "format": "raw"}, "frame_too_large", str(LIMITS["max_pixels_per_frame"])),
])
def test_bad_headers_are_named(server, header, error, field):
    with connect(ws_url(server)) as ws:
        ws.send(header if isinstance(header, str) else json.dumps(header))
        reply = json.loads(ws.recv(30))
        with pytest.raises(Exception):
            ws.recv(30)
    assert reply["type"] == "error" and reply["error"] == error and field in reply["detail"], reply


def test_a_disconnect_frees_the_session(server):
    before = streams_active(server)
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps({"width": W, "height": H, "format": "raw", "output": "raw"}))
        assert json.loads(ws.recv(30))["type"] == "ready"
        for frame in make_clip(4, H, W, seed=33):
            ws.send(frame.tobytes())
        assert streams_active(server) == before + 1
        ws.socket.close()  # the client vanishes: no close handshake, frames still in flight
    deadline = time.time() + 30
    while streams_active(server) != before and time.time() < deadline:
        time.sleep(0.2)
    assert streams_active(server) == before
    assert len(list(stream_frames(server.url, make_clip(2, H, W), fmt="raw", output="raw", timeout=60))) == 2


def test_stream_limits_frames_and_idle_time(server):
    limit = LIMITS["max_stream_frames"]
    with pytest.raises(StreamFailed, match=f"too_many_frames: a stream may send at most {limit} frames"):
        list(stream_frames(server.url, make_clip(limit + 1, H, W), fmt="raw", output="raw", timeout=60))
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"width": W, "height": H, "format": "raw"}))
        assert json.loads(ws.recv(30))["type"] == "ready"
        started = time.monotonic()
        reply = json.loads(ws.recv(30))  # nothing sent: the server gives up after the idle timeout
        waited = time.monotonic() - started
        with pytest.raises(Exception):
            ws.recv(30)
    assert reply["error"] == "idle_timeout" and ws.close_code == 1008
    assert LIMITS["stream_idle_timeout_s"] - 0.5 <= waited < 20


def test_client_streams_a_video_file(server, upscalers, tmp_path):
    from serve.client import main
    from vsr_core.data.video_io import FrameWriter, read_frames

    clip_path = tmp_path / "clip.mp4"
    with FrameWriter(clip_path, fps=25) as writer:
        for frame in make_clip(6, H, W, seed=34):
            writer.write(frame)
    main(["--url", server.url, "stream", str(clip_path), str(tmp_path / "out"), "--format", "jpeg"])
    main(["--url", server.url, "stream", str(clip_path), str(tmp_path / "out.mp4"), "--output-format", "raw"])
    decoded = read_frames(clip_path)  # what the client sent (JPEG-compressed on the way)
    jpegs = np.stack([np.asarray(Image.open(io.BytesIO(_jpeg(f))).convert("RGB")) for f in decoded])
    expected = np.stack(list(upscalers["a"].stream(iter(jpegs))))
    assert max_diff(read_frames(tmp_path / "out"), expected) <= 1
    assert len(read_frames(tmp_path / "out.mp4")) == len(decoded)


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_stream_client_reports_the_error(server):
    frames = [make_clip(1, H, W)[0], make_clip(1, H + 1, W)[0]]
    with pytest.raises(StreamFailed, match="wrong_frame_size"):
        list(stream_frames(server.url, frames, fmt="png", timeout=60))


# --- negotiated response formats of /v1/upscale ----------------------------------------------------
def test_accept_negotiation_rules():
    assert negotiate(None) == negotiate("*/*") == negotiate("image/*") == "image/png"
    assert negotiate("image/webp, image/png;q=0.9") == "image/webp"
    assert negotiate("image/png;q=0.5, application/x-npy") == "application/x-npy"
    assert negotiate("text/html, image/jpeg;q=0.1") == "image/jpeg"
    with pytest.raises(ValueError, match="image/gif"):
        negotiate("image/gif, image/png;q=0")


def test_upscale_answers_in_the_accepted_format(server, window, upscalers):
    expected = upscalers["a"].upscale_window_uint8(window)
    body = npy_bytes(window)
    for accept in ("application/x-npy", "image/png", "image/jpeg", "image/webp"):
        response = requests.post(server.url + "/v1/upscale", data=body, timeout=60,
                                 headers={"Content-Type": "application/octet-stream", "Accept": accept})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == accept
        assert {"decode", "batch", "model", "encode"} == {
            part.split(";")[0].strip() for part in response.headers["server-timing"].split(",")}
        if accept == "application/x-npy":
            got = np.load(io.BytesIO(response.content), allow_pickle=False)
        else:
            got = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
        assert got.shape == expected.shape
        if accept != "image/jpeg":  # lossless
            assert max_diff(got, expected) <= 1, accept
        else:  # lossy (noisy tiny frames, chroma subsampled): close on average; another frame is ~50 off
            assert np.abs(got.astype(int) - expected).mean() < 8, accept
    refused = requests.post(server.url + "/v1/upscale", data=body, timeout=60,
                            headers={"Content-Type": "application/octet-stream", "Accept": "image/gif"})
    assert refused.status_code == 406 and refused.json()["error"] == "not_acceptable"
