"""The Serve app's settings (the deployment's ``user_config``) and its API keys."""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vsr_core.options import OPTION_HELP, SERVICE_MEMORY_BUDGET, InferenceOptions, MiB, OptionError, check_option

API_KEY_ENV = "VSR_API_KEY"
DEFAULT_JOBS_DIR = "~/.cache/vsr/jobs"
DEFAULT_MODELS_DIR = "~/.cache/vsr/models"
_DEFAULT = InferenceOptions()
# user_config keys that are InferenceOptions fields as they are (memory_budget_mb is the budget in MiB)
INFERENCE_KEYS = ("device", "batch_size", "tile", "tile_overlap", "precision", "backend")


class ServeSettings(BaseModel):
    """The deployment's ``user_config``. Changing it in a config file (``serve deploy``)
    reconfigures running replicas in place; a changed checkpoint (or ``revision``) is
    hot-swapped."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="a .pth file, a training run folder, or a Tune best/ folder")
    device: str = Field(_DEFAULT.device, description=f"the replica's device: {OPTION_HELP['device']} (a video job's "
                        "chunk workers run on CUDA when job_gpus_per_worker > 0, else on the CPU)")
    revision: str | None = Field(None, description="free-form; change it to reload a checkpoint overwritten in place")
    batch_size: int = Field(_DEFAULT.batch_size, description=f"{OPTION_HELP['batch_size']} in video jobs")
    precision: str = Field(_DEFAULT.precision, description=OPTION_HELP["precision"])
    backend: str = Field(_DEFAULT.backend, description=f"{OPTION_HELP['backend']}; torch-compile applies to video "
                         "jobs only (a compile per frame size costs tens of seconds), windows then run on torch")
    tile: int = Field(_DEFAULT.tile, description=OPTION_HELP["tile"])
    tile_overlap: int = Field(_DEFAULT.tile_overlap, description=OPTION_HELP["tile_overlap"])
    memory_budget_mb: int | None = Field(
        None, ge=1, description=f"{OPTION_HELP['memory_budget']} (MiB; for a replica and each chunk worker of a "
        f"video job). Default ('{SERVICE_MEMORY_BUDGET}'): the replica's ray_actor_options.memory, else half the "
        "node's memory times the replica's share of its CPUs")
    max_batch_size: int = Field(8, ge=1, description="most windows (from concurrent requests and streams) in one "
                                "forward pass (serve.batching)")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="longest wait for more windows "
                                        "before a pass, counted from the oldest waiting window")
    max_batch_pixels: int = Field(
        1280 * 720, ge=1, description="most LR pixels (windows x H x W) per forward pass; bigger batches are split "
        "(bounds memory; one window always runs, however large)")
    max_body_bytes: int = Field(64 * 1024**2, ge=1, description="largest accepted window request body (413 above)")
    max_pixels_per_frame: int = Field(1280 * 720, ge=1, description="largest accepted LR frame, H*W (413 above)")
    max_video_frames: int = Field(300, ge=1, description="longest clip for the synchronous /v1/upscale/video (413 "
                                  "above); use /v1/jobs for longer videos")
    max_stream_frames: int = Field(108_000, ge=1, description="most frames one WS /v1/stream connection may send "
                                   "(default: an hour at 30 fps)")
    stream_idle_timeout_s: float = Field(30.0, gt=0, description="a stream that sends nothing for this long is "
                                         "closed (JSON error 'idle_timeout' first)")
    stream_header_timeout_s: float = Field(5.0, gt=0, description="a stream's header message must arrive this "
                                           "soon after the handshake (else closed with 'idle_timeout')")
    # --- admission: what one key, and all of them, may hold open on a replica (429 above) ---
    max_streams: int = Field(8, ge=1, description="open WS /v1/stream connections per replica, all keys together")
    max_streams_per_key: int = Field(4, ge=1, description="open WS /v1/stream connections per API key and replica")
    max_transfers: int = Field(32, ge=1, description="requests reading a body or sending a result at once per "
                               "replica, all keys together (window bodies are held in memory: at most this many "
                               "x max_body_bytes)")
    max_transfers_per_key: int = Field(16, ge=1, description="requests reading a body or sending a result at once "
                                       "per API key and replica")
    body_timeout_s: float = Field(10.0, gt=0, description="a request body must start within this many seconds, "
                                  "and no pause may last longer (408 'body_timeout')")
    min_body_bytes_per_s: int = Field(16 * 1024, ge=1, description="after body_timeout_s, a body must keep "
                                      "arriving at this average rate (slow bodies hold a request slot: 408)")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="host names (the Host header, without port) the app answers to; empty: "
        "loopback names (127.0.0.1, localhost, ::1), or any name when the server has API keys. Guards a keyless "
        "server against DNS rebinding; '*' allows any")
    allowed_origins: list[str] = Field(
        default_factory=list, description="browser origins (scheme://host[:port]) allowed besides the app's own "
        "to open the stream and to send POST/DELETE requests (403 otherwise); requests without Origin (programs) "
        "are not affected")
    num_threads: int | None = Field(None, ge=1, description="torch threads; default: the replica's num_cpus")
    expose_paths: bool = Field(False, description="show the checkpoint's path in /v1/model (off: only its file "
                               "name and content hash, so the API reveals nothing about the server's disk)")
    api_key_file: str | None = Field(
        None, description=f"file holding the API keys clients must send as a bearer token, one per line; default: "
        f"${API_KEY_ENV} in the replica's environment; neither: no authentication")
    # --- experiments, promotion and model compare (serve.models, serve.compare) ---
    experiments: list[str] = Field(
        default_factory=list, description="Tune experiment folders (or folders of them, e.g. a sweep's "
        "--storage-path; paths or storage URIs) shown by GET /v1/experiments, whose trials PUT /v1/model may "
        "promote and POST /v1/compare may run; empty: none")
    models_dir: str = Field(DEFAULT_MODELS_DIR, description="the promoted model's record (followed by every "
                            "replica: a shared folder on a multi-node cluster) and local copies of checkpoints "
                            "promoted from a storage URI")
    max_compare_models: int = Field(2, ge=1, description="models a replica keeps loaded besides the one it "
                                    "serves (for compare and rollback); the least recently used goes first")
    max_compare_frames: int = Field(8, ge=2, description="most frames one POST /v1/compare scores (413 above)")
    tensorboard_url: str | None = Field(None, description="a TensorBoard over the experiments, e.g. "
                                        "http://127.0.0.1:6006: the page links each trial to it")
    # --- video jobs ---
    jobs_dir: str = Field(DEFAULT_JOBS_DIR, description="where jobs keep uploads, progress and results (a shared "
                          "folder on a multi-node cluster)")
    job_ttl_s: float = Field(24 * 3600, gt=0, description="finished jobs and their results are deleted after this")
    jobs_max_bytes: int = Field(20 * 1024**3, ge=1, description="disk all jobs may use together (507 above)")
    job_max_upload_bytes: int = Field(4 * 1024**3, ge=1, description="largest video upload (413 above)")
    job_source_roots: list[str] = Field(
        default_factory=list, description="folders or URI prefixes a job may read its video from by name "
        "(POST /v1/jobs with {'source': ...}); empty: uploads only")
    job_chunk_frames: int | None = Field(None, ge=1, description="frames per chunk of a video job; default: "
                                         "64, fewer for a short video on several workers")
    job_workers: int | None = Field(None, ge=1, description="chunk workers per job; default: as many as fit")
    job_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs (= torch threads) of each chunk worker")
    job_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs of each chunk worker")
    max_jobs: int = Field(64, ge=1, description="queued and running jobs of all keys together (429 above)")
    max_jobs_per_key: int = Field(4, ge=1, description="queued and running jobs per API key (429 above)")
    max_running_jobs: int = Field(2, ge=1, description="jobs running at once on the cluster; queued jobs start as "
                                  "others end, taking turns between keys")
    job_orphan_timeout_s: float = Field(120.0, ge=1, description="a job's runner that hears from no replica for "
                                        "this long stops and leaves its job queued (resumed when the app is back)")

    @field_validator(*INFERENCE_KEYS)
    @classmethod
    def _valid_option(cls, value: Any, info: ValidationInfo) -> Any:
        try:
            check_option(info.field_name, value)
        except OptionError as exc:
            raise ValueError(exc.problem) from None
        return value

    @field_validator("experiments", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _options_agree(self) -> ServeSettings:
        self.inference_options()  # e.g. a tile no larger than its overlap (OptionError names the key)
        return self

    @property
    def memory_budget(self) -> int | str:
        """``memory_budget_mb`` as ``InferenceOptions.memory_budget``: bytes, or "auto" (each process
        derives its own)."""
        return self.memory_budget_mb * MiB if self.memory_budget_mb else SERVICE_MEMORY_BUDGET

    def inference_options(self) -> InferenceOptions:
        """The replica's inference options (its windows run them with a few changes: ``serve.model``)."""
        return InferenceOptions(**{key: getattr(self, key) for key in INFERENCE_KEYS},
                                memory_budget=self.memory_budget)

    def job_inference_options(self) -> InferenceOptions:
        """What a video job's chunk workers run: the same options on the device of their GPU share
        (``device`` is the replica's own)."""
        return replace(self.inference_options(),
                       device=InferenceOptions.ray_worker_device(self.job_gpus_per_worker))

    def limits(self) -> dict[str, float]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_pixels_per_frame": self.max_pixels_per_frame,
            "max_video_frames": self.max_video_frames,
            "max_stream_frames": self.max_stream_frames,
            "stream_idle_timeout_s": self.stream_idle_timeout_s,
            "job_max_upload_bytes": self.job_max_upload_bytes,
            "max_streams_per_key": self.max_streams_per_key,
            "max_transfers_per_key": self.max_transfers_per_key,
            "max_jobs_per_key": self.max_jobs_per_key,
            "body_timeout_s": self.body_timeout_s,
            "min_body_bytes_per_s": self.min_body_bytes_per_s,
        }


