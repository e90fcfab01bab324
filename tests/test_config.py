from __future__ import annotations

import pytest

from edgenas.config import from_mapping, load_yaml, to_mapping
from edgenas.data import DataConfig
from edgenas.errors import ConfigError
from edgenas.train import TrainConfig


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "none.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(scalar)


def test_from_mapping_checks_keys_and_types():
    cfg = from_mapping(TrainConfig, {"epochs": 3, "lr": 1, "grad_clip": None, "schedule": "linear"})
    assert cfg.epochs == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.schedule == "linear"
    with pytest.raises(ConfigError, match=r"f\.yaml: unknown key 'epoch' "):
        from_mapping(TrainConfig, {"epoch": 3}, where="f.yaml")
    with pytest.raises(ConfigError, match="'epochs' must be an integer, not 'three'"):
        from_mapping(TrainConfig, {"epochs": "three"})
    with pytest.raises(ConfigError, match="'nesterov' must be true or false"):
        from_mapping(TrainConfig, {"nesterov": "yes"})
    with pytest.raises(ConfigError, match="'schedule' must be one of cosine, linear"):
        from_mapping(TrainConfig, {"schedule": "step"})
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        from_mapping(TrainConfig, {"epochs": 0})


def test_to_mapping_round_trips():
    cfg = DataConfig(name="digits", resize=16)
    assert from_mapping(DataConfig, to_mapping(cfg)) == cfg
