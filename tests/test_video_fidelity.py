"""What a video keeps through the engine (docs/videos.md, "What is kept"): timing, colour, bit depth,
HDR tags, orientation, extra streams; and what happens when a run is killed or a frame fails.

Inputs are generated with PyAV directly (tests/video_clips.py). Every test checks frame count,
duration, tags and pixels of the output against the input, read back from the files: raw YUV
planes and packet timestamps, not the project's own readers."""
from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import make_clip, random_model
from video_clips import flat_clip_frames, flat_colors, video_facts, write_clip, yuv_planes
from vsr_core.data.video_encoder import EncoderError, EncoderSettings, available_codecs
from vsr_core.data.video_io import probe_video, read_frames
from vsr_core.inference import Upscaler
from vsr_core.video.pipeline import upscale_file


@pytest.fixture(scope="module")
def bicubic():
    return Upscaler.bicubic(device="cpu", batch_size=4)


def assert_same_timing(source, output, frames: int):
    """Same frame count, the same timestamp for every frame, duration within one frame."""
    got, want = video_facts(output), video_facts(source)
    assert got["frames"] == want["frames"] == frames
    assert got["seconds"] == pytest.approx(want["seconds"], abs=1e-6)
    one_frame = min(np.diff(want["seconds"])) if frames > 1 else 1.0
    assert abs(got["duration"] - want["duration"]) <= one_frame
    return got


def mean_plane_error(source, output) -> float:
    """Mean absolute difference of the per-frame mean of Y, U and V (flat frames: every pixel)."""
    errors = [abs(a.mean() - b.mean()) for fa, fb in zip(yuv_planes(source), yuv_planes(output)) for a, b in zip(fa, fb)]
    return float(np.mean(errors))


# --- timing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vfr", "ntsc"])
def test_variable_and_23976_frame_rates_keep_every_timestamp(tmp_path, bicubic, kind):
    frames = make_clip(12, 24, 32)
    if kind == "vfr":  # irregular gaps, as from a phone: 1 to 5 ticks of 1/90 s
        pts, time_base, rate = [0, 3, 4, 9, 14, 15, 17, 22, 26, 27, 31, 36], Fraction(1, 90), Fraction(25)
    else:
        pts, time_base, rate = [i * 1001 for i in range(12)], Fraction(1, 24000), Fraction(24000, 1001)
    source = write_clip(tmp_path / "in.mp4", frames, pts=pts, time_base=time_base, rate=rate, audio=True)
    upscale_file(source, tmp_path / "out.mp4", bicubic, chunk_frames=4)
    assert_same_timing(source, tmp_path / "out.mp4", 12)
    if kind == "ntsc":
        assert probe_video(tmp_path / "out.mp4").frame_rate == Fraction(24000, 1001)
    reference = np.stack(list(bicubic.stream(iter(read_frames(source)))))
    assert np.abs(read_frames(tmp_path / "out.mp4").astype(float) - reference).mean() < 3


# --- colour ----------------------------------------------------------------------------------
@pytest.mark.parametrize("matrix,color_range", [("bt709", "full"), ("bt601", "limited")])
def test_matrix_and_range_come_back_within_one_lsb(tmp_path, bicubic, matrix, color_range):
    colors = flat_colors(8)
    source = write_clip(tmp_path / "in.mp4", flat_clip_frames(colors), matrix=matrix, color_range=color_range,
                        primaries=1 if matrix == "bt709" else 6, transfer=1 if matrix == "bt709" else 6)
    upscale_file(source, tmp_path / "out.mp4", bicubic, chunk_frames=4)
    facts = assert_same_timing(source, tmp_path / "out.mp4", 8)
    assert facts["tags"] == video_facts(source)["tags"]
    assert (facts["width"], facts["height"]) == (192, 144)
    assert mean_plane_error(source, tmp_path / "out.mp4") < 1.0
    # the test can fail: these colours read with FFmpeg's untagged default (BT.601 limited) are far off
    with av.open(str(source)) as container:
        frame = next(container.decode(video=0))
        wrong = frame.to_ndarray(format="rgb24", src_colorspace="ITU601", src_color_range="MPEG")
    if (matrix, color_range) != ("bt601", "limited"):
        assert np.abs(wrong[0, 0].astype(int) - colors[0].astype(int)).max() > 4


