"""The page's new views in a real browser (the system's Chromium, Selenium, offline), on a real 2-trial
sweep made by tune/search.py: the experiments view (sortable trials table, curves, layer activity), a
promotion seen on the model card and rolled back, two models compared on the slider, and two videos
queued as jobs and both downloaded (the jobs list survives a reload).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import make_clip, write_av_clip
from test_page import blob_of_link, chrome, compare_pixels, open_page, text, upload, wait
from test_serve import Server, free_port
from vsr_core.data.video_io import probe_video
from vsr_core.evaluate import degrade_frame
from vsr_core.experiments import ExperimentsReader
from vsr_core.inference import Upscaler

pytestmark = pytest.mark.ray
HR_H, HR_W = 36, 48  # the compare's original frames (LR 12x16, within the test limit of 64x64)


@pytest.fixture(scope="module")
def server(tiny_sweep, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("page_experiments")
    srv = Server(free_port(), {"best": tiny_sweep.path / "best"})
    srv.root = root
    srv.extra = {"experiments": [str(tiny_sweep.storage)], "models_dir": str(root / "models")}
    srv.deploy(srv.checkpoints["best"])
    srv.wait_for_step(json.loads((tiny_sweep.path / "best" / "best.json").read_text())["step"])
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
def trials(tiny_sweep) -> dict[str, dict]:
    reader = ExperimentsReader([str(tiny_sweep.storage)])
    found = {}
    for trial in reader.snapshot()[0]["trials"]:
        found[trial["trial_id"]] = {**trial, "file": reader.best_checkpoint(*reader.find_trial(trial["trial_id"]))[0]}
    return found


def rows(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#experiments-list tbody tr')].map((r) => r.dataset.trial)")


def cell(browser, trial: str, column: str) -> str:
    return browser.execute_script(f"return document.querySelector('tr[data-trial=\"{trial}\"] .col-{column}')"
                                  ".textContent")


def open_experiments(browser, server, count: int) -> None:
    open_page(browser, server)
    wait(browser, lambda d: len(rows(d)) == count, what="the trials table")


# --- tests ------------------------------------------------------------------------------------------
def test_the_experiments_view_shows_the_sweep(server, browser, trials, tiny_sweep):
    from selenium.webdriver.common.keys import Keys

    open_experiments(browser, server, len(trials))
    assert "finished" in text(browser, "experiments-list") and tiny_sweep.name in text(browser, "experiments-list")
    by_gain = sorted(trials, key=lambda t: -trials[t]["best"]["gain"])
    assert rows(browser) == by_gain  # sorted by best gain, best first
    for trial_id, trial in trials.items():
        assert cell(browser, trial_id, "gain") == f"{trial['best']['gain']:+.2f} dB"
        assert cell(browser, trial_id, "steps") == f"{trial['steps']} / {tiny_sweep.max_steps}"
        assert cell(browser, trial_id, "tof") == f"{trial['best']['tof']:.3f}"
        assert cell(browser, trial_id, "note") == ("stopped early (ASHA)" if trial["stopped_early"]
                                                   else trial["convergence"])
        assert cell(browser, trial_id, "lr") == f"{trial['lr']:.2e}".replace("e-0", "e-")

    lr_button = browser.find_element("css selector", "th button[data-key='lr']")  # sort with the keyboard
    lr_button.send_keys(Keys.ENTER)
    assert rows(browser) == sorted(trials, key=lambda t: trials[t]["lr"])
    assert browser.execute_script("return document.activeElement.dataset.key") == "lr"  # focus stays on it
    browser.execute_script("document.activeElement.click()")
    assert rows(browser) == sorted(trials, key=lambda t: -trials[t]["lr"])
    assert browser.find_element("css selector", "th[aria-sort='descending'] button").get_attribute("data-key") == "lr"

    paths = "return [...document.querySelectorAll('#curve-gain path.chart-line')].map((p) => p.dataset.series)"
    assert sorted(browser.execute_script(paths)) == sorted(trials)  # every trial's gain curve
    first = rows(browser)[0]
    browser.find_element("css selector", f"tr[data-trial='{first}'] input[type=checkbox]").click()
    assert browser.execute_script(paths) == [t for t in trials if t != first]
    points = browser.execute_script("return document.querySelectorAll('#curve-loss circle').length")
    assert points == len(trials[rows(browser)[1]]["history"]["step"])

    browser.find_element("css selector", f"tr[data-trial='{first}'] button.link").click()  # its layer activity
    assert text(browser, "layers-title").startswith(f"Layer activity of trial {first}")
    layers = browser.execute_script("return [...document.querySelectorAll('#layers .layer')].map("
                                    "(l) => [l.dataset.layer, l.querySelector('.layer-value').textContent])")
    assert layers == [[name, f"{round(v * 100)}%"] for name, v in trials[first]["layers"].items()]
    code = browser.find_element("css selector", f"tr[data-trial='{first}'] code").text
    assert code == f"{tiny_sweep.name}/trial_{first}/tensorboard"

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a phone: the table scrolls in its card
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_promote_a_trial_on_the_page_then_roll_back(server, browser, trials):
    open_experiments(browser, server, len(trials))
    wait(browser, lambda d: text(d, "model-trial") in trials, what="the model card's trial")
    served = text(browser, "model-trial")
    other = next(t for t in trials if t != served)
    served_step = text(browser, "model-step")
    assert not browser.find_element("id", "rollback").is_displayed()
    button = browser.find_element("css selector", f"tr[data-trial='{other}'] button.promote")
    assert button.text == "Promote"
    button.click()
    wait(browser, lambda d: text(d, "model-trial") == other, what="the promoted trial on the model card")
    assert text(browser, "model-step") == str(trials[other]["checkpoint_step"])
    assert text(browser, "model-experiment") == trials[other]["experiment"]
    assert text(browser, "model-tof") == f"{trials[other]['best']['tof']:.3f} px"  # the promoted report's tOF
    assert requests.get(server.url + "/v1/model", timeout=30).json()["trial_id"] == other  # served, not just shown
    wait(browser, lambda d: d.find_element("css selector", f"tr[data-trial='{other}'] button.promote").text
         == "Serving", what="the served row")
    rollback = browser.find_element("id", "rollback")
    assert rollback.is_displayed() and f"trial {served}" in rollback.text and f"step {served_step}" in rollback.text

    rollback.click()
    wait(browser, lambda d: text(d, "model-trial") == served, what="the model card after the rollback")
    assert text(browser, "model-step") == served_step
    assert requests.get(server.url + "/v1/model", timeout=30).json()["trial_id"] == served


def test_compare_two_models_on_the_slider(server, browser, trials, tmp_path):
    open_experiments(browser, server, len(trials))
    hr = make_clip(4, HR_H, HR_W, seed=21)
    paths = []
    for i, frame in enumerate(hr):
        paths.append(tmp_path / f"hr_{i}.png")
        Image.fromarray(frame).save(paths[-1])
    a, b = sorted(trials)
    experiment = trials[a]["experiment"]
    wait(browser, lambda d: not d.find_element("id", "models").get_attribute("hidden"), what="the compare card")
    for select, trial in (("model-a", a), ("model-b", b)):
        browser.execute_script(f"const s = document.getElementById('{select}'); s.value = arguments[0];"
                               "s.dispatchEvent(new Event('change'))", f"{experiment}/{trial}")
    browser.find_element("id", "models-file").send_keys("\n".join(map(str, paths)))
    browser.find_element("id", "models-run").click()
    wait(browser, lambda d: d.execute_script("return document.getElementById('compare').dataset.frame")
         == "models-0", timeout=120, what="the model compare")
    assert text(browser, "left-name").startswith(f"trial {a}") and text(browser, "right-name").startswith(f"trial {b}")

    lrs = [degrade_frame(f) for f in hr]  # what the server ran, computed here
    expected = {name: list(Upscaler.from_checkpoint(trials[name]["file"], device="cpu").stream(lrs)) for name in (a, b)}
    expected["bicubic"] = list(Upscaler.bicubic(device="cpu").stream(lrs))
    browser.execute_script("const s = document.getElementById('split'); s.value = 50; s.dispatchEvent(new Event('input'))")
    half = HR_W // 2

    def check_halves(left: np.ndarray, right: np.ndarray) -> None:
        pixels = compare_pixels(browser).astype(int)
        assert np.abs(pixels[:, :half] - left[:, :half]).max() <= 1
        assert np.abs(pixels[:, half:] - right[:, half:]).max() <= 1

    check_halves(expected[a][0], expected[b][0])
    assert (expected[a][0] != expected[b][0]).any()  # two different models: the check can tell them apart
    scores = browser.execute_script("return Object.fromEntries([...document.querySelectorAll('#compare-scores tr')]"
                                    ".map((r) => [r.dataset.result, [...r.children].map((c) => c.textContent)]))")
    assert set(scores) == {"bicubic", f"{experiment}/{a}", f"{experiment}/{b}"}
    assert all(cells[3] != "–" and cells[1].endswith(" dB") for cells in scores.values())  # tOF, PSNR

    browser.execute_script("const s = document.getElementById('left-pick'); s.value = '0';"  # bicubic | B
                           "s.dispatchEvent(new Event('change'))")
    check_halves(expected["bicubic"][0], expected[b][0])
    frame = browser.find_element("id", "frame")
    browser.execute_script("arguments[0].value = 3; arguments[0].dispatchEvent(new Event('input'))", frame)
    wait(browser, lambda d: d.execute_script("return document.getElementById('compare').dataset.frame")
         == "models-3", what="frame 4")
    check_halves(expected["bicubic"][3], expected[b][3])
    assert text(browser, "frame-out") == "4 / 4"


def test_queue_two_videos_and_download_both(server, browser, tmp_path):
    videos = [write_av_clip(tmp_path / f"clip_{name}.mp4", make_clip(6, 24, 30, seed=seed))
              for name, seed in (("one", 31), ("two", 32))]
    open_page(browser, server)
    upload(browser, *videos)

    def states(d) -> dict[str, str]:
        return d.execute_script("return Object.fromEntries([...document.querySelectorAll('#jobs-list li.job')]"
                                ".map((li) => [li.querySelector('.job-name').textContent, li.dataset.state]))")

    wait(browser, lambda d: states(d) == {"clip_one.mp4": "done", "clip_two.mp4": "done"}, timeout=240,
         what="both jobs done")
    assert text(browser, "upload-error") == ""
    for video in videos:
        item = f"//li[.//span[@class='job-name' and text()='{video.name}']]"
        browser.find_element("xpath", f"{item}//button[contains(@class, 'job-download')]").click()
        link = wait(browser, lambda d: d.find_elements("xpath", f"{item}//a[contains(@class, 'job-link')]"),
                    what=f"the download of {video.name}")[0]
        link_id = f"job-link-{video.stem}"
        browser.execute_script("arguments[0].id = arguments[1]", link, link_id)
        data, name = blob_of_link(browser, link_id)
        assert name == f"{video.stem}_x3.mp4"
        (tmp_path / name).write_bytes(data)
        info = probe_video(tmp_path / name)
        assert (info.height, info.width, info.num_frames) == (72, 90, 6)

    open_page(browser, server)  # the jobs survive a reload: the list comes from GET /v1/jobs
    wait(browser, lambda d: {"clip_one.mp4", "clip_two.mp4"} <= set(states(d)), what="the jobs after a reload")
    item = "//li[.//span[@class='job-name' and text()='clip_one.mp4']]"
    browser.find_element("xpath", f"{item}//button[contains(@class, 'job-cancel')]").click()  # Remove
    wait(browser, lambda d: "clip_one.mp4" not in states(d), what="the removed job")
    names = [j["source_name"] for j in requests.get(server.url + "/v1/jobs", timeout=30).json()["jobs"]]
    assert "clip_one.mp4" not in names and "clip_two.mp4" in names
