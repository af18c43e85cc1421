"""A video run that is killed, or whose frames fail, never loses finished work and never writes a
shorter video: a SIGKILLed `vsr upscale` continues with --resume to the same output as an
uninterrupted run; a failing frame fails the run loudly; a resume with other settings is refused."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_clip, random_model
from test_video_engine import audio_packets, stop_after
from video_clips import video_facts, write_clip
from vsr_core.data.video_encoder import EncoderSettings
from vsr_core.data.video_io import frame_timestamps, read_frames
from vsr_core.inference import BicubicBaseline, Upscaler
from vsr_core.video.pipeline import upscale_file
from vsr_core.video.plan import JobCancelled, PlanMismatchError

ROOT = Path(__file__).resolve().parent.parent


def save_model(path: Path) -> Path:
    from vsr_core.checkpoint import save_checkpoint

    model = random_model("tiny", seed=2)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint({
        "step": 1, "epoch": 0, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "scheduler_state_dict": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10).state_dict(),
        "config": {"PRESET": "tiny"}, "training_phase": "pretrain"}, path)


def vsr_upscale(*args: str) -> subprocess.Popen:
    # One torch thread in every run: the same arithmetic in each, and no two runs fighting for the cores.
    return subprocess.Popen([sys.executable, "-m", "vsr_core.cli", "upscale", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_sigkilled_run_resumes_to_the_uninterrupted_output(tmp_path):
    source = write_clip(tmp_path / "in.mp4", make_clip(48, 48, 64), audio=True)
    checkpoint = save_model(tmp_path / "model.pth")
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--chunk-frames", "8", "--codec", "h265",
              "--crf", "22"]
    out, parts = tmp_path / "out.mp4", tmp_path / "out.mp4.parts"
    run = vsr_upscale(str(source), str(out), *common)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("chunk_*.mp4"))) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)  # no handler runs: as a power cut or the OOM killer
    run.communicate()
    done = len(list(parts.glob("chunk_*.mp4")))
    assert 2 <= done < 6, f"killed with {done} of 6 chunks done"
    assert not out.exists()
    resumed = vsr_upscale(str(source), str(out), *common, "--resume")
    resumed_out, resumed_err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_err[-2000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the runs (OMP_NUM_THREADS=1): CPU kernels round by thread count
    try:
        upscale_file(source, tmp_path / "ref.mp4", Upscaler.from_checkpoint(checkpoint, device="cpu"),
                     chunk_frames=8, encoder=EncoderSettings("h265", crf=22))  # uninterrupted
    finally:
        torch.set_num_threads(threads)
    assert f"{8 * done} of them from an earlier run" in resumed_out
    assert not parts.exists()
    got, want = video_facts(out), video_facts(tmp_path / "ref.mp4")
    assert got["frames"] == want["frames"] == 48 and got["seconds"] == want["seconds"]
    assert got["metadata"]["vsr_encoder"] == want["metadata"]["vsr_encoder"]
    difference = np.abs(read_frames(out).astype(int) - read_frames(tmp_path / "ref.mp4").astype(int)).max()
    print(f"reliability: SIGKILL with {done} of 6 chunks done, resumed {8 * done} of 48 frames, "
          f"max difference from an uninterrupted run {difference} LSB")
    assert difference <= 1
    assert audio_packets(out) == audio_packets(source)


@pytest.fixture
def upscaler():
    return Upscaler.bicubic(device="cpu", batch_size=4)


def _fail_on_third_batch(monkeypatch):
    calls = {"n": 0}
    forward = BicubicBaseline.forward

    def fails_on_the_third_batch(self, frames):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return forward(self, frames)

    monkeypatch.setattr(BicubicBaseline, "forward", fails_on_the_third_batch)
    return forward


def fail_then_resume(tmp_path, upscaler, monkeypatch):
    """A 20-frame run whose third batch fails, checked as it fails, then resumed: (source, out, result)."""
    source = write_clip(tmp_path / "in.mp4", make_clip(20, 24, 32))
    forward = _fail_on_third_batch(monkeypatch)
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        upscale_file(source, out, upscaler, chunk_frames=4)
    assert not out.exists()  # no video at all rather than a shorter one
    assert len(list((tmp_path / "out.mp4.parts").glob("chunk_*"))) == 2  # the chunks before it are kept
    monkeypatch.setattr(BicubicBaseline, "forward", forward)
    return source, out, upscale_file(source, out, upscaler, chunk_frames=4, resume=True)


def test_a_failing_frame_fails_the_run_and_keeps_the_finished_chunks(tmp_path, upscaler, monkeypatch):
    source, out, result = fail_then_resume(tmp_path, upscaler, monkeypatch)
    assert result.resumed_frames == 8
    assert len(read_frames(out)) == 20
    assert video_facts(out)["seconds"] == video_facts(source)["seconds"]


def test_a_resume_after_a_failing_frame_equals_an_uninterrupted_run(tmp_path, upscaler, monkeypatch):
    source, out, _ = fail_then_resume(tmp_path, upscaler, monkeypatch)
    upscale_file(source, tmp_path / "ref.mp4", upscaler, chunk_frames=4)
    assert np.array_equal(read_frames(out), read_frames(tmp_path / "ref.mp4"))


def test_a_frame_the_decoder_drops_fails_the_run(tmp_path, upscaler, monkeypatch):
    import vsr_core.video.chunk as chunk

    real = chunk.iter_timed_frames
    source = write_clip(tmp_path / "in.mp4", make_clip(16, 24, 32))
    lost = frame_timestamps(source)[9]

    def drops_frame_9(*args, **kwargs):
        for pts, frame in real(*args, **kwargs):
            if pts != lost:
                yield pts, frame

    monkeypatch.setattr(chunk, "iter_timed_frames", drops_frame_9)
    with pytest.raises(ValueError, match="frames ended"):
        upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=4)
    assert not (tmp_path / "out.mp4").exists()
    assert len(list((tmp_path / "out.mp4.parts").glob("chunk_*"))) >= 1


def test_the_output_check_refuses_a_video_of_another_duration(tmp_path, upscaler, monkeypatch):
    import vsr_core.video.finalize as finalize

    real = finalize.join_segments

    def stretched(segments, timestamps, *args):  # the last frame 2 frames (1024 ticks of 1/12800 s) late
        return real(segments, [*timestamps[:-1], timestamps[-1] + 2 * 512], *args)

    monkeypatch.setattr(finalize, "join_segments", stretched)
    source = write_clip(tmp_path / "in.mp4", make_clip(8, 24, 32))
    with pytest.raises(RuntimeError, match="more than one frame apart"):
        upscale_file(source, tmp_path / "out.mp4", upscaler, chunk_frames=4)
    assert not (tmp_path / "out.mp4").exists() and len(list((tmp_path / "out.mp4.parts").glob("chunk_*"))) == 2


def test_a_resume_with_other_encoder_settings_is_refused(tmp_path, upscaler):
    source = write_clip(tmp_path / "in.mp4", make_clip(16, 24, 32))
    out = tmp_path / "out.mp4"
    with pytest.raises(JobCancelled):
        upscale_file(source, out, upscaler, chunk_frames=4, should_stop=stop_after(2))
    with pytest.raises(PlanMismatchError, match="encoder"):
        upscale_file(source, out, upscaler, chunk_frames=4, resume=True, encoder=EncoderSettings(crf=23))
    assert len(list((tmp_path / "out.mp4.parts").glob("chunk_*"))) == 2
    assert upscale_file(source, out, upscaler, chunk_frames=4, resume=True).resumed_frames == 8
