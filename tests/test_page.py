"""The web page (GET /) in a real browser: the system's Chromium driven by Selenium, offline.

One Serve app (serve/config.yaml, tiny model) for the module: the model card, a video job from
upload to 100% progress, the compare slider, the downloaded mp4, a 5-frame window, API errors
shown next to the upload control, and the API key prompt (the last test adds a key file).

Chromium and its driver come from the system packages (`make test` installs them:
apt-get install chromium chromium-driver). Missing, the tests fail with that message;
VSR_SKIP_BROWSER=1 skips them (for developers without the packages).
"""
from __future__ import annotations

import base64
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import make_clip, write_av_clip
from test_serve import Server, free_port, png_bytes, save_test_checkpoint
from vsr_core.checkpoint import BestInfo, write_best
from vsr_core.data.degradation import bicubic_upsample
from vsr_core.data.video_io import probe_video
from vsr_core.frames import to_tensor, to_uint8

pytestmark = pytest.mark.ray

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900")
KEY = "page-key-" + os.urandom(6).hex()
FRAMES, H, W = 10, 24, 30  # LR; the result is 72x90
METRICS = {"psnr": 30.5, "ssim": 0.8765, "bicubic_psnr": 29.75}


def chrome(download_dir: str | None = None, extra_flags: tuple[str, ...] = ()):
    """Headless Chromium from /usr/bin, no Selenium Manager, no network."""
    if os.environ.get("VSR_SKIP_BROWSER") == "1":
        pytest.skip("VSR_SKIP_BROWSER=1")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: install them with `apt-get install -y chromium chromium-driver` "
                    "(make test does it when run as root), or set VSR_SKIP_BROWSER=1 to skip the browser tests")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]'")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='vsr-chrome-')}")
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("page")
    best = root / "sweep" / "best"
    save_test_checkpoint(best / "trial_3.pth", seed=4, step=240)
    write_best(best, BestInfo(checkpoint_file="trial_3.pth", metrics=METRICS, trial_id="trial_3"))
    srv = Server(free_port(), {"best": best})
    srv.root = root
    srv.deploy(best)
    srv.wait_for_step(240)
    yield srv
    try:
        serve.delete("vsr")
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page_files")
    clip = make_clip(FRAMES, H, W, seed=5)
    paths = {"clip": write_av_clip(root / "clip.mp4", clip), "bad": root / "notes.mp4"}
    paths["bad"].write_text("this is not a video\n")
    paths["long"] = write_av_clip(root / "long.mp4", make_clip(150, 48, 64, seed=6))  # seconds of work: cancel it
    for i in range(5):
        paths[f"frame{i}"] = root / f"frame{i}.png"
        paths[f"frame{i}"].write_bytes(png_bytes(clip[i]))
        paths[f"big{i}"] = root / f"big{i}.png"  # over the test limit of 64x64 pixels: 413
        paths[f"big{i}"].write_bytes(png_bytes(np.zeros((80, 80, 3), np.uint8)))
    return paths