def test_untagged_input_is_converted_as_players_guess_and_tagged(tmp_path, bicubic):
    colors = flat_colors(4, seed=3)
    source = write_clip(tmp_path / "in.mp4", flat_clip_frames(colors), matrix="bt601", primaries=2, transfer=2,
                        tagged=False)  # an SD file converted with BT.601 limited that does not say so
    assert video_facts(source)["tags"] == (2, 0, 2, 2)
    upscale_file(source, tmp_path / "out.mp4", bicubic)
    assert video_facts(tmp_path / "out.mp4")["tags"] == (6, 1, 2, 2)  # said explicitly: BT.601 limited
    assert mean_plane_error(source, tmp_path / "out.mp4") < 1.0


# --- bit depth and HDR -----------------------------------------------------------------------
def ten_bit_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0):
    """Flat 10-bit frames whose Y values are 8-bit-unrepresentable (not multiples of 4)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(num_frames):
        y, u, v = 301 + 4 * int(rng.integers(0, 80)) + (i % 3), 480 + int(rng.integers(0, 60)), 470 + int(rng.integers(0, 80))
        frames.append([np.full((height, width), y, np.uint16), np.full((height // 2, width // 2), u, np.uint16),
                       np.full((height // 2, width // 2), v, np.uint16)])
    return frames


def test_10_bit_input_gives_10_bit_output_without_truncation(tmp_path, bicubic):
    source = write_clip(tmp_path / "in.mkv", None, yuv_frames=ten_bit_frames(6), pix_fmt="yuv420p10le")
    assert probe_video(source).color.bit_depth == 10
    deep = read_frames(source, deep=True)
    assert deep.dtype == np.uint16 and np.any(deep % 257)  # not 8-bit values stretched to 16 bits
    upscale_file(source, tmp_path / "out.mkv", bicubic, chunk_frames=4)
    facts = assert_same_timing(source, tmp_path / "out.mkv", 6)
    assert facts["pix_fmt"] == "yuv420p10le" and facts["tags"] == video_facts(source)["tags"]
    errors = [abs(a.mean() - b.mean()) for fa, fb in zip(yuv_planes(source), yuv_planes(tmp_path / "out.mkv"))
              for a, b in zip(fa, fb)]
    assert np.mean(errors) < 0.5 and max(errors) <= 1.0  # in 10-bit LSBs
    # a grey ramp rising 1 LSB (10-bit) per pixel: 8 bits would keep only every 4th level
    ramp = [[np.tile(np.arange(400, 464, dtype=np.uint16) + i, (48, 1)), np.full((24, 32), 512, np.uint16),
             np.full((24, 32), 512, np.uint16)] for i in range(3)]
    source = write_clip(tmp_path / "ramp.mkv", None, yuv_frames=ramp, pix_fmt="yuv420p10le", crf=0)  # lossless
    upscale_file(source, tmp_path / "ramp_x3.mkv", bicubic, encoder=EncoderSettings(crf=0))
    assert_same_timing(source, tmp_path / "ramp_x3.mkv", 3)
    for i, (y, _, _) in enumerate(yuv_planes(tmp_path / "ramp_x3.mkv")):
        row = y[72, 12:-12]  # bicubic reproduces a linear ramp away from the borders
        ideal = 400 + i + (np.arange(12, 180) + 0.5) / 3 - 0.5
        assert np.abs(row - ideal).mean() < 0.4 and len(np.unique(row)) > 50
    with pytest.raises(EncoderError, match="pix_fmt"):  # 8-bit for HDR is refused, not tone-mapped
        upscale_file(write_clip(tmp_path / "pq.mkv", None, yuv_frames=ten_bit_frames(2), pix_fmt="yuv420p10le",
                                matrix="bt2020", primaries=9, transfer=16),
                     tmp_path / "pq8.mkv", bicubic, encoder=EncoderSettings(pix_fmt="yuv420p"))


def test_10_bit_input_to_a_frame_folder_gives_16_bit_pngs(tmp_path, bicubic):
    source = write_clip(tmp_path / "in.mkv", None, yuv_frames=ten_bit_frames(3), pix_fmt="yuv420p10le", crf=0)
    upscale_file(source, tmp_path / "frames", bicubic)
    pngs = sorted((tmp_path / "frames").glob("*.png"))
    frames = []
    for png in pngs:  # read with FFmpeg: Pillow reads 16-bit RGB as 8-bit
        with av.open(str(png)) as container:
            frames.append(next(container.decode(video=0)).to_ndarray(format="rgb48le"))
    frames = np.stack(frames)
    assert len(pngs) == 3 and frames.dtype == np.uint16 and frames.shape[1:] == (144, 192, 3)
    assert np.array_equal(frames, np.stack(list(bicubic.stream(iter(read_frames(source, deep=True))))))


@pytest.mark.parametrize("transfer", [16, 18])  # PQ, HLG
def test_hdr_transfer_is_kept_end_to_end(tmp_path, bicubic, transfer):
    source = write_clip(tmp_path / "in.mkv", None, yuv_frames=ten_bit_frames(3, seed=transfer),
                        pix_fmt="yuv420p10le", matrix="bt2020", primaries=9, transfer=transfer)
    upscale_file(source, tmp_path / "out.mkv", bicubic, encoder=EncoderSettings(codec="h265"))
    facts = assert_same_timing(source, tmp_path / "out.mkv", 3)
    assert facts["tags"] == (9, 1, 9, transfer) and facts["pix_fmt"] == "yuv420p10le" and facts["codec"] == "hevc"
    assert mean_plane_error(source, tmp_path / "out.mkv") < 1.0


MASTERING = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"


def hdr10_side_data(path) -> dict:
    """The first frame's HDR10 metadata as numbers (decoders differ in the fractions they use)."""
    import struct

    found = {}
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        for sd in frame.side_data:
            name, data = str(sd.type).rsplit(".", 1)[-1], bytes(sd)
            if name == "MASTERING_DISPLAY_METADATA":
                v = struct.unpack("<22i", data[:88])
                found[name] = tuple(round(v[i] / v[i + 1], 4) for i in range(0, 20, 2)) + v[20:]
            elif name == "CONTENT_LIGHT_LEVEL":
                found[name] = struct.unpack("<2I", data[:8])
    return found


