"""``InferenceOptions``: how the model runs, the one owner of those settings.

Device, windows per pass, tiles, precision, backend and memory budget have their defaults,
checks and help texts here, and nowhere else. Every user goes through this class:
``Upscaler(model, options)``, the flags of ``vsr upscale`` / ``vsr evaluate``
(``add_arguments`` / ``from_args``), the Serve settings (``serve.settings``), a video job's
record (``to_dict`` / ``from_dict``) and the Ray chunk workers, which receive the options
together with the model's weights and apply the device rule (``for_ray_worker``).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from vsr_core.backends import BACKENDS
from vsr_core.frames import PRECISIONS

MiB = 2**20

#: The memory budget of a command or a server (``vsr upscale``, ``vsr evaluate``, Serve replicas and
#: their video jobs): processes of their own whose memory nobody else plans. A library caller gets no
#: budget unless it asks (training's validation shares its process with the training state, which
#: the "auto" budget would count against it).
SERVICE_MEMORY_BUDGET = "auto"

OPTION_HELP = {
    "device": "auto (CUDA if available), cpu, cuda, cuda:1 ...",
    "batch_size": "windows per forward pass",
    "tile": "largest LR tile side (0: whole frames when they fit the memory budget, else tiles as large as fit)",
    "tile_overlap": "tile overlap in LR pixels",
    "precision": "auto: fp16 on CUDA; on a CPU bf16 where it has native bf16 and measured faster, else fp32",
    "backend": "torch (eager), torch-compile (compiles once per frame size: for long videos), onnxruntime (fp32)",
    "memory_budget": "most memory the process may use: frames are split into tiles and batches to fit; 'auto': "
                     "half this machine's memory, or a Ray worker's share",
}


class OptionError(ValueError):
    """A bad inference option; the message starts with the option's name."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionError(name, f"must be an integer >= {low}, got {value!r}")


def _one_of(name: str, value: Any, known: tuple[str, ...]) -> None:
    if value not in known:
        raise OptionError(name, f"must be one of {', '.join(known)}, got {value!r}")


def _check_device(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise OptionError("device", f"must be a device name such as {OPTION_HELP['device']}, got {value!r}")
    if value != "auto":
        try:
            torch.device(value)
        except RuntimeError:
            raise OptionError("device", f"{value!r} is not a device; use {OPTION_HELP['device']}") from None


def _check_memory_budget(value: Any) -> None:
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionError("memory_budget", f"must be a number of bytes > 0, 'auto' or None (no budget), got {value!r}")


_CHECKS = {
    "device": _check_device,
    "batch_size": lambda value: _int_at_least("batch_size", value, 1),
    "tile": lambda value: _int_at_least("tile", value, 0),
    "tile_overlap": lambda value: _int_at_least("tile_overlap", value, 0),
    "precision": lambda value: _one_of("precision", value, PRECISIONS),
    "backend": lambda value: _one_of("backend", value, BACKENDS),
    "memory_budget": _check_memory_budget,
}


def check_option(name: str, value: Any) -> None:
    """Raise ``OptionError`` (naming ``name``) unless ``value`` is a valid value of that option."""
    _CHECKS[name](value)


def parse_memory_budget(text: str) -> int | str | None:
    """A ``--memory-budget`` value: MiB -> bytes, 'auto', or 'off' (None: no budget)."""
    if text in ("auto", "off"):
        return None if text == "off" else text
    try:
        mib = float(text)
    except ValueError:
        mib = 0
    if mib <= 0:
        raise argparse.ArgumentTypeError(f"expected MiB > 0, 'auto' or 'off', got {text!r}")
    return int(mib * MiB)


@dataclass(frozen=True)
class InferenceOptions:
    """How ``Upscaler`` runs the model. Frozen and checked on creation (``OptionError`` names the
    option); ``dataclasses.replace`` gives a changed copy, checked again."""

    device: str = "auto"  # a torch.device given here is kept by its name
    batch_size: int = 4
    tile: int = 0
    tile_overlap: int = 32
    precision: str = "auto"  # as asked: each process that runs the model resolves "auto" itself
    backend: str = "torch"
    memory_budget: int | str | None = None  # bytes, "auto" (each process derives its own) or None: no budget

    def __post_init__(self):
        if isinstance(self.device, torch.device):
            object.__setattr__(self, "device", str(self.device))
        for option in fields(self):
            check_option(option.name, getattr(self, option.name))
        if self.tile and self.tile <= self.tile_overlap:
            raise OptionError("tile", f"{self.tile} must be larger than tile_overlap ({self.tile_overlap}), "
                              "or 0 for no tiling")

    # --- records ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InferenceOptions:
        """The options of a ``to_dict`` record (missing keys: the defaults); unknown keys are refused."""
        known = [option.name for option in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown inference option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**values)

    # --- the command line ------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The flags --device, --batch-size, --tile, --tile-overlap, --precision, --backend, --memory-budget."""
        defaults = cls()
        parser.add_argument("--device", default=defaults.device, help=OPTION_HELP["device"])
        for name in ("batch_size", "tile", "tile_overlap"):
            parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name),
                                help=OPTION_HELP[name])
        parser.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                            help=OPTION_HELP["precision"])
        parser.add_argument("--backend", default=defaults.backend, choices=BACKENDS, help=OPTION_HELP["backend"])
        parser.add_argument("--memory-budget", type=parse_memory_budget, default=SERVICE_MEMORY_BUDGET, metavar="MIB",
                            help=f"{OPTION_HELP['memory_budget']} (MiB; default '{SERVICE_MEMORY_BUDGET}'; "
                            "'off': no budget)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InferenceOptions:
        return cls(**{option.name: getattr(args, option.name) for option in fields(cls)})

    # --- Ray workers -----------------------------------------------------------------------------
    @staticmethod
    def ray_worker_device(num_gpus: float) -> str:
        """The device rule of Ray workers: one with a GPU share runs on CUDA (the GPUs Ray gave it),
        one without on the CPU."""
        return "cuda" if num_gpus > 0 else "cpu"

    def for_ray_worker(self, num_gpus: float) -> InferenceOptions:
        """These options in a Ray worker with ``num_gpus`` GPUs: on the device of the rule above.
        "auto" becomes that device; an explicit device of another kind is an error, not ignored."""
        wanted = self.ray_worker_device(num_gpus)
        if self.device == "auto":
            return replace(self, device=wanted)
        if torch.device(self.device).type != wanted:
            raise OptionError("device", f"{self.device!r} contradicts the Ray workers' {num_gpus:g} GPUs each: a "
                              f"worker with GPUs runs on CUDA, one without on the CPU ({wanted} here); give "
                              f"the workers GPUs, or use device {wanted!r} or 'auto'")
        return self
