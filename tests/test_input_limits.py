"""Bounds on untrusted input, without a server: what a file may cost to decode (JPEG scans, PNG
chunks, a video's frame size frame by frame, the probe in a child process with limits), what JSON
and the stream's header may be, and what an error text may reveal."""
from __future__ import annotations

import io
import resource
import time

import numpy as np
import pytest
from PIL import Image

from conftest import make_clip
from hostile_inputs import growing_video, mp4_claiming_frames, png_of_many_chunks, progressive_jpeg_bomb, write_clip
from serve.redact import public_text
from serve.schemas import MAX_JSON_DEPTH, InputError, JobRequest, StreamHeader, parse_json, validate
from vsr_core.data.video_io import VideoReadError, count_frames, iter_timed_frames, probe_video
from vsr_core.data.video_probe import ProbeLimits, ProbeLimitError, TooManyFramesError, probe_untrusted
from vsr_core.image_io import MAX_JPEG_SCANS, ImageTooLargeError, InvalidImageError, decode_image


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# --- images -----------------------------------------------------------------------------------------
def test_a_progressive_jpeg_bomb_is_refused_before_decoding_and_real_jpegs_pass():
    bomb = progressive_jpeg_bomb(960, extra_scans=2000)
    assert len(bomb) < 80_000
    plain = Image.open(io.BytesIO(bomb))
    costly = _seconds(plain.load)  # what decoding it costs (Pillow, no check)
    with pytest.raises(ImageTooLargeError, match=f"more than {MAX_JPEG_SCANS} scans") as refused:
        decode_image(bomb, 960 * 960)
    assert refused.value.code == "image_too_complex"
    checked = _seconds(lambda: pytest.raises(ImageTooLargeError, decode_image, bomb, 960 * 960))
    assert checked < costly / 20, (checked, costly)
    # what encoders write passes: baseline, progressive (10 scans), with EXIF, and a few extra scans
    frame = make_clip(1, 48, 64)[0]
    for options in ({}, {"progressive": True}, {"exif": b"Exif\x00\x00" + b"\x00" * 64, "quality": 95}):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", **options)
        assert decode_image(buffer.getvalue()).shape == (48, 64, 3), options
    assert decode_image(progressive_jpeg_bomb(64, extra_scans=20)).shape == (64, 64, 3)


def test_jpeg_junk_and_fill_bytes_and_png_chunk_floods_are_refused_quickly():
    cases = {"junk": b"\xff\xd8" + b"\x00" * 5_000_000, "fill": b"\xff\xd8" + b"\xff" * 5_000_000,
             "chunks": png_of_many_chunks(1_000_000)}
    for name, data in cases.items():
        started = time.perf_counter()
        with pytest.raises(InvalidImageError):
            decode_image(data)
        assert time.perf_counter() - started < 1.0, name  # Pillow alone: 10-25 s for "fill" and "chunks"


def test_other_formats_are_named_by_their_first_bytes():
    for fmt in ("GIF", "BMP", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(make_clip(1, 8, 8)[0]).save(buffer, fmt)
        with pytest.raises(InvalidImageError, match=f"{fmt} images are not accepted") as refused:
            decode_image(buffer.getvalue())
        assert refused.value.code == "unsupported_image"


# --- videos ----------------------------------------------------------------------------------------
def test_a_frame_that_grows_mid_stream_fails_at_that_frame(tmp_path):
    video = growing_video(tmp_path / "grow.mkv", small=64, big=1920, frames=12, switch=7)
    info = probe_video(video, max_pixels=64 * 64)  # the header and the first frame are 64x64
    assert (info.width, info.height) == (64, 64)
    frames = []
    with pytest.raises(VideoReadError) as failed:
        for _, frame in iter_timed_frames(video):
            frames.append(frame)
    assert len(frames) == 7 and all(f.shape == (64, 64, 3) for f in frames)  # never a 1920x1920 frame
    assert "after 7 frames" in str(failed.value) or "is 1920x1920" in str(failed.value)
    with pytest.raises(VideoReadError, match="limit is 100 pixels"):
        probe_video(video, max_pixels=100)


def test_frames_are_counted_from_packets_and_the_count_stops_past_a_limit(tmp_path):
    video = write_clip(tmp_path / "long.mkv", 40)
    assert probe_video(video).num_frames is None  # MKV: no count in the header
    assert count_frames(video) == 40 and count_frames(video, stop_after=10) == 11


def test_the_probe_runs_in_a_child_and_enforces_frames_size_and_time(tmp_path):
    mkv = write_clip(tmp_path / "long.mkv", 60)
    probed = probe_untrusted(str(mkv), "long.mkv", ProbeLimits(max_pixels=16 * 16))
    assert (probed.width, probed.height, probed.frames, probed.frames_counted) == (16, 16, 60, False)
    assert probe_untrusted(str(mkv), "long.mkv", ProbeLimits(256, max_frames=60)).frames_counted
    with pytest.raises(TooManyFramesError, match="more than 30 frames"):
        probe_untrusted(str(mkv), "long.mkv", ProbeLimits(256, max_frames=30))
    with pytest.raises(VideoReadError, match="long.mkv: frames are 16x16; the limit is 100") as large:
        probe_untrusted(str(mkv), "long.mkv", ProbeLimits(100))
    assert str(tmp_path) not in str(large.value)  # named by the name given, not the path
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoReadError, match="garbage.mp4"):
        probe_untrusted(str(garbage), "garbage.mp4", ProbeLimits(256))
    with pytest.raises(ProbeLimitError, match="took more than"):
        probe_untrusted(str(mkv), "long.mkv", ProbeLimits(256, timeout_s=0.001))


