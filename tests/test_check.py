"""CI latency-regression check: the decision rule on synthetic ratios, the protocol's logic with a
deterministic fake timer, and real bundles end to end.

Bundles are built by hand (tiny torch conv nets exported with ``export_onnx_bytes`` plus a manifest
dict). Every test that asserts a verdict times them with :class:`FakeTimer`, which returns per-trial
medians from a formula, so no test can fail because the machine is busy. The real timer
(:func:`edgenas.check.ort_timer`) runs in three tests that assert only what noise cannot change:
the structure of a report, a model 4x slower failing a 50% tolerance, and a measurement's bookkeeping.
Timing figures belong to ``benchmarks/check_reliability.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from torch import nn

import edgenas.check.measure
from edgenas.check import (
    BASELINE_KEY,
    REFERENCE_NAME,
    TWIN_NAME,
    Baseline,
    CheckConfig,
    ReferenceSpec,
    TwinReference,
    baseline_spread,
    check_bundle,
    decide,
    measure_ratio,
    parse_tolerance,
    reference_from_json,
    update_baseline,
)
from edgenas.cli import cli
from edgenas.errors import ConfigError, EdgenasError
from edgenas.export import onnx_cost
from edgenas.hardware.measure import export_onnx_bytes
from edgenas.hardware.profile import MeasureSettings, Profile, load_profile

SHAPE = (1, 16, 16)
# The check spends trials x repeats timed runs in trials of 10: 8 interleaved trials in its first round.
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


def _edit_baseline(bundle: Path, **changes) -> None:
    manifest = _manifest(bundle)
    manifest[BASELINE_KEY].update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


class FakeTimer:
    """A deterministic stand-in for :func:`edgenas.check.ort_timer`.

    The reference takes 0.1 ms in every trial; the bundle ``ratio(k) x 0.1`` ms in the k-th trial
    timed since the fake was made (counting across calls), so a test writes the ratios a check sees
    as a formula. ``calls`` records the trials asked for by each call (one call per round).
    """

    def __init__(self, ratio: Callable[[int], float] = lambda k: 1.0) -> None:
        self.ratio = ratio
        self.calls: list[int] = []
        self.models: list[int] = []

    def __call__(self, target: Profile, models: Sequence[bytes], shape: tuple[int, int, int]) -> list[list[float]]:
        n = target.measure.trials
        start = sum(self.calls)
        self.calls.append(n)
        self.models.append(len(models))
        ref = [0.1] * n
        return [[self.ratio(start + k) * 0.1 for k in range(n)], ref]


def _wobble(level: float, amplitude: float) -> Callable[[int], float]:
    """Ratios alternating level*(1 -/+ amplitude): a spread, but a median of exactly ``level`` (even counts)."""
    return lambda k: level * (1 - amplitude if k % 2 else 1 + amplitude)


@pytest.fixture
def fake_timer(monkeypatch):
    """Install a FakeTimer as the check's timer (also behind the CLI); returns a function that sets the ratios."""
    def install(ratio: Callable[[int], float] = lambda k: 1.0) -> FakeTimer:
        timer = FakeTimer(ratio)
        monkeypatch.setattr(edgenas.check.measure, "ort_timer", timer)
        return timer
    return install


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
    """One bundle whose baseline was recorded through the CLI (fake timer: ratios 1.0 +- 1%); tests work on copies."""
    bundle = _make_bundle(tmp_path_factory.mktemp("bundles") / "net", _net())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(edgenas.check.measure, "ort_timer", FakeTimer(_wobble(1.0, 0.01)))
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
    (0.8, 0.01, 9, "PASS"),          # unchanged
    (1.0, 0.02, 9, "REGRESSION"),    # 1.25x the baseline 0.8
    (0.8, 0.15, 5, "INCONCLUSIVE"),  # unchanged but noisy: the CI reaches past +10%, no verdict either way
    (0.56, 0.02, 9, "IMPROVED"),     # 0.7x
])
def test_decide_verdicts(level, noise, n, verdict):
    d = decide(_noisy(level, noise, n), 0.8, 0.10)
    assert d.verdict == verdict
    assert d.ci_low <= d.change <= d.ci_high and d.n == n
    assert d.change == pytest.approx(float(np.median(_noisy(level, noise, n))) / 0.8)
    assert d.failed == (verdict == "REGRESSION") and d.decided == (verdict != "INCONCLUSIVE")