@pytest.mark.parametrize("codec", ["h265", "av1"])
def test_hdr10_mastering_and_light_level_metadata_are_kept(tmp_path, bicubic, codec):
    params = f"log-level=error:master-display={MASTERING}:max-cll=1000,400"
    source = write_clip(tmp_path / "in.mkv", None, yuv_frames=ten_bit_frames(2), pix_fmt="yuv420p10le", codec="libx265",
                        matrix="bt2020", primaries=9, transfer=16, options={"x265-params": params})
    wanted = hdr10_side_data(source)
    assert set(wanted) == {"MASTERING_DISPLAY_METADATA", "CONTENT_LIGHT_LEVEL"}
    with pytest.raises(EncoderError, match="^codec: .*HDR10"):
        upscale_file(source, tmp_path / "x264.mkv", bicubic)
    upscale_file(source, tmp_path / "out.mkv", bicubic, encoder=EncoderSettings(codec))
    assert_same_timing(source, tmp_path / "out.mkv", 2)
    assert video_facts(tmp_path / "out.mkv")["tags"] == (9, 1, 9, 16)
    assert hdr10_side_data(tmp_path / "out.mkv") == wanted


# --- orientation -----------------------------------------------------------------------------
def test_a_rotated_phone_clip_comes_out_upright(tmp_path, bicubic):
    frames = np.full((4, 48, 64, 3), 40, np.uint8)
    frames[:, :12, :16] = 230  # a bright block in the stored frame's top-left corner
    source = write_clip(tmp_path / "in.mp4", frames, rotation=90)  # shown turned 90 degrees counter-clockwise
    info = probe_video(source)
    assert (info.rotation, info.height, info.width) == (90, 64, 48)
    upscale_file(source, tmp_path / "out.mp4", bicubic)
    facts = assert_same_timing(source, tmp_path / "out.mp4", 4)
    assert (facts["width"], facts["height"]) == (144, 192)
    with av.open(str(tmp_path / "out.mp4")) as container:
        frame = next(container.decode(video=0))
        assert frame.rotation == 0  # applied to the pixels, not left as a tag
        out = frame.to_ndarray(format="rgb24").mean(axis=2)
    # turned counter-clockwise, the top-left corner is now the bottom-left one
    assert out[-30:, :30].mean() > 200 and out[:30, :30].mean() < 60 and out[-30:, -30:].mean() < 60


