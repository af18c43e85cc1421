"""The decoded-clip cache (load_clip): streamed to disk frame by frame under a memory cap
smaller than the clip, complete or absent (atomic rename), decoded once by parallel loaders."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_clips
from vsr_core.data.datasets import NPY_HEADER_BYTES, load_clip
from vsr_core.data.video_io import FrameWriter, read_frames

REPO = Path(__file__).resolve().parents[1]

# Decode ``clip`` with private memory (RLIMIT_DATA: heap and anonymous mappings, not the
# file-backed mmap of the cache) capped at what the process uses now + BUDGET_MB.
UNDER_A_CAP = """
import resource, sys
from pathlib import Path
import numpy as np
from vsr_core.data.datasets import load_clip
from vsr_core.data.video_io import iter_frames

clip, how, budget_mb = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
next(iter_frames(clip))  # the decoder's libraries are loaded before the cap
data = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData:"))
resource.setrlimit(resource.RLIMIT_DATA, (data + budget_mb * 2**20, resource.RLIM_INFINITY))
frames = np.stack(list(iter_frames(clip))) if how == "whole" else load_clip(clip)
print("LOADED", frames.shape, flush=True)
"""

# Load ``clip`` when the file ``go`` appears; the decode is slowed down so the other loader
# arrives while it runs. Each decode start is logged to ``log``.
AT_THE_SAME_TIME = """
import os, sys, time
from pathlib import Path
from vsr_core.data import datasets

clip, log, go = map(Path, sys.argv[1:4])
decode = datasets.iter_frames

def logged_slow_decode(*args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.5)
    yield from decode(*args, **kwargs)

datasets.iter_frames = logged_slow_decode
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
frames = datasets.load_clip(clip)
print(frames.shape, int(frames.sum(dtype="int64")), flush=True)
"""


def python(script: str, *args: str) -> subprocess.Popen:
    """``script`` in a new interpreter with this checkout's vsr_core and the test's frame cache."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # VSR_CACHE_DIR: set by the frame_cache fixture
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))


def test_the_cache_holds_the_clip_exactly_and_leaves_no_temp_files(tmp_path):
    clips = write_clips(tmp_path)
    cached = load_clip(clips["train"])
    assert isinstance(cached, np.memmap) and cached.offset == NPY_HEADER_BYTES
    assert np.array_equal(cached, read_frames(clips["train"]))
    assert np.array_equal(load_clip(clips["train"], 3), read_frames(clips["train"], 3))
    files = sorted(p.name for p in (tmp_path / "cache" / "frames").iterdir())
    assert [f for f in files if f.endswith(".npy")] and not [f for f in files if f.endswith(".tmp")]


def test_a_failed_decode_leaves_no_cache(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    with pytest.raises(Exception, match="cannot"):
        load_clip(broken)
    frames = tmp_path / "cache" / "frames"
    assert not [p for p in frames.glob("*") if p.suffix in (".npy", ".tmp")]  # the next load decodes again


def test_a_clip_bigger_than_the_memory_cap_is_cached(tmp_path):
    frames, height, width, budget_mb = 96, 540, 960, 48  # 149 MB decoded, 3x the cap
    clip = tmp_path / "big.mp4"
    x = np.arange(width, dtype=np.uint8)
    with FrameWriter(clip, fps=25) as writer:
        for t in range(frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[..., 0], frame[..., 1] = x + t, t  # cheap to encode
            writer.write(frame)
    assert frames * height * width * 3 > 2.5 * budget_mb * 2**20

    whole = python(UNDER_A_CAP, str(clip), "whole", str(budget_mb))
    out, err = whole.communicate(timeout=300)
    assert whole.returncode != 0 and "Cannot allocate memory" in err + out, (out, err[-2000:])  # the old way fails

    streamed = python(UNDER_A_CAP, str(clip), "streamed", str(budget_mb))
    out, err = streamed.communicate(timeout=300)
    assert streamed.returncode == 0 and f"LOADED ({frames}, {height}, {width}, 3)" in out, err[-2000:]
    cached = load_clip(clip)
    assert cached.shape == (frames, height, width, 3)
    assert abs(float(cached[-1, :, :, 1].mean()) - (frames - 1)) < 3  # the last frame really is in it (lossy codec)


def test_two_processes_loading_one_clip_at_once_decode_it_once(tmp_path):
    clip = write_clips(tmp_path)["train"]
    log, go = tmp_path / "decodes.log", tmp_path / "go"
    loaders = [python(AT_THE_SAME_TIME, str(clip), str(log), str(go)) for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in loaders] == ["ready", "ready"]
        go.touch()
        results = [p.communicate(timeout=120) for p in loaders]
    finally:
        for p in loaders:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in loaders), [err[-2000:] for _, err in results]
    expected = read_frames(clip)
    assert [out.strip() for out, _ in results] == [f"{expected.shape} {int(expected.sum(dtype='int64'))}"] * 2
    assert len(log.read_text().split()) == 1  # one decode; the other process waited for it and read the cache
