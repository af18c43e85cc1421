import numpy as np
import pytest
import torch

from conftest import make_clip, random_model
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.frames import window_indices
from vsr_core.inference import Upscaler


def test_reflection_padding_indices():
    assert window_indices(0, 10) == [2, 1, 0, 1, 2]
    assert window_indices(1, 10) == [1, 0, 1, 2, 3]
    assert window_indices(5, 10) == [3, 4, 5, 6, 7]
    assert window_indices(9, 10) == [7, 8, 9, 8, 7]
    assert window_indices(8, 10) == [6, 7, 8, 9, 8]
    assert window_indices(0, 1) == [0, 0, 0, 0, 0]
    assert window_indices(0, 2) == [0, 1, 0, 1, 0]
    assert window_indices(1, 3) == [1, 0, 1, 2, 1]


def reference_upscale(model, clip: np.ndarray) -> np.ndarray:
    """Non-streaming reference: the whole clip in memory, every window in one batch."""
    frames = to_tensor(clip)
    windows = torch.stack([frames[window_indices(i, len(clip))] for i in range(len(clip))])
    with torch.no_grad():
        return to_uint8(model(windows))


@pytest.fixture(scope="module")
def tiny_model():
    return random_model("tiny")


@pytest.mark.parametrize("num_frames", [1, 2, 3, 6, 11])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_streaming_matches_reference(tiny_model, num_frames, batch_size):
    clip = make_clip(num_frames, 10, 13)
    expected = reference_upscale(tiny_model, clip)
    got = np.stack(list(Upscaler(tiny_model, device="cpu", batch_size=batch_size).stream(iter(clip))))
    assert got.shape == (num_frames, 30, 39, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # rounding of float noise


def test_stream_holds_only_the_frames_a_batch_needs(tiny_model):
    clip = make_clip(40, 8, 8)
    pulled = []

    def source():
        for i, frame in enumerate(clip):
            pulled.append(i)
            yield frame

    batch_size = 3
    outputs = Upscaler(tiny_model, device="cpu", batch_size=batch_size).stream(source())
    next(outputs)
    assert len(pulled) <= batch_size + 2  # windows 0..2 need frames 0..4
    for i, _ in enumerate(outputs, start=1):
        # producing output i never needs to have read further than i + batch + 2 frames
        assert len(pulled) <= i + batch_size + 3


def test_stream_rejects_a_frame_of_another_size(tiny_model):
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3 + [np.zeros((8, 9, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 3"):
        list(Upscaler(tiny_model, device="cpu", batch_size=1).stream(frames))


def test_output_is_clamped_uint8_range(tiny_model):
    with torch.no_grad():
        tiny_model.upsample[0].bias.fill_(5.0)  # push the raw output far above 1
    try:
        out = Upscaler(tiny_model, device="cpu").upscale_windows(torch.rand(2, 5, 3, 7, 9))
        assert out.shape == (2, 3, 21, 27) and out.max() <= 1.0 and out.min() >= 0.0
    finally:
        with torch.no_grad():
            tiny_model.upsample[0].bias.zero_()


def test_tiled_inference_matches_untiled_when_overlap_covers_receptive_field(tiny_model):
    windows = torch.rand(2, 5, 3, 37, 45)
    whole = Upscaler(tiny_model, device="cpu").upscale_windows(windows)
    # tiny preset: receptive-field radius 5 LR px <= overlap/4 = 5
    tiled = Upscaler(tiny_model, device="cpu", tile=28, tile_overlap=20).upscale_windows(windows)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-4


def test_tiled_inference_blends_without_seams():
    model = random_model("small", seed=1)  # receptive field larger than the overlap
    windows = torch.rand(1, 5, 3, 40, 40)
    whole = Upscaler(model, device="cpu").upscale_windows(windows)
    tiled = Upscaler(model, device="cpu", tile=24, tile_overlap=8).upscale_windows(windows)
    assert (tiled - whole).abs().mean() < 0.01


def test_bicubic_baseline_uses_the_same_pipeline(clip):
    out = np.stack(list(Upscaler.bicubic(device="cpu", batch_size=2).stream(iter(clip))))
    assert out.shape == (len(clip), 3 * clip.shape[1], 3 * clip.shape[2], 3)
    # bicubic of a frame, downsampled back by area averaging, is close to the frame
    down = out[0].reshape(clip.shape[1], 3, clip.shape[2], 3, 3).mean(axis=(1, 3))
    assert np.abs(down - clip[0]).mean() < 6


def test_upscaler_validates_options(tiny_model):
    with pytest.raises(ValueError, match="batch_size"):
        Upscaler(tiny_model, batch_size=0)
    with pytest.raises(ValueError, match="tile"):
        Upscaler(tiny_model, tile=16, tile_overlap=16)


def test_streaming_windows_use_the_neighbouring_frames(tiny_model):
    # Guard for the tests above: with this model, changing a neighbour frame changes the output.
    clip = make_clip(5, 8, 8)
    altered = clip.copy()
    altered[0] = 255 - altered[0]
    up = Upscaler(tiny_model, device="cpu")
    assert not np.array_equal(up.upscale_window_uint8(clip), up.upscale_window_uint8(altered))


# --- feature reuse and the threaded stream ----------------------------------------------------
def plain_nchw_reference(model, clip: np.ndarray) -> np.ndarray:
    """The seed's computation: every window through the whole model, NCHW activations."""
    saved = model.memory_format
    model.memory_format = torch.contiguous_format
    try:
        return reference_upscale(model, clip)
    finally:
        model.memory_format = saved


@pytest.fixture(scope="module")
def small_model():
    return random_model("small", seed=2)


@pytest.mark.parametrize("num_frames", [1, 2, 4, 9])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_feature_reuse_stream_matches_the_plain_model(small_model, num_frames, batch_size, prefetch):
    clip = make_clip(num_frames, 11, 14, seed=3)
    upscaler = Upscaler(small_model, device="cpu", batch_size=batch_size)
    assert upscaler.reuses_features(11, 14)
    got = np.stack(list(upscaler.stream(iter(clip), prefetch=prefetch)))
    expected = plain_nchw_reference(small_model, clip)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_stream_extracts_each_frames_features_once(tiny_model, monkeypatch):
    clip = make_clip(11, 8, 9)
    extracted = []
    original = tiny_model.extract_features

    def counting(frames):
        extracted.append(frames.shape[1])
        return original(frames)

    monkeypatch.setattr(tiny_model, "extract_features", counting)
    out = list(Upscaler(tiny_model, device="cpu", batch_size=3).stream(iter(clip)))
    assert len(out) == 11
    assert sum(extracted) == 11  # not 5 x 11: each frame's features serve its 5 windows


def test_tiled_stream_runs_whole_windows(tiny_model, monkeypatch):
    clip = make_clip(6, 30, 34)
    upscaler = Upscaler(tiny_model, device="cpu", batch_size=2, tile=24, tile_overlap=20)
    assert not upscaler.reuses_features(30, 34)
    monkeypatch.setattr(upscaler, "upscale_reusing_features", None)  # must not be used
    got = np.stack(list(upscaler.stream(iter(clip))))
    frames = to_tensor(clip)
    windows = torch.stack([frames[window_indices(i, len(clip))] for i in range(len(clip))])
    expected = to_uint8(upscaler.upscale_windows(windows))
    assert np.array_equal(got, expected)


def test_bicubic_baseline_streams_without_feature_reuse(clip):
    upscaler = Upscaler.bicubic(device="cpu", batch_size=2)
    assert not upscaler.reuses_features(*clip.shape[1:3])
    plain = np.stack(list(upscaler.stream(iter(clip))))
    threaded = np.stack(list(upscaler.stream(iter(clip), prefetch=3)))
    assert np.array_equal(plain, threaded)


def test_prefetching_stream_raises_the_errors_of_its_threads(tiny_model):
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3 + [np.zeros((8, 9, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 3"):
        list(Upscaler(tiny_model, device="cpu", batch_size=1).stream(frames, prefetch=2))

    def broken_decoder():
        yield np.zeros((8, 8, 3), np.uint8)
        raise OSError("corrupt packet")

    with pytest.raises(OSError, match="corrupt packet"):
        list(Upscaler(tiny_model, device="cpu", batch_size=1).stream(broken_decoder(), prefetch=2))


def test_closing_a_prefetching_stream_stops_its_threads(tiny_model):
    import threading

    def endless():
        frame = make_clip(1, 8, 8)[0]
        while True:
            yield frame

    outputs = Upscaler(tiny_model, device="cpu", batch_size=2).stream(endless(), prefetch=4)
    for _ in range(5):
        next(outputs)
    outputs.close()
    assert not [t for t in threading.enumerate() if t.name in ("vsr-decode", "vsr-model")]


def test_allocator_tuning_is_idempotent_and_can_be_switched_off(monkeypatch):
    import vsr_core.inference as inference

    monkeypatch.setattr(inference, "_allocator_tuned", False)
    monkeypatch.setenv("VSR_MALLOC_TUNING", "0")
    assert inference.tune_cpu_allocator() is False
    monkeypatch.delenv("VSR_MALLOC_TUNING")
    first = inference.tune_cpu_allocator()
    assert inference.tune_cpu_allocator() is first  # True on glibc, False elsewhere; never raises
