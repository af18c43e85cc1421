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