@pytest.mark.parametrize("rotation,hflip,corner", [(0, True, "top-right"), (90, True, "bottom-right"),
                                                   (180, False, "bottom-right"), (270, False, "top-right")])
def test_mirrored_and_turned_clips_come_out_as_shown(tmp_path, bicubic, rotation, hflip, corner):
    frames = np.full((2, 48, 64, 3), 40, np.uint8)
    frames[:, :12, :16] = 230  # the bright block is stored top-left; where a player shows it:
    source = tmp_path / "in.mp4"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(rotation, hflip=hflip)  # turn counter-clockwise, then mirror
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    upscale_file(source, tmp_path / "out.mp4", bicubic)
    out = read_frames(tmp_path / "out.mp4")[0].mean(axis=2)
    rows, cols = (slice(-30, None) if "bottom" in corner else slice(0, 30)), \
        (slice(-30, None) if "right" in corner else slice(0, 30))
    assert out[rows, cols].mean() > 200 and (out > 150).mean() < 0.1


# --- other streams ---------------------------------------------------------------------------
CHAPTERS = [(0.0, 0.4, "Opening"), (0.4, 0.8, "Middle"), (0.8, 1.0, "End")]


def chapters_in_seconds(facts):
    return [(round(float(c["start"] * c["time_base"]), 3), round(float(c["end"] * c["time_base"]), 3),
             c["metadata"]["title"]) for c in facts["chapters"]]


def subtitle_packets(path):
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        # an mp4 fills the gaps between subtitles with empty samples (b"\0\0"): only the texts count
        return (stream.codec_context.name, dict(stream.metadata).get("language"),
                [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(stream) if p.size > 2])


def test_subtitles_chapters_and_metadata_are_copied(tmp_path, bicubic):
    source = write_clip(tmp_path / "in.mp4", make_clip(25, 24, 32), audio=True, chapters=CHAPTERS,
                        metadata={"title": "A film", "artist": "Someone"},
                        subtitles=[(80, "Bonjour"), (600, "Au revoir")])
    result = upscale_file(source, tmp_path / "out.mp4", bicubic, chunk_frames=8)
    assert result.output == str(tmp_path / "out.mp4")
    facts = assert_same_timing(source, tmp_path / "out.mp4", 25)
    assert chapters_in_seconds(facts) == CHAPTERS
    assert facts["metadata"]["title"] == "A film" and facts["metadata"]["artist"] == "Someone"
    assert facts["metadata"]["vsr_encoder"] == result.encoder
    assert result.encoder.startswith("h264 (libx264) crf=18 preset=medium pix_fmt=yuv420p")
    assert subtitle_packets(tmp_path / "out.mp4") == subtitle_packets(source)
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert out.streams.audio[0].codec_context.name == "aac"


