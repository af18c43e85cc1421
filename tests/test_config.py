import json

import pytest

from vsr_core.config import ConfigError, TrainConfig

SEED_CONFIG = {
    "LR_EXPONENT": -4,
    "WEIGHT_DECAY": 0.01,
    "MAX_STEPS": 100000,
    "VAL_STEP_EVERY": 250,
    "SAVE_STEP_EVERY": 5000,
    "LOG_TBOARD_EVERY": 10,
    "ACCUMULATION_STEPS": 3,
    "SORT_BY_ACTIVITY": True,
}


def test_the_seeds_train_config_json_is_accepted_as_written(tmp_path):
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(SEED_CONFIG, indent=4))
    config = TrainConfig.from_json(path)
    assert config.learning_rate == pytest.approx(1e-4)
    assert (config.max_steps, config.accumulation_steps, config.sort_by_activity) == (100000, 3, True)
    assert config.effective_batch_size == 12


def test_roundtrip_through_json(tmp_path):
    config = TrainConfig(preset="small", train_data=["a.mp4"], lr_exponent=-3.5)
    config.save(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == config
    assert set(config.to_dict()) == set(TrainConfig.keys())


@pytest.mark.parametrize(
    "data,message",
    [
        ({"LR_EXPONNT": -4}, r"unknown config key 'LR_EXPONNT' \(did you mean LR_EXPONENT\?\)"),
        ({"lr_exponent": -4}, "unknown config key 'lr_exponent'"),
        ({"MAX_STEPS": "many"}, "MAX_STEPS must be an integer"),
        ({"MAX_STEPS": 0}, "MAX_STEPS must be >= 1"),
        ({"SORT_BY_ACTIVITY": "yes"}, "SORT_BY_ACTIVITY must be true or false"),
        ({"PRESET": "huge"}, r"PRESET must be one of \['full', 'realtime', 'small', 'tiny'\]"),
        ({"VGG_WEIGHTS": "x"}, r"VGG_WEIGHTS must be one of \['imagenet', 'random'\]"),
        ({"LR_EXPONENT": 2}, r"LR_EXPONENT must be in \[-12, 0\]"),
        ({"WEIGHT_DECAY": -1}, "WEIGHT_DECAY must be >= 0"),
        ({"DEVICE": "tpu"}, "DEVICE must be"),
        ({"TRAIN_DATA": 3}, "TRAIN_DATA must be a path or a list of paths"),
        ({"VAL_CROP": 100}, "VAL_CROP must be a multiple of 3"),
        ({"HOLDOUT_FRACTION": 1}, r"HOLDOUT_FRACTION must be in \[0, 1\) \(0 = off\), got 1.0"),
        ({"HOLDOUT_FRAMES": 4, "HOLDOUT_FRACTION": 0.2}, r"give HOLDOUT_FRAMES \(4\) or HOLDOUT_FRACTION \(0.2\), not both"),
        ({"TRAIN_ON_VAL_DATA": True}, "TRAIN_ON_VAL_DATA needs HOLDOUT_FRAMES or HOLDOUT_FRACTION > 0"),
        ({"EMA_DECAY": 1}, r"EMA_DECAY must be in \[0, 1\)"),
        ({"EMA_DECAY": -0.5}, r"EMA_DECAY must be in \[0, 1\)"),
    ],
)
def test_bad_config_names_the_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(data)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"BOGUS": 1})
    assert "allowed keys:" in str(info.value) and "WEIGHT_DECAY" in str(info.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        TrainConfig.from_json(tmp_path / "list.json")


def test_replace_validates():
    config = TrainConfig()
    assert config.replace(LR_EXPONENT=-5).lr_exponent == -5
    with pytest.raises(ConfigError, match="ACCUMULATION_STEPS"):
        config.replace(accumulation_steps=0)