def test_decide_slower_median_but_too_noisy_is_inconclusive_not_a_pass():
    d = decide([0.72, 0.92, 1.12], 0.8, 0.10)  # d = 1.15, but one trial is 10% faster than the baseline
    assert d.change == pytest.approx(1.15) and d.ci_low == pytest.approx(0.9) and d.ci_high == pytest.approx(1.4)
    assert d.verdict == "INCONCLUSIVE" and not d.failed and not d.decided
    assert "INCONCLUSIVE" in d.summary()


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
    assert decide([1.5, 1.5, 1.05], 1.0, 0.10).verdict == "INCONCLUSIVE"
    # A CI wholly inside the tolerance passes however wide; one straddling 1 - tolerance passes too.
    assert decide([0.95, 1.0, 1.05], 1.0, 0.10).verdict == "PASS"
    assert decide([0.85, 0.9, 0.95], 1.0, 0.10).verdict == "PASS"


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
    # regression; with its own trials resampled the CI is wide: no regression, and no pass either.
    now = _noisy(1.1, 0.01, 30, seed=2)
    noisy_base = _noisy(1.0, 0.25, 30, seed=3)
    exact = decide(now, float(np.median(noisy_base)), 0.05)
    both = decide(now, float(np.median(noisy_base)), 0.05, baseline_ratios=noisy_base)
    assert exact.verdict == "REGRESSION" and both.verdict == "INCONCLUSIVE"
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


# ----- tolerance parsing and configuration ---------------------------------------------------------------
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
    with pytest.raises(ConfigError, match=r"--max-trials must be >= --trials \(10\)"):
        CheckConfig(trials=10, max_trials=5)
    with pytest.raises(ConfigError, match="--max-seconds"):
        CheckConfig(max_seconds=float("nan"))
    with pytest.raises(ConfigError, match="--reference must be one of twin, mbconv"):
        CheckConfig(reference="dense")  # type: ignore[arg-type]
    assert CheckConfig().trial_cap(30) == 240 and CheckConfig(max_trials=50).trial_cap(30) == 50


# ----- the reference workloads ----------------------------------------------------------------------------------
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


def test_twin_is_the_models_graph_with_seeded_weights():
    import onnx
    from onnx import numpy_helper

    model = _onnx(_net(width=24))
    twin = TwinReference.from_model(model, SHAPE)
    assert twin.name == TWIN_NAME and twin.input_shape == SHAPE and len(twin.graph) < len(model)
    again = reference_from_json(json.loads(json.dumps(twin.to_json())))
    assert again == twin and again.model_bytes() == twin.model_bytes()  # rebuilt exactly, every time
    source, built = onnx.load_model_from_string(model), onnx.load_model_from_string(twin.model_bytes())
    onnx.checker.check_model(built)
    assert [(n.op_type, list(n.input), list(n.output)) for n in built.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in source.graph.node] and twin.nodes == len(source.graph.node)
    assert onnx_cost(twin.model_bytes(), (1, *SHAPE)) == onnx_cost(model, (1, *SHAPE))
    for a, b in zip(source.graph.initializer, built.graph.initializer):
        x, y = numpy_helper.to_array(a), numpy_helper.to_array(b)
        assert x.shape == y.shape and x.dtype == y.dtype
        if x.size <= 64:  # small tensors (biases, shapes) verbatim
            assert np.array_equal(x, y)
        else:  # large ones redrawn at the same scale: other values, no denormals
            assert not np.array_equal(x, y) and y.std() == pytest.approx(x.std(), rel=0.2)
    assert TwinReference.from_model(model, SHAPE, seed=1).model_bytes() != twin.model_bytes()
    assert twin.summary_json()["graph_sha256"] == hashlib.sha256(twin.graph.encode()).hexdigest()


@pytest.mark.parametrize("graph,message", [("not base64!", "not a valid encoded ONNX model"),
                                           ("aGVsbG8=", "not a valid encoded ONNX model")])
