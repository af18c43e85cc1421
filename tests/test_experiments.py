"""vsr_core.experiments: Tune experiment folders read as they grow.

Hand-made folders laid out as Tune 2.60 writes them (the layout is checked against a real sweep in
the last tests): incremental reads, half-written lines, trial states, ASHA stops, the checkpoint a
promotion serves, paths kept out of the API, and checkpoint paths outside the experiments refused.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from vsr_core.engine.run_start import CHECKPOINT_FILE
from vsr_core.experiments import ExperimentsReader, TrialNotFound
from vsr_core.experiments import summary


# --- a hand-made experiment folder ---------------------------------------------------------------
def row(step: int, gain: float, checkpoint: str | None = None, **extra) -> dict:
    values = {"step": step, "gain": gain, "psnr": 30 + gain, "bicubic_psnr": 30.0, "loss_total": 0.1 / step,
              "tof": 0.5 - gain / 100, "flicker": 1.0, "convergence": "Converging ✓", "trial_id": None,
              "layer/Block_00": 0.25 + step / 100, "layer/Block_01": 0.5, "done": False, **extra}
    if checkpoint:
        values["checkpoint_dir_name"] = checkpoint
    return values


def write_trial(experiment: Path, trial_id: str, rows: list[dict], lr_exponent: float = -3.0,
                max_steps: int = 12, checkpoints: tuple[str, ...] = ()) -> Path:
    folder = experiment / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    base = {"MAX_STEPS": max_steps, "PRESET": "tiny", "LR_EXPONENT": -4.0, "WEIGHT_DECAY": 0.01,
            "TRAIN_DATA": ["/secret/data/train_clip.mp4"], "OUTPUT_DIR": "/secret/runs"}
    (folder / "params.json").write_text(json.dumps({"LR_EXPONENT": lr_exponent, "WEIGHT_DECAY": 0.02,
                                                    "base_config": base, "cpus_per_trial": 1}))
    with open(folder / "result.json", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "trial_id": trial_id}) + "\n")
    for name in checkpoints:
        (folder / name).mkdir()
        (folder / name / CHECKPOINT_FILE).write_bytes(b"weights")
    (folder / "tensorboard").mkdir()
    return folder


def write_state(experiment: Path, statuses: dict[str, str]) -> None:
    """experiment_state-*.json as Tune writes it: per trial two JSON strings (the second one pickled in
    parts, never read)."""
    trial_data = [[json.dumps({"trial_id": tid, "status": status, "relative_logdir": f"trial_{tid}"}),
                   json.dumps({"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": "80"}})]
                  for tid, status in statuses.items()]
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": trial_data, "runner_data": {}, "stats": {}}))


def trials_of(snapshot: list[dict], name: str | None = None) -> dict[str, dict]:
    return {t["trial_id"]: t for e in snapshot if name in (None, e["name"]) for t in e["trials"]}


# --- reading -------------------------------------------------------------------------------------------
def test_result_rows_are_read_incrementally_and_a_half_written_line_waits(tmp_path):
    experiment = tmp_path / "demo"
    folder = write_trial(experiment, "aaa", [row(3, 0.1, "checkpoint_000000"), row(6, 0.2)])
    write_state(experiment, {"aaa": "RUNNING"})
    result = folder / "result.json"
    third = json.dumps({**row(9, 0.3), "trial_id": "aaa"}) + "\n"
    with open(result, "a") as f:
        f.write(third[:25])  # Tune is writing this line
    reader = ExperimentsReader([str(tmp_path)])
    trial = trials_of(reader.snapshot())["aaa"]
    assert trial["history"]["step"] == [3, 6] and trial["steps"] == 6 and trial["state"] == "running"

    # The lines already read are not read again: damage the first one in place (same length), then
    # finish the third line and add a fourth.
    data = result.read_bytes()
    first_end = data.index(b"\n")
    result.write_bytes(b"x" * first_end + data[first_end:])
    with open(result, "a") as f:
        f.write(third[25:] + json.dumps({**row(12, 0.4), "trial_id": "aaa", "done": True}) + "\n")
    trial = trials_of(reader.snapshot())["aaa"]
    assert trial["history"]["step"] == [3, 6, 9, 12]
    assert trial["history"]["gain"] == [0.1, 0.2, 0.3, 0.4]
    assert trial["history"]["loss"] == [pytest.approx(0.1 / s) for s in (3, 6, 9, 12)]
    assert trial["history"]["tof"] == [pytest.approx(0.5 - g / 100) for g in (0.1, 0.2, 0.3, 0.4)]
    assert trial["layers"] == {"Block_00": pytest.approx(0.37), "Block_01": 0.5}  # the last report's

    fresh = trials_of(ExperimentsReader([str(tmp_path)]).snapshot())["aaa"]  # a new reader skips the damage
    assert fresh["history"]["step"] == [6, 9, 12]


def test_trial_states_asha_stops_divergence_and_an_interrupted_sweep(tmp_path, monkeypatch):
    experiment = tmp_path / "demo"
    write_trial(experiment, "full", [row(s, s / 10) for s in (3, 6, 9, 12)])
    write_trial(experiment, "cut", [row(3, 0.05), row(6, 0.06, done=True)])
    write_trial(experiment, "crash", [row(3, 0.2)])
    write_trial(experiment, "nan", [row(3, 0.1), row(6, float("nan"), diverged=True)])
    write_trial(experiment, "busy", [row(3, 0.3)])
    write_state(experiment, {"full": "TERMINATED", "cut": "TERMINATED", "crash": "ERROR", "nan": "TERMINATED",
                             "busy": "RUNNING"})
    reader = ExperimentsReader([str(experiment)])
    (described,) = reader.snapshot()
    trials = trials_of([described])
    assert described["name"] == "demo" and described["state"] == "running" and described["max_steps"] == 12
    assert {tid: (t["state"], t["stopped_early"], t["diverged"]) for tid, t in trials.items()} == {
        "full": ("terminated", False, False), "cut": ("terminated", True, False), "crash": ("error", False, False),
        "nan": ("terminated", False, True), "busy": ("running", False, False)}
    assert trials["nan"]["history"]["gain"] == [0.1, None]  # NaN is null: the API's JSON has no NaN
    json.dumps(described, allow_nan=False)
    assert trials["full"]["best"]["gain"] == pytest.approx(1.2) and trials["full"]["best"]["step"] == 12
    assert trials["full"]["lr"] == pytest.approx(1e-3) and trials["full"]["wd"] == 0.02
    assert trials["full"]["params"] == {"LR_EXPONENT": -3.0, "WEIGHT_DECAY": 0.02}  # the searched keys

    monkeypatch.setattr(summary, "STALE_AFTER_S", -1.0)  # as if nothing had been written for too long
    assert reader.snapshot()[0]["state"] == "interrupted"  # unfinished, and its driver gone
    monkeypatch.undo()
    write_state(experiment, {"full": "TERMINATED", "cut": "TERMINATED", "crash": "ERROR", "nan": "TERMINATED",
                             "busy": "TERMINATED"})
    assert reader.snapshot()[0]["state"] == "running"  # every trial ended: maybe between two trials
    (experiment / "best").mkdir()
    (experiment / "best" / "best.json").write_text(json.dumps({"checkpoint_file": "checkpoint.pth",
                                                               "trial_id": "full"}))
    (described,) = reader.snapshot()
    assert described["state"] == "finished" and described["best_trial"] == "full"  # vsr sweep exported its best


def test_a_promotion_serves_the_best_report_whose_checkpoint_tune_still_keeps(tmp_path):
    experiment = tmp_path / "demo"
    folder = write_trial(experiment, "aaa", [row(3, 0.1, "checkpoint_000000"), row(6, 0.5, "checkpoint_000001"),
                                             row(9, 0.3, "checkpoint_000002"), row(12, 0.9)],
                         checkpoints=("checkpoint_000000", "checkpoint_000001", "checkpoint_000002"))
    write_trial(experiment, "none", [row(3, 0.1, "checkpoint_000000")])  # Tune deleted it
    reader = ExperimentsReader([str(tmp_path)])
    found = reader.best_checkpoint(*reader.find_trial("aaa"))
    assert found[0] == str(folder / "checkpoint_000001" / CHECKPOINT_FILE) and found[1]["step"] == 6
    trials = trials_of(reader.snapshot())
    assert trials["aaa"]["best"]["step"] == 12 and trials["aaa"]["checkpoint_step"] == 6  # step 12: no checkpoint
    assert trials["none"]["checkpoint_step"] is None
    assert reader.best_checkpoint(*reader.find_trial("none")) is None

    (folder / "checkpoint_000001" / CHECKPOINT_FILE).unlink()  # Tune keeps only the best N
    assert reader.best_checkpoint(*reader.find_trial("aaa"))[1]["step"] == 9
    with pytest.raises(TrialNotFound, match="no trial 'zzz'.*known: aaa, none"):
        reader.find_trial("zzz")
    assert reader.trial_of(str(folder / "checkpoint_000002" / CHECKPOINT_FILE))[1].trial_id == "aaa"


def test_the_snapshot_shows_no_server_paths_unless_asked(tmp_path):
    experiment = tmp_path / "secret_place" / "demo"
    write_trial(experiment, "aaa", [row(3, 0.1)])
    reader = ExperimentsReader([str(experiment.parent)])
    text = json.dumps(reader.snapshot(), allow_nan=False)
    assert str(tmp_path) not in text and "/secret" not in text
    (described,) = reader.snapshot()
    assert described["config_changes"]["TRAIN_DATA"] == ["train_clip.mp4"]  # data paths as file names
    assert described["config_changes"]["PRESET"] == "tiny" and "LR_EXPONENT" not in described["config_changes"]
    assert described["trials"][0]["tensorboard"] == "demo/trial_aaa/tensorboard"
    exposed = reader.snapshot(expose_paths=True)[0]
    assert exposed["path"] == str(experiment.resolve())
    assert exposed["trials"][0]["tensorboard"] == str(experiment.resolve() / "trial_aaa" / "tensorboard")


def test_checkpoint_paths_outside_the_experiments_are_refused(tmp_path):
    root = tmp_path / "tune"
    folder = write_trial(root / "demo", "aaa", [row(3, 0.1, "checkpoint_000000")], checkpoints=("checkpoint_000000",))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / CHECKPOINT_FILE).write_bytes(b"weights")
    os.symlink(outside, folder / "link_out")
    os.symlink(folder / "checkpoint_000000", root / "link_in")
    reader = ExperimentsReader([str(root)])
    expected = str(folder / "checkpoint_000000" / CHECKPOINT_FILE)
    assert reader.locate_checkpoint("demo/trial_aaa/checkpoint_000000") == expected  # relative to the root
    assert reader.locate_checkpoint(expected) == expected
    assert reader.locate_checkpoint("link_in").endswith(f"checkpoint_000000/{CHECKPOINT_FILE}")  # a link inside
    for path in ("../elsewhere", str(outside / CHECKPOINT_FILE), "demo/trial_aaa/link_out",
                 "demo/../../elsewhere/checkpoint.pth", "/etc/passwd"):
        with pytest.raises(PermissionError, match="outside the experiment folders"):
            reader.locate_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        reader.locate_checkpoint("demo/trial_aaa/checkpoint_000009")


def test_several_roots_with_experiments_of_the_same_name(tmp_path):
    for root, trial in (("a", "one"), ("b", "two")):
        write_trial(tmp_path / root / "demo", trial, [row(3, 0.1)])
        write_trial(tmp_path / root / "demo", "same", [row(3, 0.2)])
        write_state(tmp_path / root / "demo", {trial: "TERMINATED", "same": "TERMINATED"})
    (tmp_path / "a" / "not_an_experiment").mkdir()
    reader = ExperimentsReader([str(tmp_path / "a"), f"file://{tmp_path / 'b' / 'demo'}"])  # a URI, as Tune takes
    snapshot = reader.snapshot()
    assert [e["name"] for e in snapshot] == ["demo", "demo#2"]
    assert set(trials_of(snapshot, "demo#2")) == {"two", "same"}
    with pytest.raises(TrialNotFound, match="several experiments"):
        reader.find_trial("same")
    assert reader.find_trial("same", "demo#2")[0].name == "demo#2"


# --- a real sweep ---------------------------------------------------------------------------------------
def _rows(result_file: Path) -> list[dict]:
    return [json.loads(line) for line in result_file.read_text().splitlines()]


@pytest.mark.ray
def test_a_real_sweep_is_read_as_tune_wrote_it(tiny_sweep):
    (described,) = ExperimentsReader([str(tiny_sweep.storage)]).snapshot()
    assert described["name"] == tiny_sweep.name and described["state"] == "finished"
    results = {f.parent.name: _rows(f) for f in tiny_sweep.path.glob("trial_*/result.json")}
    assert len(results) == 2 and len(described["trials"]) == 2
    best = json.loads((tiny_sweep.path / "best" / "best.json").read_text())
    assert described["best_trial"] == best["trial_id"]
    for trial in described["trials"]:
        rows = results[f"trial_{trial['trial_id']}"]
        params = json.loads((tiny_sweep.path / f"trial_{trial['trial_id']}" / "params.json").read_text())
        assert trial["state"] == "terminated" and trial["steps"] == rows[-1]["step"]
        assert trial["stopped_early"] == (rows[-1]["step"] < tiny_sweep.max_steps)
        assert trial["history"]["step"] == [r["step"] for r in rows]
        assert trial["history"]["gain"] == [r["gain"] for r in rows]
        assert trial["history"]["loss"] == [r["loss_total"] for r in rows]
        assert trial["history"]["tof"] == [r["tof"] for r in rows] and all(t > 0 for t in trial["history"]["tof"])
        assert trial["best"]["gain"] == max(r["gain"] for r in rows)
        assert trial["lr"] == pytest.approx(10 ** params["LR_EXPONENT"]) and trial["wd"] == params["WEIGHT_DECAY"]
        assert trial["layers"] == {k[len("layer/"):]: v for k, v in rows[-1].items() if k.startswith("layer/")}
        assert trial["checkpoint_step"] == max(rows, key=lambda r: r["gain"])["step"]  # all kept (keep 0)
        assert not math.isnan(trial["best"]["psnr"])


@pytest.mark.ray
def test_a_running_sweep_shows_up_live(tiny_sweep):
    running = [t for snapshot in tiny_sweep.live for e in snapshot if e["state"] == "running"
               for t in e["trials"] if t["state"] == "running" and t["steps"] > 0]
    assert running, "no snapshot taken during the sweep showed a running trial with reports"
    assert any(t["steps"] < tiny_sweep.max_steps for t in running)  # seen before it ended
    assert len(tiny_sweep.live) >= 3  # the trials' steps appeared one after another, not all at the end
