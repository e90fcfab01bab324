"""Hardware profiles: the shipped files, strict validation with one-line errors, lookup and hashing."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import yaml

from edgenas.errors import ConfigError
from edgenas.hardware.profile import Budgets, MeasureSettings, Profile, list_profiles, load_profile, profile_dirs

SHIPPED = ("cpu-ort", "cpu-ort-int8", "cpu-torch", "cuda-ort", "cuda-torch")
REPO_PROFILES = Path(__file__).resolve().parents[1] / "hardware_profiles"


def _write(directory: Path, name: str, **fields) -> Path:
    data = {"name": name, "device": "cpu", "runtime": "onnxruntime", "provider": "CPUExecutionProvider",
            "input_shape": [1, 28, 28]}
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not ...}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(path_or_name, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_profile(str(path_or_name), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No user profile directory and a cwd without hardware_profiles/, so only the shipped ones exist."""
    monkeypatch.delenv("EDGENAS_PROFILES", raising=False)
    monkeypatch.chdir(tmp_path)


def test_shipped_profiles_load_and_match_the_issue():
    found = list_profiles()
    assert set(SHIPPED) <= set(found)
    profiles = {name: load_profile(name) for name in SHIPPED}
    ort = profiles["cpu-ort"]
    assert (ort.device, ort.runtime, ort.provider, ort.precision) == ("cpu", "onnxruntime", "CPUExecutionProvider",
                                                                      "fp32")
    assert (ort.threads, ort.batch_size, ort.input_shape) == (1, 1, (1, 28, 28))
    assert ort.measure == MeasureSettings(warmup=20, repeats=100, trials=3, statistic="median")
    assert ort.source == str(found["cpu-ort"])
    assert profiles["cpu-ort-int8"].precision == "int8"
    assert profiles["cpu-torch"].runtime == "torch" and profiles["cpu-torch"].provider is None
    assert profiles["cuda-ort"].provider == "CUDAExecutionProvider"
    assert profiles["cuda-ort"].input_shape == (3, 224, 224) and profiles["cuda-ort"].device == "cuda"
    assert profiles["cuda-torch"].device == "cuda" and profiles["cuda-torch"].runtime == "torch"
    # every shipped file documents its keys for users who copy it
    for name in SHIPPED:
        text = found[name].read_text()
        assert text.count("#") >= 8, name
    assert len({p.latency_hash() for p in profiles.values()}) == len(SHIPPED)


def test_user_directory_via_env_comes_first(tmp_path, monkeypatch):
    user = tmp_path / "mine"
    user.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    _write(user, "my-board", threads=4, description="a user device")
    shutil.copy(REPO_PROFILES / "cpu-ort.yaml", user / "cpu-ort.yaml")
    text = (user / "cpu-ort.yaml").read_text().replace("threads: 1", "threads: 2")
    (user / "cpu-ort.yaml").write_text(text)
    monkeypatch.setenv("EDGENAS_PROFILES", os.pathsep.join([str(user), str(other)]))
    dirs = profile_dirs()
    assert dirs[:2] == [user, other] and dirs[-1] == REPO_PROFILES
    found = list_profiles()
    assert found["my-board"] == user / "my-board.yaml"
    assert found["cpu-ort"] == user / "cpu-ort.yaml"  # the user's copy shadows the shipped one
    assert set(SHIPPED) <= set(found)
    assert load_profile("my-board").threads == 4
    assert load_profile("cpu-ort").threads == 2
    # ./hardware_profiles of the working directory is searched too
    local = tmp_path / "hardware_profiles"
    local.mkdir()
    _write(local, "local-one")
    assert "local-one" in list_profiles()


def test_load_by_path_and_input_shape_override(tmp_path):
    path = _write(tmp_path, "board", budgets={"latency_ms": 2, "mflops": 30.5})
    profile = load_profile(path)
    assert profile.budgets == Budgets(latency_ms=2.0, mflops=30.5, params_m=None)
    assert isinstance(profile.budgets.latency_ms, float)
    assert load_profile(str(path), input_shape=(3, 32, 32)).input_shape == (3, 32, 32)
    assert "--input-shape override" in _error(path, input_shape=(3, 0, 32))


def test_latency_hash_covers_what_changes_latency():
    base = load_profile("cpu-ort")
    h = base.latency_hash()
    assert len(h) == 16 and int(h, 16) >= 0
    assert base.with_input_shape((1, 32, 32)).latency_hash() != h
    assert base.with_input_shape([1, 28, 28]).latency_hash() == h
    for change in ({"threads": 2}, {"batch_size": 4}, {"precision": "int8"}, {"graph_optimization": "basic"},
                   {"opset": 13}, {"inter_op_threads": 2}):
        assert dataclasses.replace(base, **change).latency_hash() != h, change
    same = [base.with_budgets(latency_ms=5.0, mflops=1.0, params_m=0.5),
            dataclasses.replace(base, description="other words", source=None),
            dataclasses.replace(base, measure=MeasureSettings(warmup=1, repeats=2, trials=1, statistic="p90"))]
    assert all(p.latency_hash() == h for p in same)


