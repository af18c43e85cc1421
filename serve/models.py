"""Which checkpoint a replica serves, and the other models it keeps loaded.

**Serving.** A replica serves ``user_config.checkpoint`` unless a model was *promoted*: PUT /v1/model
with a trial of the experiments (its best report whose checkpoint Tune still keeps) or a checkpoint
inside the experiment folders. A promotion is a record in ``models_dir`` (``serving-<app>.json``: the
model served, the one before it, and the configured checkpoint it was made over), applied at once by
the replica that took the request; the other replicas follow the record within ``FOLLOW_INTERVAL_S``
and a replica started later starts with it. A new ``checkpoint`` in the user_config wins over the
record (an operator's deploy is the newer decision). Rollback serves the record's previous model and
makes the current one the previous (rolling back twice is a redo). Every swap goes the reconfigure
way: the model is loaded completely off the event loop, then one reference is replaced.

**Several models at once.** A compare (``serve.compare``) runs model A, model B and bicubic on the
same frames, and the model served before a promotion stays loaded for a one-click rollback. They live
in an LRU of at most ``max_compare_models`` per replica, besides the served model (never evicted).
Chosen over Serve's model multiplexing (``@serve.multiplexed`` with the ``serve_multiplexed_model_id``
header), because: a compare needs two models in one request (the frames decoded and the ground truth's
optical flow computed once), while a multiplexed request names one model; the bound is a user_config key
that reconfigure can change, while the decorator's ``max_num_models_per_replica`` is fixed when the class
is defined; the served model must never be evicted by compare traffic, while a multiplexed LRU treats
every model alike; and multiplexing's gain, routing a model's requests to the replicas that hold it,
pays off for many models under steady traffic, not for an occasional compare on a few replicas.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from serve.api import ApiError
from serve.model import LoadedModel, load_model, model_key
from serve.settings import ServeSettings
from vsr_core import storage
from vsr_core.checkpoint import CHECKPOINT_FILE, resolve_checkpoint_path
from vsr_core.experiments import SCORES, ExperimentsReader, TrialNotFound

logger = logging.getLogger("ray.serve")

FOLLOW_INTERVAL_S = 2.0
PROMOTE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "exactly one of trial, checkpoint, rollback", "properties": {
        "trial": {"type": "string", "description": "a trial id of the experiments: its best checkpoint Tune keeps"},
        "experiment": {"type": "string", "description": "the trial's experiment, when the id is in several"},
        "checkpoint": {"type": "string", "description": "a checkpoint file or folder inside the experiments"},
        "rollback": {"type": "boolean", "description": "true: serve the model served before"}}}}}}}


@dataclass(frozen=True)
class ModelChoice:
    """A model to serve: ``checkpoint`` (a local path or URI; None: user_config's) and what /v1/model
    says about it (``origin``: trial_id, experiment, step, checkpoint name, metrics)."""

    checkpoint: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServingRecord:
    over: str  # the configured checkpoint (resolved) the promotion was made over
    current: ModelChoice
    previous: ModelChoice | None

    def to_dict(self) -> dict[str, Any]:
        choice = lambda c: None if c is None else {"checkpoint": c.checkpoint, "origin": c.origin}  # noqa: E731
        return {"over": self.over, "current": choice(self.current), "previous": choice(self.previous)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingRecord:
        choice = lambda c: None if c is None else ModelChoice(c["checkpoint"], dict(c.get("origin") or {}))  # noqa: E731
        return cls(str(data["over"]), choice(data["current"]), choice(data.get("previous")))


def app_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().app_name or "default"
    except Exception:  # noqa: BLE001 - not in a replica (tests, tools)
        return "default"


def record_path(settings: ServeSettings) -> Path:
    return Path(settings.models_dir).expanduser() / f"serving-{app_name()}.json"


def read_record(path: Path) -> tuple[ServingRecord | None, tuple | None]:
    """(the record, its (mtime, size) stamp); (None, None) without one. A damaged record is logged and
    ignored (with its stamp, so that it is not read again until it changes)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None, None
    stamp = (stat.st_mtime_ns, stat.st_size)
    try:
        return ServingRecord.from_dict(json.loads(path.read_text())), stamp
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring the serving record %s: %s", path.name, exc)
        return None, stamp


def write_record(path: Path, record: ServingRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


def origin_of(loaded: LoadedModel) -> dict[str, Any]:
    info = loaded.info
    return {k: info.get(k) for k in ("trial_id", "experiment", "step", "checkpoint", "checkpoint_id", "metrics")}


def with_origin(loaded: LoadedModel, choice: ModelChoice, reader: ExperimentsReader | None) -> LoadedModel:
    """The model described as ``choice`` says: the trial (and experiment) it comes from. A configured
    checkpoint names its trial in best.json, and its experiment when it lies in the experiments (a
    sweep's best/ export): a folder name elsewhere would tell about the server's disk."""
    info = {**loaded.info, "source": "promoted" if choice.checkpoint else "configured"}
    if choice.checkpoint:
        origin = choice.origin
        info.update(trial_id=origin.get("trial_id"), experiment=origin.get("experiment"),
                    metrics=origin.get("metrics") or info["metrics"])
    else:
        info["experiment"] = reader.experiment_of(str(loaded.path)) if reader and info.get("trial_id") else None
    return replace(loaded, info=info)


def local_copy(location: str, models_dir: str) -> str:
    """A checkpoint at a storage URI copied once into ``models_dir`` (the Upscaler loads local files)."""
    if not storage.is_uri(location):
        return location
    target = Path(models_dir).expanduser() / "checkpoints" / hashlib.sha256(location.encode()).hexdigest()[:16]
    if not (target / CHECKPOINT_FILE).is_file():
        target.mkdir(parents=True, exist_ok=True)
        partial = target / f".{CHECKPOINT_FILE}.{os.getpid()}.partial"
        with storage.open_input(location) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        os.replace(partial, target / CHECKPOINT_FILE)
    return str(target / CHECKPOINT_FILE)


class ModelStore:
    """The replica's record of what to serve and its LRU of other loaded models. Its blocking methods
    (loading, reading the experiments) run off the event loop."""

    def __init__(self) -> None:
        self.cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self.limit = 2
        self.reader: ExperimentsReader | None = None
        self._locations: tuple[str, ...] = ()
        self.record: ServingRecord | None = None  # the record this replica serves (None: the configured model)
        self.stamp: tuple | None = None  # of the record file last applied
        self.error: str | None = None  # why the promoted model is not served
        self._lock = threading.Lock()

    def configure(self, settings: ServeSettings) -> None:
        if tuple(settings.experiments) != self._locations:
            self._locations = tuple(settings.experiments)
            self.reader = ExperimentsReader(self._locations) if self._locations else None
        with self._lock:
            self.limit = settings.max_compare_models
            self._trim()

    # --- what to serve -----------------------------------------------------------------------------
    def serving(self, settings: ServeSettings, current: LoadedModel | None) -> LoadedModel:
        """The model to serve now: the record's when it was made over the configured checkpoint, else the
        configured one (also when the record's cannot be loaded: ``error`` says why). ``current`` when it
        is that model already. Blocking."""
        record, stamp = read_record(record_path(settings))
        if record is not None and record.over != configured(settings):
            record = None
        self.stamp, self.error = stamp, None
        if record is not None:
            try:
                loaded = self.load(settings, record.current, current)
                self.record = record
                return loaded
            except Exception as exc:  # noqa: BLE001 - e.g. Tune deleted the checkpoint: serve the configured one
                self.error = f"cannot serve the promoted model: {type(exc).__name__}: {exc}"
                logger.warning("%s; serving the configured checkpoint", self.error)
        self.record = None
        return self.load(settings, ModelChoice(), current)

    def record_changed(self, settings: ServeSettings) -> bool:
        path = record_path(settings)
        try:
            stat = path.stat()
            return (stat.st_mtime_ns, stat.st_size) != self.stamp
        except FileNotFoundError:
            return self.stamp is not None

    def load(self, settings: ServeSettings, choice: ModelChoice, current: LoadedModel | None = None) -> LoadedModel:
        """``choice`` loaded (``current`` or a cached model when it is the same file and options). Blocking."""
        serving = self.settings_for(settings, choice)
        key = model_key(serving)
        if current is not None and current.key == key:
            return with_origin(current, choice, self.reader)
        with self._lock:
            cached = self.cache.pop(key, None)
        return with_origin(cached or load_model(serving), choice, self.reader)

    def settings_for(self, settings: ServeSettings, choice: ModelChoice) -> ServeSettings:
        if choice.checkpoint is None:
            return settings
        return settings.model_copy(update={"checkpoint": local_copy(choice.checkpoint, settings.models_dir)})

    def keep(self, loaded: LoadedModel | None) -> None:
        """A model no longer served stays loaded (LRU) for a rollback or a compare."""
        if loaded is None:
            return
        with self._lock:
            self.cache[loaded.key] = loaded
            self.cache.move_to_end(loaded.key)
            self._trim()

    def get(self, settings: ServeSettings, choice: ModelChoice, served: LoadedModel) -> LoadedModel:
        """A model for a compare: the served one, a kept one, or loaded now and kept (LRU). Blocking."""
        serving = self.settings_for(settings, choice)
        key = model_key(serving)
        if served.key == key:
            return served
        with self._lock:
            cached = self.cache.get(key)
            if cached is not None:
                self.cache.move_to_end(key)
        loaded = with_origin(cached or load_model(serving), choice, self.reader)
        if cached is None:
            self.keep(loaded)
        return loaded

    def _trim(self) -> None:
        while len(self.cache) > self.limit:
            self.cache.popitem(last=False)

    def loaded(self) -> list[dict[str, Any]]:
        with self._lock:
            return [origin_of(m) for m in self.cache.values()]

    # --- promotion -----------------------------------------------------------------------------------
    def promote(self, body: Any, settings: ServeSettings, current: LoadedModel) -> LoadedModel:
        """PUT /v1/model: load the model the body (``schemas.PromoteRequest.checked``) names (or the previous one, ``rollback``), then record it
        for every replica. Returns the model to swap in. Blocking; ApiError for a bad body."""
        path = record_path(settings)
        record, _ = read_record(path)
        if record is not None and record.over != configured(settings):
            record = None
        now = ModelChoice(record.current.checkpoint if record else None, origin_of(current))
        if body.get("rollback"):
            if record is None or record.previous is None:
                raise ApiError(409, "nothing_to_roll_back", "rollback: no model was served before this one")
            target = record.previous
        else:
            target = self.choice(body)
        loaded = self.load(settings, target, current)
        target = replace(target, origin={**origin_of(loaded), **target.origin})
        self.record = ServingRecord(configured(settings), target, now)
        write_record(path, self.record)
        self.stamp, self.error = read_record(path)[1], None
        return loaded

    def choice(self, body: dict[str, Any]) -> ModelChoice:
        """The model a body names: ``{"trial": id[, "experiment": name]}`` or ``{"checkpoint": path}``."""
        if self.reader is None:
            raise ApiError(409, "no_experiments", "this server has no experiments to promote from "
                           "(start it with --experiments, or set user_config experiments)")
        if "trial" in body:
            return self._trial_choice(body["trial"], body.get("experiment"))
        location = body["checkpoint"]
        try:
            found = self.reader.locate_checkpoint(location)
        except PermissionError:
            raise ApiError(403, "outside_experiments", "checkpoint: only checkpoints inside the experiment folders "
                           "can be served") from None
        except FileNotFoundError as exc:
            raise ApiError(404, "checkpoint_not_found", f"checkpoint: {exc}") from None
        match = self.reader.trial_of(found)
        origin = {"trial_id": match[1].trial_id, "experiment": match[0].name, "metrics": _metrics(match[2])} \
            if match else {}
        return ModelChoice(found, origin)

    def _trial_choice(self, trial_id: str, experiment: str | None) -> ModelChoice:
        try:
            found_experiment, trial = self.reader.find_trial(trial_id, experiment)
        except TrialNotFound as exc:
            raise ApiError(404, "trial_not_found", f"trial: {exc}") from None
        best = self.reader.best_checkpoint(found_experiment, trial)
        if best is None:
            raise ApiError(409, "no_checkpoint", f"trial: {trial_id!r} has no scored checkpoint that Tune still keeps")
        location, row = best
        return ModelChoice(location, {"trial_id": trial.trial_id, "experiment": found_experiment.name,
                                      "metrics": _metrics(row)})

    def previous(self) -> dict[str, Any] | None:
        """What a rollback would serve (for /v1/model and the page's button)."""
        record = self.record
        return None if record is None or record.previous is None else record.previous.origin


def configured(settings: ServeSettings) -> str:
    if not settings.checkpoint:
        raise ValueError("user_config must set 'checkpoint' (a .pth file, a run folder or a best/ folder)")
    return str(resolve_checkpoint_path(settings.checkpoint).resolve())


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    """A trial report's scores under the names best.json uses (``report_keys``)."""
    return {key: row[key] for key in SCORES.values() if row.get(key) is not None}
