"""The page's live stream in a real browser (headless Chromium with its fake camera): frames of
the camera or of a playing video go to WS /v1/stream and come back 3x, next to the frame they
were made from. What the browser sent and got is recorded at its WebSocket and compared with
`vsr upscale`'s computation (Upscaler.stream) on exactly the frames sent."""
from __future__ import annotations

import base64
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from test_page import FRAMES, H, W, files, open_page, server, text, upload, wait  # noqa: F401 - fixtures
from test_page import chrome
from vsr_core.inference import Upscaler

pytestmark = pytest.mark.ray

# Keeps what the page's WebSocket sends (the header, raw frames) and receives (3x frames), as base64.
RECORD_WEBSOCKET = """
const Native = window.WebSocket;
const b64 = (buffer) => {
  const bytes = new Uint8Array(buffer);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
window.recorded = { header: null, sent: [], got: [], text: [], opened: null, sentAt: [], gotAt: [], textAt: [] };
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    window.recorded.opened = performance.now();
    this.addEventListener('message', (e) => {
      if (typeof e.data === 'string') {
        window.recorded.text.push(JSON.parse(e.data));
        window.recorded.textAt.push(performance.now());
      } else {
        window.recorded.got.push(b64(e.data));
        window.recorded.gotAt.push(performance.now());
      }
    });
  }
  send(data) {
    if (typeof data === 'string') window.recorded.header = window.recorded.header || JSON.parse(data);
    else {
      window.recorded.sent.push(b64(data.buffer || data));
      window.recorded.sentAt.push(performance.now());
    }
    super.send(data);
  }
};
"""


