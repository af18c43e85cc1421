"""The job state machine on disk, without Ray: a deleted job never comes back, a cancel is
"cancelling" until the runner ends it, reservations count against the disk, dead uploads and
old tombstones go, queued jobs start in turns between keys, restarts are capped, and a runner
that hears no replica parks its job."""
from __future__ import annotations

import os
import time

import pytest

from serve import jobs
from serve.job_store import JobGone, JobRecord, JobStore


def new_job(store: JobStore, owner: str = "alice", reserved: int = 0, state: str = "queued",
            created_at: float | None = None) -> JobRecord:
    record = JobRecord(store.new_id(), owner, "in.mp4", "in.mp4", "model.pth", {}, {}, state=state)
    if created_at is not None:
        record.created_at = created_at
    store.create(record.id, reserved)
    store.write(record)
    return record


def test_a_deleted_job_stays_deleted_whatever_its_runner_writes(tmp_path):
    store = JobStore(tmp_path)
    record = new_job(store, state="done")
    (store.folder(record.id) / "result.mp4").write_bytes(b"x" * 1000)
    store.tombstone(record.id)
    assert store.read(record.id).state == "deleted"
    assert sorted(p.name for p in store.folder(record.id).iterdir()) == ["deleted", "job.json"]
    record.state = "failed"
    store.write(record)  # a runner that writes late
    assert store.read(record.id).state == "deleted"
    store.purge(record.id)
    with pytest.raises(JobGone):
        store.write(record)  # never recreates the folder
    assert not store.folder(record.id).exists()


def test_a_cancel_is_cancelling_until_the_runner_records_the_end(tmp_path):
    store = JobStore(tmp_path)
    record = new_job(store, state="running")
    store.cancel(record.id)
    assert store.read(record.id).state == "cancelling" and store.is_cancelled(record.id)
    jobs.end_job(store, store.read(record.id), "cancelled")
    assert store.read(record.id).state == "cancelled"


def test_job_ids_must_match_exactly(tmp_path):
    store = JobStore(tmp_path)
    good = store.new_id()
    store.folder(good)
    for bad in (good + "\n", "../" + good[3:], good[:-1], "x" * 23, None):
        with pytest.raises(KeyError):
            store.folder(bad)


def test_reservations_count_until_the_job_ends_and_stale_uploads_go(tmp_path):
    store = JobStore(tmp_path)
    running = new_job(store, reserved=5000, state="running")
    (store.folder(running.id) / "input.mp4").write_bytes(b"x" * 1000)
    finished = new_job(store, reserved=5000, state="done")
    (store.folder(finished.id) / "result.mp4").write_bytes(b"x" * 700)
    upload = store.new_id()
    store.create(upload, 3000)  # an upload in progress: no record yet
    assert store.held_bytes(running.id) < 5000 and store.held_bytes(upload) < 3000
    # unfinished: the reservation (more than they hold); finished: what it holds (more than nothing)
    assert store.usage_bytes() == 5000 + store.held_bytes(finished.id) + 3000
    assert store.held_bytes(finished.id) >= 700
    old = time.time() - 1000
    for path in store.folder(upload).iterdir():
        os.utime(path, (old, old))
    os.utime(store.folder(upload), (old, old))
    assert store.expire(ttl_s=3600, upload_stale_s=600) == [upload]
    assert store.read(running.id) is not None and store.read(finished.id) is not None


def test_queued_jobs_start_in_turns_between_keys_up_to_the_cap(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    started: list[str] = []
    monkeypatch.setattr(jobs, "start_runner", lambda root, job_id, timeout: started.append(job_id))
    t0 = time.time()
    alice = [new_job(store, "alice", created_at=t0 + i) for i in range(4)]
    bob = [new_job(store, "bob", created_at=t0 + 10 + i) for i in range(2)]
    assert jobs.start_queued(store, max_running=2, orphan_timeout_s=60) == [alice[0].id, bob[0].id]
    assert jobs.start_queued(store, max_running=2, orphan_timeout_s=60) == []  # both slots taken
    for record in (alice[0], bob[0]):
        jobs.end_job(store, store.read(record.id), "done")
    time.sleep(0.01)
    assert jobs.start_queued(store, max_running=2, orphan_timeout_s=60) == [alice[1].id, bob[1].id]
    assert started == [alice[0].id, bob[0].id, alice[1].id, bob[1].id]


def test_restarts_are_capped_then_the_job_fails_with_the_reason(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    monkeypatch.setattr(jobs, "start_runner", lambda *args: None)
    monkeypatch.setattr(jobs, "_runner_alive", lambda job_id: False)  # its runner keeps dying
    record = new_job(store, state="running")
    store.mark_started(record.id)
    restarts = 0
    while jobs.recover(store, orphan_timeout_s=60):
        restarts += 1
    assert restarts == jobs.MAX_RUNNER_STARTS - 1
    failed = store.read(record.id)
    assert failed.state == "failed" and failed.error.startswith("runner_lost: the job's runner stopped 4 times")


def test_a_runner_without_replica_heartbeats_parks_its_job(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    record = new_job(store)
    store.mark_started(record.id)
    store.heartbeat("replica-1")
    old = time.time() - 100
    os.utime(store.root / ".replicas" / "replica-1", (old, old))

    def stalled(store, record, should_stop):
        deadline = time.time() + 10
        while not should_stop():
            assert time.time() < deadline, "the runner never noticed"
            time.sleep(0.05)
        raise jobs_cancelled()

    def jobs_cancelled():
        from vsr_core.video.plan import JobCancelled

        return JobCancelled("cancelled")

    monkeypatch.setattr(jobs, "_upscale", stalled)
    monkeypatch.setattr(jobs, "ORPHAN_CHECK_S", 0.05)
    started = time.time()
    jobs._run(store, record.id, orphan_timeout_s=0.3)
    assert time.time() - started < 5
    parked = store.read(record.id)
    assert parked.state == "queued" and not store.starts(record.id)  # back in the queue, resumable
