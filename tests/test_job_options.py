"""The encoder and preview fields of a job request (serve.jobs.video_options): parsed from query
strings or JSON, checked with the same rules as `vsr upscale`, errors naming the field."""
import pytest

from serve.jobs import video_options


def test_query_strings_and_json_values_give_the_same_options():
    from_query = video_options({"codec": "h265", "crf": "22", "preset": "fast", "pix_fmt": "yuv420p10le",
                                "preview_start": "10", "preview_duration": "2.5"})
    from_json = video_options({"codec": "h265", "crf": 22, "preset": "fast", "pix_fmt": "yuv420p10le",
                               "preview_start": 10, "preview_duration": 2.5})
    assert from_query == from_json == {"encoder": {"codec": "h265", "crf": 22, "preset": "fast",
                                                   "pix_fmt": "yuv420p10le"}, "preview": [10.0, 2.5]}
    assert video_options({}) == {"encoder": {"codec": "h264", "crf": None, "preset": None, "pix_fmt": None},
                                 "preview": None}


@pytest.mark.parametrize("fields,match", [
    ({"codec": "mpeg2"}, "^codec:"), ({"crf": "high"}, "^crf:"), ({"crf": 70}, "^crf:"), ({"crf": True}, "^crf:"),
    ({"preset": "warp"}, "^preset:"), ({"pix_fmt": "rgb24"}, "^pix_fmt:"),
    ({"preview_start": 1}, "give both"), ({"preview_start": 1, "preview_duration": 0}, "preview_duration > 0"),
    ({"preview_start": "x", "preview_duration": 1}, "^preview_start:"),
])
def test_bad_fields_are_named(fields, match):
    with pytest.raises(ValueError, match=match):
        video_options(fields)


def test_the_client_sends_the_fields_and_saves_an_mkv_result_as_mkv(tmp_path, monkeypatch):
    import requests

    from serve import client as cli

    sent = {}

    def upload(self, path, clip, options=None):
        sent.update(path=path, options=options)
        response = requests.Response()
        response.status_code, response._content = 202, b'{"id": "abc", "frames_total": 10}'
        return response

    monkeypatch.setattr(cli.Client, "upload", upload)
    cli.main(["job", "submit", str(tmp_path / "film.mkv"), "--codec", "h265", "--crf", "22", "--preview", "5", "2"])
    assert sent == {"path": "/v1/jobs", "options": {"codec": "h265", "crf": 22, "preview_start": 5.0,
                                                    "preview_duration": 2.0}}
    assert video_options(sent["options"])["preview"] == [5.0, 2.0]
    result = requests.Response()
    result.status_code, result.headers["Content-Type"], result._content = 200, "video/x-matroska", b"MKV"
    result.raw = None
    monkeypatch.setattr(requests.Response, "iter_content", lambda self, size: iter([b"MKV"]))
    saved = cli.Client("http://127.0.0.1:1", None, 1).download(result, tmp_path / "out.mp4")
    assert saved == tmp_path / "out.mkv" and saved.read_bytes() == b"MKV"
