"""The experiments routes over real HTTP: GET /v1/experiments, PUT /v1/model (promote, rollback, a
record the other replicas follow) and POST /v1/compare, on a real 2-trial sweep made by tune/search.py.

The app serves the sweep's best/ export (as `make demo` does) with `experiments` pointing at the sweep's
storage folder. The served and compared outputs are checked against the Upscaler run here on the same
checkpoints, the scores against vsr_core.metrics on the same frames.
"""
from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import make_clip
from test_serve import Server, free_port, png_bytes
from vsr_core.archs import SCALE
from vsr_core.evaluate import degrade_frame
from vsr_core.experiments import ExperimentsReader
from vsr_core.inference import Upscaler
from vsr_core.metrics import psnr
from vsr_core.metrics.temporal import flicker, tof

pytestmark = pytest.mark.ray
KEY = "exp-key-" + os.urandom(6).hex()
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_sweep, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("experiments_api")
    (root / "keys").write_text(KEY + "\n")
    srv = Server(free_port(), {"best": tiny_sweep.path / "best"})
    srv.root = root
    srv.extra = {"experiments": [str(tiny_sweep.storage)], "models_dir": str(root / "models"),
                 "api_key_file": str(root / "keys"), "max_compare_models": 2}
    srv.deploy(srv.checkpoints["best"])
    wait_for(srv, lambda info: info["source"] == "configured")
    yield srv
    try:
        serve.delete("vsr")
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def trials(tiny_sweep) -> dict[str, dict]:
    """The sweep's trials as the reader sees them, and the checkpoint file a promotion of each serves."""
    reader = ExperimentsReader([str(tiny_sweep.storage)])
    found = {}
    for trial in reader.snapshot()[0]["trials"]:
        location, row = reader.best_checkpoint(*reader.find_trial(trial["trial_id"]))
        found[trial["trial_id"]] = {**trial, "file": location, "step": row["step"]}
    return found


