"""Which frames are trained on and which are validated: the held-out end of every trained clip
(HOLDOUT_FRAMES / HOLDOUT_FRACTION), VAL_DATA trained on with TRAIN_ON_VAL_DATA, and proof by the
frame indices each path really reads that training and validation never share a frame."""
from collections import defaultdict

import numpy as np
import pytest

from conftest import tiny_train_config, write_clips
from vsr_core.config import TrainConfig
from vsr_core.configs import shipped_path
from vsr_core.data import datasets, validation_set
from vsr_core.data.datasets import held_out_length, trained_clips, training_loader
from vsr_core.data.samples import sample_clip
from vsr_core.data.video_io import iter_frames
from vsr_core.engine.validation import validation_items



@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))


class RecordingClip:
    """A clip [T,H,W,3] that records the index of every frame read from it (in the whole clip's
    numbering, also through a slice such as the training part ``clip[:n]``)."""

    def __init__(self, frames: np.ndarray, reads: set, offset: int = 0):
        self.frames, self.reads, self.offset = frames, reads, offset

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple:
        return self.frames.shape

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, _, step = key.indices(len(self.frames))
            assert step == 1
            return RecordingClip(self.frames[key], self.reads, self.offset + start)
        index = key[0] if isinstance(key, tuple) else key
        self.reads.add(self.offset + int(index))
        return self.frames[key]


@pytest.fixture
def recorded_reads(monkeypatch):
    """Every clip loaded is a RecordingClip; ``reads["phase"]`` names the dict the reads go to."""
    reads = {"phase": None, "train": defaultdict(set), "val": defaultdict(set)}
    load = datasets.load_clip

    def recording_load(path, max_frames=0):
        return RecordingClip(load(path, max_frames), reads[reads["phase"]][path.name])

    monkeypatch.setattr(datasets, "load_clip", recording_load)
    monkeypatch.setattr(validation_set, "load_clip", recording_load)
    return reads


@pytest.mark.parametrize("changes,first,val_only", [
    ({"train_on_val_data": True, "holdout_fraction": 0.25}, {"train.mp4": 12, "val.mp4": 12}, set()),
    ({"holdout_frames": 5}, {"train.mp4": 11}, {"val.mp4"}),
])
def test_training_and_validation_never_read_the_same_frame(tmp_path, recorded_reads, changes, first, val_only):
    clips = write_clips(tmp_path, num_frames=16, height=36, width=42)
    config = tiny_train_config(clips, tmp_path / "run", num_patches=200, val_crop=18, val_crops_per_frame=2,
                               **changes)
    recorded_reads["phase"] = "train"
    batches = iter(training_loader(config, 0))
    for _ in range(config.num_patches // config.batch_size):  # every patch once: all centers, near certainly
        next(batches)
    recorded_reads["phase"] = "val"
    items = validation_items(config)

    train, val = recorded_reads["train"], recorded_reads["val"]
    assert set(train) == set(first)  # the clips trained on, and only those
    for name, held_out_from in first.items():
        # training reads every frame before the held-out end (windows reach its last frame) and none after
        assert train[name] == set(range(held_out_from)), name
        # validation reads held-out frames only, windows included, and reaches the first of them
        assert min(val[name]) == held_out_from and max(val[name]) == 15, name
        assert train[name].isdisjoint(val[name])
    for name in val_only:  # a VAL_DATA clip not trained on is validated over its whole length
        assert name not in train and min(val[name]) == 0 and max(val[name]) == 15
    assert {item.clip for item in items} == {f"{n} (held out)" for n in first} | val_only
    assert all(item.frame >= first[item.clip.split(" ")[0]] + 2 for item in items if "held out" in item.clip)


def test_the_held_out_length_per_clip():
    fraction = TrainConfig(holdout_fraction=0.25)
    assert held_out_length(fraction, 250) == 63 and held_out_length(fraction, 132) == 33  # rounded up
    assert held_out_length(TrainConfig(holdout_fraction=0.1), 250) == 25  # 0.1 x 250 is 25.000000000000004 in floats
    assert held_out_length(TrainConfig(holdout_frames=24), 250) == held_out_length(TrainConfig(holdout_frames=24), 132) == 24
    assert held_out_length(TrainConfig(), 250) == 0


def test_a_clip_in_both_train_and_val_data_is_refused(tmp_path):
    clips = write_clips(tmp_path)
    config = tiny_train_config(clips, tmp_path / "run", val_data=[str(clips["val"]), str(clips["train"])],
                               holdout_frames=2)
    with pytest.raises(ValueError, match=r"train\.mp4 is in both TRAIN_DATA and VAL_DATA"):
        trained_clips(config)
    with pytest.raises(ValueError, match="in both TRAIN_DATA and VAL_DATA"):
        validation_items(config)


def test_a_fraction_that_leaves_too_few_training_frames_names_the_key(tmp_path):
    clips = write_clips(tmp_path, num_frames=8)
    config = tiny_train_config(clips, tmp_path / "run", holdout_fraction=0.7)  # 6 of 8 held out, 2 left
    with pytest.raises(ValueError, match=r"HOLDOUT_FRACTION 0.7 \(6 frames\) leaves fewer than 3 training frames"):
        trained_clips(config)


@pytest.mark.parametrize("config_name", ["cpu_small", "sweep_base"])
def test_the_cpu_configs_hold_out_bikes_from_a_shot_change(config_name):
    """The CPU configs train on bikes.mp4 and hold out its last quarter, which starts at frame 187,
    the first frame of a new shot: no held-out shot is also trained on."""
    config = TrainConfig.from_json(shipped_path(config_name))
    assert config.train_on_val_data and config.val_data == [] and config.train_data == []
    held_out_from = 250 - held_out_length(config, 250)
    assert held_out_from == 187
    frames = np.stack([f for i, f in enumerate(iter_frames(sample_clip("bikes.mp4"), 196)) if i >= 178])
    change = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # change[k]: frame 178+k -> 179+k
    assert int(np.argmax(change)) + 179 == held_out_from
    assert change.max() > 5 * np.median(change)