def test_with_budgets_overrides_and_none_keeps():
    base = load_profile("cpu-ort")
    assert base.budgets.latency_ms == 1.0
    changed = base.with_budgets(latency_ms=None, mflops=20)
    assert changed.budgets == Budgets(latency_ms=1.0, mflops=20.0, params_m=None)
    assert base.budgets.mflops is None  # frozen: the original is untouched
    with pytest.raises(ConfigError, match="unknown budget 'flops'"):
        base.with_budgets(flops=3)
    with pytest.raises(ConfigError, match="'mflops' must be positive, not -1"):
        base.with_budgets(mflops=-1)


def test_json_round_trip():
    for name in SHIPPED:
        profile = load_profile(name)
        data = profile.to_json()
        assert data["input_shape"] == list(profile.input_shape) and data["measure"]["repeats"] >= 1
        assert Profile.from_json(data) == profile


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"colour": "red"}, "unknown key 'colour' (known: name, device, runtime, input_shape,"),
        ({"threads": "four"}, "'threads' must be an integer, not 'four'"),
        ({"threads": 1.5}, "'threads' must be an integer, not 1.5"),
        ({"input_shape": [1, 28]}, "'input_shape' must have 3 items, not 2"),
        ({"input_shape": [1, "x", 28]}, "'input_shape[1]' must be an integer, not 'x'"),
        ({"input_shape": [1, 0, 28]}, "'input_shape' must be three positive sizes [C, H, W], not [1, 0, 28]"),
        ({"device": "tpu"}, "'device' must be one of cpu, cuda, not 'tpu'"),
        ({"runtime": ...}, "missing required key 'runtime'"),
        ({"input_shape": ...}, "missing required key 'input_shape'"),
        ({"threads": 0}, "'threads' must be >= 1, not 0"),
        ({"batch_size": 0}, "'batch_size' must be >= 1, not 0"),
        ({"opset": 9}, "'opset' must be between 11 and 20, not 9"),
        ({"measure": {"repeats": 0}}, "measure: 'repeats' must be >= 1, not 0"),
        ({"measure": {"repeat": 5}}, "measure: unknown key 'repeat' (known: warmup, repeats, trials, statistic)"),
        ({"measure": {"statistic": "max"}}, "measure: 'statistic' must be one of median, mean, p90, not 'max'"),
        ({"budgets": {"latency_ms": "fast"}}, "budgets: 'latency_ms' must be a number, not 'fast'"),
        ({"budgets": {"latency_ms": 0}}, "budgets: 'latency_ms' must be positive, not 0.0"),
        ({"budgets": 3}, "'budgets' must be a mapping, not int"),
        ({"provider": ...}, "'provider' is required for runtime onnxruntime (e.g. CPUExecutionProvider)"),
        ({"provider": "cpu"}, "'provider' must name an onnxruntime execution provider such as CPUExecutionProvider"),
        ({"provider": "CUDAExecutionProvider"}, "'provider' CUDAExecutionProvider needs device cuda, not cpu"),
        ({"device": "cuda"}, "'provider' CPUExecutionProvider needs device cpu, not cuda"),
        ({"runtime": "torch"}, "'provider' must be left out for runtime torch"),
        ({"runtime": "torch", "provider": ..., "precision": "int8"}, "'precision' int8 needs runtime onnxruntime"),
        ({"precision": "int8", "opset": 12}, "'precision' int8 needs 'opset' >= 13"),
        ({"precision": "fp16"}, "'precision' fp16 needs device cuda"),
        ({"precision": "bf16"}, "'precision' must be one of fp32, fp16, int8, not 'bf16'"),
        ({"source": "x.yaml"}, "unknown key 'source'"),
    ],
)
def test_validation_errors_name_key_and_file(tmp_path, fields, expected):
    path = _write(tmp_path, "bad", **fields)
    message = _error(path)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_file_level_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\ndevice: [cpu\n")
    assert _error(broken).startswith(f"{broken}: malformed YAML at line ")
    listing = tmp_path / "listing.yaml"
    listing.write_text("- a\n- b\n")
    assert _error(listing) == f"{listing}: expected a mapping of keys to values at the top level"
    assert _error(tmp_path / "absent.yaml") == f"config file not found: {tmp_path / 'absent.yaml'}"
    mismatch = _write(tmp_path, "board")
    mismatch.write_text(mismatch.read_text().replace("name: board", "name: other-board"))
    assert _error(mismatch) == (
        f"{mismatch}: 'name' is 'other-board' but the file is named board.yaml; they must match (rename one of them)"
    )


def test_unknown_name_lists_known_profiles():
    message = _error("cpu-onnx")
    assert message.startswith("unknown hardware profile 'cpu-onnx'; known: ")
    assert all(f"{name}," in message for name in ("cpu-ort", "cpu-ort-int8", "cpu-torch", "cuda-ort"))
    assert "EDGENAS_PROFILES" in message


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="'provider' must be left out for runtime torch"):
        Profile(name="x", device="cpu", runtime="torch", input_shape=(1, 8, 8), provider="CPUExecutionProvider")
    with pytest.raises(ConfigError, match="'name' must be letters, digits"):
        Profile(name="a/b", device="cpu", runtime="torch", input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="'warmup' must be >= 0"):
        MeasureSettings(warmup=-1)
