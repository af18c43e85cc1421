"""The chunked video engine (vsr_core.video): exact frames, timing, audio, resume, cancel.

The reference for every pixel test is the single-process ``Upscaler.stream`` over the
decoded clip; outputs go to PNG frame folders (lossless) where pixels are compared."""
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from conftest import make_clip, random_model, ray_processes, write_av_clip
from vsr_core.data.video_io import FrameWriter, frame_timestamps, probe_video, read_frames
from vsr_core.inference import Upscaler
from vsr_core.video.pipeline import upscale_file
from vsr_core.video.plan import JobCancelled, PlanMismatchError, plan_chunks


@pytest.fixture(scope="module")
def upscaler():
    return Upscaler(random_model("tiny"), device="cpu", batch_size=4)


def write_clip(path, num_frames, fps=25, height=20, width=26):
    with FrameWriter(path, fps=fps) as writer:
        for frame in make_clip(num_frames, height, width, seed=num_frames):
            writer.write(frame)
    return path


def reference(upscaler, path):
    return np.stack(list(upscaler.stream(iter(read_frames(path)))))


def test_chunks_cover_the_clip_with_two_frames_of_context():
    chunks = plan_chunks(list(range(0, 110, 10)), 4)  # 11 frames, pts 0, 10, ...
    assert [(c.start, c.stop, c.first, c.last) for c in chunks] == [(0, 4, 0, 6), (4, 8, 2, 10), (8, 11, 6, 11)]
    assert [c.first_pts for c in chunks] == [0, 20, 60]


@pytest.mark.parametrize("num_frames", [1, 2, 5, 11, 37])
@pytest.mark.parametrize("chunk_frames,batch_size", [(1, 1), (4, 4), (16, 4)])
def test_chunked_output_equals_one_stream_exactly(tmp_path, num_frames, chunk_frames, batch_size):
    upscaler = Upscaler(random_model("tiny"), device="cpu", batch_size=batch_size)
    source = write_clip(tmp_path / "in.mp4", num_frames)
    result = upscale_file(source, tmp_path / "out", upscaler, chunk_frames=chunk_frames)
    got = read_frames(tmp_path / "out")
    assert result.frames == num_frames and got.shape[0] == num_frames
    assert np.array_equal(got, reference(upscaler, source))
    assert not (tmp_path / "out.parts").exists()  # the work folder is gone once the output is whole


@pytest.mark.parametrize("fps", [25, Fraction(24000, 1001)])
def test_video_output_keeps_frame_count_and_timestamps(tmp_path, upscaler, fps):
    source = write_clip(tmp_path / "in.mp4", 11, fps=fps)
    upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=4)
    info_in, info_out = probe_video(source), probe_video(tmp_path / "out.mp4")
    assert info_out.frame_rate == info_in.frame_rate == Fraction(fps)
    assert (info_out.height, info_out.width) == (3 * info_in.height, 3 * info_in.width)
    seconds = [[float(t * i.time_base) for t in frame_timestamps(p)]
                for i, p in ((info_in, source), (info_out, tmp_path / "out.mp4"))]
    assert seconds[0] == pytest.approx(seconds[1], abs=1e-6) and len(seconds[1]) == 11
    # lossy H.264 twice (input and output), but the same pictures
    decoded = read_frames(tmp_path / "out.mp4").astype(float)
    assert np.abs(decoded - reference(upscaler, source)).mean() < 8


def audio_packets(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return stream.codec_context.name, [(p.pts, bytes(p)) for p in container.demux(stream) if p.size]


def test_audio_is_copied_packet_for_packet(tmp_path, upscaler):
    source = write_av_clip(tmp_path / "in.mp4", make_clip(30, 20, 26))
    upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=8)
    codec_in, packets_in = audio_packets(source)
    codec_out, packets_out = audio_packets(tmp_path / "out.mp4")
    assert codec_out == codec_in == "aac"
    assert packets_out == packets_in  # not re-encoded, same timing
    with av.open(str(tmp_path / "out.mp4")) as out:
        video, audio = out.streams.video[0], out.streams.audio[0]
        assert video.frames == 30
        assert abs(float(audio.duration * audio.time_base) - float(video.duration * video.time_base)) <= 1 / 25


