"""The ``vsr`` subcommands of the apps built on vsr_core, found through entry points (group ``vsr.commands``).

vsr_core never imports ``tune`` or ``serve`` (layers point down). Instead they declare their
subcommands in pyproject.toml, under ``[project.entry-points."vsr.commands"]`` (``sweep``, ``serve``,
``client``): each names a function ``add(subparsers)`` that adds its subparser and sets ``func``.
``vsr`` adds what the installed distributions declare, so an editable install and a wheel alike have
them, and a distribution of its own could add more.

The top-level names ``tune`` and ``serve`` are common ones (PyPI has a ``tune``): another
distribution's package of that name earlier on sys.path shadows ours, and one installed into the same
site-packages overwrites its files. Our app packages say ``DISTRIBUTION = "vsr-core"``; when the
package of one of this distribution's subcommands does not, or cannot be imported, the subcommand is
still listed and running it says why in one line (``CommandUnavailable``) instead of failing strangely.
"""
from __future__ import annotations

import argparse
import importlib
from importlib.metadata import EntryPoint, entry_points

GROUP = "vsr.commands"
DISTRIBUTION = "vsr-core"  # this project's distribution (pyproject.toml's name); its app packages carry it


class CommandUnavailable(RuntimeError):
    """A subcommand whose package cannot be used here (not installed, or another package's of that name)."""


def add_commands(subparsers) -> None:
    """Add every installed ``vsr.commands`` entry point to ``subparsers``; a built-in name wins."""
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if entry.name in subparsers.choices:
            continue
        try:
            _check_package(entry)
            entry.load()(subparsers)
        except (ImportError, AttributeError, CommandUnavailable) as exc:
            _add_unavailable(subparsers, entry.name, _reason(entry, exc))


def _is_ours(entry: EntryPoint) -> bool:
    return entry.dist is not None and entry.dist.name.replace("_", "-").lower() == DISTRIBUTION


def _check_package(entry: EntryPoint) -> None:
    """Raise CommandUnavailable when this distribution's subcommand would run another package's code."""
    if not _is_ours(entry):
        return
    name = entry.module.partition(".")[0]
    package = importlib.import_module(name)
    if getattr(package, "DISTRIBUTION", None) != DISTRIBUTION:
        where = getattr(package, "__file__", None) or "a namespace package"
        raise CommandUnavailable(
            f"'vsr {entry.name}' needs this project's package {name!r}, but {name!r} here is another package's "
            f"({where}): another distribution with a top-level {name!r} shadows or overwrote it; install "
            f"{DISTRIBUTION} in a virtual environment of its own")


def _reason(entry: EntryPoint, exc: Exception) -> str:
    if isinstance(exc, CommandUnavailable):
        return str(exc)
    return f"'vsr {entry.name}' cannot be loaded ({entry.value}): {type(exc).__name__}: {exc}"


def _add_unavailable(subparsers, name: str, reason: str) -> None:
    """A stand-in that takes any arguments; ``vsr`` reports ``reason`` when it is run."""
    parser = subparsers.add_parser(name, help="(unavailable here: run it to see why)", add_help=False)
    parser.set_defaults(func=None, unavailable=reason)


def unavailable_reason(args: argparse.Namespace) -> str | None:
    """Why the parsed command cannot run (a stand-in of ``add_commands``), or None."""
    return getattr(args, "unavailable", None)
