"""An install that works anywhere: this checkout's wheel in a fresh virtual environment, run from a folder
outside the checkout (which is then on no sys.path). What the wheel holds; `vsr --help`; a 2-step
`vsr train` with a shipped config; a 1-trial 2-step `vsr sweep` with its default config that exports
best/; `vsr serve` of that best/ answering /healthz.

Offline and quick: the wheel is built without build isolation (setuptools and wheel come with the test
extras), and the venv holds only the wheel plus a .pth line naming this test run's site-packages, so
torch and ray are not installed again. The checkout's own packages are not among those paths.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from conftest import write_clips
from vsr_core.netutil import free_port

pytestmark = pytest.mark.ray  # starts Ray twice (the sweep, the server): with the integration tests
REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "vsr_core", "tune", "serve", "tests")  # tests/: to show it stays out
# a run of milliseconds per step on the generated clips (the shipped configs are for real footage)
TINY = {"PRESET": "tiny", "MAX_STEPS": 2, "VAL_STEP_EVERY": 2, "SAVE_STEP_EVERY": 2, "LOG_TBOARD_EVERY": 1,
        "BATCH_SIZE": 2, "ACCUMULATION_STEPS": 1, "PATCH_SIZE": 8, "NUM_PATCHES": 16, "VAL_MAX_FRAMES": 2,
        "VAL_CROP": 0, "HOLDOUT_FRAMES": 0, "PERCEPTUAL_WEIGHT": 0.0, "NUM_WORKERS": 0, "MILESTONE_EVERY": 0}


def sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def build_wheel(folder: Path) -> Path:
    """The wheel of a copy of the checkout's sources (a build writes build/ and *.egg-info next to them)."""
    source = folder / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(folder / "dist"), str(source)], check=True, timeout=300)
    return next((folder / "dist").glob("vsr_core-*.whl"))


def make_venv(folder: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed, then this run's site-packages appended to its sys.path."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # the wheel first: with the .pth in place pip would take this run's (editable) vsr-core for installed
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (Path(site) / "zz_test_run_site_packages.pth").write_text("\n".join(ours) + "\n")
    return venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("install")
    wheel = build_wheel(folder)
    venv = make_venv(folder, wheel)
    elsewhere = folder / "elsewhere"  # the working folder of every command: not the checkout
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RAY_")}
    env.update(PYTHONNOUSERSITE="1", VSR_CACHE_DIR=str(folder / "cache"))
    return {"wheel": wheel, "venv": venv, "cwd": elsewhere, "env": env, "clips": write_clips(folder, 8, 48, 48)}


def vsr(installed, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["venv"] / "bin" / "vsr"), *args], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_packages_the_page_and_the_configs_and_no_tests(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for expected in ("vsr_core/cli.py", "vsr_core/engine/trainer.py", "tune/search.py", "tune/cli.py",
                     "serve/app.py", "serve/commands.py", "serve/page/index.html", "serve/page/page.css",
                     "serve/page/page.js", "serve/page/compare.js", "vsr_core/configs/cpu_small.json",
                     "vsr_core/configs/option_b.json", "vsr_core/configs/sweep_base.json"):
        assert expected in names, expected
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n or n.startswith("conftest")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    declared = zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()
    assert "[vsr.commands]" in declared and "sweep = tune.cli:add_sweep_command" in declared


def test_vsr_runs_from_the_install_not_the_checkout(installed):
    run = vsr(installed, "--help", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for command in ("train", "upscale", "sweep", "serve", "client"):
        assert command in run.stdout
    where = subprocess.run(
        [str(installed["venv"] / "bin" / "python"), "-c",
         "import json, vsr_core, tune, serve; from vsr_core.configs import config_path; "
         "print(json.dumps([vsr_core.__file__, tune.__file__, serve.__file__, str(config_path('sweep_base'))]))"],
        cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=120)
    paths = json.loads(where.stdout)
    venv = str(installed["venv"].resolve())
    assert all(str(Path(p).resolve()).startswith(venv) for p in paths), paths


def test_vsr_train_two_steps_with_a_shipped_config(installed, tmp_path):
    clips = installed["clips"]
    run = vsr(installed, "train", "--config", "cpu_small", "--plain",
              *sets({**TINY, "TRAIN_DATA": [str(clips["train"])], "VAL_DATA": [str(clips["val"])],
                     "OUTPUT_DIR": str(tmp_path / "run")}))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "done: step 2" in run.stdout and (tmp_path / "run" / "latest.pth").is_file()
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["LR_EXPONENT"] == -3 and saved["NUM_PATCHES"] == 16  # cpu_small's LR, the --set on top


def test_vsr_sweep_exports_best_and_vsr_serve_answers_healthz(installed, tmp_path):
    clips = installed["clips"]
    storage = tmp_path / "storage"
    sweep = vsr(installed, "sweep", "--data", str(clips["train"]), "--val-data", str(clips["val"]),
                "--num-samples", "1", "--max-concurrent", "1", "--storage-path", str(storage), "--name", "install",
                "--dashboard-port", str(free_port()), *sets({k: v for k, v in TINY.items() if k != "MAX_STEPS"}),
                "--max-steps", "2", timeout=600)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    best = storage / "install" / "best"
    info = json.loads((best / "best.json").read_text())
    assert info["step"] == 2 and (best / info["checkpoint_file"]).is_file()
    assert info["config"]["base_config"]["LR_EXPONENT"] == -3  # the default config: the shipped sweep_base

    port = free_port()
    server = subprocess.Popen([str(installed["venv"] / "bin" / "vsr"), "serve", "--checkpoint", str(best), "--port",
                               str(port), "--num-cpus", "0.5", "--jobs-dir", str(tmp_path / "jobs")],
                              cwd=installed["cwd"], env=installed["env"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, health = time.monotonic() + 180, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                break
            except requests.RequestException:  # not up yet
                time.sleep(0.5)
        assert health == {"status": "ok", "step": 2}, server.stdout.read() if server.poll() is not None else health
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=90)
        assert "shutting down" in output
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