def test_twin_with_a_corrupt_graph_is_a_config_error(graph, message):
    data = {**TwinReference.from_model(_onnx(_net()), SHAPE).to_json(), "graph": graph}
    with pytest.raises(ConfigError, match=message):
        reference_from_json(data)


# ----- the protocol's logic, with a deterministic timer -------------------------------------------------------
def test_a_clear_pass_stops_after_the_first_round(bundle, profile, fake_timer):
    timer = fake_timer(_wobble(1.0, 0.02))
    report = check_bundle(bundle, profile)
    assert report.decision.verdict == "PASS" and report.exit_code == 0 and timer.calls == [TRIALS]
    assert report.measurement.trials == TRIALS and report.measurement.rounds == 1
    assert timer.models == [2]  # the bundle and its twin, interleaved in one call


def test_a_clear_regression_stops_after_the_first_round(bundle, profile, fake_timer):
    timer = fake_timer(_wobble(1.3, 0.02))
    report = check_bundle(bundle, profile)
    assert report.decision.verdict == "REGRESSION" and report.exit_code == 1 and timer.calls == [TRIALS]
    assert report.failures[0].startswith("latency regression: REGRESSION: latency ratio +30.0%")


def test_an_undecided_check_measures_more_rounds_until_it_decides(bundle, profile, fake_timer):
    # A burst of noise in the first 12 trials (ratios 0.5 .. 1.5), quiet afterwards: the first
    # round straddles +10%, the second (8 more) still does, the third (16 more) decides PASS.
    timer = fake_timer(lambda k: (1.5 if k % 2 else 0.6) if k < 12 else 1.0)
    report = check_bundle(bundle, profile, CheckConfig())
    assert timer.calls == [8, 8, 16] and report.measurement.trials == 32 and report.measurement.rounds == 3
    assert report.decision.verdict == "PASS" and report.exit_code == 0
    assert report.measurement.ratios[:2] == (pytest.approx(0.6), pytest.approx(1.5))


def test_a_check_that_cannot_decide_is_inconclusive_with_exit_3(bundle, profile_file, fake_timer, tmp_path):
    # Ratios 0.9 / 1.3 forever: a median of 1.1 with a CI from about 0.9 to 1.3 at every trial count.
    timer = fake_timer(_wobble(1.1, 2 / 11))
    junit = tmp_path / "junit.xml"
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--max-trials", "40",
                                   "--junit", str(junit)])
    assert res.exit_code == 3, res.output
    assert timer.calls == [8, 8, 16, 8] and sum(timer.calls) == 40  # doubling, cut to the cap
    assert "edgenas check" in res.stdout and ": INCONCLUSIVE" in res.stdout.splitlines()[0]
    assert "INCONCLUSIVE (exit 3)" in res.stdout and "--max-trials" in res.stdout
    assert "undecided after 40 trials" in res.stderr
    suite = ET.parse(junit).getroot()
    assert suite.get("errors") == "1" and suite.get("failures") == "0"
    latency = next(c for c in suite.iter("testcase") if c.get("name") == "latency")
    assert latency.find("error").get("type") == "LatencyInconclusive" and latency.find("failure") is None
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--max-trials", "8", "--json"])
    report = json.loads(res.stdout)
    assert res.exit_code == 3 and report["exit_code"] == 3 and report["inconclusive"] is True
    assert report["verdict"] == "INCONCLUSIVE" and report["latency"]["trials"] == 8


def test_the_time_cap_stops_further_rounds(bundle, profile, fake_timer):
    timer = fake_timer(_wobble(1.1, 2 / 11))
    report = check_bundle(bundle, profile, CheckConfig(max_seconds=0))
    assert timer.calls == [TRIALS] and report.exit_code == 3 and report.verdict == "INCONCLUSIVE"


def test_a_definite_failure_wins_over_an_inconclusive_latency(bundle, profile, fake_timer):
    (bundle / "model.onnx").write_bytes(_onnx(_net(width=18)))
    fake_timer(_wobble(1.1, 2 / 11))
    report = check_bundle(bundle, profile, CheckConfig(max_trials=TRIALS))
    assert report.decision.verdict == "INCONCLUSIVE" and report.verdict == "REGRESSION" and report.exit_code == 1
    suite = ET.fromstring(report.to_junit())
    assert suite.get("failures") == "2" and suite.get("errors") == "1"


