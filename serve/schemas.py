"""What the API accepts as JSON, each through one pydantic model: the stream's header message
(``StreamHeader``), a job's encoder and preview options (``JobOptions``, from query parameters
or JSON fields) and the JSON body of ``POST /v1/jobs`` (``JobRequest``). Errors name the field
(``InputError``: the app answers 400, the stream closes with 1008); nothing a client sends can
make validation itself fail with anything else.

JSON is checked before it is parsed (``parse_json``): at most ``max_bytes`` and nesting
``MAX_JSON_DEPTH`` deep, so a body nested 60,000 deep is refused in a linear scan instead of
reaching the parser's recursion limit.
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from serve.formats import STREAM_OUTPUTS

MAX_JSON_DEPTH = 8
MAX_HEADER_BYTES = 4096  # the stream's text messages
MAX_JOB_JSON_BYTES = 64 * 1024
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped) and brackets


class InputError(ValueError):
    """Bad input: ``problem``, about the key ``field`` (None: the whole message); its text is
    "field: problem"."""

    def __init__(self, problem: str, field: str | None = None):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.problem, self.field = problem, field


def parse_json(data: bytes | str, max_bytes: int, what: str = "the body") -> Any:
    """``data`` as JSON, refused (``InputError``) when larger than ``max_bytes``, nested deeper
    than ``MAX_JSON_DEPTH``, or not JSON; checked before ``json.loads`` sees it."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise InputError(f"{what} has {len(raw)} bytes; at most {max_bytes} are accepted")
    depth = 0
    for token in _JSON_TOKENS.findall(raw):
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InputError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
        elif token in (b"]", b"}"):
            depth -= 1
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InputError(f"{what} is not valid JSON") from None


def validate(model: type[BaseModel], values: Any, strings: bool = False) -> BaseModel:
    """``values`` as ``model``, or an ``InputError`` naming the first bad field ("field: problem").
    ``strings``: the values are query-string text ("22" is an integer there)."""
    if not isinstance(values, dict):
        raise InputError(f"expected a JSON object, got {type(values).__name__}")
    try:
        return model.model_validate_strings(values) if strings else model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            problem = f"unknown key; allowed: {sorted(model.model_fields)}"
        else:
            problem = first["msg"][0].lower() + first["msg"][1:]
            if "input" in first and first["type"] not in ("missing",):
                problem += f", got {_shown(first['input'])}"
        raise InputError(problem, field) from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class StreamHeader(BaseModel):
    """The first message of ``WS /v1/stream``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: StrictInt = Field(ge=1, description="pixels")
    height: StrictInt = Field(ge=1, description="pixels")
    format: Literal["png", "jpeg", "raw"]
    output: Literal[tuple(STREAM_OUTPUTS)] = "png"  # type: ignore[valid-type]


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true is not a number here (pydantic would read it as 1)
        raise ValueError("must be a number, not true/false")
    return value


class JobOptions(BaseModel):
    """A job's encoder settings (as ``vsr upscale --codec/--crf/--preset/--pix-fmt``) and its
    preview (``--preview START DURATION``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    codec: str | None = None  # None: h264
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    preview_start: float | None = None
    preview_duration: float | None = None

    _numbers = field_validator("crf", "preview_start", "preview_duration", mode="before")(_no_bool)

    def checked(self) -> dict[str, Any]:
        """{"encoder": {codec, crf, preset, pix_fmt}, "preview": [start, duration] or None}, with
        the encoder checked as ``vsr upscale`` checks it (``InputError`` naming the field)."""
        from vsr_core.data.video_encoder import EncoderError, EncoderSettings

        encoder = {"codec": self.codec or "h264", "crf": self.crf, "preset": self.preset, "pix_fmt": self.pix_fmt}
        try:
            EncoderSettings(**encoder)
        except EncoderError as exc:  # "field: problem"
            field, _, problem = str(exc).partition(": ")
            raise InputError(problem, field) from None
        start, duration = self.preview_start, self.preview_duration
        if (start is None) != (duration is None):
            raise InputError("give both (seconds) or neither", "preview_start and preview_duration")
        if start is not None and (start < 0 or duration <= 0):
            raise InputError(f"preview_start must be >= 0 and preview_duration > 0, got {start} and {duration}")
        return {"encoder": encoder, "preview": None if start is None else [start, duration]}


class JobRequest(JobOptions):
    """The JSON body of ``POST /v1/jobs``: a video the server may read, and the job's options."""

    source: str = Field(min_length=1, max_length=4096, description="a path or URI under job_source_roots")


class PromoteRequest(BaseModel):
    """The JSON body of ``PUT /v1/model``: exactly one of ``trial`` (with an optional ``experiment``),
    ``checkpoint`` (a path inside the experiments) or ``rollback: true``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    trial: str | None = Field(None, min_length=1, max_length=256)
    experiment: str | None = Field(None, min_length=1, max_length=256)
    checkpoint: str | None = Field(None, min_length=1, max_length=4096)
    rollback: Literal[True] | None = None

    def checked(self) -> dict[str, Any]:
        """The fields given, as a dict; ``InputError`` unless exactly one target is named."""
        given = [name for name in ("trial", "checkpoint", "rollback") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InputError(f"send exactly one of trial, checkpoint or rollback (got {given or 'none'})")
        if self.experiment is not None and self.trial is None:
            raise InputError("only with trial", "experiment")
        return self.model_dump(exclude_none=True)
