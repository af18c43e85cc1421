"""A deployment as serve/config.yaml configures it for production: autoscaling (1 to 2 replicas)
on fractional CPUs, each replica's memory budget derived from its share of the node, and what
the open endpoints reveal about the server (nothing of its disk, processes or hosts), with a
checkpoint whose path is not Latin-1 (HTTP headers are)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from conftest import make_clip, ray_processes
from test_serve import APP_NAME, ROOT, Server, free_port, save_test_checkpoint
from vsr_core.checkpoint import BestInfo, write_best
from vsr_core.memory import DEFAULT_BUDGET_FRACTION, machine_memory_bytes

pytestmark = pytest.mark.ray
REPLICA_CPUS = 0.25
SECRET_TRIAL = "/srv/secret-ray-results/vsr_sweep/trial_7"
SECRET_DATA = "/srv/secret-data/train_clip.mp4"


class AutoscalingServer(Server):
    expose_paths = False

    def config(self, checkpoint: Path) -> dict:
        """serve/config.yaml with its autoscaling, on fractional CPUs, reacting within seconds."""
        config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        (deployment,) = config["applications"][0]["deployments"]
        assert deployment["autoscaling_config"]["min_replicas"] == 1
        assert deployment["autoscaling_config"]["max_replicas"] == 2
        deployment["autoscaling_config"].update(target_ongoing_requests=1, upscale_delay_s=0.5,
                                                look_back_period_s=2, metrics_interval_s=0.5)
        deployment["ray_actor_options"] = {"num_cpus": REPLICA_CPUS, "num_gpus": 0}
        deployment["user_config"].update(checkpoint=str(checkpoint), jobs_dir=self.jobs_dir,
                                         expose_paths=self.expose_paths)
        return config


def replicas() -> list:
    return ray_processes(f"ServeReplica:{APP_NAME}:VSRUpscaler")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A best/ folder under a path outside Latin-1, with a best.json that knows the trial's
    folder and the training data's paths (as a Tune export does)."""
    best = tmp_path_factory.mktemp("ckpt") / "модели ü 検査" / "best"
    save_test_checkpoint(best / "trial_7.pth", seed=3, step=70)
    write_best(best, BestInfo(checkpoint_file="trial_7.pth", metrics={"psnr": 30.5}, step=70, trial_id="trial_7",
                              trial_path=SECRET_TRIAL, config={"TRAIN_DATA": [SECRET_DATA], "PRESET": "tiny"}))
    return best


@pytest.fixture(scope="module")
def server(ray_session, checkpoint):
    from ray import serve

    srv = AutoscalingServer(free_port(), {"best": checkpoint})
    srv.deploy(checkpoint)
    srv.wait_for_step(70)
    yield srv
    try:
        serve.delete(APP_NAME)
    finally:
        serve.shutdown()


def npy_window(height: int = 48, width: int = 64, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, make_clip(5, height, width, seed=seed))
    return buffer.getvalue()


def assert_reveals_nothing(text: str, checkpoint: Path) -> None:
    for secret in (str(checkpoint.parent), "модели", SECRET_TRIAL, SECRET_DATA, "secret", str(ROOT)):
        assert secret not in text, secret
    hostname = socket.gethostname()
    assert len(hostname) < 4 or hostname not in text


def test_open_endpoints_reveal_no_paths_pids_or_hosts(server, checkpoint):
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "step": 70}
    assert_reveals_nothing(health.text + json.dumps(dict(health.headers)), checkpoint)

    info = requests.get(server.url + "/v1/model", timeout=10)
    assert info.status_code == 200
    assert_reveals_nothing(info.text + json.dumps(dict(info.headers)), checkpoint)
    body = info.json()
    assert body["checkpoint"] == "trial_7.pth" and body["trial_id"] == "trial_7" and body["metrics"]["psnr"] == 30.5
    assert not {"pid", "hostname", "node_id", "ip", "checkpoint_path", "trial_path", "config"} & set(body)

    # every response of a checkpoint at a non-Latin-1 path works; the header names its content hash
    window = requests.post(server.url + "/v1/upscale", data=npy_window(),
                           headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert window.status_code == 200, window.text
    digest = hashlib.sha256((checkpoint / "trial_7.pth").read_bytes()).hexdigest()[:12]
    assert window.headers["X-VSR-Checkpoint"] == digest == body["checkpoint_id"]
    assert_reveals_nothing(json.dumps(dict(window.headers)), checkpoint)

    # the replica's memory budget: half the node's memory times its share of the CPUs
    share = min(1.0, REPLICA_CPUS / os.cpu_count())
    assert body["memory_budget_mb"] == int(DEFAULT_BUDGET_FRACTION * machine_memory_bytes() * share) // 2**20


def test_expose_paths_shows_the_checkpoint_path(server, checkpoint):
    server.expose_paths = True
    try:
        server.deploy(checkpoint)
        deadline = time.time() + 60
        while time.time() < deadline:
            body = requests.get(server.url + "/v1/model", timeout=10).json()
            if "checkpoint_path" in body:
                break
            time.sleep(0.3)
        assert body.get("checkpoint_path") == str(checkpoint / "trial_7.pth")
    finally:
        server.expose_paths = False
        server.deploy(checkpoint)
    deadline = time.time() + 60
    while "checkpoint_path" in requests.get(server.url + "/v1/model", timeout=10).json():
        assert time.time() < deadline, "expose_paths: false was not applied"
        time.sleep(0.3)


def test_a_second_replica_starts_under_load(server):
    """Concurrent windows keep more requests in flight than target_ongoing_requests (1): the
    autoscaler adds the second replica (0.25 CPU each); every request succeeds meanwhile."""
    assert len(replicas()) == 1
    body = npy_window(96, 128)
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(server.url + "/v1/upscale", data=body, timeout=60,
                                        headers={"Content-Type": "application/octet-stream"})
                statuses.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.time() + 45
        while len(replicas()) < 2 and time.time() < deadline:
            time.sleep(0.5)
        scaled = len(replicas())
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert scaled == 2, f"still {scaled} replica(s) after 45 s of load"
    assert statuses and set(statuses) == {200}
