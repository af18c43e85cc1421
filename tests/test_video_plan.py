"""The plan of a video run (vsr_core.video.plan.plan_video) and who executes it: the frames read,
chunks aligned to the batch size with their context, the work folder's resume state, the chunk
size per executor; an executor given to upscale_file; and `vsr upscale --ray` from its flags to
the chunk workers, with the workers' device rule."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import random_model
from test_video_engine import stop_after, write_clip
from vsr_core.cli import main
from vsr_core.data.video_io import probe_video, read_frames
from vsr_core.inference import Upscaler
from vsr_core.options import InferenceOptions, OptionError
from vsr_core.video.executors import LocalExecutor
from vsr_core.video.pipeline import upscale_file
from vsr_core.video.plan import JobCancelled, PlanMismatchError, VideoRequest, plan_video

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def upscaler():
    return Upscaler(random_model("tiny"), device="cpu", batch_size=4)


def test_chunks_are_aligned_to_the_batch_size_and_carry_their_context(tmp_path, upscaler):
    source = write_clip(tmp_path / "in.mp4", 23)
    plan = plan_video(VideoRequest(source, tmp_path / "out.mp4", chunk_frames=6), LocalExecutor(upscaler))
    assert [(c.start, c.stop, c.first, c.last) for c in plan.chunks] == [(0, 8, 0, 10), (8, 16, 6, 18),
                                                                          (16, 23, 14, 23)]  # 6 -> 8: batches of 4
    assert plan.todo == plan.chunks and plan.resumed_frames == 0 and plan.total == plan.clip_frames == 23
    assert (plan.encoder.codec, plan.encoder.crf, plan.encoder.preset) == ("h264", 18, "medium")  # resolved
    assert plan.output == str(tmp_path / "out.mp4") and plan.work.folder == tmp_path / "out.mp4.parts"
    task = plan.task(plan.chunks[1])
    assert (task.chunk, task.clip_frames, task.segment_suffix, task.encoder) == (plan.chunks[1], 23, ".mp4",
                                                                                  plan.encoder)
    assert (task.frame_rate, task.color) == (probe_video(source).frame_rate, probe_video(source).color)
    record = json.loads((plan.work.folder / "plan.json").read_text())
    assert (record["chunk_frames"], record["frames"], record["option_batch_size"], record["option_precision"],
            record["option_output_kind"]) == (8, 23, 4, upscaler.precision, ".mp4")


def test_a_preview_reads_around_its_frames_and_max_frames_cuts_a_clip(tmp_path, upscaler):
    source = write_clip(tmp_path / "in.mp4", 50)  # 25 fps
    runner = LocalExecutor(upscaler)
    preview = plan_video(VideoRequest(source, tmp_path / "preview", preview=(0.4, 0.4), chunk_frames=4), runner)
    assert (preview.first, preview.stop, preview.clip_frames, preview.encoder) == (10, 20, 50, None)
    assert (preview.chunks[0].first, preview.chunks[-1].last) == (8, 22)  # context from outside the preview
    assert preview.time_range() == pytest.approx((0.4, 0.8))
    clipped = plan_video(VideoRequest(source, tmp_path / "clip", max_frames=20, chunk_frames=4), runner)
    assert (clipped.first, clipped.stop, clipped.clip_frames) == (0, 20, 20)
    assert clipped.chunks[-1].last == 20  # a clip of its own: its last windows reflect at frame 19
    assert clipped.time_range()[0] is None and clipped.time_range()[1] == pytest.approx(0.8)


def test_a_resumed_plan_holds_only_the_unfinished_chunks(tmp_path, upscaler):
    source, out = write_clip(tmp_path / "in.mp4", 20), tmp_path / "out"
    with pytest.raises(JobCancelled):
        upscale_file(source, out, upscaler, chunk_frames=4, should_stop=stop_after(2))
    plan = plan_video(VideoRequest(source, out, resume=True), LocalExecutor(upscaler))  # the chunk size: the plan's
    assert [c.index for c in plan.chunks] == [0, 1, 2, 3, 4] and [c.index for c in plan.todo] == [2, 3, 4]
    assert plan.resumed_frames == 8
    with pytest.raises(PlanMismatchError, match="--resume"):
        plan_video(VideoRequest(source, out), LocalExecutor(upscaler))


class ThreeWorkers(LocalExecutor):
    def parallel_chunks(self) -> int:
        return 3


def test_default_chunks_are_sized_for_the_executors_parallel_chunks(tmp_path, upscaler):
    source = write_clip(tmp_path / "in.mp4", 100)
    one = plan_video(VideoRequest(source, tmp_path / "one"), LocalExecutor(upscaler))
    three = plan_video(VideoRequest(source, tmp_path / "three"), ThreeWorkers(upscaler))
    assert one.chunks[0].frames == 28 and three.chunks[0].frames == 16  # 25 and 9 (-> the minimum), rounded to 4s


def test_upscale_file_runs_its_plan_through_a_given_executor(tmp_path, upscaler):
    class Recording(LocalExecutor):
        def run(self, plan, tracker):
            self.ran = [chunk.index for chunk in plan.todo]
            return super().run(plan, tracker) | {"node-a"}

    source, executor = write_clip(tmp_path / "in.mp4", 9), Recording(upscaler)
    result = upscale_file(source, tmp_path / "out", executor, chunk_frames=4)
    assert executor.ran == [0, 1, 2] and result.nodes == ("node-a",) and result.frames == 9
    assert np.array_equal(read_frames(tmp_path / "out"), np.stack(list(upscaler.stream(iter(read_frames(source))))))
    with pytest.raises(ValueError, match="ray_pool"):
        from vsr_core.video.ray_workers import RayPool

        upscale_file(source, tmp_path / "again", executor, ray_pool=RayPool(workers=1))


def test_ray_workers_run_the_options_on_the_device_of_their_gpus():
    from vsr_core.video.ray_workers import RayExecutor, RayPool

    model = random_model("tiny")
    assert RayExecutor(model, InferenceOptions(batch_size=2), RayPool(num_gpus=1)).options == InferenceOptions(
        device="cuda", batch_size=2)
    assert RayExecutor(model, InferenceOptions(), RayPool()).options.device == "cpu"
    with pytest.raises(OptionError, match="^device: 'cuda' contradicts the Ray workers' 0 GPUs each"):
        RayExecutor(model, InferenceOptions(device="cuda"), RayPool())


def test_vsr_upscale_on_ray_with_a_contradicting_device_fails_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("Ray was started"))
    source = write_clip(tmp_path / "in.mp4", 3)
    code = main(["upscale", str(source), str(tmp_path / "out.mp4"), "--bicubic", "--ray", "--device", "cuda"])
    assert code == 2
    assert "error: device: 'cuda' contradicts the Ray workers' 0 GPUs each" in capsys.readouterr().err


@pytest.mark.ray
def test_vsr_upscale_on_ray_runs_the_chunks_on_workers(tmp_path):
    """The whole path of `vsr upscale --ray`: flags -> InferenceOptions -> RayExecutor -> chunk
    workers (a Ray of its own, in a subprocess: the command starts and stops it)."""
    source = write_clip(tmp_path / "in.mp4", 10)
    run = subprocess.run([sys.executable, "-m", "vsr_core.cli", "upscale", str(source), str(tmp_path / "out"),
                          "--bicubic", "--ray", "--workers", "2", "--chunk-frames", "4", "--batch-size", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 Ray workers (cpu), precision auto (as each worker resolves it), torch" in run.stdout
    got = read_frames(tmp_path / "out")
    expected = np.stack(list(Upscaler.bicubic(device="cpu").stream(iter(read_frames(source)))))
    assert got.shape == expected.shape == (10, 60, 78, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