def test_a_header_claiming_millions_of_frames_costs_the_caller_nothing(tmp_path):
    """FFmpeg indexes every claimed frame when it opens the file (about 24 bytes each); the
    probe does that in its child, whose memory is limited, so the caller's does not grow."""
    claim = mp4_claiming_frames(tmp_path / "claim.mp4", 60_000_000)  # ~1.4 GB of index if opened here
    assert claim.stat().st_size < 2000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(VideoReadError):
        probe_untrusted(str(claim), "claim.mp4", ProbeLimits(1280 * 720))
    assert time.perf_counter() - started < 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB


# --- JSON and the stream's header ---------------------------------------------------------------------
def test_json_is_refused_by_size_and_depth_before_parsing():
    deep = b"[" * 60_000 + b"]" * 60_000
    started = time.perf_counter()
    with pytest.raises(InputError, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        parse_json(deep, 1_000_000)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(InputError, match="at most 10 are accepted"):
        parse_json(b'{"a": 1234567}', 10)
    with pytest.raises(InputError, match="not valid JSON"):
        parse_json(b"{'a': 1}", 100)
    assert parse_json(b'{"a": "[[[[[[[[[[[[", "b": [[1]]}', 100) == {"a": "[" * 12, "b": [[1]]}  # strings skipped


@pytest.mark.parametrize("values, field", [
    ({"width": 8, "height": 8, "format": "png", "output": [1]}, "output"),
    ({"width": True, "height": 8, "format": "png"}, "width"),
    ({"width": 8.5, "height": 8, "format": "png"}, "width"),
    ({"width": 8, "height": 8, "format": ["png"]}, "format"),
    ({"width": 8, "height": 8, "format": "png", "token": "k"}, "token"),
    ({"height": 8, "format": "png"}, "width"),
])
def test_stream_headers_name_the_bad_field(values, field):
    with pytest.raises(InputError) as bad:
        validate(StreamHeader, values)
    assert bad.value.field == field and str(bad.value).startswith(f"{field}: ")


@pytest.mark.parametrize("values, field", [
    ({"source": "a.mp4", "codec": ["h264"]}, "codec"), ({"source": ["a.mp4"]}, "source"), ({"codec": "h264"}, "source"),
    ({"source": "a.mp4", "crf": True}, "crf"), ({"source": "a.mp4", "preview_start": float("nan")}, "preview_start"),
    ({"source": "a.mp4", "bogus": 1}, "bogus"),
])
def test_job_requests_name_the_bad_field(values, field):
    with pytest.raises(InputError) as bad:
        validate(JobRequest, values).checked()
    assert bad.value.field == field


# --- what errors may reveal ---------------------------------------------------------------------------
def test_public_texts_keep_file_names_and_drop_paths_pids_hosts_ids_and_tracebacks():
    ray_error = ("RayTaskError(ValueError): ray::ChunkWorker.run() (pid=4242, ip=10.1.2.3, "
                 "actor_id=8f3e2a1b9c0d4e5f6a7b8c9d01000000)\nTraceback (most recent call last):\n  File \"/x/y.py\"")
    assert public_text(ray_error) == "RayTaskError(ValueError): ray::ChunkWorker.run() (pid=?, ip=?, actor_id=?)"
    assert public_text("cannot decode video /home/u/.cache/vsr/jobs/AbCd/input.mkv (after 7 frames)") == \
        "cannot decode video input.mkv (after 7 frames)"
    assert public_text("FileNotFoundError: /srv/models/does_not_exist.pth; rate 24000/1001, 1920x1080") == \
        "FileNotFoundError: does_not_exist.pth; rate 24000/1001, 1920x1080"
    assert public_text("node at [fe80::1]:6379 and 192.168.0.7") == "node at <ip>:6379 and <ip>"
    assert len(public_text("x" * 1000)) <= 300


# --- who may come in ---------------------------------------------------------------------------------
def test_host_names_a_keyless_server_answers_to_are_loopback_by_default():
    from starlette.datastructures import Headers

    from serve.admission import check_host
    from serve.api import ApiError
    from serve.settings import ServeSettings

    default, listed = ServeSettings(), ServeSettings(allowed_hosts=["vsr.example.org"])
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.2"):
        check_host(Headers({"host": host}), default, has_keys=False)
    for host in ("rebound.example:8000", "10.0.0.7:8000", ""):  # DNS rebinding: the page's own name
        with pytest.raises(ApiError, match="host name") as refused:
            check_host(Headers({"host": host}), default, has_keys=False)
        assert refused.value.status == 403
    check_host(Headers({"host": "rebound.example"}), default, has_keys=True)  # a key is not ambient authority
    check_host(Headers({"host": "vsr.example.org:443"}), listed, has_keys=False)
    with pytest.raises(ApiError):
        check_host(Headers({"host": "localhost"}), listed, has_keys=True)  # the list is the list


def test_origins_other_than_the_apps_own_are_refused_on_streams_and_changes():
    from starlette.datastructures import Headers

    from serve.admission import authorize
    from serve.api import ApiError
    from serve.settings import ServeSettings

    settings = ServeSettings(allowed_origins=["https://tools.example.org"])
    own = {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}
    for origin in (None, "http://127.0.0.1:8000", "https://tools.example.org"):
        headers = {**own, "origin": origin} if origin else {"host": own["host"]}
        assert authorize(Headers(headers), "POST", settings, []) == ""
    for method, origin in (("POST", "http://evil.example"), ("DELETE", "null"), ("WEBSOCKET", "http://127.0.0.1:9")):
        with pytest.raises(ApiError, match="not allowed") as refused:
            authorize(Headers({**own, "origin": origin}), method, settings, [])
        assert refused.value.error == "origin_not_allowed"
    assert authorize(Headers({**own, "origin": "http://evil.example"}), "GET", settings, []) == ""  # reads: CORS


def test_a_browser_sends_its_key_as_a_subprotocol():
    import base64

    from starlette.datastructures import Headers

    from serve.admission import authorize
    from serve.api import ApiError
    from serve.settings import ServeSettings, key_owner

    key = "kéy/with+odd=chars"
    encoded = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    headers = Headers({"host": "127.0.0.1:8000"})
    assert authorize(headers, "WEBSOCKET", ServeSettings(), [key], ["vsr.v1", f"bearer.{encoded}"]) == key_owner(key)
    for protocols in (["vsr.v1"], ["vsr.v1", "bearer.d3Jvbmc"], ["bearer.!!!"]):
        with pytest.raises(ApiError, match="subprotocols") as refused:
            authorize(headers, "WEBSOCKET", ServeSettings(), [key], protocols)
        assert refused.value.status == 401


def test_admission_caps_each_key_and_all_of_them():
    from serve.admission import Admission
    from serve.api import ApiError
    from serve.settings import ServeSettings

    admission = Admission(lambda: ServeSettings(max_streams=3, max_streams_per_key=2))
    alice = [admission.acquire("streams", "alice") for _ in range(2)]
    with pytest.raises(ApiError, match="for your key") as refused:
        admission.acquire("streams", "alice")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "10"
    bob = admission.acquire("streams", "bob")
    with pytest.raises(ApiError, match="on this server"):
        admission.acquire("streams", "carol")
    alice[0]()
    alice[0]()  # a second release changes nothing
    admission.acquire("streams", "carol")
    assert admission.as_dict() == {"streams": 3}
    bob()
    assert admission.as_dict() == {"streams": 2}
