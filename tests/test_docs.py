"""The docs stay true: the generated references (docs/cli.md, docs/http-api.md, docs/config.md's table) are what
docs/generate.py writes from the code now, they name what the code has, and every link between the docs resolves
(files, and #anchors of markdown headings). The commands shown in the docs: tests/test_doc_commands.py."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from vsr_core.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "serve" / "README.md",
                    ROOT / "benchmarks" / "README.md"])


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "100")  # render() fixes the width; this puts the old value back afterwards
        return load_generator().render()


# --- generated references ------------------------------------------------------------------------------------
def test_generated_references_are_current(rendered):
    generator = load_generator()
    stale = generator.stale(rendered)
    assert not stale, f"{', '.join(stale)} differ from the code: run python docs/generate.py"


def test_the_check_notices_a_changed_file(rendered, tmp_path, monkeypatch):
    generator = load_generator()
    for name in rendered:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    assert generator.stale(rendered) == []
    config = tmp_path / "docs" / "config.md"
    config.write_text(config.read_text().replace("| `MAX_STEPS` | `100000` |", "| `MAX_STEPS` | `99` |"))
    (tmp_path / "docs" / "cli.md").unlink()
    assert generator.stale(rendered) == ["docs/cli.md", "docs/config.md"]


def test_config_table_has_every_key_with_its_default():
    text = (ROOT / "docs" / "config.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", text, re.M))
    expected = TrainConfig().to_dict()
    assert set(rows) == set(expected)
    assert {key: json.loads(value) for key, value in rows.items()} == expected
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))


def test_cli_reference_names_every_flag_of_every_command():
    from vsr_core.cli import build_parser

    generator = load_generator()
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for name, parser in generator._subparsers(build_parser()).items():
        assert f"### vsr {name}\n" in text, name
        missing += [f"vsr {name} {option}" for action in parser._actions
                    if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
                    for option in action.option_strings if f"`{option}`" not in text]
    assert not missing


def test_http_reference_names_every_route():
    from serve.app import api

    text = (ROOT / "docs" / "http-api.md").read_text()
    routes = [f"### {method.upper()} {path}\n" for path, item in api.openapi()["paths"].items() for method in item]
    assert len(routes) >= 12
    assert [r for r in routes if r not in text] == []


# --- links ---------------------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def heading_anchors(path: Path) -> set[str]:
    anchor = load_generator()._anchor
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S),
                              re.M):
        base = anchor(heading)
        count = seen.get(base, 0)
        anchors.add(base if count == 0 else f"{base}-{count}")  # GitHub numbers repeated headings
        seen[base] = count + 1
    return anchors


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(without_code(path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.relative_to(root)}: {target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in heading_anchors(linked):
            broken.append(f"{path.relative_to(root)}: {target} (no heading with that anchor)")
    return broken


def test_every_link_between_the_docs_resolves():
    assert len(DOC_FILES) >= 12
    broken = [b for path in DOC_FILES for b in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_the_link_check_finds_a_broken_file_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "training.md", tmp_path / "docs" / "training.md")
    page = tmp_path / "docs" / "_link_probe.md"
    page.write_text("# Probe\n\n[ok](#probe) [file](training.md#checkpoints) [gone](nowhere.md) "
                    "[bad anchor](training.md#no-such-section) `[in code](missing.md)`\n")
    assert broken_links(page, tmp_path) == [
        "docs/_link_probe.md: nowhere.md (no such file)",
        "docs/_link_probe.md: training.md#no-such-section (no heading with that anchor)"]
