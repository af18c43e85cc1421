"""One `vsr` command: the apps' subcommands (entry points) take their scripts' flags; a user error ends in
one line, anything else with its traceback, --debug always with it; a shadowed `tune` is reported."""
import sys
import tomllib
import types
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import serve.__main__ as serve_main
from serve import client
from tune import search
from tune.cli import finish_args
from vsr_core import cli
from vsr_core.checkpoint import CheckpointError
from vsr_core.commands import GROUP
from vsr_core.config import ConfigError
from vsr_core.data.video_io import VideoReadError
from vsr_core.engine import cli as engine_cli
from vsr_core.memory import MemoryBudgetError

ROOT = Path(__file__).resolve().parents[1]
OWN_KEYS = {"func", "command", "debug"}  # what `vsr` itself adds to a subcommand's namespace


def as_vsr(command: str, argv: list[str]) -> dict:
    args, unknown = cli.build_parser().parse_known_args([command, *argv])
    assert not unknown
    return {k: v for k, v in vars(args).items() if k not in OWN_KEYS}


def test_the_installed_metadata_declares_the_subcommands_of_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    installed = {e.name: e.value for e in entry_points(group=GROUP)}
    assert installed == declared, "stale install metadata: run `make install` (pip install -e .)"


def test_vsr_sweep_takes_the_flags_of_tune_search():
    argv = ["--config", "cpu_small", "--data", "a.mp4", "b.mp4", "--num-samples", "3", "--max-steps", "9",
            "--set", "VAL_STEP_EVERY=3", "--set", "SEED=4", "--finetune-from", "x.pth", "--workers-per-trial", "2",
            "--lr-scaling", "sqrt", "--storage-path", "s3://bucket/sweeps", "--resume"]
    via_vsr = vars(finish_args(types.SimpleNamespace(**as_vsr("sweep", argv))))
    assert via_vsr == vars(search.parse_args(argv))
    assert via_vsr["name"] == "vsr_finetune" and via_vsr["set"] == ["VAL_STEP_EVERY=3", "SEED=4"]


def test_vsr_serve_and_vsr_client_take_the_flags_of_their_scripts():
    argv = ["--checkpoint", "best", "--host", "0.0.0.0", "--port", "9000", "--num-replicas", "2", "--address", "auto"]
    assert as_vsr("serve", argv) == {k: v for k, v in vars(serve_main.build_parser().parse_args(argv)).items()}
    argv = ["--url", "http://h:1", "--timeout", "5", "job", "submit", "film.mp4", "--wait", "--codec", "h265"]
    expected = vars(client.build_parser().parse_args(argv))
    got = {**as_vsr("client", argv), "command": cli.build_parser().parse_args(["client", *argv]).command}
    assert got == expected and got["command"] == "job"


def test_the_subcommands_run_their_scripts_code(monkeypatch):
    ran = []
    monkeypatch.setattr(search, "run", lambda args: ran.append(("sweep", args.name)) or 0)
    monkeypatch.setattr(serve_main, "run", lambda args: ran.append(("serve", args.port)) or 0)
    monkeypatch.setattr(client, "run", lambda args: ran.append(("client", args.command)) or 0)
    assert cli.main(["sweep", "--name", "n"]) == 0
    assert cli.main(["serve", "--checkpoint", "c", "--port", "7"]) == 0
    assert cli.main(["client", "model"]) == 0
    assert ("sweep", "n") in ran and ("client", "model") in ran and ("serve", 7) in ran


@pytest.mark.parametrize("error", [ConfigError("bad key X"), FileNotFoundError("no such file: a.mp4"),
                                   CheckpointError("not a checkpoint"), VideoReadError("cannot read video"),
                                   MemoryBudgetError("memory budget 10 MiB is too small")])
def test_a_user_error_is_one_line_and_exit_code_2(error, monkeypatch, capsys):
    def fails(args):
        raise error

    monkeypatch.setattr(engine_cli, "cmd_train", fails)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {error}\n"


def test_anything_else_keeps_its_traceback(monkeypatch):
    def torch_bug(args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine_cli, "cmd_train", torch_bug)
    with pytest.raises(RuntimeError, match="illegal memory access"):  # uncaught: Python prints the traceback
        cli.main(["train"])


@pytest.mark.parametrize("argv", [["--debug", "train", "--config", "nope"], ["train", "--config", "nope", "--debug"],
                                  ["--debug", "sweep", "--config", "nope"], ["sweep", "--config", "nope", "--debug"]])
def test_debug_shows_the_traceback_of_a_user_error_too(argv, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cli.main([a for a in argv if a != "--debug"]) == 2
    with pytest.raises(ConfigError, match="config file not found: nope"):
        cli.main(argv)


def test_a_tune_that_is_not_ours_is_reported_in_one_line(monkeypatch, capsys):
    other = types.ModuleType("tune")
    other.__file__ = "/elsewhere/site-packages/tune/__init__.py"  # e.g. PyPI's `tune`, earlier on sys.path
    monkeypatch.setitem(sys.modules, "tune", other)
    parser = cli.build_parser()
    assert "train" in parser.format_help() and "sweep" in parser.format_help()  # the rest of vsr still works
    assert cli.main(["sweep", "--config", "x", "--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'vsr sweep' needs this project's package 'tune'" in err
    assert "/elsewhere/site-packages/tune/__init__.py" in err
    with pytest.raises(SystemExit):  # an unknown flag of a command that is available is still refused
        cli.main(["train", "--bogus"])
