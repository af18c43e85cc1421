import numpy as np
import pytest

from conftest import make_clip
from vsr_core.data.samples import DEFAULT_TRAIN_CLIP, DEFAULT_VAL_CLIP, sample_clip
from vsr_core.data.video_io import FrameWriter, VideoReadError, iter_frames, probe_video, read_frames


def test_mp4_roundtrip_keeps_frame_count_size_and_fps(tmp_path):
    clip = make_clip(7, 24, 30)
    path = tmp_path / "clip.mp4"
    with FrameWriter(path, fps=12.5) as writer:
        for frame in clip:
            writer.write(frame)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (7, 24, 30, 12.5)
    back = read_frames(path)
    assert back.shape == clip.shape
    assert np.abs(back.astype(int) - clip.astype(int)).mean() < 12  # lossy H.264


def test_odd_sized_frames_can_be_written(tmp_path):
    path = tmp_path / "odd.mp4"
    with FrameWriter(path, fps=25) as writer:
        for frame in make_clip(3, 27, 33):
            writer.write(frame)
    assert read_frames(path).shape == (3, 27, 33, 3)


def test_frame_folder_roundtrip_is_lossless(tmp_path):
    clip = make_clip(4, 10, 12)
    with FrameWriter(tmp_path / "frames", fps=25) as writer:
        for frame in clip:
            writer.write(frame)
    assert np.array_equal(read_frames(tmp_path / "frames"), clip)
    assert probe_video(tmp_path / "frames").num_frames == 4
    assert len(list(iter_frames(tmp_path / "frames", max_frames=2))) == 2


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"\x00garbage" * 100, "corrupt|cannot")],
)
def test_corrupt_or_empty_video_gives_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoReadError, match=match):
        list(iter_frames(path))
    with pytest.raises(VideoReadError):
        probe_video(path)


def test_missing_and_unsupported_inputs(tmp_path):
    with pytest.raises(VideoReadError, match="not found"):
        list(iter_frames(tmp_path / "nope.mp4"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(VideoReadError, match="unsupported"):
        list(iter_frames(tmp_path / "notes.txt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(VideoReadError, match="no frames"):
        list(iter_frames(tmp_path / "empty_dir"))


def test_truncated_video_fails_cleanly(tmp_path):
    path = tmp_path / "clip.mp4"
    with FrameWriter(path, fps=25) as writer:
        for frame in make_clip(10, 32, 32):
            writer.write(frame)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoReadError):
        list(iter_frames(path))


def test_sample_clips_are_found_and_readable():
    info = probe_video(sample_clip(DEFAULT_VAL_CLIP))
    assert (info.height, info.width) == (272, 640)
    assert probe_video(sample_clip(DEFAULT_TRAIN_CLIP)).width == 1280
    assert next(iter_frames(sample_clip(DEFAULT_VAL_CLIP))).shape == (272, 640, 3)
    with pytest.raises(FileNotFoundError, match="available"):
        sample_clip("nope.mp4")


def smooth_frames(count: int, height: int = 90, width: int = 120) -> np.ndarray:
    """Frames without noise, like 3x video (noise makes every zlib level compress alike)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([np.stack([127 + 100 * np.sin(xx / 7 + yy / 11 + t), 127 + 100 * np.cos(yy / 5 - t),
                               127 + 90 * np.sin(xx * yy / 300)], -1).astype(np.uint8) for t in range(count)])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_frames_are_lossless_at_every_level_and_smaller_at_higher_ones(dtype):
    import io

    from PIL import Image

    from vsr_core.data.video_encoder import PngSettings
    from vsr_core.data.video_io import png_bytes

    frame = smooth_frames(1)[0].astype(dtype)
    if dtype == np.uint16:
        frame = frame * 256 + np.arange(120, dtype=np.uint16)[None, :, None]  # the low bits must survive too
    sizes = {}
    for level in (0, 1, 9):
        data = png_bytes(frame, PngSettings(level))
        with Image.open(io.BytesIO(data)) as image:
            back = np.asarray(image) if dtype == np.uint8 else None
        if dtype == np.uint16:  # Pillow reads 16-bit RGB PNGs as 8 bits: decode with PyAV
            import av

            with av.open(io.BytesIO(data)) as container:
                back = next(container.decode(video=0)).to_ndarray(format="rgb48le")
        assert np.array_equal(back, frame)
        sizes[level] = len(data)
    assert sizes[9] < sizes[1] < sizes[0]


def test_the_png_level_is_checked_and_names_the_field():
    from vsr_core.data.video_encoder import EncoderError, PngSettings

    for bad in (-1, 10, 1.5, True):
        with pytest.raises(EncoderError, match="png_level"):
            PngSettings(bad)


def test_frame_folder_png_level_changes_only_the_file_sizes(tmp_path):
    from vsr_core.data.video_encoder import PngSettings

    clip = smooth_frames(3)
    for level in (1, 9):
        with FrameWriter(tmp_path / f"level{level}", fps=25, png=PngSettings(level)) as writer:
            for frame in clip:
                writer.write(frame)
        assert np.array_equal(read_frames(tmp_path / f"level{level}"), clip)
    size = {level: sum(p.stat().st_size for p in (tmp_path / f"level{level}").iterdir()) for level in (1, 9)}
    assert size[9] < size[1]
