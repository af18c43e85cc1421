"""Every command shown in the docs parses: the shell commands of the ```bash blocks of README.md, docs/*.md,
serve/README.md and benchmarks/README.md, each checked against what it names, without running it:

    vsr ... / .venv/bin/vsr ...            the real `vsr` parser (and its subcommands)
    python tune/search.py ...              the sweep's parser
    python -m serve ... / serve/client.py  the server's and the client's parsers
    make TARGET [VAR=...]                  the target is in the Makefile
    python benchmarks/X.py, docs/X.py      the file exists; its arguments are parsed when it has a parser
                                           to call without running (build_parser, or parse_args/parse(argv))

Programs this repository does not define (curl, ray, serve, tensorboard, ...) are listed in NOT_OURS; any other
kind of command fails the test, so that nothing passes unread.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "serve" / "README.md",
                    ROOT / "benchmarks" / "README.md"])
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.M | re.S)
NOT_OURS = {"curl", "ray", "serve", "tensorboard", "export", "cat", "ssh", "grep", "pip", "nvidia-smi",
            "module:pytest"}
# Example paths the docs stand in for yours: a script that checks its paths while parsing (gpu_check.py's
# --checkpoint) may say they do not exist, and only that is accepted.
PLACEHOLDER_PATHS = ("runs/x/best",)


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the shell blocks, as argument lists: continuation lines joined, comments dropped,
    `a && b` and `a | b` split, leading VAR=value assignments dropped."""
    commands = []
    for block in SHELL_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
            lexer.whitespace_split, lexer.commenters = True, "#"
            words, current = list(lexer), []
            for word in words + [";"]:
                if set(word) <= set("|&;"):
                    while current and re.fullmatch(r"[A-Z_]+=.*", current[0]):
                        current.pop(0)
                    if current:
                        commands.append(current)
                    current = []
                else:
                    current.append(word)
    return commands


def program(words: list[str]) -> tuple[str, list[str]]:
    """The kind of command and its arguments: ('vsr', args), ('script:tune/search.py', args), ('make', args) ..."""
    name = Path(words[0]).name
    if re.fullmatch(r"python[0-9.]*", name):
        if words[1:3] == ["-m", "serve"]:
            return "script:serve/__main__.py", words[3:]
        if words[1] == "-m":
            return f"module:{words[2]}", words[3:]
        return f"script:{words[1]}", words[2:]
    return name, words[1:]


def parse_with(parser, args: list[str]) -> str | None:
    """None when the parser accepts args, else its complaint."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def script_parser(path: Path):
    """A parser of the script, if it offers one to call without running it; None otherwise."""
    if path == ROOT / "tune" / "search.py":
        from tune.cli import build_parser
        return build_parser()
    if path == ROOT / "serve" / "__main__.py":
        from serve.__main__ import build_parser
        return build_parser()
    if path == ROOT / "serve" / "client.py":
        from serve.client import build_parser
        return build_parser()
    sys.path.insert(0, str(path.parent))  # benchmarks import their neighbour `common`
    try:
        spec = importlib.util.spec_from_file_location(f"doc_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    if hasattr(module, "build_parser"):
        return module.build_parser()
    for name in ("parse_args", "parse"):
        function = getattr(module, name, None)
        if function and list(inspect.signature(function).parameters) == ["argv"]:
            return _CallParser(function)
    return None


class _CallParser:
    def __init__(self, function):
        self.parse_args = function


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def check(words: list[str], parsers: dict) -> str | None:
    """None when the command is fine, else why not."""
    kind, args = program(words)
    if kind == "vsr":
        return parse_with(parsers["vsr"], args)
    if kind == "make":
        missing = [a for a in args if "=" not in a and not a.startswith("-") and a not in make_targets()]
        return f"no Makefile target {missing}" if missing else None
    if kind.startswith("script:"):
        path = ROOT / kind.removeprefix("script:")
        if not path.is_file():
            return f"no such file {kind.removeprefix('script:')}"
        if path not in parsers:
            parsers[path] = script_parser(path)
        why = parse_with(parsers[path], args) if parsers[path] else None
        placeholder = why and why.endswith("does not exist") and any(p in why for p in PLACEHOLDER_PATHS)
        return None if placeholder else why
    if kind == "ray" and "--" in args:  # `ray job submit ... -- vsr sweep ...`: the job's command is ours
        return check(args[args.index("--") + 1:], parsers)
    if kind in NOT_OURS:
        return None
    return f"an unknown kind of command ({kind}): check it here or add it to NOT_OURS"


def all_commands() -> list[tuple[str, list[str]]]:
    return [(path.relative_to(ROOT).as_posix(), words) for path in DOC_FILES
            for words in shell_commands(path.read_text())]


def test_every_command_in_the_docs_parses(monkeypatch):
    from vsr_core.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100")
    commands = all_commands()
    kinds = {program(words)[0] for _, words in commands}
    assert {"vsr", "make", "script:tune/search.py", "script:serve/__main__.py", "curl"} <= kinds
    parsers = {"vsr": build_parser()}
    failures = [f"{doc}: {shlex.join(words)}\n    {why}" for doc, words in commands
                if (why := check(words, parsers)) is not None]
    assert not failures, "\n".join(failures)


def test_the_checks_refuse_what_does_not_parse():
    from vsr_core.cli import build_parser

    parsers = {"vsr": build_parser()}
    text = "\n".join(["```bash", ".venv/bin/vsr upscale a.mp4 b.mp4 --no-such-flag   # a comment",
                      "make demo && make no-such-target", "RAY_AUTH_MODE=token vsr sweep --num-samples two",
                      "python benchmarks/no_such_bench.py", "frobnicate --now",
                      "ray job submit --working-dir . -- $PWD/.venv/bin/vsr sweep --address auto \\",
                      "    --storage-path /shared/x", "```"])
    commands = shell_commands(text)
    assert commands[1] == ["make", "demo"] and commands[3][:2] == ["vsr", "sweep"]
    assert commands[6][-2:] == ["--storage-path", "/shared/x"]
    results = [check(words, parsers) for words in commands]
    assert "unrecognized arguments: --no-such-flag" in results[0]
    assert results[1] is None and results[2] == "no Makefile target ['no-such-target']"
    assert "invalid int value: 'two'" in results[3]
    assert results[4] == "no such file benchmarks/no_such_bench.py"
    assert results[5].startswith("an unknown kind of command (frobnicate)")
    assert results[6] is None


@pytest.mark.parametrize("target", ["demo", "test", "bench", "cluster-up", "cluster-down"])
def test_makefile_targets_are_found(target):
    assert target in make_targets()


# Scripts shown in the docs whose arguments cannot be parsed without running them (their parser is built
# inside main): only their existence is checked. Listed so that it is a decision, not an accident.
EXISTS_ONLY = {"benchmarks/bench_backends.py", "benchmarks/bench_encoders.py", "benchmarks/bench_inference.py",
               "benchmarks/bench_live_page.py", "benchmarks/bench_pipeline.py", "benchmarks/bench_profile.py",
               "benchmarks/run_all.py"}


def test_scripts_checked_for_existence_only_are_the_listed_ones():
    scripts = {kind.removeprefix("script:") for kind in (program(words)[0] for _, words in all_commands())
               if kind.startswith("script:")}
    unparsed = {s for s in scripts if (ROOT / s).is_file() and script_parser(ROOT / s) is None}
    assert unparsed == EXISTS_ONLY, f"only their existence is checked: {sorted(unparsed)}; update EXISTS_ONLY"