def test_max_frames_keeps_only_the_matching_audio(tmp_path, upscaler):
    source = write_av_clip(tmp_path / "in.mp4", make_clip(50, 20, 26))
    upscale_file(source, tmp_path / "out.mp4", upscaler, max_frames=20)
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert out.streams.video[0].frames == 20
        audio = out.streams.audio[0]
        last = max(p.pts + p.duration for p in out.demux(audio) if p.size)
        assert 20 / 25 - 0.05 <= float(last * audio.time_base) <= 20 / 25 + 0.05


def stop_after(chunks: int):
    """A should_stop that cancels once ``chunks`` chunks are done (checked between chunks)."""
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > chunks

    return should_stop


def test_a_cancelled_run_resumes_from_its_finished_chunks(tmp_path, upscaler):
    source = write_clip(tmp_path / "in.mp4", 37)
    out, parts = tmp_path / "out", tmp_path / "out.parts"
    with pytest.raises(JobCancelled):
        upscale_file(source, out, upscaler, chunk_frames=8, should_stop=stop_after(2))
    assert len(list(parts.glob("chunk_*"))) == 2 and not out.exists()
    with pytest.raises(PlanMismatchError, match="--resume"):
        upscale_file(source, out, upscaler, chunk_frames=8)  # never silently overwritten
    with pytest.raises(PlanMismatchError, match="chunk_frames"):
        upscale_file(source, out, upscaler, chunk_frames=16, resume=True)
    assert len(list(parts.glob("chunk_*"))) == 2  # a refused resume deletes nothing
    result = upscale_file(source, out, upscaler, chunk_frames=8, resume=True)
    assert result.resumed_frames == 16
    assert np.array_equal(read_frames(out), reference(upscaler, source))


def test_default_chunks_balance_workers_and_a_resume_keeps_its_chunks(tmp_path, upscaler):
    from vsr_core.video.plan import auto_chunk_frames

    assert auto_chunk_frames(100_000, 8) == 64  # long videos: the default size
    assert auto_chunk_frames(300, 2) == 38  # a short clip: ~4 chunks per worker
    assert auto_chunk_frames(20, 4) == 16  # never tiny chunks
    source = write_clip(tmp_path / "in.mp4", 37)
    with pytest.raises(JobCancelled):
        upscale_file(source, tmp_path / "out", upscaler, chunk_frames=8, should_stop=stop_after(2))
    result = upscale_file(source, tmp_path / "out", upscaler, resume=True)  # no chunk size given: the plan's
    assert result.resumed_frames == 16
    assert np.array_equal(read_frames(tmp_path / "out"), reference(upscaler, source))


def test_resume_refuses_another_model(tmp_path, upscaler):
    source = write_clip(tmp_path / "in.mp4", 20)
    with pytest.raises(JobCancelled):
        upscale_file(source, tmp_path / "out", upscaler, chunk_frames=4, should_stop=stop_after(1))
    other = Upscaler(random_model("tiny", seed=1), device="cpu", batch_size=4)
    with pytest.raises(PlanMismatchError, match="model"):
        upscale_file(source, tmp_path / "out", other, chunk_frames=4, resume=True)


def test_progress_counts_every_frame_once(tmp_path, upscaler):
    source = write_clip(tmp_path / "in.mp4", 21)
    seen = []
    upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=8, on_progress=seen.append)
    done = [p.frames_done for p in seen]
    assert done == sorted(done) and done[-1] == 21 and {p.frames_total for p in seen} == {21}


def test_a_frame_folder_and_a_file_uri_work_as_input_and_output(tmp_path, upscaler):
    frames = make_clip(6, 20, 26)
    with FrameWriter(tmp_path / "in_frames", fps=25) as writer:
        for frame in frames:
            writer.write(frame)
    upscale_file(tmp_path / "in_frames", f"file://{tmp_path}/uri/out.mp4", upscaler, chunk_frames=4)
    assert probe_video(tmp_path / "uri" / "out.mp4").num_frames == 6


def test_bad_input_gives_a_clear_error_and_writes_nothing(tmp_path, upscaler):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(RuntimeError, match="corrupt or not a video"):
        upscale_file(bad, tmp_path / "out.mp4", upscaler)
    assert not (tmp_path / "out.mp4").exists()