def model(server) -> dict:
    response = requests.get(server.url + "/v1/model", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(server, condition, timeout: float = 90) -> dict:
    deadline, info = time.time() + timeout, None
    while time.time() < deadline:
        try:
            info = model(server)
            if condition(info):
                return info
        except (requests.RequestException, AssertionError):
            pass
        time.sleep(0.25)
    pytest.fail(f"the model did not change as expected within {timeout}s; last: {info}")


def put_model(server, body, headers=AUTH, **kwargs) -> requests.Response:
    return requests.put(server.url + "/v1/model", json=body, headers=headers, timeout=120, **kwargs)


def window_output(server) -> np.ndarray:
    window = make_clip(5, 16, 20, seed=8)
    files = [("frames", (f"f{i}.png", png_bytes(f), "image/png")) for i, f in enumerate(window)]
    response = requests.post(server.url + "/v1/upscale", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def expected_window(checkpoint) -> np.ndarray:
    return Upscaler.from_checkpoint(checkpoint, device="cpu").upscale_window_uint8(make_clip(5, 16, 20, seed=8))


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# --- tests ------------------------------------------------------------------------------------------
def test_the_experiments_route_lists_the_sweep_without_server_paths(server, tiny_sweep, trials):
    assert requests.get(server.url + "/v1/experiments", timeout=30).status_code == 401
    response = requests.get(server.url + "/v1/experiments", headers=AUTH, timeout=30)
    assert response.status_code == 200
    body = response.json()
    (experiment,) = body["experiments"]
    assert body["configured"] is True and experiment["name"] == tiny_sweep.name
    assert experiment["state"] == "finished" and experiment["max_steps"] == tiny_sweep.max_steps
    shown = {t["trial_id"]: t for t in experiment["trials"]}
    assert set(shown) == set(trials)
    for trial_id, trial in shown.items():
        rows = [json.loads(line) for line in (tiny_sweep.path / f"trial_{trial_id}" / "result.json").open()]
        assert trial["history"]["gain"] == [r["gain"] for r in rows] and trial["steps"] == rows[-1]["step"]
        assert trial["checkpoint_step"] == trials[trial_id]["step"]
    assert str(tiny_sweep.storage.parent) not in response.text  # no server paths


def test_promote_a_trial_then_roll_back(server, tiny_sweep, trials):
    configured = model(server)
    best_trial = configured["trial_id"]
    assert configured["experiment"] == tiny_sweep.name and configured["previous"] is None
    other = next(t for t in trials if t != best_trial)  # the other trial: a different model
    assert max_diff(window_output(server), expected_window(tiny_sweep.path / "best")) <= 1

    response = put_model(server, {"trial": other})
    assert response.status_code == 200, response.text
    info = response.json()
    assert (info["trial_id"], info["experiment"], info["source"]) == (other, tiny_sweep.name, "promoted")
    assert info["step"] == trials[other]["step"] and info["metrics"]["gain"] == pytest.approx(
        next(g for s, g in zip(trials[other]["history"]["step"], trials[other]["history"]["gain"])
             if s == info["step"]))
    assert info["previous"]["trial_id"] == best_trial and info["previous"]["step"] == configured["step"]
    assert max_diff(window_output(server), expected_window(trials[other]["file"])) <= 1  # served at once
    assert model(server)["loaded_models"][0]["checkpoint_id"] == configured["checkpoint_id"]  # kept for rollback

    response = put_model(server, {"rollback": True})
    assert response.status_code == 200, response.text
    back = response.json()
    assert (back["trial_id"], back["step"], back["checkpoint_id"]) == (best_trial, configured["step"],
                                                                      configured["checkpoint_id"])
    assert back["previous"]["trial_id"] == other  # a second rollback is a redo
    assert max_diff(window_output(server), expected_window(tiny_sweep.path / "best")) <= 1

    by_path = put_model(server, {"checkpoint": f"{tiny_sweep.name}/trial_{other}"
                                               f"/{Path(trials[other]['file']).parent.name}"})
    assert by_path.status_code == 200 and by_path.json()["trial_id"] == other  # a checkpoint folder, by path
    assert put_model(server, {"rollback": True}).json()["trial_id"] == best_trial


@pytest.mark.parametrize("body, status, field", [
    ({}, 400, "exactly one of trial, checkpoint or rollback"),
    ({"trial": "x", "checkpoint": "y"}, 400, "exactly one"),
    ({"trial": 5}, 400, "trial: input should be a valid string"),
    ({"trial": "nope0000"}, 404, "trial: no trial 'nope0000'"),
    ({"trial": "x", "experiment": ""}, 400, "experiment: string should have at least 1 character"),
    ({"checkpoint": "x", "experiment": "e"}, 400, "experiment: only with trial"),
    ({"colour": "red"}, 400, "colour: unknown key"),
    ({"rollback": "yes"}, 400, "rollback: input should be True"),
    ({"checkpoint": "/etc/passwd"}, 403, "checkpoint: only checkpoints inside the experiment folders"),
    ({"checkpoint": "../../.."}, 403, "checkpoint: only checkpoints inside"),
    ({"checkpoint": "sweep/trial_00000000/checkpoint_000099"}, 404, "checkpoint: no checkpoint there"),
])
def test_a_bad_promotion_is_a_4xx_naming_the_field_and_changes_nothing(server, body, status, field):
    before = model(server)["checkpoint_id"]
    response = put_model(server, body)
    assert response.status_code == status, response.text
    assert field in response.json()["detail"] and response.json()["error"]
    assert model(server)["checkpoint_id"] == before


def test_promotion_needs_the_key_and_json(server, trials):
    trial = next(iter(trials))
    assert put_model(server, {"trial": trial}, headers={}).status_code == 401
    assert put_model(server, {"trial": trial}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = requests.put(server.url + "/v1/model", data="trial=x", timeout=30,
                            headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    response = requests.put(server.url + "/v1/model", data="{not json", timeout=30,
                            headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"


def test_every_replica_follows_the_promotion_record(server, trials, tiny_sweep):
    """What another replica's PUT writes (serve.models) is served here within a few seconds."""
    from serve.models import ModelChoice, ServingRecord, write_record

    configured = model(server)
    other = next(t for t in trials if t != configured["trial_id"])
    record = ServingRecord(str((tiny_sweep.path / "best" / "checkpoint.pth").resolve()),
                           ModelChoice(trials[other]["file"], {"trial_id": other, "experiment": tiny_sweep.name}),
                           ModelChoice(None, {"trial_id": configured["trial_id"]}))
    write_record(Path(server.extra["models_dir"]) / "serving-vsr.json", record)
    info = wait_for(server, lambda i: i["trial_id"] == other, timeout=30)
    assert info["source"] == "promoted" and info["step"] == trials[other]["step"]
    assert put_model(server, {"rollback": True}).json()["trial_id"] == configured["trial_id"]


def compare(server, files, **fields) -> requests.Response:
    data = {k: str(v) for k, v in fields.items()}
    return requests.post(server.url + "/v1/compare", files=files, data=data, headers=AUTH, timeout=300)


def test_compare_two_models_and_bicubic_on_the_same_frames(server, trials):
    hr = make_clip(4, 36, 45, seed=11)  # the original; the server degrades it
    files = [("frames", (f"hr{i}.png", png_bytes(f), "image/png")) for i, f in enumerate(hr)]
    a, b = sorted(trials)
    response = compare(server, files, models=f"{a},{b}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["results"]] == ["bicubic", a, b, "original"]
    assert (body["frames"], body["height"], body["width"], body["reference"]) == (4, 36, 45, True)
    lrs = [degrade_frame(f) for f in hr]  # the same degradation, computed here
    bicubic = Upscaler.bicubic(device="cpu")
    for result in body["results"][:3]:
        upscaler = bicubic if result["id"] == "bicubic" else Upscaler.from_checkpoint(trials[result["id"]]["file"],
                                                                                      device="cpu")
        expected = list(upscaler.stream(lrs))
        frames = [decode(f) for f in result["frames"]]
        assert max(max_diff(f, e) for f, e in zip(frames, expected)) <= 1, result["id"]
        assert result["psnr"] == pytest.approx([psnr(f, h, SCALE, y_channel=True) for f, h in zip(frames, hr)],
                                               abs=1e-6)
        assert result["tof"] == pytest.approx(tof(frames, list(hr), SCALE), abs=1e-4)
        assert result["flicker"] == pytest.approx(flicker(frames, list(hr), SCALE), abs=1e-6)
        if result["id"] != "bicubic":
            assert (result["trial_id"], result["step"]) == (result["id"], trials[result["id"]]["step"])
    assert max_diff(decode(body["results"][3]["frames"][2]), hr[2]) == 0
    info = model(server)
    assert len(info["loaded_models"]) <= info["max_compare_models"] == 2


def test_compare_low_res_frames_and_a_video(server, trials, tmp_path):
    from conftest import write_av_clip

    lr = make_clip(3, 12, 15, seed=12)
    files = [("frames", (f"lr{i}.png", png_bytes(f), "image/png")) for i, f in enumerate(lr)]
    response = compare(server, files, models=f"served,{next(iter(trials))}", reference="false")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["results"]][:2] == ["bicubic", "served"] and len(body["results"]) == 3
    assert (body["height"], body["width"]) == (36, 45) and body["results"][1]["psnr"] is None
    served = list(Upscaler.from_checkpoint(server.checkpoints["best"], device="cpu").stream(list(lr)))
    assert max_diff(decode(body["results"][1]["frames"][0]), served[0]) <= 1

    clip = write_av_clip(tmp_path / "clip.mp4", make_clip(8, 30, 36, seed=13))
    with open(clip, "rb") as f:
        response = compare(server, [("video", ("clip.mp4", f.read(), "video/mp4"))],
                           models=f"served,{next(iter(trials))}", start=2, count=5)
    assert response.status_code == 200, response.text
    assert response.json()["frames"] == 5 and len(response.json()["results"][0]["psnr"]) == 5
    response = compare(server, [("video", ("notes.mp4", b"not a video at all", "video/mp4"))])
    assert response.status_code == 400 and response.json()["detail"].startswith("video: ")
    assert "notes.mp4" in response.json()["detail"] and "/tmp" not in response.text  # no server path


@pytest.mark.parametrize("fields, files, status, detail", [
    ({"models": "served"}, 2, 400, "models: expected two different model ids"),
    ({"models": "served,served"}, 2, 400, "models: expected two different"),
    ({"models": "served,nope0000"}, 2, 404, "models: trial: no trial 'nope0000'"),
    ({"reference": "maybe"}, 2, 400, "reference: expected true or false"),
    ({"models": "served,previous"}, 9, 413, "at most 8 frames"),
    ({}, 0, 400, "send one 'video' file or 'frames' files"),
])
def test_a_bad_compare_is_a_4xx_naming_the_field(server, fields, files, status, detail):
    frames = [("frames", (f"f{i}.png", png_bytes(make_clip(1, 12, 15, seed=i)[0]), "image/png")) for i in range(files)]
    response = compare(server, frames or {"other": ("x.txt", b"x", "text/plain")}, **fields)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert requests.post(server.url + "/v1/compare", files=frames or None, timeout=30).status_code == 401


def test_the_bound_on_loaded_models(server, trials, tiny_sweep):
    server.extra["max_compare_models"] = 1
    server.deploy(server.checkpoints["best"])  # user_config only: an in-place reconfigure
    wait_for(server, lambda info: info["max_compare_models"] == 1)
    frames = [("frames", (f"f{i}.png", png_bytes(f), "image/png")) for i, f in enumerate(make_clip(2, 12, 15))]
    a, b = sorted(trials)  # neither is the served file (best/ is a copy): both must be loaded
    response = compare(server, frames, models=f"{a},{b}")
    assert response.status_code == 200, response.text
    loaded = model(server)["loaded_models"]
    assert len(loaded) == 1 and loaded[0]["trial_id"] == b  # the least recently used went first

    server.extra.update(experiments=[], max_compare_models=2)  # no experiments: nothing to promote
    server.deploy(server.checkpoints["best"])
    wait_for(server, lambda info: info["experiments"] is False)
    assert requests.get(server.url + "/v1/experiments", headers=AUTH, timeout=30).json() == {
        "experiments": [], "configured": False, "tensorboard_url": None}
    response = put_model(server, {"trial": a})
    assert response.status_code == 409 and "--experiments" in response.json()["detail"]