def test_update_measures_until_the_baseline_is_known(tmp_path, profile, fake_timer):
    bundle = _make_bundle(tmp_path / "b", _net())
    timer = fake_timer(lambda k: (1.4 if k % 2 else 0.7) if k < 16 else 1.0)
    baseline = update_baseline(bundle, profile)
    assert timer.calls == [8, 8, 16] and baseline.trials == 32 == len(baseline.ratios)
    assert baseline_spread(baseline.ratios) <= 0.025 and baseline.ratio_median == 1.0
    assert isinstance(baseline.reference, TwinReference) and baseline.reference_median_ms == pytest.approx(0.1)


# ----- real bundles (fake timer unless said) -------------------------------------------------------------------
def test_update_writes_baseline_and_unchanged_bundle_passes(bundle, profile_file, tmp_path, fake_timer):
    baseline = _manifest(bundle)[BASELINE_KEY]
    assert set(baseline) >= {"profile", "profile_hash", "reference", "ratio_median", "ratios", "trials",
                             "bundle_median_ms", "reference_median_ms", "onnx_macs", "onnx_params", "sha256",
                             "machine", "runtime_versions", "created"}
    assert baseline["profile"] == "cpu-ort" and baseline["trials"] == TRIALS == len(baseline["ratios"])
    # golden counts: conv 1->16 and 16->16 at 16x16, Linear 16->10
    assert baseline["onnx_macs"] == 256 * 16 * 9 + 256 * 16 * 16 * 9 + 160 == 626_848
    assert baseline["onnx_params"] == (16 * 9 + 16) + (16 * 16 * 9 + 16) + (160 + 10) == 2650
    assert baseline["ratio_median"] == 1.0 and baseline["reference"]["name"] == TWIN_NAME
    assert _manifest(bundle)["format"] == "edgenas-bundle/1"  # the rest of the manifest is kept

    fake_timer(_wobble(1.0, 0.02))
    junit = tmp_path / "junit.xml"
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--junit", str(junit)])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.stdout and "bootstrap CI" in res.stdout
    assert f"rule: T = {TRIALS} interleaved trials of 10 runs" in res.stdout
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "0"
    assert suite.get("errors") == "0"
    assert [c.get("name") for c in suite.iter("testcase")] == ["latency", "flops", "params"]
    assert not list(suite.iter("failure")) and not list(suite.iter("error"))

    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["format"] == "edgenas-check/1" and report["exit_code"] == 0 and report["inconclusive"] is False
    assert report["flops"] == {"verdict": "PASS", "baseline": 626_848, "now": 626_848,
                               "message": "FLOPs (MACs) unchanged: 626,848"}
    assert len(report["latency"]["ratios"]) == TRIALS
    stored = reference_from_json(baseline["reference"])
    assert report["latency"]["reference"] == stored.summary_json() and "graph" not in report["latency"]["reference"]
    assert report["files"] == [{"name": "model.onnx", "status": "ok", "expected": baseline["sha256"],
                                "actual": baseline["sha256"]}]


def test_real_timing_update_and_check_give_a_well_formed_report(tmp_path, profile_file):
    """The real timer end to end. Which verdict an unchanged bundle gets on a busy machine is the
    benchmark's question, not this test's: any of pass, regression, inconclusive is accepted."""
    bundle = _make_bundle(tmp_path / "b", _net())
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--update", "--max-seconds", "5"])
    assert res.exit_code == 0, res.output
    stored = Baseline.from_json(_manifest(bundle)[BASELINE_KEY])
    assert stored.trials >= TRIALS and all(r > 0 for r in stored.ratios) and stored.bundle_median_ms > 0
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--json", "--max-seconds", "5"])
    assert res.exit_code in (0, 1, 3), res.output
    report = json.loads(res.stdout)
    latency = report["latency"]
    assert report["exit_code"] == res.exit_code and latency["verdict"] in ("PASS", "IMPROVED", "REGRESSION",
                                                                           "INCONCLUSIVE")
    assert latency["trials"] == len(latency["ratios"]) >= TRIALS and latency["ci"][0] <= latency["ci"][1]
    assert latency["change"] > 0 and report["flops"]["verdict"] == "PASS"


