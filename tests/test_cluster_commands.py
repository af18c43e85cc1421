"""The cluster commands of docs/cluster.md, as a new user runs them: a head started with `make cluster-up`
(`ray start`, token authentication on, the token made in a fresh home folder), a short sweep
submitted as a Ray job with `make cluster-sweep`, serve/config.yaml deployed to that head with
`make cluster-serve`, and `make cluster-status`.

The head is a cluster of its own (its own ports and temp dir), not the test session's shared Ray.
It runs with `ray start --block` and is stopped by signalling that process: `ray stop` (what
`make cluster-down` runs) would stop every Ray of this user on the machine, the session's too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from conftest import write_clips
from vsr_core.netutil import free_port

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent  # the venv running the tests: the one `make` would use
TINY_SWEEP = {
    "PRESET": "tiny", "MAX_STEPS": 6, "VAL_STEP_EVERY": 3, "LOG_TBOARD_EVERY": 3, "ACCUMULATION_STEPS": 1,
    "BATCH_SIZE": 2, "PATCH_SIZE": 8, "NUM_PATCHES": 20, "VAL_MAX_FRAMES": 2, "PERCEPTUAL_WEIGHT": 0.0,
    "NUM_WORKERS": 0,
}


def head_env(folder: Path) -> dict[str, str]:
    """A new user's environment: no address of another Ray, no token yet (HOME is a fresh folder,
    so `make cluster-up` makes ~/.ray/auth_token there and the user's own is never touched), and
    this checkout's packages first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(folder / "home"), PYTHONPATH=str(REPO), VSR_CACHE_DIR=str(folder / "cache"))
    return env


def processes_of(temp_dir: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def make(target: str, env: dict[str, str], **variables: str) -> subprocess.CompletedProcess:
    # -o: the venv is installed already (make must not reinstall it)
    args = ["make", "-C", str(REPO), "-o", f"{VENV}/.installed", f"VENV={VENV}", target]
    args += [f"{key}={value}" for key, value in variables.items()]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)


def test_ray_start_head_job_submit_sweep_and_serve_deploy(tmp_path):
    folder = tmp_path
    clips = write_clips(folder, 8, 36, 36)
    (folder / "base.json").write_text(json.dumps(TINY_SWEEP))
    temp_dir = tempfile.mkdtemp(prefix="vsr-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, http = free_port(), free_port(), free_port()
    env = head_env(folder)
    head_args = ["--port", str(gcs), "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port",
                 str(free_port()), "--ray-client-server-port", str(free_port()), "--num-cpus", "2",
                 "--temp-dir", temp_dir, "--disable-usage-stats", "--block"]
    # `make cluster-up` from `folder`, so config.yaml's relative checkpoint path resolves there; --block
    # keeps `ray start` in the foreground, and it stops the head's processes when signalled
    (folder / "home").mkdir()
    head = subprocess.Popen(["make", "-f", str(REPO / "Makefile"), "-o", f"{VENV}/.installed", f"VENV={VENV}",
                             "cluster-up", "RAY_HEAD_ARGS=" + " ".join(head_args)], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    started = time.time()
    try:
        deadline = time.time() + 60
        while True:  # the dashboard answers once the head is up
            assert head.poll() is None, head.stdout.read()
            try:
                if requests.get(address + "/api/version", timeout=2).status_code in (200, 401, 403):
                    break
            except requests.RequestException:  # not up yet
                pass
            assert time.time() < deadline, "the head did not come up in 60 s"
            time.sleep(0.5)

        # Without RAY_AUTH_MODE=token a client is refused (what the README used to leave out).
        refused = subprocess.run([str(VENV / "bin" / "ray"), "job", "list", "--address", address], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0

        storage = folder / "demo_output" / "tune"  # where `make demo` exports, so config.yaml finds it
        sweep_args = (f"--config {folder / 'base.json'} --data {clips['train']} --val-data {clips['val']} "
                      f"--name demo --num-samples 1 --max-concurrent 1")
        began = time.time()
        sweep = make("cluster-sweep", env, RAY_DASHBOARD=address, SWEEP_STORAGE=str(storage), SWEEP_ARGS=sweep_args)
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        assert "succeeded" in sweep.stdout + sweep.stderr
        best = storage / "demo" / "best"
        info = json.loads((best / "best.json").read_text())
        checkpoint = best / info["checkpoint_file"]
        assert checkpoint.is_file()
        print(f"head up in {began - started:.0f} s, sweep job {time.time() - began:.0f} s")
        began = time.time()

        config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
        assert config["applications"][0]["deployments"][0]["user_config"]["checkpoint"] == "demo_output/tune/demo/best"
        config["http_options"]["port"] = http
        deployment = config["applications"][0]["deployments"][0]
        deployment["ray_actor_options"]["num_cpus"] = 0.5
        deployment["user_config"]["jobs_dir"] = str(folder / "jobs")
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        deploy = make("cluster-serve", env, RAY_DASHBOARD=address, SERVE_CONFIG=str(folder / "config.yaml"))
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

        deadline, last = time.time() + 90, None
        while time.time() < deadline:
            try:
                last = requests.get(f"http://127.0.0.1:{http}/healthz", timeout=5)
                if last.status_code == 200:
                    break
            except requests.RequestException:  # not up yet
                pass
            time.sleep(0.5)
        assert last is not None and last.status_code == 200, last and last.text
        assert last.json() == {"status": "ok", "step": info["step"]}
        status = make("cluster-status", env, RAY_DASHBOARD=address)
        assert status.returncode == 0 and "RUNNING" in status.stdout, status.stdout + status.stderr
        model = requests.get(f"http://127.0.0.1:{http}/v1/model", timeout=10).json()
        print(f"serve deploy to healthy {time.time() - began:.0f} s")
        assert model["checkpoint_id"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # make and `ray start --block`, which stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        deadline = time.time() + 30
        while processes_of(temp_dir) and time.time() < deadline:
            time.sleep(0.5)
        left = processes_of(temp_dir)
        for process in left:  # only this head's processes (they name its temp dir)
            process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes left after the head stopped: {[p.pid for p in left]}"
    assert (folder / "home" / ".ray" / "auth_token").is_file()  # the token cluster-up made