def test_streams_an_mp4_cannot_hold_give_an_mkv(tmp_path, bicubic, capsys):
    from vsr_core.cli import main

    source = write_clip(tmp_path / "in.mkv", make_clip(10, 24, 32), chapters=CHAPTERS[:2],
                        subtitles=[(80, "Hello"), (200, "World")],
                        attachment=("font.ttf", "application/x-truetype-font", b"FONTDATA" * 8))
    result = upscale_file(source, tmp_path / "out.mp4", bicubic)
    assert result.output == str(tmp_path / "out.mkv") and not (tmp_path / "out.mp4").exists()
    facts = assert_same_timing(source, tmp_path / "out.mkv", 10)
    assert chapters_in_seconds(facts) == chapters_in_seconds(video_facts(source))
    assert subtitle_packets(tmp_path / "out.mkv") == subtitle_packets(source)
    assert subtitle_packets(source)[0] in ("srt", "subrip")
    with av.open(str(tmp_path / "out.mkv")) as out:
        attachments = [s for s in out.streams if s.type == "attachment"]
        assert [(a.metadata["filename"], a.data) for a in attachments] == [("font.ttf", b"FONTDATA" * 8)]
    assert main(["upscale", str(source), str(tmp_path / "cli.mp4"), "--bicubic", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out  # said at the start, not only at the end
    assert f"note: writing {tmp_path / 'cli.mkv'} instead of {tmp_path / 'cli.mp4'}" in printed.splitlines()[1]


# --- encoder control ---------------------------------------------------------------------------
@pytest.mark.parametrize("settings,codec,pix_fmt", [
    (EncoderSettings("h265", crf=24, preset="fast", pix_fmt="yuv444p"), ("hevc",), "yuv444p"),
    # this FFmpeg names its AV1 decoder libdav1d (and may not have it: the frames are not decoded here)
    (EncoderSettings("av1", crf=30, preset="10"), ("av1", "libdav1d"), "yuv420p"),
])
def test_encoder_settings_are_used_and_recorded(tmp_path, bicubic, settings, codec, pix_fmt):
    source = write_clip(tmp_path / "in.mp4", make_clip(5, 24, 32))
    result = upscale_file(source, tmp_path / "out.mp4", bicubic, encoder=settings)
    facts = assert_same_timing(source, tmp_path / "out.mp4", 5)
    assert facts["codec"] in codec and (facts["pix_fmt"] or pix_fmt) == pix_fmt
    assert facts["metadata"]["vsr_encoder"] == result.encoder
    assert f"crf={settings.crf} preset={settings.preset} pix_fmt={pix_fmt}" in result.encoder


@pytest.mark.parametrize("fields,field", [
    (dict(codec="vp9"), "codec"), (dict(crf=99), "crf"), (dict(codec="av1", crf=0), "crf"),
    (dict(preset="fastest"), "preset"), (dict(codec="av1", preset="slow"), "preset"),
    (dict(pix_fmt="yuv444p"), None), (dict(codec="av1", pix_fmt="yuv444p"), "pix_fmt"),
])
def test_bad_encoder_settings_name_the_field(fields, field):
    if field is None:
        EncoderSettings(**fields)
        return
    with pytest.raises(EncoderError, match=f"^{field}:"):
        EncoderSettings(**fields)


# --- preview ----------------------------------------------------------------------------------
def test_preview_upscales_a_stretch_and_projects_the_whole(tmp_path, bicubic, capsys):
    from vsr_core.cli import main

    source = write_clip(tmp_path / "in.mp4", make_clip(50, 24, 32), audio=True, chapters=CHAPTERS)
    result = upscale_file(source, tmp_path / "p.mp4", bicubic, preview=(0.4, 0.4))
    facts = video_facts(tmp_path / "p.mp4")
    assert facts["frames"] == 10 and facts["seconds"] == pytest.approx([0.4 + i / 25 for i in range(10)])
    assert [c[2] for c in chapters_in_seconds(facts)] == ["Middle"]
    with av.open(str(tmp_path / "p.mp4")) as out:
        audio = [float(p.pts * p.time_base) for p in out.demux(out.streams.audio[0]) if p.size]
    assert 0.38 <= min(audio) and max(audio) < 0.8
    projection = result.projection
    assert projection.frames == 10 and projection.total_frames == 50 and projection.fps > 0
    size = (tmp_path / "p.mp4").stat().st_size
    assert 4 * size <= projection.projected_bytes <= 6 * size  # 2 s of video against 0.4 s
    # the preview's frames are the whole run's frames (its windows read the frames around it)
    model = Upscaler(random_model("tiny"), device="cpu", batch_size=4)
    upscale_file(source, tmp_path / "preview_frames", model, preview=(0.4, 0.4), chunk_frames=4)
    whole = np.stack(list(model.stream(iter(read_frames(source)))))
    assert np.array_equal(read_frames(tmp_path / "preview_frames"), whole[10:20])
    assert main(["upscale", str(source), str(tmp_path / "cli.mp4"), "--bicubic", "--device", "cpu",
                 "--preview", "1", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "preview:" in printed and "the whole video (50 frames) would take about" in printed
    assert video_facts(tmp_path / "cli.mp4")["frames"] == 5


def test_cli_refuses_bad_encoder_settings_before_any_work(tmp_path, capsys):
    from vsr_core.cli import main

    source = write_clip(tmp_path / "in.mp4", make_clip(3, 24, 32))
    assert main(["upscale", str(source), str(tmp_path / "out.mp4"), "--bicubic", "--crf", "99"]) == 2
    assert "crf: 99 is not an integer from 0 to 51 (for h264)" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4.parts").exists()
    assert main(["upscale", str(source), str(tmp_path / "out.mp4"), "--bicubic", "--device", "cpu", "--codec", "h265",
                 "--crf", "26", "--preset", "veryfast", "--pix-fmt", "yuv444p"]) == 0
    assert video_facts(tmp_path / "out.mp4")["metadata"]["vsr_encoder"] == \
        "h265 (libx265) crf=26 preset=veryfast pix_fmt=yuv444p"


def test_one_and_two_frame_h265_segments_can_be_written(tmp_path):
    """libx265 gives such short streams a garbage first decoding time now and then (most runs at a
    1/1000 time base); the writer repairs it instead of failing the chunk."""
    from vsr_core.data.video_io import FrameWriter

    for attempt in range(8):
        for frames in (1, 2):
            path = tmp_path / f"{attempt}_{frames}.mp4"
            with FrameWriter(path, 25, Fraction(1, 1000), encoder=EncoderSettings("h265")) as writer:
                for i, frame in enumerate(make_clip(frames, 24, 32)):
                    writer.write(frame, pts=40 * i)
            assert video_facts(path)["frames"] == frames


@pytest.mark.parametrize("codec", available_codecs())
def test_the_same_frames_encode_to_the_same_stream_every_time(tmp_path, codec):
    """A resumed video joins segments of two runs, so it can equal an uninterrupted one only if
    the encoder is deterministic. Small noise frames made x264's AVX-512 kernels vary (3 streams
    in 10 encodes on an AVX-512 machine)."""
    from vsr_core.data.video_io import FrameWriter

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (3, 96, 72), dtype=np.uint8).transpose(2, 1, 0) for _ in range(4)]
    streams = set()
    for attempt in range(12):
        path = tmp_path / f"{attempt}.mp4"
        with FrameWriter(path, 25, Fraction(1, 12800), encoder=EncoderSettings(codec)) as writer:
            for i, frame in enumerate(frames):
                writer.write(frame, pts=512 * i)
        streams.add(path.read_bytes())
    assert len(streams) == 1
