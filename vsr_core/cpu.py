"""What this machine's CPU is and can do, read from /proc/cpuinfo (the one place that reads it)."""
from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=None)  # the CPU does not change under a running process
def _cpuinfo_field(*names: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(names):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (x86 "flags", Arm "Features"); None if unknown."""
    field = _cpuinfo_field("flags", "Features")
    return None if field is None else set(field.split())


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def has_avx512() -> bool:
    return "avx512f" in (cpu_flags() or set())
