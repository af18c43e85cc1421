"""Serve under load, fuzzed input, hot swaps under load, and the API key.

The app is deployed from serve/config.yaml exactly as in tests/test_serve.py (tiny model,
0.5 CPU, one replica, small limits); all traffic goes to 127.0.0.1 and is bounded.

    VSR_RELIABILITY_LONG=1   60 s of load, 1500 mutated + 500 property-based fuzz inputs
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import make_clip
from test_serve import (  # noqa: F401 - checkpoints, upscalers, window are fixtures
    APP_NAME,
    LIMITS,
    Server,
    _write_clip,
    checkpoints,
    decode_png,
    free_port,
    frame_files,
    max_diff,
    npy_bytes,
    png_bytes,
    replica_pid,
    upscalers,
    window,
)

pytestmark = pytest.mark.ray

LONG = os.environ.get("VSR_RELIABILITY_LONG") == "1"
CLIENTS = 8
LOAD_S = 60.0 if LONG else 10.0
MUTATIONS = 1500 if LONG else 120  # the hostile-client suite covers the classes; this samples their mixes
PROPERTY_EXAMPLES = 500 if LONG else 100
SWAPS = 20 if LONG else 2
VIDEO = "/v1/upscale/video"
WINDOW = "/v1/upscale"


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


def replica_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# --- load --------------------------------------------------------------------------------------------
class Load:
    """CLIENTS threads, each with its own keep-alive session, posting the same window until stopped."""

    def __init__(self, server: Server, window: np.ndarray, clients: int = CLIENTS):
        self.url = server.url + WINDOW
        self.files = frame_files([png_bytes(f) for f in window])
        self.records: list[tuple[float, int, str | None, bytes | str]] = []  # latency, status, step, body/error
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    response = session.post(self.url, files=self.files, timeout=60)
                    body = response.content if response.status_code == 200 else response.text[:300]
                    self.records.append((time.perf_counter() - start, response.status_code,
                                         response.headers.get("X-VSR-Step"), body))
                except requests.RequestException as exc:  # a dropped or refused connection
                    self.records.append((time.perf_counter() - start, -1, None, repr(exc)))

    def __enter__(self) -> "Load":
        self.started = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        self.elapsed = time.perf_counter() - self.started

    def failures(self) -> list:
        return [(status, str(body)[:200]) for _, status, _, body in self.records if status != 200]

    def figures(self) -> str:
        latencies = np.array([r[0] for r in self.records]) * 1000
        return (f"{len(self.records)} requests in {self.elapsed:.1f}s = {len(self.records) / self.elapsed:.1f} req/s, "
                f"p50 {np.percentile(latencies, 50):.0f} ms, p99 {np.percentile(latencies, 99):.0f} ms")


def test_load_8_clients_no_errors_and_bounded_memory(server, window, upscalers):
    pid = replica_pid()
    with Load(server, window):  # warm-up: allocator pools, batch sizes, thread pools
        time.sleep(2.0)
    rss_start = replica_rss_kib(pid)
    peak = rss_start
    with Load(server, window) as load:
        deadline = time.monotonic() + LOAD_S
        while time.monotonic() < deadline:
            time.sleep(0.5)
            peak = max(peak, replica_rss_kib(pid))
    rss_end = replica_rss_kib(pid)
    failed = load.failures()
    assert not failed, f"{len(failed)} of {len(load.records)} requests failed: {failed[:5]}"
    assert len(load.records) >= CLIENTS * 5
    expected = upscalers["a"].upscale_window_uint8(window)
    for _, _, step, body in load.records[:: max(1, len(load.records) // 50)]:  # a sample of the outputs
        assert step == "100" and max_diff(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), expected) <= 1
    growth = (rss_end - rss_start) / rss_start
    assert growth < 0.10, f"replica RSS grew {growth:.1%}: {rss_start} -> {rss_end} KiB (peak {peak})"
    assert replica_pid() == pid
    print(f"\n[reliability] load: {CLIENTS} clients, {load.figures()}, 0 errors, 0 dropped connections, "
          f"replica RSS {rss_start / 1024:.0f} -> {rss_end / 1024:.0f} MiB ({growth:+.1%}, peak {peak / 1024:.0f} MiB)")


def test_hot_swap_under_load_drops_nothing(server, checkpoints, window, upscalers):
    """Reconfigure to checkpoint b and back to a (SWAPS times in all) while 8 clients keep posting:
    every request succeeds, and each output matches the model named in its X-VSR-Step header."""
    expected = {"100": upscalers["a"].upscale_window_uint8(window), "200": upscalers["b"].upscale_window_uint8(window)}
    pid = replica_pid()
    with Load(server, window) as load:
        time.sleep(1.0)
        for swap in range(SWAPS):
            name, step = ("b", 200) if swap % 2 == 0 else ("a", 100)
            server.deploy(checkpoints[name])
            server.wait_for_step(step)
            time.sleep(1.0)
        if SWAPS % 2:
            server.deploy(checkpoints["a"])  # leave model a in service for the next tests
            server.wait_for_step(100)
    failed = load.failures()
    assert not failed, f"{len(failed)} of {len(load.records)} requests failed: {failed[:5]}"
    steps = [step for _, _, step, _ in load.records]
    assert {"100", "200"} <= set(steps)
    for _, _, step, body in load.records:
        assert max_diff(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), expected[step]) <= 1
    assert replica_pid() == pid  # in place
    print(f"\n[reliability] hot swap under load: {SWAPS} swaps, {load.figures()}, 0 failed requests "
          f"({steps.count('200')} served by the second checkpoint)")


# --- fuzz --------------------------------------------------------------------------------------------------
def _png_with_size(png: bytes, width: int, height: int) -> bytes:
    """A real PNG whose IHDR claims another size (valid CRC): a decompression-bomb header."""
    data = struct.pack(">II", width, height) + png[24:29]
    chunk = b"IHDR" + data
    return png[:12] + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF) + png[33:]


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    at = jpeg.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def _jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _npy_header(shape, descr="|u1", fortran=False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seeds(window, tmp_path_factory) -> dict[str, list[bytes]]:
    """Real, valid inputs of every kind the API reads, plus hand-made hostile ones."""
    tmp = tmp_path_factory.mktemp("fuzz")
    pngs = [png_bytes(f) for f in window]
    small = make_clip(5, 12, 15, seed=8)
    gray = io.BytesIO()
    Image.fromarray(window[0][..., 0]).save(gray, format="PNG")
    bomb = png_bytes(np.zeros((3000, 3000), np.uint8))
    header_only = pngs[0][:33] + struct.pack(">I", 0)  # signature + IHDR, then nothing
    return {
        "png": pngs + [png_bytes(f) for f in small] + [gray.getvalue()],
        "jpeg": [_jpeg(f) for f in window] + [_jpeg(f) for f in small],
        "hostile_image": [
            _png_with_size(pngs[0], 100_000, 100_000), _png_with_size(pngs[0], 0, 5), _png_with_size(pngs[0], 2**31 - 1, 1),
            _jpeg_with_size(_jpeg(window[0]), 65_000, 65_000), _jpeg_with_size(_jpeg(window[0]), 0, 0), bomb, header_only,
            b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a" + pngs[0][6:], b"BM" + pngs[0],
        ],
        "npy": [npy_bytes(window), npy_bytes(small), npy_bytes(window[..., 0]), npy_bytes(window.astype(np.uint16) * 257)],
        "hostile_npy": [
            npy_bytes(window.astype(np.float32)), npy_bytes(window.astype(np.int16)), npy_bytes(window.astype(bool)),
            npy_bytes(window.astype(">u2")), npy_bytes(window.astype(np.complex64)), npy_bytes(np.asfortranarray(window)),
            npy_bytes(np.array([{"a": 1}] * 5, dtype=object)), npy_bytes(window[:4]), npy_bytes(window[:, :, :, :2]),
            npy_bytes(np.zeros((5, 0, 7, 3), np.uint8)), npy_bytes(window.reshape(-1)),
            _npy_header((5, 100_000, 100_000, 3)) + b"\0" * 64, _npy_header((5, 2**40, 2**40, 3)) + b"\0",
            _npy_header((5, -1, 4, 3)) + b"\0" * 64, _npy_header((5, 4, 4, 3), descr="O") + b"\0" * 64,
            b"\x93NUMPY\x03\x00" + b"\xff" * 200, b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100,
        ],
        "mp4": [_write_clip(tmp / "a.mp4", make_clip(4, 12, 15, seed=3), fps=10).read_bytes(),
                _write_clip(tmp / "b.mp4", make_clip(3, 18, 21, seed=4), fps=25).read_bytes()],
    }


def _mutate(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    data = bytearray(data)
    op = rng.randrange(7)
    if op == 0:  # truncate
        return bytes(data[: rng.randrange(len(data))])
    if op == 1:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op == 2:  # insert junk
        at = rng.randrange(len(data))
        data[at:at] = os.urandom(rng.randint(1, 64))
    elif op == 3:  # delete a slice
        at = rng.randrange(len(data))
        del data[at: at + rng.randint(1, 256)]
    elif op == 4:  # duplicate a slice (repeated chunks, bogus lengths)
        at = rng.randrange(len(data))
        data[at:at] = data[at: at + rng.randint(1, 512)] * rng.randint(1, 4)
    elif op == 5:  # zero a slice
        at = rng.randrange(len(data))
        size = rng.randint(1, 128)
        data[at: at + size] = b"\0" * len(data[at: at + size])
    else:  # somebody else's header
        other = rng.choice([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\x93NUMPY\x01\x00", b"\0\0\0\x18ftypmp42",
                            b"GIF89a", b"PK\x03\x04"])
        data[: len(other)] = other
    return bytes(data)


def _fuzz_request(seeds: dict[str, list[bytes]], rng: random.Random) -> tuple[str, dict]:
    """One random request: mostly mutated real inputs, sometimes valid ones or hostile ones as-is."""
    kind = rng.choice(["frames", "frames", "frames", "npy", "npy", "video", "video", "headers"])
    if kind == "frames":
        count = rng.choice([5, 5, 5, 5, 0, 1, 4, 6, 7])
        pool = seeds[rng.choice(["png", "jpeg"])]
        frames = [pool[i % 5] for i in range(count)]
        for i in rng.sample(range(count), k=min(count, rng.choice([0, 1, 1, 2, 5]))):
            frames[i] = rng.choice(seeds["hostile_image"]) if rng.random() < 0.3 else _mutate(frames[i], rng)
        if count and rng.random() < 0.15:  # a frame of another size
            frames[rng.randrange(count)] = rng.choice(seeds["png"][5:])
        field = "frames" if rng.random() < 0.9 else rng.choice(["frame", "video", "", "frames[]"])
        files = [(field, (rng.choice(["f.png", "f.jpg", "", "../../etc/passwd", "ä\x00.png"]), blob,
                          rng.choice(["image/png", "image/jpeg", "application/octet-stream", "text/plain"])))
                 for blob in frames]
        return WINDOW, {"files": files} if files else {"files": {"x": ("x", b"")}}
    if kind == "npy":
        body = rng.choice(seeds["hostile_npy"]) if rng.random() < 0.3 else rng.choice(seeds["npy"])
        if rng.random() < 0.7:
            body = _mutate(body, rng)
        content_type = rng.choice(["application/octet-stream", "application/x-npy", "application/octet-stream; x=1"])
        return WINDOW, {"data": body, "headers": {"Content-Type": content_type}}
    if kind == "video":
        body = rng.choice(seeds["mp4"])
        if rng.random() < 0.85:
            body = _mutate(body, rng)
        if rng.random() < 0.2:
            return VIDEO, {"files": {rng.choice(["video", "clip"]): ("v.mp4", body, "video/mp4")}}
        return VIDEO, {"data": body, "headers": {"Content-Type": rng.choice(["video/mp4", "application/octet-stream"])}}
    # odd Content-Types, boundaries and bodies
    content_type = rng.choice(["multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x",
                               "multipart/form-data; boundary=" + "a" * 200, "image/png", "", "application/json",
                               "application/octet-stream; charset=\xff", "video/mp4"])
    body = _mutate(rng.choice(seeds["png"] + seeds["npy"]), rng)
    if "boundary=x" in content_type and rng.random() < 0.5:
        body = b"--x\r\nContent-Disposition: form-data; name=\"frames\"; filename=\"a\"\r\n\r\n" + body + b"\r\n--x--\r\n"
    return rng.choice([WINDOW, VIDEO]), {"data": body, "headers": {"Content-Type": content_type}}


def _check_response(path: str, kwargs: dict, response: requests.Response) -> str | None:
    """None if the response is a valid result or a JSON 4xx error, else what is wrong."""
    if response.status_code == 200:
        if path == WINDOW:
            image = Image.open(io.BytesIO(response.content))
            return None if response.headers["content-type"] == "image/png" and image.size[0] % 3 == 0 else "bad PNG"
        ok = response.headers["content-type"] == "video/mp4" and int(response.headers["X-VSR-Frames"]) >= 1
        return None if ok else "bad mp4"
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} but not JSON: {response.text[:200]}"
    if not (isinstance(body, dict) and body.get("error") and body.get("detail")):
        return f"{response.status_code} without error/detail: {body}"
    return None


class FuzzStats:
    def __init__(self):
        self.count = 0
        self.statuses: dict[int, int] = {}
        self.problems: list[str] = []

    def send(self, server: Server, path: str, kwargs: dict) -> None:
        self.count += 1
        try:
            response = requests.post(server.url + path, timeout=60, **kwargs)
        except requests.RequestException as exc:
            self.problems.append(f"{path}: connection error {exc!r}")
            return
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        problem = _check_response(path, kwargs, response)
        if problem:
            self.problems.append(f"{path} {kwargs.get('headers')}: {problem}")


FUZZ = FuzzStats()


def _assert_replica_healthy(server: Server, pid: int, window: np.ndarray, upscaler) -> None:
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    assert replica_pid() == pid  # never restarted
    response = server.post_window(window)
    assert response.status_code == 200 and max_diff(decode_png(response), upscaler.upscale_window_uint8(window)) <= 1


def test_fuzz_mutation_corpus_never_5xx(server, seeds, window, upscalers):
    pid = replica_pid()
    rng = random.Random(int(os.environ.get("VSR_RELIABILITY_SEED", "0")))
    before = FUZZ.count
    for i in range(MUTATIONS):
        FUZZ.send(server, *_fuzz_request(seeds, rng))
        if i % 50 == 49:
            _assert_replica_healthy(server, pid, window, upscalers["a"])
    assert not FUZZ.problems, f"{len(FUZZ.problems)} of {FUZZ.count} inputs: " + "\n".join(FUZZ.problems[:10])
    _assert_replica_healthy(server, pid, window, upscalers["a"])
    print(f"\n[reliability] fuzz (mutation corpus): {FUZZ.count - before} inputs, statuses {sorted(FUZZ.statuses.items())}, "
          f"0 5xx, replica pid unchanged")


@st.composite
def _hypothesis_request(draw, seeds):
    kind = draw(st.sampled_from(["frames", "npy", "video"]))
    if kind == "frames":
        count = draw(st.integers(0, 7))
        blobs = draw(st.lists(st.one_of(st.sampled_from(seeds["png"] + seeds["jpeg"] + seeds["hostile_image"]),
                                        st.binary(max_size=512)), min_size=count, max_size=count))
        cut = draw(st.integers(0, 10_000))
        if blobs and draw(st.booleans()):
            blobs[0] = blobs[0][:cut]
        return WINDOW, {"files": frame_files(blobs)} if blobs else {"files": {"x": ("x", b"")}}
    pool = seeds["npy"] + seeds["hostile_npy"] if kind == "npy" else seeds["mp4"]
    body = draw(st.one_of(st.sampled_from(pool), st.binary(max_size=2048)))
    start = draw(st.integers(0, len(body)))
    body = body[:start] + draw(st.binary(max_size=32)) + body[start + draw(st.integers(0, 64)):]
    content_type = draw(st.sampled_from(["application/octet-stream", "video/mp4", "application/x-npy"]))
    return (WINDOW if kind == "npy" else VIDEO), {"data": body, "headers": {"Content-Type": content_type}}


def test_fuzz_property_based_never_5xx(server, seeds, window, upscalers):
    pid = replica_pid()
    before = FUZZ.count

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request=_hypothesis_request(seeds))
    def one_request(request):
        problems = len(FUZZ.problems)
        FUZZ.send(server, *request)
        assert len(FUZZ.problems) == problems, FUZZ.problems[-1]

    one_request()
    _assert_replica_healthy(server, pid, window, upscalers["a"])
    print(f"\n[reliability] fuzz (hypothesis): {FUZZ.count - before} inputs, 0 5xx; "
          f"fuzz total so far {FUZZ.count} inputs, statuses {sorted(FUZZ.statuses.items())}")


# --- API key -------------------------------------------------------------------------------------------------
def _check_stream_auth(server, key: str, clip: np.ndarray, upscaler) -> None:
    """WS /v1/stream: the key in the handshake's Authorization header, or (as a browser does) in the
    subprotocol "bearer.<base64url key>"; checked before the socket is accepted."""
    import base64

    from websockets.sync.client import connect

    from serve.client import StreamFailed, stream_frames

    expected = np.stack(list(upscaler.stream(iter(clip))))
    for wrong in (None, "wrong"):
        with pytest.raises(StreamFailed, match="unauthorized"):
            list(stream_frames(server.url, clip, api_key=wrong, fmt="raw", output="raw", timeout=30))
    assert max_diff(np.stack(list(stream_frames(server.url, clip, api_key=key, fmt="raw", output="raw",
                                                timeout=60))), expected) <= 1
    encoded = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    with connect(server.url.replace("http", "ws", 1) + "/v1/stream", max_size=None,
                 subprotocols=["vsr.v1", f"bearer.{encoded}"]) as ws:  # as a browser does
        assert ws.subprotocol == "vsr.v1"
        ws.send(json.dumps({"width": clip.shape[2], "height": clip.shape[1], "format": "raw"}))
        assert json.loads(ws.recv(30))["type"] == "ready"


def test_api_key_is_required_when_configured(server, checkpoints, window, upscalers, tmp_path):
    key = "s3cret-" + os.urandom(8).hex()
    key_file = tmp_path / "api_key"
    key_file.write_text(key + "\n")
    pngs = frame_files([png_bytes(f) for f in window])
    try:
        server.extra = {"api_key_file": str(key_file)}
        server.deploy(checkpoints["a"])
        deadline = time.time() + 60
        while requests.get(server.url + "/v1/model", timeout=10).status_code != 401 and time.time() < deadline:
            time.sleep(0.2)

        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}, {"Authorization": f"Basic {key}"},
                        {"Authorization": f"Bearer {key}x"}, {"Authorization": "Bearer"}):
            for path, kwargs in ((WINDOW, {"files": pngs}), (VIDEO, {"data": b"x" * 10, "headers": {
                    "Content-Type": "video/mp4", **headers}}), ("/v1/model", None)):
                if path == "/v1/model":
                    response = requests.get(server.url + path, headers=headers, timeout=10)
                else:
                    kwargs = {"headers": headers, **kwargs}
                    response = requests.post(server.url + path, timeout=30, **kwargs)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert response.json()["error"] == "unauthorized" and "Authorization: Bearer" in response.json()["detail"]

        good = {"Authorization": f"Bearer {key}"}
        response = requests.post(server.url + WINDOW, files=pngs, headers=good, timeout=60)
        assert response.status_code == 200
        _check_stream_auth(server, key, window[:3], upscalers["a"])
        assert max_diff(decode_png(response), upscalers["a"].upscale_window_uint8(window)) <= 1
        assert requests.get(server.url + "/v1/model", headers={"authorization": f"bearer {key}"},
                            timeout=10).json()["auth"] == "bearer"
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200  # open for probes
        assert requests.get(server.url + "/docs", timeout=10).status_code == 200
        spec = requests.get(server.url + "/openapi.json", timeout=10).json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
            "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["HTTPBearer"][
                "description"]}
        for path, method in ((WINDOW, "post"), (VIDEO, "post"), ("/v1/model", "get")):
            assert spec["paths"][path][method]["security"] == [{"HTTPBearer": []}]
            assert "401" in spec["paths"][path][method]["responses"]
        assert "security" not in spec["paths"]["/healthz"]["get"]
        assert "Authorization: Bearer" in spec["info"]["description"]
    finally:
        server.extra = {}
        server.deploy(checkpoints["a"])
        deadline = time.time() + 60
        while requests.get(server.url + "/v1/model", timeout=10).status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
    assert requests.get(server.url + "/v1/model", timeout=10).json()["auth"] == "none"
