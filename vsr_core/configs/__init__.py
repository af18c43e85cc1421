"""The ready training configs, shipped inside the package (so an installed ``vsr`` has them too):

    cpu_small    the CPU recipe (small preset, L1, 32 px patches; see README)
    option_b     the seed's full "Option B" run (full preset, perceptual loss; a GPU)
    sweep_base   the base config of every Tune trial (``vsr sweep``'s default)

``--config`` (``vsr train``, ``vsr sweep``) takes a path or one of these names; a file that exists
wins over a shipped name.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from vsr_core.config import ConfigError

SWEEP_BASE = "sweep_base"
SUFFIX = ".json"


def shipped_names() -> list[str]:
    """The names of the shipped configs, e.g. ['cpu_small', 'option_b', 'sweep_base']."""
    return sorted(entry.name[:-len(SUFFIX)] for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(SUFFIX))


def shipped_path(name: str) -> Path:
    """The file of the shipped config ``name`` (with or without .json). Installed packages are folders
    on disk (wheels are unpacked; an editable install maps to the checkout), so this is a real path."""
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    if stem not in shipped_names():
        raise ConfigError(f"no shipped config {name!r}; shipped configs: {', '.join(shipped_names())}")
    return Path(str(resources.files(__name__) / f"{stem}{SUFFIX}"))


def is_shipped_name(text: str) -> bool:
    """Whether ``text`` names a shipped config rather than a file that exists."""
    if Path(text).name != text or Path(text).exists():  # a path, or a file of that name here
        return False
    return (text[:-len(SUFFIX)] if text.endswith(SUFFIX) else text) in shipped_names()


def config_path(path_or_name: str | Path) -> Path:
    """The config file ``--config`` means: an existing file as given, else the shipped config of that name;
    neither is a ConfigError that names the argument and the shipped configs."""
    text = str(path_or_name)
    if is_shipped_name(text):
        return shipped_path(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"config file not found: {text} (nor is it a shipped config: "
                          f"{', '.join(shipped_names())})")
    return path
