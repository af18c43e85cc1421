"""The job API over real HTTP: whole videos on Ray chunk workers, with progress, cancel, sound,
ownership, limits, a replica restart, and windows that never wait for a job.

One Serve app (from serve/config.yaml, as in test_serve) with a small-preset checkpoint so that
a job runs for several seconds; one chunk worker of 1 CPU next to the replica's 0.5 CPU."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import av
import pytest
import requests
import torch

from conftest import make_clip, random_model, ray_processes, write_av_clip
from test_serve import Server, free_port, frame_files, png_bytes, replica_pid
from test_video_engine import chunk_worker_processes
from vsr_core.checkpoint import save_checkpoint
from vsr_core.data.video_io import FrameWriter, probe_video

pytestmark = pytest.mark.ray

KEYS = ("key-alice-" + os.urandom(6).hex(), "key-bob-" + os.urandom(6).hex())
ALICE, BOB = ({"Authorization": f"Bearer {key}"} for key in KEYS)


def save_small_checkpoint(path: Path) -> Path:
    model = random_model("small", seed=5)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint({
        "step": 300, "epoch": 1, "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "scheduler_state_dict": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10).state_dict(),
        "config": {"PRESET": "small"}, "training_phase": "pretrain"}, path)


class JobServer(Server):
    def config(self, checkpoint: Path) -> dict:
        config = super().config(checkpoint)
        user_config = config["applications"][0]["deployments"][0]["user_config"]
        # the jobs' own limits and keys, under what a test puts in ``extra``
        user_config.update({"max_pixels_per_frame": 1280 * 720, "max_body_bytes": 32 * 1024**2,
                            "max_video_frames": 300, "job_chunk_frames": 16, "api_key_file": str(self.key_file),
                            **self.extra})
        return config

    def submit(self, path: Path, headers=ALICE) -> requests.Response:
        return requests.post(self.url + "/v1/jobs", data=path.read_bytes(), params={"filename": path.name},
                             headers={"Content-Type": "video/mp4", **headers}, timeout=60)

    def status(self, job_id: str, headers=ALICE) -> requests.Response:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", headers=headers, timeout=30)

    def wait(self, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120) -> list[dict]:
        seen, deadline = [], time.time() + timeout
        while time.time() < deadline:
            response = self.status(job_id)
            if response.status_code == 200:
                seen.append(response.json())
                if seen[-1]["state"] in states:
                    return seen
            time.sleep(0.2)
        pytest.fail(f"job {job_id} not in {states} after {timeout}s: {seen[-1:]}")


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("jobs")
    checkpoint = save_small_checkpoint(root / "run" / "latest.pth").parent
    srv = JobServer(free_port(), {"small": checkpoint})
    srv.key_file = root / "keys"
    srv.key_file.write_text("\n".join(KEYS) + "\n")
    srv.extra = {"job_source_roots": [str(root / "shared")]}
    srv.deploy(checkpoint)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if requests.get(srv.url + "/v1/model", headers=ALICE, timeout=5).status_code == 200:
                break
        except requests.RequestException:  # not up yet (a proxy may also time out while a replica starts)
            pass
        time.sleep(0.3)
    srv.root = root
    yield srv
    try:
        serve.delete("vsr")
    finally:
        serve.shutdown()


def write_clip(path: Path, frames: int, height: int, width: int) -> Path:
    with FrameWriter(path, fps=25) as writer:
        for frame in make_clip(frames, height, width, seed=frames):
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """About 10 s of work for one worker: long enough to act on a running job."""
    return write_clip(tmp_path_factory.mktemp("long") / "long.mp4", 240, 96, 128)


def test_a_job_keeps_frames_size_and_sound_and_reports_progress(server, tmp_path):
    source = write_av_clip(tmp_path / "talk.mp4", make_clip(48, 36, 44))
    response = server.submit(source)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["frames_total"] == 48 and len(job["id"]) == 22
    assert requests.get(server.url + job["result_url"], headers=ALICE, timeout=10).status_code == 409
    seen = server.wait(job["id"])
    assert seen[-1]["state"] == "done", seen[-1]
    done = [s["frames_done"] for s in seen]
    assert done == sorted(done) and done[-1] == 48 and seen[-1]["progress"] == 1.0 and seen[-1]["fps"] > 0
    assert not any(str(server.root) in json.dumps(s) for s in seen)  # no server paths in the API
    result = requests.get(server.url + job["result_url"], headers=ALICE, timeout=60)
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    assert 'filename="talk_x3.mp4"' in result.headers["content-disposition"]
    (tmp_path / "out.mp4").write_bytes(result.content)
    info = probe_video(tmp_path / "out.mp4")
    assert (info.num_frames, info.height, info.width, info.fps) == (48, 108, 132, 25.0)
    with av.open(str(tmp_path / "out.mp4")) as out:
        audio = out.streams.audio[0]
        assert audio.codec_context.name == "aac"
        assert abs(float(audio.duration * audio.time_base) - 48 / 25) <= 1 / 25 + 0.03
    assert requests.delete(f"{server.url}/v1/jobs/{job['id']}", headers=ALICE, timeout=10).json()["state"] == "deleted"
    assert server.status(job["id"]).status_code == 404


def test_a_job_takes_encoder_and_preview_fields_and_gives_an_mkv_when_needed(server, tmp_path):
    from video_clips import video_facts
    from video_clips import write_clip as write_tagged_clip

    bad = requests.post(server.url + "/v1/jobs", data=b"x" * 100, params={"filename": "a.mp4", "crf": "high"},
                        headers={"Content-Type": "video/mp4", **ALICE}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_option" and "crf" in bad.json()["detail"]
    source = write_tagged_clip(tmp_path / "film.mkv", make_clip(50, 24, 32), subtitles=[(500, "Hello")])
    late = requests.post(server.url + "/v1/jobs", data=source.read_bytes(),
                         params={"filename": "film.mkv", "preview_start": "60", "preview_duration": "1"},
                         headers={"Content-Type": "video/x-matroska", **ALICE}, timeout=60)
    assert late.status_code == 400 and late.json()["detail"].startswith("preview_start: 60.0 s is after the end")
    response = requests.post(server.url + "/v1/jobs", data=source.read_bytes(),
                             params={"filename": "film.mkv", "codec": "h265", "crf": "24", "preset": "fast",
                                     "preview_start": "0.4", "preview_duration": "0.4"},
                             headers={"Content-Type": "video/x-matroska", **ALICE}, timeout=60)
    assert response.status_code == 202, response.text
    final = server.wait(response.json()["id"])[-1]
    assert final["state"] == "done", final
    assert final["encoder"] == "h265 (libx265) crf=24 preset=fast pix_fmt=yuv420p"
    assert final["frames_total"] == 10 and final["projection"]["total_frames"] == 50
    assert final["projection"]["fps"] > 0 and final["projection"]["projected_bytes"] > final["result_bytes"]
    result = requests.get(f"{server.url}/v1/jobs/{final['id']}/result", headers=ALICE, timeout=60)
    assert result.headers["content-type"] == "video/x-matroska" and "film_x3.mkv" in result.headers["content-disposition"]
    (tmp_path / "out.mkv").write_bytes(result.content)
    facts = video_facts(tmp_path / "out.mkv")
    assert facts["frames"] == 10 and facts["codec"] == "hevc" and facts["seconds"][0] == pytest.approx(0.4)


def test_jobs_belong_to_their_key_and_ids_are_unguessable(server, tmp_path):
    source = write_clip(tmp_path / "in.mp4", 4, 24, 30)
    ids = [server.submit(source).json()["id"] for _ in range(2)]
    assert ids[0] != ids[1] and all(len(i) == 22 for i in ids)  # 128 random bits each
    for job_id in ids:
        assert server.status(job_id, headers=BOB).status_code == 404
        assert requests.get(f"{server.url}/v1/jobs/{job_id}/result", headers=BOB, timeout=10).status_code == 404
        assert requests.delete(f"{server.url}/v1/jobs/{job_id}", headers=BOB, timeout=10).status_code == 404
        assert server.status(job_id, headers={}).status_code == 401
    listed = requests.get(server.url + "/v1/jobs", headers=BOB, timeout=10).json()["jobs"]
    assert not {j["id"] for j in listed} & set(ids)
    assert set(ids) <= {j["id"] for j in requests.get(server.url + "/v1/jobs", headers=ALICE, timeout=10).json()["jobs"]}
    for bad in ("../../etc", "x" * 22, "%2e%2e"):
        assert server.status(bad).status_code == 404
    for job_id in ids:
        server.wait(job_id)


def test_a_window_does_not_wait_for_a_running_job(server, long_clip):
    window = make_clip(5, 36, 44, seed=1)
    job_id = server.submit(long_clip).json()["id"]
    server.wait(job_id, states=("running",))
    time.sleep(1.0)  # chunks are being computed
    started = time.perf_counter()
    response = requests.post(server.url + "/v1/upscale", files=frame_files([png_bytes(f) for f in window]),
                             headers=ALICE, timeout=60)
    window_seconds = time.perf_counter() - started
    assert response.status_code == 200
    status = server.status(job_id).json()
    assert status["state"] == "running" and status["frames_done"] < 240, status  # the job is still going
    assert window_seconds < 5, window_seconds
    requests.delete(f"{server.url}/v1/jobs/{job_id}", headers=ALICE, timeout=10)
    server.wait(job_id)


def test_cancel_stops_the_workers_and_keeps_no_result(server, long_clip):
    job_id = server.submit(long_clip).json()["id"]
    server.wait(job_id, states=("running",))
    deadline = time.time() + 30
    while not chunk_worker_processes(running_only=True) and time.time() < deadline:
        time.sleep(0.1)
    answer = requests.delete(f"{server.url}/v1/jobs/{job_id}", headers=ALICE, timeout=10).json()
    assert answer["state"] == "cancelling"  # "cancelled" once its runner has stopped the workers
    cancelled_at = time.time()
    while chunk_worker_processes() and time.time() - cancelled_at < 10:
        time.sleep(0.1)
    assert not chunk_worker_processes(), "chunk workers still running after cancel"
    final = server.wait(job_id)[-1]
    assert final["state"] == "cancelled" and final["frames_done"] < 240
    assert requests.get(f"{server.url}/v1/jobs/{job_id}/result", headers=ALICE, timeout=10).status_code == 409


def test_a_job_survives_a_replica_restart(server, long_clip, tmp_path):
    job_id = server.submit(long_clip).json()["id"]
    server.wait(job_id, states=("running",))
    old = replica_pid()
    import psutil

    psutil.Process(old).kill()  # the replica dies; Serve starts a new one
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            pids = [p.pid for p in ray_processes("ServeReplica:vsr:VSRUpscaler")]
            if pids and old not in pids and server.status(job_id).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    assert replica_pid() != old
    final = server.wait(job_id, timeout=180)[-1]
    assert final["state"] == "done" and final["frames_done"] == 240, final
    result = requests.get(f"{server.url}/v1/jobs/{job_id}/result", headers=ALICE, timeout=60)
    (tmp_path / "out.mp4").write_bytes(result.content)
    assert probe_video(tmp_path / "out.mp4").num_frames == 240


def test_a_video_named_by_path_must_be_under_an_allowed_root(server, tmp_path):
    shared = server.root / "shared"
    shared.mkdir(exist_ok=True)
    inside = write_clip(shared / "film.mp4", 6, 24, 30)
    outside = write_clip(tmp_path / "secret.mp4", 6, 24, 30)
    post = lambda source: requests.post(server.url + "/v1/jobs", json={"source": source}, headers=ALICE, timeout=30)  # noqa: E731
    accepted = post(str(inside))
    assert accepted.status_code == 202 and accepted.json()["source_name"] == "film.mp4"
    assert server.wait(accepted.json()["id"])[-1]["state"] == "done"
    assert inside.exists()  # a named source is the user's: never deleted
    for source in (str(outside), f"{shared}/../{outside.name}", f"{shared}/../../etc/passwd", "file:///etc/passwd"):
        response = post(source)
        assert response.status_code == 403 and response.json()["error"] == "source_not_allowed", source


def test_bad_uploads_get_a_clear_4xx_and_leave_nothing_behind(server, tmp_path):
    jobs_dir = Path(server.jobs_dir)
    before = set(jobs_dir.iterdir())
    garbage = requests.post(server.url + "/v1/jobs", data=b"not a video" * 100,
                            headers={"Content-Type": "video/mp4", **ALICE}, timeout=30)
    assert garbage.status_code == 400 and garbage.json()["error"] == "invalid_video"
    empty = requests.post(server.url + "/v1/jobs", data=b"", headers={"Content-Type": "video/mp4", **ALICE}, timeout=30)
    assert empty.status_code == 400 and empty.json()["error"] == "empty_body"
    wrong = requests.post(server.url + "/v1/jobs", data=b"x", headers={"Content-Type": "text/plain", **ALICE}, timeout=30)
    assert wrong.status_code == 415
    assert set(jobs_dir.iterdir()) == before


def test_full_storage_answers_507_and_expired_jobs_are_deleted(server, tmp_path):
    source = write_clip(tmp_path / "in.mp4", 4, 24, 30)
    job_id = server.submit(source).json()["id"]
    server.wait(job_id)
    try:
        server.extra = {**server.extra, "jobs_max_bytes": 1, "job_ttl_s": 2}
        server.deploy(server.checkpoints["small"])  # reconfigure in place
        deadline = time.time() + 60
        while server.submit(source).status_code != 507 and time.time() < deadline:
            time.sleep(0.5)
        response = server.submit(source)
        assert response.status_code == 507 and response.json()["error"] == "insufficient_storage"
        time.sleep(2.5)
        requests.get(server.url + "/v1/jobs", headers=ALICE, timeout=10)  # expiry runs on the job endpoints too
        assert server.status(job_id).status_code == 404
        assert not (Path(server.jobs_dir) / job_id).exists()
    finally:
        server.extra = {k: v for k, v in server.extra.items() if k not in ("jobs_max_bytes", "job_ttl_s")}
        server.deploy(server.checkpoints["small"])
        deadline = time.time() + 60
        while (response := server.submit(source)).status_code == 507 and time.time() < deadline:
            time.sleep(0.5)  # until the replica has the limits back
        assert response.status_code == 202
        server.wait(response.json()["id"])


def test_a_client_that_gives_up_cancels_its_synchronous_clip(server, long_clip):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/upscale/video", body=long_clip.read_bytes(),
                       headers={"Content-Type": "video/mp4", **ALICE})
    deadline = time.time() + 60
    while not chunk_worker_processes(running_only=True) and time.time() < deadline:
        time.sleep(0.1)
    assert chunk_worker_processes(), "the clip never started"
    connection.close()  # the client goes away while its clip is being upscaled
    deadline = time.time() + 20
    while time.time() < deadline:
        running = [j for j in requests.get(server.url + "/v1/jobs", headers=ALICE, timeout=10).json()["jobs"]
                   if j["state"] in ("queued", "running")]
        if not running and not chunk_worker_processes():
            break
        time.sleep(0.3)
    assert not running, running
    assert not chunk_worker_processes()


def test_runners_do_not_outlive_the_app(server, long_clip):
    """Deleting the app (as `serve shutdown` does) stops the replicas' heartbeats: a running job's
    runner stops its workers within job_orphan_timeout_s and leaves the job queued with its
    finished chunks, for the app to resume when it is back. Last in this module: it deletes the app."""
    from ray import serve

    from serve.job_store import JobStore

    server.extra = {**server.extra, "job_orphan_timeout_s": 4.0}
    server.deploy(server.checkpoints["small"])  # reconfigure in place
    time.sleep(1)
    deadline = time.time() + 60
    while serve.status().applications["vsr"].status != "RUNNING" and time.time() < deadline:
        time.sleep(0.5)  # until the replica has the short timeout (new runners get it)
    job_id = server.submit(long_clip).json()["id"]
    server.wait(job_id, states=("running",))
    deadline = time.time() + 30
    while not chunk_worker_processes(running_only=True) and time.time() < deadline:
        time.sleep(0.2)
    serve.delete("vsr")
    deleted_at = time.time()
    store = JobStore(server.jobs_dir)
    while (chunk_worker_processes() or store.read(job_id).state != "queued") and time.time() - deleted_at < 60:
        time.sleep(0.5)
    parked_after = time.time() - deleted_at
    record = store.read(job_id)
    assert record.state == "queued" and not chunk_worker_processes(), record
    assert not store.starts(job_id)  # the next replica's scheduler starts it again
    assert 4.0 - 1.5 < parked_after < 4.0 + 15, parked_after  # the timeout (from the last heartbeat), a check
    print(f"\n[reliability] app deleted: the job's runner parked it {parked_after:.1f} s later "
          f"(job_orphan_timeout_s 4), {record.frames_done} of 240 frames done")
