"""CI latency-regression check: the decision rule on synthetic ratios, and real bundles end to end.

Bundles are built by hand (tiny torch conv nets exported with ``export_onnx_bytes`` plus a manifest
dict) and measured for real with a short protocol; the models are small so a check takes a fraction
of a second, and the slower model is 3x the convolutions so the latency rule catches it reliably.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from torch import nn

from edgenas.check import (
    BASELINE_KEY,
    REFERENCE_NAME,
    Baseline,
    CheckConfig,
    ReferenceSpec,
    baseline_spread,
    check_bundle,
    decide,
    measure_ratio,
    parse_tolerance,
    update_baseline,
)
from edgenas.cli import cli
from edgenas.errors import ConfigError, EdgenasError
from edgenas.export import onnx_cost
from edgenas.hardware.measure import export_onnx_bytes
from edgenas.hardware.profile import MeasureSettings, load_profile

SHAPE = (1, 16, 16)
# The check spends trials x repeats timed runs in trials of 10: 8 interleaved trials per check.
FAST = MeasureSettings(warmup=3, repeats=20, trials=4)
TRIALS = 8


def _net(convs: int = 2, width: int = 16) -> nn.Module:
    import torch

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    cin = SHAPE[0]
    for _ in range(convs):
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def _onnx(model: nn.Module) -> bytes:
    return export_onnx_bytes(model, (1, *SHAPE), dynamic_batch=True)


def _make_bundle(path: Path, model: nn.Module) -> Path:
    """A bundle as edgenas export lays it out: model.onnx and a manifest without a baseline."""
    path.mkdir(parents=True)
    data = _onnx(model)
    (path / "model.onnx").write_bytes(data)
    manifest = {
        "format": "edgenas-bundle/1", "name": path.name, "arch": "test", "arch_id": "0" * 12, "space": {},
        "data": {"name": "synthetic", "input_size": list(SHAPE[1:]), "in_channels": SHAPE[0]},
        "input": {"name": "input", "shape": [None, *SHAPE]},
        "files": {"model.onnx": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def profile():
    return dataclasses.replace(load_profile("cpu-ort"), measure=FAST)


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    """cpu-ort with the short protocol, as a YAML file the CLI can load (the name must match the file)."""
    data = yaml.safe_load(Path(load_profile("cpu-ort").source).read_text())
    data["measure"] = dataclasses.asdict(FAST)
    path = tmp_path_factory.mktemp("profiles") / "cpu-ort.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def baselined(tmp_path_factory, profile_file):
    """One bundle whose baseline was recorded through the CLI; tests work on copies."""
    bundle = _make_bundle(tmp_path_factory.mktemp("bundles") / "net", _net())
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--update"])
    assert res.exit_code == 0, res.output
    assert "wrote baseline for profile cpu-ort" in res.stdout and "FLOPs 626,848" in res.stdout
    return bundle


@pytest.fixture
def bundle(baselined, tmp_path):
    return Path(shutil.copytree(baselined, tmp_path / "net"))


# ----- the decision rule on synthetic ratios ----------------------------------------------------------------
def _noisy(level: float, rel_noise: float, n: int, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(level * (1 + rel_noise * rng.standard_normal(n)))


@pytest.mark.parametrize("level,noise,n,verdict", [
    (0.8, 0.01, 9, "PASS"),        # unchanged
    (1.0, 0.02, 9, "REGRESSION"),  # 1.25x the baseline 0.8
    (0.8, 0.15, 5, "PASS"),        # unchanged but noisy: the CI is wide, no false alarm
    (0.56, 0.02, 9, "IMPROVED"),   # 0.7x
])
def test_decide_verdicts(level, noise, n, verdict):
    d = decide(_noisy(level, noise, n), 0.8, 0.10)
    assert d.verdict == verdict
    assert d.ci_low <= d.change <= d.ci_high and d.n == n
    assert d.change == pytest.approx(float(np.median(_noisy(level, noise, n))) / 0.8)
    assert d.failed == (verdict == "REGRESSION")


def test_decide_slower_median_but_too_noisy_passes():
    d = decide([0.72, 0.92, 1.12], 0.8, 0.10)  # d = 1.15, but one trial is 10% faster than the baseline
    assert d.change == pytest.approx(1.15) and d.ci_low == pytest.approx(0.9) and d.verdict == "PASS"


def test_decide_tolerance_bounds_are_strict():
    # Zero noise: the CI is the point d itself; REGRESSION only strictly beyond 1 + tolerance.
    assert decide([1.1] * 5, 1.0, 0.10).verdict == "PASS"
    assert decide([1.0999] * 5, 1.0, 0.10).verdict == "PASS"
    assert decide([1.1001] * 5, 1.0, 0.10).verdict == "REGRESSION"
    assert decide([0.9001] * 5, 1.0, 0.10).verdict == "PASS"
    assert decide([0.8999] * 5, 1.0, 0.10).verdict == "IMPROVED"
    assert decide([1.3] * 3, 1.0, 0.25).verdict == "REGRESSION"
    assert decide([1.3] * 3, 1.0, 0.35).verdict == "PASS"
    # One trial under the tolerance among confident ones: with 3 trials the CI reaches down to it.
    assert decide([1.5, 1.5, 1.05], 1.0, 0.10).verdict == "PASS"


def test_decide_is_deterministic_and_validates():
    ratios = _noisy(1.0, 0.05, 7)
    assert decide(ratios, 1.0, 0.1, seed=3) == decide(ratios, 1.0, 0.1, seed=3)
    wide = decide(ratios, 1.0, 0.1, confidence=0.99)
    narrow = decide(ratios, 1.0, 0.1, confidence=0.5)
    assert wide.ci_low <= narrow.ci_low <= narrow.ci_high <= wide.ci_high
    for bad in ([], [1.0, -1.0], [float("nan")]):
        with pytest.raises(ValueError, match="positive finite"):
            decide(bad, 1.0, 0.1)
    with pytest.raises(ValueError, match="baseline ratio"):
        decide([1.0], 0.0, 0.1)
    with pytest.raises(ConfigError, match="tolerance must be between 0 and 1"):
        decide([1.0], 1.0, 1.5)



def test_a_noisy_baseline_widens_the_ci_instead_of_becoming_a_regression():
    # The case seen between two hosts: a baseline recorded under load (ratios all over the place)
    # and a tight measurement 10% above its median. Taken as exact, the baseline makes that a
    # regression; with its own trials resampled it is within the noise.
    now = _noisy(1.1, 0.01, 30, seed=2)
    noisy_base = _noisy(1.0, 0.25, 30, seed=3)
    exact = decide(now, float(np.median(noisy_base)), 0.05)
    both = decide(now, float(np.median(noisy_base)), 0.05, baseline_ratios=noisy_base)
    assert exact.verdict == "REGRESSION" and both.verdict == "PASS"
    assert both.change == exact.change and both.ci_low < exact.ci_low and both.ci_high > exact.ci_high
    # A quiet baseline keeps the check's power: a 25% slowdown is still caught.
    quiet_base = _noisy(1.0, 0.01, 30, seed=3)
    assert decide(_noisy(1.25, 0.01, 30), float(np.median(quiet_base)), 0.10,
                  baseline_ratios=quiet_base).verdict == "REGRESSION"
    with pytest.raises(ValueError, match="baseline ratios must be"):
        decide(now, 1.0, 0.1, baseline_ratios=[])


def test_baseline_spread_says_how_well_the_baseline_is_known():
    assert baseline_spread([1.0]) is None
    assert baseline_spread([1.0] * 10) == 0.0
    tight, loose = baseline_spread(_noisy(1.0, 0.01, 30)), baseline_spread(_noisy(1.0, 0.25, 30))
    assert 0 < tight < 0.01 < 0.05 < loose < 0.2

# ----- tolerance parsing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("10%", 0.10), ("0.1", 0.10), (" 5 %", 0.05), ("99.5%", 0.995), (0.25, 0.25)])
def test_parse_tolerance(text, value):
    assert parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text,message", [
    ("0", "between 0 and 1"), ("0%", "between 0 and 1"), ("1", "between 0 and 1"), ("100%", "between 0 and 1"),
    ("-5%", "between 0 and 1"), ("10", "did you mean 10%"), ("nan", "between 0 and 1"), ("ten", "percentage like"),
])
def test_parse_tolerance_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_tolerance(text)


def test_check_config_validates():
    with pytest.raises(ConfigError, match="trials must be >= 1"):
        CheckConfig(trials=0)
    with pytest.raises(ConfigError, match="tolerance"):
        CheckConfig(tolerance=0.0)


# ----- the reference workload -------------------------------------------------------------------------------------
def test_reference_is_deterministic_and_counted_exactly():
    spec = ReferenceSpec(input_shape=(3, 12, 10), width=8, depth=3, expand=4)
    assert spec.model_bytes() == spec.model_bytes()
    assert ReferenceSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    # stride-2 stem to 6x5 = 30 px; per block: expand 8->32, depthwise 3x3 on 32, project 32->8; Gemm 8->10
    stem, block = 30 * 8 * 3 * 9, 30 * (32 * 8 + 32 * 9 + 8 * 32)
    assert spec.macs() == stem + 3 * block + 80 == 78_560
    assert onnx_cost(spec.model_bytes(), (1, 3, 12, 10))["onnx_macs"] == spec.macs()
    wider = ReferenceSpec.for_macs((3, 12, 10), spec.macs() * 4)
    assert wider.width > spec.width and wider.name == REFERENCE_NAME
    with pytest.raises(ConfigError, match="unknown reference workload 'ref-convnet/9'"):
        ReferenceSpec(input_shape=(1, 8, 8), width=4, name="ref-convnet/9")


# ----- real bundles --------------------------------------------------------------------------------------------
def test_update_writes_baseline_and_unchanged_bundle_passes(bundle, profile_file, tmp_path):
    baseline = _manifest(bundle)[BASELINE_KEY]
    assert set(baseline) >= {"profile", "profile_hash", "reference", "ratio_median", "ratios", "trials",
                             "bundle_median_ms", "reference_median_ms", "onnx_macs", "onnx_params", "sha256",
                             "machine", "runtime_versions", "created"}
    assert baseline["profile"] == "cpu-ort" and baseline["trials"] == TRIALS == len(baseline["ratios"])
    # golden counts: conv 1->16 and 16->16 at 16x16, Linear 16->10
    assert baseline["onnx_macs"] == 256 * 16 * 9 + 256 * 16 * 16 * 9 + 160 == 626_848
    assert baseline["onnx_params"] == (16 * 9 + 16) + (16 * 16 * 9 + 16) + (160 + 10) == 2650
    assert 1 / 3 <= baseline["ratio_median"] <= 3  # reference calibrated to the bundle's order
    assert baseline["reference"]["name"] == REFERENCE_NAME
    assert _manifest(bundle)["format"] == "edgenas-bundle/1"  # the rest of the manifest is kept

    junit = tmp_path / "junit.xml"
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--junit", str(junit)])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.stdout and "bootstrap CI" in res.stdout
    assert f"rule: T = {TRIALS} interleaved trials of 10 runs" in res.stdout
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "0"
    assert [c.get("name") for c in suite.iter("testcase")] == ["latency", "flops", "params"]
    assert not list(suite.iter("failure"))

    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["format"] == "edgenas-check/1" and report["exit_code"] == 0
    assert report["flops"] == {"verdict": "PASS", "baseline": 626_848, "now": 626_848,
                               "message": "FLOPs (MACs) unchanged: 626,848"}
    assert len(report["latency"]["ratios"]) == TRIALS and report["latency"]["reference"] == baseline["reference"]
    assert report["files"] == [{"name": "model.onnx", "status": "ok", "expected": baseline["sha256"],
                                "actual": baseline["sha256"]}]


def test_flops_and_params_change_fails_naming_values(bundle, profile_file, tmp_path):
    (bundle / "model.onnx").write_bytes(_onnx(_net(width=18)))
    junit = tmp_path / "junit.xml"
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--trials", "3",
                                   "--junit", str(junit)])
    assert res.exit_code == 1, res.output
    new_macs = 256 * 18 * 9 + 256 * 18 * 18 * 9 + 180
    assert f"FLOPs (MACs) changed: baseline 626,848, now {new_macs:,}" in res.stdout
    assert "params changed: baseline 2,650, now " in res.stdout
    assert "model.onnx changed since the baseline" in res.stdout  # reported, not a failure by itself
    failures = {c.get("name"): c.find("failure") is not None for c in ET.parse(junit).getroot().iter("testcase")}
    assert failures["flops"] and failures["params"]


def test_much_slower_model_fails_on_latency_alone(bundle, profile, tmp_path):
    (bundle / "model.onnx").write_bytes(_onnx(_net(convs=6)))
    report = check_bundle(bundle, profile, CheckConfig(tolerance=0.10))
    assert report.decision.verdict == "REGRESSION", report.render()
    assert report.decision.ci_low > 1.10 and report.exit_code == 1
    assert any(f.startswith("latency regression") for f in report.failures)
    suite = ET.fromstring(report.to_junit())
    assert suite.get("failures") == "3" and len(list(suite.iter("failure"))) == 3
    assert json.loads(json.dumps(report.to_json()))["latency"]["verdict"] == "REGRESSION"


def test_measure_ratio_reuses_a_given_reference(bundle, profile):
    spec = Baseline.from_json(_manifest(bundle)[BASELINE_KEY]).reference
    m = measure_ratio(bundle, profile, CheckConfig(trials=2), reference=spec)
    assert m.reference == spec and m.trials == 2 and len(m.ratios) == 2
    assert m.ratios[0] == pytest.approx(m.bundle_medians_ms[0] / m.reference_medians_ms[0])


def test_update_via_library_then_profile_mismatch_is_an_error(tmp_path, profile):
    bundle = _make_bundle(tmp_path / "b", _net())
    baseline = update_baseline(bundle, profile, CheckConfig(trials=2))
    assert baseline.trials == 2 and Baseline.from_json(_manifest(bundle)[BASELINE_KEY]) == baseline
    with pytest.raises(ConfigError, match=r"recorded with profile 'cpu-ort' \(latency hash"):
        check_bundle(bundle, dataclasses.replace(profile, threads=2))
    with pytest.raises(ConfigError, match="needs an onnxruntime profile"):
        check_bundle(bundle, load_profile("cpu-torch"))


def test_input_errors_exit_2_with_one_line(tmp_path, profile_file, bundle):
    runner = CliRunner()

    def run(*args: str):
        res = runner.invoke(cli, ["check", *args, "--profile", profile_file])
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.output
        return res.stderr

    fresh = _make_bundle(tmp_path / "fresh", _net())
    assert f"edgenas check {fresh} --profile {profile_file} --update" in run(str(fresh))
    assert "does not exist" in run(str(tmp_path / "nope"))
    assert "between 0 and 1" in run(str(bundle), "--tolerance", "150%")
    assert "did you mean 10%" in run(str(bundle), "--tolerance", "10")
    assert "--junit reports a check" in run(str(bundle), "--update", "--junit", str(tmp_path / "j.xml"))
    (tmp_path / "a-file").write_text("x")
    import edgenas.check

    with pytest.MonkeyPatch.context() as patch:  # refused before anything is measured
        patch.setattr(edgenas.check, "check_bundle", lambda *a, **k: pytest.fail("measured before refusing"))
        assert "cannot write --junit" in run(str(bundle), "--junit", str(tmp_path / "a-file" / "j.xml"))

    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(b"definitely not protobuf")
    assert "is not a valid ONNX model" in run(str(bundle))
    (bundle / "model.onnx").write_bytes(data[: len(data) // 2])
    assert "is not a valid ONNX model" in run(str(bundle))
    (bundle / "model.onnx").write_bytes(data)

    manifest = _manifest(bundle)
    manifest[BASELINE_KEY]["ratios"] = "fast"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert "'ratios' must be a list" in run(str(bundle)) and "--update" in run(str(bundle))
    (bundle / "manifest.json").write_text("{not json")
    assert "is not valid JSON" in run(str(bundle))


def test_update_json_prints_the_baseline(tmp_path, profile_file):
    bundle = _make_bundle(tmp_path / "b", _net())
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--update", "--json",
                                   "--trials", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == _manifest(bundle)[BASELINE_KEY]


def test_library_errors_are_edgenas_errors(tmp_path, profile):
    with pytest.raises(EdgenasError, match=r"no manifest\.json"):
        (tmp_path / "empty").mkdir()
        check_bundle(tmp_path / "empty", profile)


@pytest.mark.slow
def test_bundle_written_by_export_checks_clean_and_int8_profile_measures_the_int8_file(tmp_path, digits):
    """The contract with edgenas.export: its manifest and files are what the check reads."""
    import torch

    from edgenas.data import DataConfig
    from edgenas.export import INT8_FILE, ExportConfig, export_bundle
    from edgenas.extract import data_facts, extract_subnet, save_subnet
    from edgenas.space import create_space
    from edgenas.supernet import Supernet

    space = create_space("mbv3", "small", width_mult=0.25, head_channels=64)
    torch.manual_seed(0)
    subnet = extract_subnet(Supernet(space, digits.num_classes, digits.in_channels),
                            space.sample(np.random.default_rng(0)), digits, recal=2, batch_size=64,
                            device=torch.device("cpu"), channels_last=False)
    ckpt = save_subnet(tmp_path / "subnet.pt", subnet, {"data": data_facts(digits, DataConfig(name="digits", seed=0)),
                                                        "source": {}})
    bundle = export_bundle(ckpt, ExportConfig(name="net", out_dir=tmp_path / "export", calib_images=32,
                                              measure=False)).bundle_dir
    fast = MeasureSettings(warmup=2, repeats=10, trials=1)
    int8 = dataclasses.replace(load_profile("cpu-ort-int8"), measure=fast)
    baseline = update_baseline(bundle, int8, CheckConfig(trials=3))
    assert baseline.model_file == INT8_FILE and baseline.reference.input_shape == (1, 8, 8)
    report = check_bundle(bundle, int8, CheckConfig(trials=3))
    assert [c.verdict for c in report.costs] == ["PASS", "PASS"]
    assert {f.name: f.status for f in report.files} == {"model.onnx": "ok", INT8_FILE: "ok"}
    assert _manifest(bundle)["cost"]["onnx_macs"] == baseline.onnx_macs  # export and check count alike