def settings_from(config: dict[str, Any] | None) -> ServeSettings:
    """Validate a user_config; errors name the key."""
    try:
        return ServeSettings.model_validate(dict(config or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
                             for e in exc.errors())
        raise ValueError(f"invalid user_config: {problems}") from None


def load_api_keys(settings: ServeSettings) -> list[str]:
    """The keys clients may send: the lines of ``api_key_file``, else ``$VSR_API_KEY``, else
    none (no authentication). Each key sees only the jobs it submitted."""
    if settings.api_key_file:
        try:
            text = Path(settings.api_key_file).expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"cannot read api_key_file {settings.api_key_file}: {exc.strerror or exc}") from None
        keys = [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise ValueError(f"api_key_file {settings.api_key_file} is empty")
        return keys
    key = os.environ.get(API_KEY_ENV, "").strip()
    return [key] if key else []


def key_owner(key: str) -> str:
    """A stable, non-secret name for an API key: who owns a job."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def authorized_owner(authorization: str | None, api_keys: list[str]) -> str | None:
    """The owner of the key in ``Authorization: Bearer <key>`` (compared in constant time),
    "" when no keys are configured (everyone is the same anonymous owner), None if refused."""
    if not api_keys:
        return ""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token_bytes = token.strip().encode()
    matches = [key for key in api_keys if hmac.compare_digest(token_bytes, key.encode())]
    return key_owner(matches[0]) if matches else None
