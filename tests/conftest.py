import os

import numpy as np
import pytest
import torch

torch.set_num_threads(2)
# The suite's numeric references are fp32 (tolerances of 1e-4 and 1 gray level), so "auto"
# means fp32 here, in this process and in the ones it starts (CLI, Ray workers); bf16, fp16,
# the auto rule and the backends are tested explicitly (test_precision.py, test_backends.py).
os.environ.setdefault("VSR_PRECISION", "fp32")


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


def write_clips(folder, num_frames: int = 8, height: int = 36, width: int = 42) -> dict:
    """A training and a validation clip as real mp4 files: {"train": path, "val": path}."""
    from vsr_core.data.video_io import FrameWriter

    paths = {}
    for name, seed in (("train", 0), ("val", 1)):
        paths[name] = folder / f"{name}.mp4"
        with FrameWriter(paths[name], fps=25) as writer:
            for frame in make_clip(num_frames, height, width, seed=seed):
                writer.write(frame)
    return paths


def tiny_train_config(clips: dict, output_dir, **overrides):
    """A TrainConfig for the tiny preset on ``write_clips`` clips: a step takes milliseconds."""
    from vsr_core.config import TrainConfig

    values = dict(
        preset="tiny", batch_size=2, patch_size=8, num_patches=16, accumulation_steps=3, max_steps=4,
        val_step_every=2, save_step_every=2, log_tboard_every=1, perceptual_weight=0.0, num_workers=0,
        train_data=[str(clips["train"])], val_data=[str(clips["val"])], val_max_frames=3,
        output_dir=str(output_dir), lr_exponent=-3, milestone_every=0, seed=3,
    )
    values.update(overrides)
    return TrainConfig(**values)


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


def write_av_clip(path, frames: np.ndarray, fps=25, sample_rate: int = 48000, tone: float = 440.0):
    """An mp4 with H.264 video and an AAC audio track (a sine tone) as long as the video."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = container.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            container.mux(video.encode(video_frame))
        t = np.arange(int(len(frames) / Fraction(fps) * sample_rate)) / sample_rate
        samples = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            audio_frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
            audio_frame.sample_rate, audio_frame.pts = sample_rate, start
            container.mux(audio.encode(audio_frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    return path


def ray_processes(title: str) -> list:
    """The processes of this test session's Ray instance whose title contains ``title`` (e.g.
    "ray::ChunkWorker"), found below its raylet: other Ray instances on the machine do not count."""
    import psutil
    import ray

    node = ray._private.worker._global_node
    if node is None or "raylet" not in node.all_processes:
        return []
    try:
        children = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for process in children:
        try:
            if process.status() != psutil.STATUS_ZOMBIE and any(title in part for part in process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return found


class TinySweep:
    """A real 2-trial sweep made by tune/search.py (tiny preset, ``max_steps`` steps) and what a reader saw
    of its folder while it ran: ``live`` holds a snapshot taken whenever a trial reported a new step."""

    max_steps = 96

    def __init__(self, storage, name: str):
        self.storage, self.name = storage, name
        self.path = storage / name
        self.live: list[list[dict]] = []


@pytest.fixture(scope="session")
def tiny_sweep(ray_session, tmp_path_factory) -> TinySweep:
    """One session-wide sweep for the experiments reader, its API and the page (about a minute)."""
    import json
    import threading
    import time

    from tune import search
    from vsr_core.experiments import ExperimentsReader

    folder = tmp_path_factory.mktemp("tiny_sweep")
    os.environ.setdefault("VSR_CACHE_DIR", str(folder / "cache"))
    clips = write_clips(folder, 8, 48, 48)
    config = {"PRESET": "tiny", "MAX_STEPS": TinySweep.max_steps, "VAL_STEP_EVERY": 8, "LOG_TBOARD_EVERY": 8,
              "ACCUMULATION_STEPS": 1, "BATCH_SIZE": 2, "PATCH_SIZE": 8, "NUM_PATCHES": 50, "VAL_MAX_FRAMES": 2,
              "PERCEPTUAL_WEIGHT": 0.0, "NUM_WORKERS": 0}
    (folder / "base.json").write_text(json.dumps(config))
    sweep = TinySweep(folder / "storage", "sweep")
    args = search.parse_args(["--config", str(folder / "base.json"), "--data", str(clips["train"]),
                              "--val-data", str(clips["val"]), "--storage-path", str(sweep.storage),
                              "--name", sweep.name, "--num-samples", "2", "--max-concurrent", "1",
                              "--grace-steps", "8", "--keep-checkpoints", "0"])
    outcome: dict = {}
    # The driver writes the trials' result files to the storage with its experiment state, every 10 s by
    # default: every second here, so the reader sees the trials while they run.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    thread = threading.Thread(target=lambda: outcome.setdefault(
        "code", search.run_sweep(args, search.base_config(args), str(sweep.path))))
    thread.start()
    reader, seen = ExperimentsReader([str(sweep.storage)]), set()
    while thread.is_alive():
        snapshot = reader.snapshot()
        steps = {(t["trial_id"], t["steps"], t["state"]) for e in snapshot for t in e["trials"]}
        if not steps <= seen:
            seen |= steps
            sweep.live.append(snapshot)
        time.sleep(0.1)
    thread.join()
    del os.environ["TUNE_GLOBAL_CHECKPOINT_S"]
    assert outcome.get("code") == 0, "the tiny sweep failed"
    return sweep
