"""The shipped configs (package data in vsr_core/configs): `--config` takes a name or a path."""
import json
from pathlib import Path

import pytest

from tune import search
from vsr_core.config import ConfigError, TrainConfig
from vsr_core.configs import config_path, is_shipped_name, shipped_names, shipped_path
from vsr_core.engine.cli import load_config

PACKAGE = Path(__file__).resolve().parents[1] / "vsr_core" / "configs"


def test_every_json_file_of_the_package_is_a_valid_shipped_config():
    files = sorted(p.stem for p in PACKAGE.glob("*.json"))
    assert files == shipped_names() and {"cpu_small", "option_b", "sweep_base"} <= set(files)
    for name in files:
        assert shipped_path(name) == PACKAGE / f"{name}.json" == shipped_path(f"{name}.json")
        TrainConfig.from_json(shipped_path(name))  # valid: every key known, every value allowed


def test_a_name_finds_the_shipped_file_and_an_existing_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("cpu_small") == PACKAGE / "cpu_small.json" and is_shipped_name("cpu_small")
    (tmp_path / "cpu_small").write_text("{}")  # a file of that name here is what the user means
    assert config_path("cpu_small") == Path("cpu_small") and not is_shipped_name("cpu_small")
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    assert config_path(str(mine)) == mine and not is_shipped_name(str(mine))


@pytest.mark.parametrize("given", ["nope", "configs/cpu_small.json", "sub/cpu_small"])
def test_neither_a_file_nor_a_shipped_name_is_a_clear_error(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not found") as info:
        config_path(given)
    assert given in str(info.value) and "cpu_small, option_b, sweep_base" in str(info.value)


def test_vsr_train_and_the_sweep_read_a_shipped_config_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the checkout: nothing is found relative to it
    shipped = json.loads((PACKAGE / "cpu_small.json").read_text())
    config = load_config("cpu_small", ["MAX_STEPS=7"])
    assert config.max_steps == 7 and config.lr_exponent == shipped["LR_EXPONENT"]
    assert config.val_crops_per_frame == shipped["VAL_CROPS_PER_FRAME"] != TrainConfig.val_crops_per_frame

    args = search.parse_args([])  # the sweep's default: the shipped sweep_base, results under ./runs/tune
    base = search.base_config(args)
    assert args.config == "sweep_base" and Path(args.storage_path) == Path("runs/tune")
    sweep_base = json.loads((PACKAGE / "sweep_base.json").read_text())
    assert {k: base[k] for k in sweep_base if k != "SEED"} == {k: v for k, v in sweep_base.items() if k != "SEED"}