# --- helpers -------------------------------------------------------------------------------------
def wait(browser, condition, timeout: float = 60, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception:
        error = browser.execute_script("return document.getElementById('upload-error').textContent")
        pytest.fail(f"timed out waiting for {what} (page error: {error!r})")


def text(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').textContent.trim()")


def open_page(browser, server) -> None:
    browser.get(server.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(server.url + "/")


def upload(browser, *paths: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in paths))


def compare_pixels(browser) -> np.ndarray:
    data = browser.execute_script("""
        const c = document.getElementById('compare');
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];""")
    width, height, values = data
    return np.array(values, np.uint8).reshape(height, width, 4)[..., :3]


def blob_of_link(browser, element_id: str) -> tuple[bytes, str]:
    """The bytes behind a download link (a blob: URL of the page) and its file name."""
    encoded, name = browser.execute_async_script("""
        const [id, done] = arguments;
        const a = document.getElementById(id);
        fetch(a.href).then((r) => r.blob()).then((blob) => {
          const reader = new FileReader();
          reader.onload = () => done([reader.result.split(',')[1], a.download]);
          reader.readAsDataURL(blob);
        }).catch((err) => done([null, String(err)]));""", element_id)
    assert encoded is not None, f"cannot read the download link {element_id}: {name}"
    return base64.b64decode(encoded), name


def wait_for_compare(browser, frame: str) -> None:
    wait(browser, lambda d: d.execute_script("return document.getElementById('compare').dataset.frame") == frame,
         what=f"the compare view of frame {frame}")


# --- tests ----------------------------------------------------------------------------------------
def test_the_page_and_its_files_are_served_safely(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/page/page.js" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
        response = requests.get(f"{server.url}/page/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
    for name in ("__init__.py", "..%2Fapp.py", "..%2F..%2Fpyproject.toml", "%2Fetc%2Fpasswd", "index.html%00.js"):
        response = requests.get(f"{server.url}/page/{name}", timeout=10)
        assert response.status_code == 404 and response.json()["error"] == "not_found", name
    bicubic = server.url + "/v1/bicubic"  # the page's baseline: JSON errors like every /v1 route
    response = requests.post(bicubic, data=b"hello", headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 415 and "image/png" in response.json()["detail"]
    response = requests.post(bicubic, data=b"\x89PNG\r\n\x1a\nbroken", headers={"Content-Type": "image/png"}, timeout=10)
    assert response.status_code == 400 and response.json()["detail"]
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert "/" not in spec["paths"] and spec["paths"]["/v1/bicubic"]["post"]["security"] == [{"HTTPBearer": []}]


def test_the_model_card_shows_the_checkpoint_and_its_metrics(server, browser):
    open_page(browser, server)
    wait(browser, lambda d: text(d, "model-preset") == "tiny" if d.execute_script(
        "return !!document.getElementById('model-preset')") else False, what="the model card")
    assert text(browser, "model-step") == "240"
    assert text(browser, "model-phase") == "pretrain"
    parameters = requests.get(server.url + "/v1/model", timeout=10).json()["parameters"]
    assert text(browser, "model-parameters") == f"{parameters:,}"
    assert text(browser, "model-psnr") == "30.50 dB" and text(browser, "model-bicubic-psnr") == "29.75 dB"
    assert text(browser, "model-gain") == "+0.75 dB" and text(browser, "model-ssim") == "0.8765"
    assert text(browser, "model-bicubic-ssim") == "not available"
    assert text(browser, "model-device") == "cpu"
    assert text(browser, "model-checkpoint").startswith("trial_3.pth (")
    assert browser.find_element("id", "auth").is_displayed() is False


def test_a_video_job_from_upload_to_compare_and_download(server, browser, files):
    from selenium.webdriver.common.keys import Keys

    started = time.time()
    upload(browser, files["clip"])
    wait(browser, lambda d: (text(d, "job-label"), text(d, "job-percent")) == ("Done", "100%"), timeout=120,
         what="100% progress")
    assert f"{FRAMES} / {FRAMES} frames" in text(browser, "job-stats")
    wait_for_compare(browser, str((FRAMES - 1) // 2))
    assert text(browser, "left-name") == "bicubic" and text(browser, "upload-error") == ""
    before = compare_pixels(browser)
    assert before.shape == (3 * H, 3 * W, 3)

    split = browser.find_element("id", "split")  # keyboard: Home puts the divider at the far left
    split.send_keys(Keys.HOME)
    assert split.get_attribute("value") == "0"
    after = compare_pixels(browser)
    left, right = slice(0, 3 * W // 2 - 1), slice(3 * W // 2 + 1, 3 * W)
    assert (before[:, left] != after[:, left]).any(), "moving the divider changed nothing left of it"
    assert (before[:, right] == after[:, right]).all(), "right of the divider is the model in both"
    split.send_keys(Keys.END)
    assert (compare_pixels(browser) != after).any()

    frame = browser.find_element("id", "frame")  # another frame: both videos seek to it
    frame.send_keys(Keys.END)
    wait_for_compare(browser, str(FRAMES - 1))
    assert text(browser, "frame-out") == f"{FRAMES} / {FRAMES}"

    data, name = blob_of_link(browser, "download-video")
    assert name == "clip_x3.mp4"
    result = Path(server.root) / name
    result.write_bytes(data)
    info = probe_video(result)
    assert (info.height, info.width, info.num_frames) == (3 * H, 3 * W, FRAMES)
    png, png_name = blob_of_link(browser, "download-png")
    assert png_name == f"clip_frame{FRAMES}_x3.png"
    assert Image.open(io.BytesIO(png)).size == (3 * W, 3 * H)
    print(f"video job in the browser: {time.time() - started:.1f}s")

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a phone: nothing wider than the screen
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_five_frames_compare_the_center_frame_with_bicubic(server, browser, files):
    upload(browser, *(files[f"frame{i}"] for i in range(5)))
    wait_for_compare(browser, "center")
    assert text(browser, "job-percent") == "100%"
    assert not browser.find_element("id", "frame-pick").is_displayed()
    png, name = blob_of_link(browser, "download-png")
    assert name == "frame2_x3.png"
    window = [np.array(Image.open(files[f"frame{i}"])) for i in range(5)]
    expected = server.post_window(np.stack(window))
    assert png == expected.content  # the model's own PNG
    browser.execute_script("const s = document.getElementById('split'); s.value = 50; "
                           "s.dispatchEvent(new Event('input'))")
    pixels = compare_pixels(browser)  # left: vsr_core's bicubic (from /v1/bicubic), right: the model
    model = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    exact = to_uint8(bicubic_upsample(to_tensor(window[2])[None]))[0]
    half = 3 * W // 2
    assert (pixels[:, half:] == model[:, half:]).all() and (pixels[:, :half] == exact[:, :half]).all()
    assert (model != exact).any()


def test_api_errors_are_shown_next_to_the_upload_control(server, browser, files):
    for paths, message in (
        ([files["bad"]], "the file is corrupt or not a video"),  # 400 from /v1/jobs
        ([files[f"big{i}"] for i in range(5)], "exceeds the limit of 4096 pixels"),  # 413 from /v1/upscale
        ([files["frame0"], files["frame1"]], "choose one video or exactly 5 frames (got 2 files)"),
    ):
        upload(browser, *paths)
        wait(browser, lambda d: message in text(d, "upload-error"), what=repr(message))
        assert browser.find_element("id", "upload-error").is_displayed()
    assert browser.find_element("id", "model-preset").is_displayed()  # still the page, not an error page


def test_cancel_stops_a_running_job(server, browser, files):
    upload(browser, files["long"])
    wait(browser, lambda d: text(d, "job-label") in ("Queued", "Upscaling"), what="a started job")
    browser.find_element("id", "cancel").click()
    wait(browser, lambda d: text(d, "job-label") == "Cancelled", what="the cancelled job")
    assert not browser.find_element("id", "cancel").is_displayed() and text(browser, "upload-error") == ""
    deadline = time.time() + 30
    while True:  # the server stopped it: cancelled (its files deleted), never done
        states = [j["state"] for j in requests.get(server.url + "/v1/jobs", timeout=10).json()["jobs"]
                  if j["source_name"] == "long.mp4"]
        if all(state == "cancelled" for state in states):
            break
        assert time.time() < deadline and "done" not in states, states
        time.sleep(0.2)


def serve_with_key(server, key: str, file_name: str) -> None:
    """Redeploy ``server`` with ``key`` as its one API key and wait until the key is required."""
    key_file = Path(server.root) / file_name
    key_file.write_text(key + "\n")
    server.extra = {"api_key_file": str(key_file)}
    server.deploy(server.checkpoints["best"])  # user_config only: an in-place reconfigure
    deadline = time.time() + 60
    while requests.get(server.url + "/v1/model", timeout=10).status_code != 401:
        assert time.time() < deadline, "the API key was not applied"
        time.sleep(0.2)


def test_with_an_api_key_the_page_asks_for_it(server, browser, files):
    serve_with_key(server, KEY, "keys")

    response = requests.post(server.url + "/v1/bicubic", data=files["frame2"].read_bytes(),
                             headers={"Content-Type": "image/png"}, timeout=10)
    assert response.status_code == 401

    open_page(browser, server)
    wait(browser, lambda d: d.find_element("id", "auth").is_displayed(), what="the API key prompt")
    wait(browser, lambda d: "needs an API key (401)" in text(d, "auth-message"), what="the 401 message")
    assert "Authorization: Bearer" in text(browser, "auth-message")
    upload(browser, files["clip"])  # without a key: the 401 detail next to the upload control too
    wait(browser, lambda d: "this server needs an API key" in text(d, "upload-error"), what="401 on upload")

    key_input = browser.find_element("id", "api-key")
    key_input.send_keys("wrong-key\n")
    wait(browser, lambda d: "The key was refused (401): wrong API key" in text(d, "auth-message"), what="wrong key")
    browser.find_element("id", "api-key").send_keys(KEY + "\n")
    wait(browser, lambda d: d.execute_script("return !!document.getElementById('model-preset')"), what="the card")
    assert not browser.find_element("id", "auth").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('vsr-api-key')") == KEY
    assert KEY not in browser.current_url
    upload(browser, *(files[f"frame{i}"] for i in range(5)))
    wait_for_compare(browser, "center")
    assert text(browser, "upload-error") == ""