# --- on Ray ----------------------------------------------------------------------------------
@pytest.mark.ray
def test_chunks_on_ray_equal_one_stream_exactly(ray_session, tmp_path, upscaler):
    from vsr_core.video.ray_workers import RayPool

    source = write_av_clip(tmp_path / "in.mp4", make_clip(37, 20, 26))
    result = upscale_file(source, tmp_path / "out", upscaler, chunk_frames=4, ray_pool=RayPool(workers=2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers (num_cpus=1): CPU kernels round by thread count
    try:
        expected = reference(upscaler, source)
    finally:
        torch.set_num_threads(threads)
    assert result.frames == 37 and len(result.nodes) == 1
    assert np.array_equal(read_frames(tmp_path / "out"), expected)


def chunk_worker_processes(running_only: bool = False):
    return ray_processes("ray::ChunkWorker.run" if running_only else "ray::ChunkWorker")


def single_thread_reference(upscaler, source):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers (num_cpus=1): CPU kernels round by thread count
    try:
        return reference(upscaler, source)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.ray
def test_a_killed_chunk_worker_costs_only_its_chunk(ray_session, tmp_path):
    from vsr_core.video.ray_workers import RayPool

    upscaler = Upscaler(random_model("small"), device="cpu", batch_size=4)
    source = write_clip(tmp_path / "in.mp4", 40, height=72, width=96)
    killed = []

    def kill_one_worker_mid_chunk(progress) -> None:
        if not killed and progress.frames_done > 0:
            for process in chunk_worker_processes(running_only=True)[:1]:
                process.kill()
                killed.append(process.pid)

    result = upscale_file(source, tmp_path / "out", upscaler, chunk_frames=8, ray_pool=RayPool(workers=2),
                          on_progress=kill_one_worker_mid_chunk)
    assert killed, "no chunk was running when progress was first reported"
    assert result.frames == 40
    assert np.array_equal(read_frames(tmp_path / "out"), single_thread_reference(upscaler, source))


@pytest.mark.ray
def test_cancel_stops_the_workers(ray_session, tmp_path):
    import time

    from vsr_core.video.ray_workers import RayPool

    upscaler = Upscaler(random_model("small"), device="cpu", batch_size=4)
    source = write_clip(tmp_path / "in.mp4", 64, height=72, width=96)
    seen = []
    with pytest.raises(JobCancelled):
        upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=8, ray_pool=RayPool(workers=2),
                     on_progress=seen.append, should_stop=lambda: bool(seen) and seen[-1].frames_done > 0)
    assert seen[-1].frames_done < 64
    deadline = time.monotonic() + 10
    while chunk_worker_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not chunk_worker_processes()
    assert not (tmp_path / "out.mp4").exists()


TWO_NODE_UPSCALE = """
import json, sys
sys.path.insert(0, "tests")
import ray
from ray.cluster_utils import Cluster
from conftest import random_model
from vsr_core.inference import Upscaler
from vsr_core.video.pipeline import upscale_file
from vsr_core.video.ray_workers import RayPool

source, output = sys.argv[1:3]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
upscaler = Upscaler(random_model("small"), device="cpu", batch_size=4)
result = upscale_file(source, output, upscaler, chunk_frames=8, ray_pool=RayPool(workers=2))
nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
ray.shutdown()
cluster.shutdown()
print("RESULT", json.dumps({"frames": result.frames, "used": list(result.nodes), "cluster": nodes}))
"""


@pytest.mark.ray
def test_chunks_run_on_both_nodes_of_a_two_node_cluster(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODE_UPSCALE)
    source = write_clip(tmp_path / "in.mp4", 80, height=96, width=128)
    run = subprocess.run([sys.executable, str(script), str(source), str(tmp_path / "out.mp4")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""},
                         cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stderr[-3000:]
    outcome = json.loads(lines[-1][len("RESULT "):])
    assert outcome["frames"] == 80 and len(outcome["cluster"]) == 2
    assert sorted(outcome["used"]) == outcome["cluster"]


def test_a_short_join_fails_loudly_and_writes_no_output(tmp_path, upscaler, monkeypatch):
    import vsr_core.video.finalize as finalize

    real = finalize.join_segments
    monkeypatch.setattr(finalize, "join_segments", lambda *args: real(*args) - 1)  # a frame went missing
    source = write_clip(tmp_path / "in.mp4", 9)
    with pytest.raises(RuntimeError, match="8 frames, the input 9"):
        upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=4)
    assert not (tmp_path / "out.mp4").exists()
    assert len(list((tmp_path / "out.mp4.parts").glob("chunk_*"))) == 3  # the finished work is kept
