"""serve.models without Ray: what a replica serves (the promotion record, its fallbacks), the bound on
the models it keeps, and checkpoints promoted from a storage URI."""
from __future__ import annotations

import pytest

from serve.models import ModelChoice, ModelStore, ServingRecord, local_copy, read_record, record_path, write_record
from serve.settings import ServeSettings
from test_serve import save_test_checkpoint


@pytest.fixture
def setup(tmp_path):
    configured = save_test_checkpoint(tmp_path / "configured" / "latest.pth", seed=1, step=10)
    others = [save_test_checkpoint(tmp_path / f"other{i}" / "latest.pth", seed=2 + i, step=20 + i) for i in range(3)]
    settings = ServeSettings(checkpoint=str(configured), models_dir=str(tmp_path / "models"), device="cpu",
                             max_compare_models=2)
    store = ModelStore()
    store.configure(settings)
    return store, settings, configured, others


def test_a_replica_serves_the_record_made_over_its_configured_checkpoint(setup, tmp_path):
    store, settings, configured, others = setup
    assert store.serving(settings, None).info["step"] == 10 and store.previous() is None
    record = ServingRecord(str(configured.resolve()), ModelChoice(str(others[0]), {"trial_id": "t0", "experiment": "e"}),
                           ModelChoice(None, {"trial_id": None, "step": 10}))
    write_record(record_path(settings), record)
    assert store.record_changed(settings)
    served = store.serving(settings, None)
    assert (served.info["step"], served.info["trial_id"], served.info["source"]) == (20, "t0", "promoted")
    assert store.previous() == {"trial_id": None, "step": 10} and not store.record_changed(settings)

    moved = settings.model_copy(update={"checkpoint": str(others[1])})  # a deploy with another checkpoint wins
    assert store.serving(moved, served).info["step"] == 21 and store.previous() is None


def test_a_promoted_checkpoint_that_cannot_load_falls_back_to_the_configured_one(setup):
    store, settings, configured, others = setup
    gone = others[2].parent / "gone.pth"
    write_record(record_path(settings), ServingRecord(str(configured.resolve()), ModelChoice(str(gone)), None))
    served = store.serving(settings, None)
    assert served.info["step"] == 10 and served.info["source"] == "configured"
    assert "cannot serve the promoted model" in store.error


def test_a_damaged_record_is_ignored_and_not_read_again_until_it_changes(setup):
    store, settings, _, _ = setup
    path = record_path(settings)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_record(path)[0] is None and read_record(path)[1] is not None
    assert store.serving(settings, None).info["step"] == 10
    assert not store.record_changed(settings)  # the follow loop does not reload every 2 s
    path.write_text("{}")
    assert store.record_changed(settings)


def test_the_models_kept_besides_the_served_one_are_bounded(setup):
    store, settings, _, others = setup
    served = store.serving(settings, None)
    loaded = [store.get(settings, ModelChoice(str(path), {"trial_id": f"t{i}"}), served) for i, path in enumerate(others)]
    assert [m.info["step"] for m in loaded] == [20, 21, 22]
    assert [m["trial_id"] for m in store.loaded()] == ["t1", "t2"]  # max_compare_models = 2, least recent gone
    again = store.get(settings, ModelChoice(str(others[1]), {"trial_id": "t1"}), served)  # kept: not loaded again
    assert again.upscaler is loaded[1].upscaler
    store.keep(served)
    assert [m["trial_id"] for m in store.loaded()] == ["t1", None]
    assert store.get(settings, ModelChoice(), served) is served  # the served model is never loaded twice


def test_a_checkpoint_at_a_storage_uri_is_copied_once(tmp_path):
    source = save_test_checkpoint(tmp_path / "remote" / "checkpoint.pth", seed=5, step=5)
    uri = f"file://{source}"
    first = local_copy(uri, str(tmp_path / "models"))
    assert first != str(source) and open(first, "rb").read() == source.read_bytes()
    source.write_bytes(b"changed")  # a reported Tune checkpoint never changes: the copy is reused
    assert local_copy(uri, str(tmp_path / "models")) == first and open(first, "rb").read() != b"changed"
    assert local_copy(str(source), str(tmp_path / "models")) == str(source)  # a local path: as it is
