"""The overlapped stages (vsr_core.overlap) and the overlapped chunk of a video: the same frames
as the plain serial path, in order, and every failure raised in the driving thread."""
import threading
import time

import numpy as np
import pytest

from conftest import make_clip, random_model
from vsr_core.data.video_io import FrameWriter, iter_timed_frames, probe_video, read_frames
from vsr_core.inference import Upscaler
from vsr_core.overlap import BackgroundSink, background
from vsr_core.video.pipeline import upscale_file


def stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("vsr-", "test-"))]


def test_a_background_sink_consumes_every_item_in_order_and_close_waits_for_them():
    seen = []

    def slow(item):
        time.sleep(0.002)
        seen.append(item)

    with BackgroundSink(slow, ahead=2, name="test-sink") as sink:
        for i in range(20):
            sink.put(i)
    assert seen == list(range(20))  # all of them by the time the block ends
    assert not stage_threads()


def test_a_failing_consumer_fails_the_producer_and_its_thread_ends():
    def fails_on_3(item):
        if item == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundSink(fails_on_3, ahead=1, name="test-sink") as sink:
            for i in range(100):
                sink.put(i)
    assert not stage_threads()


def test_leaving_a_sink_on_an_error_does_not_consume_the_rest():
    seen = []
    with pytest.raises(KeyError):
        with BackgroundSink(lambda item: (time.sleep(0.01), seen.append(item)), ahead=8, name="test-sink") as sink:
            for i in range(8):
                sink.put(i)
            raise KeyError("the model failed")
    assert len(seen) < 8 and seen == list(range(len(seen)))
    assert not stage_threads()


def test_background_iteration_keeps_order_and_raises_in_the_consumer():
    assert list(background(iter(range(50)), 3, "test-source")) == list(range(50))

    def broken():
        yield 1
        raise ValueError("corrupt packet")

    with pytest.raises(ValueError, match="corrupt packet"):
        list(background(broken(), 3, "test-source"))
    assert not stage_threads()


@pytest.fixture(scope="module")
def upscaler():
    return Upscaler(random_model("tiny"), device="cpu", batch_size=4)


def test_the_overlapped_video_equals_a_serial_encode_of_the_plain_stream(tmp_path, upscaler):
    clip = make_clip(13, 20, 26, seed=4)
    source = tmp_path / "in.mp4"
    with FrameWriter(source, fps=25) as writer:
        for frame in clip:
            writer.write(frame)
    upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=16)  # one chunk: one encode
    # the serial path: decode, stream, encode one after the other in this thread, same settings
    frames = (frame for _, frame in iter_timed_frames(source))
    with FrameWriter(tmp_path / "serial.mp4", fps=25, color=probe_video(source).color) as writer:
        for frame in upscaler.stream(frames):
            writer.write(frame)
    assert np.array_equal(read_frames(tmp_path / "out.mp4"), read_frames(tmp_path / "serial.mp4"))
    assert not stage_threads()


def test_an_encoder_failure_fails_the_chunk_and_stops_every_stage(tmp_path, upscaler, monkeypatch):
    source = tmp_path / "in.mp4"
    with FrameWriter(source, fps=25) as writer:
        for frame in make_clip(12, 20, 26):
            writer.write(frame)
    real_write = FrameWriter.write

    def fails_on_the_fifth(self, frame, pts=None):
        if self.count == 5:
            raise OSError("No space left on device")
        real_write(self, frame, pts)

    monkeypatch.setattr(FrameWriter, "write", fails_on_the_fifth)
    with pytest.raises(OSError, match="No space left"):
        upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=12)
    assert not (tmp_path / "out.mp4").exists()
    assert not stage_threads()


def test_a_chunks_encoder_finishes_while_the_next_chunk_is_upscaled(tmp_path, monkeypatch):
    source = tmp_path / "in.mp4"
    with FrameWriter(source, fps=25) as writer:
        for frame in make_clip(12, 20, 26):
            writer.write(frame)
    upscaler = Upscaler(random_model("tiny"), device="cpu", batch_size=4)
    next_chunk_upscaled = threading.Event()
    waited = []
    real_close, real_windows = FrameWriter.close, Upscaler.upscale_reusing_features

    def close(self):
        if self.count and self.first_index == 0:  # chunk 0's encoder, closing in its thread
            waited.append(next_chunk_upscaled.wait(timeout=20))
        real_close(self)

    def upscale(self, centers, *args, **kwargs):
        if centers[0] >= 4:  # chunk 1 (frames 4..7) is being upscaled
            next_chunk_upscaled.set()
        return real_windows(self, centers, *args, **kwargs)

    monkeypatch.setattr(FrameWriter, "close", close)
    monkeypatch.setattr(Upscaler, "upscale_reusing_features", upscale)
    upscale_file(source, tmp_path / "out", upscaler, chunk_frames=4)
    assert waited == [True]  # chunk 0's encoder was still closing when chunk 1 ran the model
    expected = np.stack(list(Upscaler(random_model("tiny"), device="cpu", batch_size=4).stream(
        iter(read_frames(source)))))
    assert np.array_equal(read_frames(tmp_path / "out"), expected)