def test_flops_and_params_change_fails_naming_values(bundle, profile_file, tmp_path, fake_timer):
    fake_timer()
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
    assert failures["flops"] and failures["params"] and not failures["latency"]


def test_much_slower_model_fails_on_latency_alone(bundle, profile, tmp_path):
    """Real timing, made decisive: 8 convolutions instead of 2 (about 4x the time) against a 50%
    tolerance. The twin keeps the baseline's 2-convolution graph, so the ratio is the slowdown."""
    (bundle / "model.onnx").write_bytes(_onnx(_net(convs=8)))
    report = check_bundle(bundle, profile, CheckConfig(tolerance=0.50))
    assert report.decision.verdict == "REGRESSION", report.render()
    assert report.decision.ci_low > 1.50 and report.exit_code == 1
    assert any(f.startswith("latency regression") for f in report.failures)
    suite = ET.fromstring(report.to_junit())
    assert suite.get("failures") == "3" and len(list(suite.iter("failure"))) == 3
    assert json.loads(json.dumps(report.to_json()))["latency"]["verdict"] == "REGRESSION"


def test_measure_ratio_reuses_a_given_reference(bundle, profile):
    """Real timing; only the bookkeeping is asserted."""
    spec = Baseline.from_json(_manifest(bundle)[BASELINE_KEY]).reference
    m = measure_ratio(bundle, profile, CheckConfig(trials=2), reference=spec)
    assert m.reference == spec and m.trials == 2 and len(m.ratios) == 2 and m.rounds == 1
    assert m.ratios[0] == pytest.approx(m.bundle_medians_ms[0] / m.reference_medians_ms[0])


def test_a_legacy_mbconv_baseline_still_checks_and_says_so(tmp_path, profile_file, fake_timer):
    fake_timer()
    bundle = _make_bundle(tmp_path / "b", _net())
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file, "--update",
                                   "--reference", "mbconv"])
    assert res.exit_code == 0, res.output
    assert _manifest(bundle)[BASELINE_KEY]["reference"]["name"] == REFERENCE_NAME
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file])
    assert res.exit_code == 0, res.output
    assert "re-record it with --update" in res.stdout and "ref-mbconv/1 (width" in res.stdout


def test_update_via_library_then_profile_mismatch_is_an_error(tmp_path, profile, fake_timer):
    fake_timer()
    bundle = _make_bundle(tmp_path / "b", _net())
    baseline = update_baseline(bundle, profile, CheckConfig(trials=2))
    assert baseline.trials == 2 and Baseline.from_json(_manifest(bundle)[BASELINE_KEY]) == baseline
    with pytest.raises(ConfigError, match=r"recorded with profile 'cpu-ort' \(latency hash"):
        check_bundle(bundle, dataclasses.replace(profile, threads=2))
    with pytest.raises(ConfigError, match="times PyTorch modules, not ONNX files"):
        check_bundle(bundle, load_profile("cpu-torch"))


def _run_error(profile_file: str, *args: str) -> str:
    res = CliRunner().invoke(cli, ["check", *args, "--profile", profile_file])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.output
    return res.stderr


def test_input_errors_exit_2_with_one_line(tmp_path, profile_file, bundle, monkeypatch):
    def run(*args: str) -> str:
        return _run_error(profile_file, *args)

    fresh = _make_bundle(tmp_path / "fresh", _net())
    assert f"edgenas check {fresh} --profile {profile_file} --update" in run(str(fresh))
    assert "does not exist" in run(str(tmp_path / "nope"))
    assert "between 0 and 1" in run(str(bundle), "--tolerance", "150%")
    assert "did you mean 10%" in run(str(bundle), "--tolerance", "10")
    assert "--max-trials must be >= --trials" in run(str(bundle), "--trials", "9", "--max-trials", "3")
    assert "--reference chooses the workload --update records" in run(str(bundle), "--reference", "mbconv")
    assert "--junit reports a check" in run(str(bundle), "--update", "--junit", str(tmp_path / "j.xml"))
    (tmp_path / "a-file").write_text("x")
    import edgenas.check

    with monkeypatch.context() as patch:  # refused before anything is measured
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


