"""`vsr upscale` over many videos (vsr_core/video/batch.py): one output per input with its name and
extension, a broken file reported while the others go on, --resume after an interrupted batch,
one Ray connection for a batch, and the rule that tells a folder of videos from a folder of frames."""
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import make_clip
from test_video_engine import audio_packets
from video_clips import video_facts, write_clip
from vsr_core.cli import main
from vsr_core.data.video_io import read_frames
from vsr_core.inference import BicubicBaseline, Upscaler
from vsr_core.video.batch import batch_sources
from vsr_core.video.pipeline import upscale_file

ARGS = ["--bicubic", "--device", "cpu", "--batch-size", "4", "--chunk-frames", "4"]
FRAMES = {"a_audio.mp4": 8, "c.mkv": 12}  # the good clips and their frame counts


def write_inputs(folder, broken: bool = True) -> dict:
    """a_audio.mp4 (with an AAC track), b_broken.mp4 (a real mp4 cut in half) and c.mkv: {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"a_audio.mp4": write_clip(folder / "a_audio.mp4", make_clip(8, 24, 32, seed=1), audio=True),
             "c.mkv": write_clip(folder / "c.mkv", make_clip(12, 24, 32, seed=2))}
    if broken:
        whole = write_clip(folder / "b_broken.mp4", make_clip(8, 24, 32, seed=3)).read_bytes()
        (folder / "b_broken.mp4").write_bytes(whole[: len(whole) // 2])
        paths["b_broken.mp4"] = folder / "b_broken.mp4"
    return paths


def reference_frames(source, tmp_path) -> np.ndarray:
    """The frames of an uninterrupted single-file run of ``source``."""
    out = tmp_path / "reference" / source.name
    out.parent.mkdir(exist_ok=True)
    upscale_file(source, out, Upscaler.bicubic(device="cpu", batch_size=4), chunk_frames=4)
    return read_frames(out)


def assert_outputs_match_single_runs(out, inputs, tmp_path) -> None:
    for name, frames in FRAMES.items():
        facts = video_facts(out / name)
        assert (facts["frames"], facts["width"], facts["height"]) == (frames, 96, 72), name
        got, want = read_frames(out / name), reference_frames(inputs[name], tmp_path)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name


def test_a_folder_of_videos_gives_one_output_each_and_a_broken_file_is_reported(tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["upscale", str(tmp_path / "in"), str(out), *ARGS])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a_audio.mp4", "c.mkv"]  # nothing of the broken one
    assert_outputs_match_single_runs(out, inputs, tmp_path)
    assert audio_packets(out / "a_audio.mp4") == audio_packets(inputs["a_audio.mp4"])
    failed = [line for line in captured.err.splitlines() if line.startswith("failed: b_broken.mp4: ")]
    assert len(failed) == 1 and "corrupt or not a video" in failed[0]
    assert "2 done, 0 skipped, 1 failed" in captured.out
    assert "  failed: b_broken.mp4: " in captured.out


def test_resume_after_an_interrupted_batch_skips_the_finished_file_and_completes_the_rest(
        tmp_path, capsys, monkeypatch):
    inputs = write_inputs(tmp_path / "in", broken=False)
    out = tmp_path / "out"
    command = ["upscale", str(inputs["a_audio.mp4"]), str(inputs["c.mkv"]), str(out), *ARGS]  # several files
    forward = BicubicBaseline.forward

    def ctrl_c_once_c_has_a_chunk(self, frames):
        if (out / "a_audio.mp4").exists() and any((out / "c.mkv.parts").glob("chunk_*")):
            raise KeyboardInterrupt
        return forward(self, frames)

    monkeypatch.setattr(BicubicBaseline, "forward", ctrl_c_once_c_has_a_chunk)
    assert main(command) == 130
    assert "c.mkv.parts; run the same command with --resume" in capsys.readouterr().err
    monkeypatch.setattr(BicubicBaseline, "forward", forward)
    # The interrupt hit a later chunk's model; the chunk encoding behind it was whole and is kept.
    kept = len(list((out / "c.mkv.parts").glob("chunk_*")))
    assert not (out / "c.mkv").exists() and 1 <= kept < 3
    finished = (out / "a_audio.mp4").stat()

    assert main(command) == 2  # without --resume: refused, nothing touched
    assert "already holds the outputs of a_audio.mp4 and unfinished work of c.mkv; add --resume" in \
        capsys.readouterr().err

    assert main([*command, "--resume"]) == 0
    captured = capsys.readouterr()
    again = (out / "a_audio.mp4").stat()
    assert (again.st_ino, again.st_mtime_ns, again.st_size) == (finished.st_ino, finished.st_mtime_ns,
                                                                finished.st_size)
    assert "skipped: a_audio.mp4" in captured.out and "1 done, 1 skipped, 0 failed" in captured.out
    assert f"12 frames, {4 * kept} of them from an earlier run" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["a_audio.mp4", "c.mkv"]  # the work folder is gone
    assert_outputs_match_single_runs(out, inputs, tmp_path)


def test_frame_folders_are_one_clip_and_the_folder_rule_is_explicit(tmp_path, capsys):
    clip = make_clip(5, 24, 32)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip):
        Image.fromarray(frame).save(frames / f"{i:04d}.png")
    (frames / "notes.txt").write_text("not a frame")  # other files do not count
    assert batch_sources([str(frames)]) is None
    assert main(["upscale", str(frames), str(tmp_path / "up"), *ARGS]) == 0
    got = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "up").iterdir())])
    want = np.stack(list(Upscaler.bicubic(device="cpu").stream(iter(clip))))
    assert got.shape == want.shape == (5, 72, 96, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1

    videos = tmp_path / "videos"
    write_inputs(videos, broken=False)
    (videos / "sub").mkdir()  # subfolders are not read
    assert batch_sources([str(videos)]) == [str(videos / "a_audio.mp4"), str(videos / "c.mkv")]
    shutil.copy(frames / "0000.png", videos / "0000.png")
    assert main(["upscale", str(videos), str(tmp_path / "mixed_out"), *ARGS]) == 2
    assert "holds both frames (1 .png/.jpg/.jpeg files) and videos (2)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["upscale", str(tmp_path / "empty"), str(tmp_path / "x"), *ARGS]) == 2
    assert "holds no frames" in capsys.readouterr().err
    assert not (tmp_path / "mixed_out").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("case, message", [
    ("out_dir_is_a_file", "OUT_DIR {out} is a file; 2 inputs are written into a folder"),
    ("out_dir_named_like_a_video", "OUT_DIR {out} is named like a video file"),
    ("same_name_twice", "would both be written to {out}/a_audio.mp4"),
    ("a_folder_among_inputs", "is a folder; several inputs must be video files"),
    ("out_dir_is_the_input_folder", "would overwrite the input"),
    ("a_preview", "preview (--preview): preview one video at a time; it is not for a batch"),
])
def test_a_bad_batch_is_refused_before_any_work(tmp_path, capsys, case, message):
    inputs = write_inputs(tmp_path / "in", broken=False)
    a, c = str(inputs["a_audio.mp4"]), str(inputs["c.mkv"])
    out, extra = tmp_path / "out", []
    if case == "out_dir_is_a_file":
        out.write_text("keep me")
    elif case == "out_dir_named_like_a_video":
        out = tmp_path / "out.mp4"
    elif case == "same_name_twice":
        write_inputs(tmp_path / "other", broken=False)
        c = str(tmp_path / "other" / "a_audio.mp4")
    elif case == "a_folder_among_inputs":
        c = str(tmp_path / "other")
        (tmp_path / "other").mkdir()
    elif case == "out_dir_is_the_input_folder":
        out = tmp_path / "in"
    elif case == "a_preview":
        extra = ["--preview", "0", "0.1"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["upscale", a, c, str(out), *ARGS, *extra]) == 2
    assert message.format(out=out) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if case == "out_dir_is_a_file":
        assert out.read_text() == "keep me"


@pytest.mark.ray
def test_a_batch_on_ray_connects_once_for_all_files(ray_session, tmp_path, capsys, monkeypatch):
    calls = {"init": 0, "shutdown": 0}
    # The session's Ray is the cluster: the command sees no connection, and its connecting and
    # disconnecting are counted instead of made.
    monkeypatch.setattr(ray_session, "is_initialized", lambda: calls["init"] > calls["shutdown"])
    monkeypatch.setattr(ray_session, "init", lambda *args, **kwargs: calls.__setitem__("init", calls["init"] + 1) or "context")
    monkeypatch.setattr(ray_session, "shutdown", lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1))
    inputs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "in"), str(out), *ARGS, "--ray", "--workers", "1"]) == 1
    assert calls == {"init": 1, "shutdown": 1}
    captured = capsys.readouterr()
    assert "on 1 Ray workers (cpu)" in captured.out and "2 done, 0 skipped, 1 failed" in captured.out
    assert_outputs_match_single_runs(out, inputs, tmp_path)


def test_a_command_leaves_a_ray_it_did_not_connect_running(ray_session, tmp_path):
    # An embedding process (a notebook, this test session) connected Ray first: the command uses that
    # connection and does not end it (the batch test above shows a connection it makes is ended once).
    from vsr_core.cli import _chunk_runner, build_parser

    args = build_parser().parse_args(["upscale", str(tmp_path / "in"), str(tmp_path / "out"), *ARGS, "--ray"])
    runner, where, owns_ray = _chunk_runner(args)
    assert owns_ray is False and ray_session.is_initialized() and "Ray workers" in where