@pytest.fixture(scope="module")
def browser():
    driver = chrome(extra_flags=("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                                 "--autoplay-policy=no-user-gesture-required"))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def recorded(browser) -> tuple[dict, np.ndarray, list[np.ndarray], list[dict]]:
    data = browser.execute_script("return window.recorded")
    header = data["header"]
    sent = np.stack([np.frombuffer(base64.b64decode(f), np.uint8).reshape(header["height"], header["width"], 3)
                     for f in data["sent"]])
    got = [np.asarray(Image.open(io.BytesIO(base64.b64decode(f))).convert("RGB")) for f in data["got"]]
    return header, sent, got, data["text"]


def assert_matches_vsr_upscale(server, sent: np.ndarray, got: list[np.ndarray]) -> None:
    upscaler = Upscaler.from_checkpoint(server.root / "sweep" / "best" / "trial_3.pth", device="cpu")
    expected = list(upscaler.stream(iter(sent)))
    assert len(got) == len(expected) == len(sent)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape == (3 * sent.shape[1], 3 * sent.shape[2], 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, f"frame {i} differs from vsr upscale's"


def start_recording(browser, server, output: str, width: str) -> None:
    open_page(browser, server)
    browser.execute_script(RECORD_WEBSOCKET)
    browser.execute_script(f"document.getElementById('live-output').value = '{output}';"
                           f"document.getElementById('live-width').value = '{width}';")


def test_the_camera_streams_live_and_every_frame_sent_comes_back_3x(server, browser):
    start_recording(browser, server, "png", "160")
    browser.find_element("id", "live-camera").click()
    wait(browser, lambda d: int(d.execute_script("return document.getElementById('live-view').dataset.frames || 0"))
         >= 4, what="4 frames back from the camera stream")
    assert browser.find_element("id", "live-stop").is_displayed()
    browser.find_element("id", "live-stop").click()
    wait(browser, lambda d: d.execute_script("return document.getElementById('live-view').dataset.state") == "done",
         what="the end of the stream")
    header, sent, got, messages = recorded(browser)
    # 160 px wide from the fake camera's 4:3, shrunk to the test server's 64x64-pixel limit, even sizes
    assert (header["width"], header["height"], header["format"]) == (72, 54, "raw")
    assert messages[0]["type"] == "ready" and messages[-1] == {**messages[-1], "type": "end", "frames": len(sent)}
    assert_matches_vsr_upscale(server, sent, got)
    shown = browser.execute_script("const c = document.getElementById('live-out'); return [c.width, c.height]")
    assert shown == [3 * 72, 3 * 54]
    assert text(browser, "live-stats").startswith(f"Done: {len(sent)} sent · {len(sent)} back")
    assert_rate_shown_is_of_the_last_frames_back(browser)
    assert not browser.find_element("id", "live-stop").is_displayed()
    assert text(browser, "live-error") == ""


def assert_rate_shown_is_of_the_last_frames_back(browser) -> None:
    """The stats' rate and median latency, shown when the end arrived, against the frames the
    WebSocket sent and received in the 5 s before (since the socket opened if sooner): within
    one frame and a few ms, for the page's moments differ a little from the recorder's."""
    shown = re.search(r"· ([0-9.]+) frames back/s \(last 5 s\) · latency ([0-9]+) ms \(median\)$",
                      text(browser, "live-stats"))
    assert shown, text(browser, "live-stats")
    times = browser.execute_script("return window.recorded")
    now = times["textAt"][-1]
    span = min(5000.0, now - times["opened"])
    recent = [(sent, got) for sent, got in zip(times["sentAt"], times["gotAt"]) if now - span < got <= now]
    expected = len(recent) / (span / 1e3)
    assert float(shown.group(1)) > 0
    assert abs(float(shown.group(1)) - expected) <= 1 / (span / 1e3) + 0.05 * expected + 0.05
    latency = float(np.median([got - sent for sent, got in recent]))
    assert abs(int(shown.group(2)) - latency) <= 0.1 * latency + 30


def test_the_rate_shown_is_frames_back_over_the_last_5_seconds_not_since_the_start(server, browser):
    """live.js's backRate on made-up arrival times (ms), against counts done by hand."""
    open_page(browser, server)
    rate = lambda times, now, started: browser.execute_script(  # noqa: E731
        "return window.vsrLive.backRate(arguments[0], arguments[1], arguments[2])", times, now, started)
    assert browser.execute_script("return window.vsrLive.RATE_WINDOW_MS") == 5000
    slow_then_fast = list(range(0, 55000, 500)) + list(range(55000, 60001, 100))  # 2/s for 55 s, then 10/s
    assert rate(slow_then_fast, 60000, 0) == pytest.approx(10.0)  # 50 in (55 s, 60 s]; since the start: 2.7/s
    assert rate(slow_then_fast, 70000, 0) == 0  # stalled for 10 s: nothing back lately
    assert rate([500, 1000, 1500, 2000], 2000, 0) == pytest.approx(2.0)  # 2 s old: 4 frames over 2 s, not 5
    assert rate([], 1000, 1000) == 0


def test_a_video_file_streams_until_it_ends(server, browser, files):
    start_recording(browser, server, "png", "0")  # as it is: 30x24
    browser.find_element("id", "live-file").send_keys(str(files["clip"]))
    wait(browser, lambda d: d.execute_script("return document.getElementById('live-view').dataset.state") == "done",
         what="the end of the video's stream")
    header, sent, got, _ = recorded(browser)
    assert (header["width"], header["height"]) == (W, H)
    assert 1 <= len(sent) <= FRAMES
    assert_matches_vsr_upscale(server, sent, got)
    assert text(browser, "live-error") == ""


def test_with_an_api_key_the_stream_sends_it_as_a_subprotocol(server, browser, files):
    """Browsers cannot set headers on a WebSocket: the page offers the key as a subprotocol, which
    the server checks before accepting the socket; a wrong key never gets a socket. Last in this
    module: it gives the server a key."""
    from test_page import serve_with_key

    key = "live-key-" + os.urandom(6).hex()
    serve_with_key(server, key, "live_keys")
    for given, works in (("wrong-" + key, False), (key, True)):
        open_page(browser, server)
        browser.execute_script(f"sessionStorage.setItem('vsr-api-key', '{given}')")
        browser.get(server.url + "/")
        browser.execute_script(RECORD_WEBSOCKET)
        browser.execute_script("document.getElementById('live-output').value = 'png';"
                               "document.getElementById('live-width').value = '0';")
        browser.find_element("id", "live-file").send_keys(str(files["clip"]))
        if works:
            wait(browser, lambda d: d.execute_script("return document.getElementById('live-view').dataset.state")
                 == "done", what="the end of the keyed stream")
            _, sent, got, _ = recorded(browser)
            assert_matches_vsr_upscale(server, sent, got)
            assert text(browser, "live-error") == ""
        else:
            wait(browser, lambda d: "refused the stream" in text(d, "live-error"), what="the refused stream")
            assert browser.execute_script("return window.recorded.header") is None  # no socket, nothing sent