@pytest.mark.parametrize("changes,message", [
    ({"ratio_median": -1}, "'ratio_median' must be a positive finite number, not -1"),
    ({"ratio_median": 0}, "'ratio_median' must be a positive finite number"),
    ({"ratio_median": math.nan}, "'ratio_median' must be a positive finite number, not nan"),
    ({"ratio_median": 2.0}, "'ratio_median' 2.0 is not the median of 'ratios'"),
    ({"ratios": [1.0, -1.0, 1.0], "trials": 3, "ratio_median": 1.0}, "'ratios' must all be positive finite"),
    ({"ratios": [1.0, 0.0, 1.0], "trials": 3, "ratio_median": 1.0}, "'ratios' must all be positive finite"),
    ({"ratios": [1.0, math.inf, 1.0], "trials": 3, "ratio_median": 1.0}, "'ratios' must all be positive finite"),
    ({"ratios": [], "trials": 0}, "'ratios' must not be empty"),
    ({"ratios": [1.0, True, 1.0]}, "must be a number, not True"),
    ({"trials": 99}, "'trials' is 99 but there are 8 ratios"),
    ({"trials": "8"}, "'trials' must be an integer"),
    ({"bundle_median_ms": -0.5}, "'bundle_median_ms' must be a positive finite number"),
    ({"reference_median_ms": None}, "'reference_median_ms' must be a number"),
    ({"onnx_macs": -5}, "'onnx_macs' must be >= 0"),
    ({"sha256": "xyz"}, "'sha256' must be 64 lowercase hex digits"),
    ({"model_file": "../../etc/passwd"}, "'model_file' must be model.onnx or model.int8.onnx"),
    ({"reference": {"name": TWIN_NAME, "input_shape": [1, 16, 16], "graph": "@@", "nodes": 5}},
     "reference graph is not a valid encoded ONNX model"),
    ({"reference": {"name": "ref-future/7", "input_shape": [1, 16, 16], "width": 4}}, "unknown reference workload"),
])
def test_a_malformed_baseline_is_one_error_line_and_exit_2_before_measuring(bundle, profile_file, monkeypatch,
                                                                             changes, message):
    monkeypatch.setattr(edgenas.check.measure, "ort_timer",
                        lambda *a: pytest.fail("measured before refusing a malformed baseline"))
    _edit_baseline(bundle, **changes)
    err = _run_error(profile_file, str(bundle))
    assert message in err and f"{bundle}" in err and "rewrite it with: edgenas check" in err


def test_a_crash_in_the_check_exits_2_not_1(bundle, profile_file, monkeypatch):
    def broken(*args):
        raise ZeroDivisionError("the timer divided by zero")

    monkeypatch.setattr(edgenas.check.measure, "ort_timer", broken)
    res = CliRunner().invoke(cli, ["check", str(bundle), "--profile", profile_file])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.output and lines[-1].startswith(
        "error: unexpected ZeroDivisionError: the timer divided by zero (likely a bug in edgenas")


def test_update_json_prints_the_baseline(tmp_path, profile_file, fake_timer):
    fake_timer()
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
    """The contract with edgenas.export: its manifest and files are what the check reads (real timing; the
    latency verdict is not asserted)."""
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
    config = CheckConfig(trials=3, max_seconds=5)
    baseline = update_baseline(bundle, int8, config)
    assert baseline.model_file == INT8_FILE and baseline.reference.input_shape == (1, 8, 8)
    import onnx

    twin = onnx.load_model_from_string(baseline.reference.model_bytes())
    int8_graph = onnx.load_model_from_string((bundle / INT8_FILE).read_bytes())
    assert [n.op_type for n in twin.graph.node] == [n.op_type for n in int8_graph.graph.node]
    report = check_bundle(bundle, int8, config)
    assert [c.verdict for c in report.costs] == ["PASS", "PASS"]
    assert {f.name: f.status for f in report.files} == {"model.onnx": "ok", INT8_FILE: "ok"}
    assert _manifest(bundle)["cost"]["onnx_macs"] == baseline.onnx_macs  # export and check count alike
