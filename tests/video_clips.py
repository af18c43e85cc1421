"""Generated test clips with exactly known timing, colour tags, bit depth, rotation and extra
streams, written with PyAV directly (not with the project's FrameWriter), and readers of what
a file really holds (raw YUV planes, packet timestamps, tags) as independent references."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

SPACES = {"bt709": (1, Colorspace.ITU709), "bt601": (6, Colorspace.ITU601), "bt2020": (9, Colorspace.BT2020)}
RANGES = {"limited": ColorRange.MPEG, "full": ColorRange.JPEG}


def flat_colors(num_frames: int, seed: int = 0) -> np.ndarray:
    """One flat, fairly saturated RGB colour per frame (in gamut for every matrix), [T,3] uint8."""
    rng = np.random.default_rng(seed)
    return rng.integers(30, 226, (num_frames, 3)).astype(np.uint8)


def write_clip(path, rgb_frames, pts=None, time_base=Fraction(1, 25), rate=None, codec="libx264",
               pix_fmt="yuv420p", matrix="bt709", color_range="limited", primaries=1, transfer=1,
               rotation=0, yuv_frames=None, audio=False, chapters=None, metadata=None, subtitles=None,
               attachment=None, crf: int = 12, options=None, tagged: bool = True):
    """Write ``rgb_frames`` ([T,H,W,3] uint8, converted with ``matrix``/``color_range``) or
    ``yuv_frames`` (lists of raw planes in ``pix_fmt``) at ``pts`` (in ``time_base``), tagged
    with the given colour. ``subtitles``: [(pts_ms, text)]; ``chapters``: [(start_s, end_s, title)]."""
    frames = yuv_frames if yuv_frames is not None else rgb_frames
    pts = list(range(len(frames))) if pts is None else pts
    suffix = str(path).rsplit(".", 1)[-1]
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=rate or Fraction(1, 1) / time_base)
        height, width = (frames[0][0].shape if yuv_frames is not None else frames[0].shape[:2])
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.time_base = video.time_base = time_base
        code, space = SPACES[matrix]
        range_tag = int(RANGES[color_range])
        if not tagged:  # converted with matrix/color_range, but the file does not say so
            code, range_tag = 2, 0
        cc = video.codec_context
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = code, range_tag, primaries, transfer
        video.options = {"crf": str(crf), **(options or {})}
        if rotation:
            video.set_display_rotation(rotation)
        if metadata:
            container.metadata.update(metadata)
        if chapters:
            container.set_chapters([{"id": i + 1, "start": int(a * 1000), "end": int(b * 1000),
                                     "time_base": Fraction(1, 1000), "metadata": {"title": t}}
                                    for i, (a, b, t) in enumerate(chapters)])
        subs = None
        if subtitles:
            subs = container.add_mux_stream("mov_text" if suffix == "mp4" else "srt", time_base=Fraction(1, 1000))
            subs.metadata.update({"language": "fra", "title": "French"})
        if attachment:
            container.add_attachment(*attachment)
        audio_stream = None
        if audio:
            audio_stream = container.add_stream("aac", rate=48000)
            audio_stream.layout = "mono"
        for i, (frame, t) in enumerate(zip(frames, pts)):
            if yuv_frames is not None:
                vf = av.VideoFrame(width, height, pix_fmt)
                for plane, values in zip(vf.planes, frame):
                    row = plane.line_size // values.itemsize
                    padded = np.zeros((plane.height, row), values.dtype)
                    padded[:, : values.shape[1]] = values
                    plane.update(padded.tobytes())
            else:
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                    format=pix_fmt, dst_colorspace=space, dst_color_range=RANGES[color_range])
            vf.colorspace, vf.color_range = code, range_tag
            vf.color_primaries, vf.color_trc = primaries, transfer
            vf.pts, vf.time_base = t, time_base
            container.mux(video.encode(vf))
        container.mux(video.encode())
        if subs is not None:
            for start_ms, text in subtitles:
                data = text.encode()
                packet = av.Packet(len(data).to_bytes(2, "big") + data if suffix == "mp4" else data)
                packet.stream, packet.time_base = subs, Fraction(1, 1000)
                packet.pts = packet.dts = start_ms
                packet.duration = 200
                container.mux(packet)
        if audio_stream is not None:
            seconds = float((pts[-1] + 1) * time_base)
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 48000)) / 48000)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                af = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
                af.sample_rate, af.pts = 48000, start
                container.mux(audio_stream.encode(af))
            container.mux(audio_stream.encode())
    return path


def flat_clip_frames(colors: np.ndarray, height: int = 48, width: int = 64) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(colors[:, None, None, :], (len(colors), height, width, 3)))


def yuv_planes(path) -> list[list[np.ndarray]]:
    """Every frame's raw Y, U, V planes as float arrays (no colour conversion)."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            dtype = np.uint16 if frame.format.components[0].bits > 8 else np.uint8
            planes = []
            for plane, component in zip(frame.planes, range(3)):
                width = plane.width
                rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // np.dtype(dtype).itemsize)
                planes.append(rows[:, :width].astype(np.float64))
            out.append(planes)
    return out


def video_facts(path) -> dict:
    """What the file says: frames (packets), seconds of each frame, duration, codec, pix_fmt, tags."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p.pts, p.duration) for p in container.demux(stream) if p.size and p.pts is not None)
        cc = stream.codec_context
        base = stream.time_base
        seconds = [float(t * base) for t, _ in packets]
        return {"frames": len(packets), "seconds": seconds,
                "duration": seconds[-1] - seconds[0] + float(packets[-1][1] * base),
                "codec": cc.name, "pix_fmt": cc.format.name if cc.format else None,
                "width": cc.width, "height": cc.height,
                "tags": (int(cc.colorspace), int(cc.color_range), int(cc.color_primaries), int(cc.color_trc)),
                "metadata": dict(container.metadata), "chapters": container.chapters()}
