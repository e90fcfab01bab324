"""Latency lookup table: calibration maths, file format and staleness checks, prediction, budgets, CLI.

Real measurements use a tiny space (one kernel, one expansion: 1-2 choices per layer) and a
profile with 2 warm-up and 5 timed runs, so a build takes a few seconds; the arithmetic of the
build itself is checked with a fake measurer whose latencies are known exactly.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from torch import nn

from edgenas.cli import cli
from edgenas.errors import ConfigError, InfeasibleBudgetError
from edgenas.hardware.calibration import error_figures, fit_calibration, kendall_tau
from edgenas.hardware.measure import LatencyStats, export_onnx_bytes
from edgenas.hardware.profile import Budgets, load_profile
from edgenas.hardware.table import (
    FORMAT,
    LatencyTable,
    TableError,
    build_table,
    default_method,
    environment_warnings,
    loose_budget_warnings,
    validate_table,
)
from edgenas.space import Subnet, create_space

PROFILE_YAML = """\
name: {name}
device: cpu
runtime: {runtime}
{provider}threads: 1
input_shape: [1, 28, 28]
measure: {{warmup: 2, repeats: 5, trials: 1, statistic: median}}
budgets: {{latency_ms: 1.0}}
"""


def _tiny_space(**overrides):
    cfg = {"width_mult": 0.25, "head_channels": 32, "kernels": (3,), "expansions": (3,), **overrides}
    return create_space("mbv3", "small", **cfg)


def _write_profile(directory, name="tiny-ort", runtime="onnxruntime"):
    provider = "provider: CPUExecutionProvider\n" if runtime == "onnxruntime" else ""
    path = directory / f"{name}.yaml"
    path.write_text(PROFILE_YAML.format(name=name, runtime=runtime, provider=provider))
    return path


@pytest.fixture(scope="module")
def space():
    return _tiny_space()


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    return load_profile(_write_profile(tmp_path_factory.mktemp("profiles")))


@pytest.fixture(scope="module")
def built(space, profile):
    """One real table, built once for the module (a few seconds)."""
    return build_table(space, profile, calib_samples=4, seed=0)


# ----- calibration ----------------------------------------------------------------------------------------------
def test_calibration_recovers_scale_and_offset_from_noisy_synthetic_data():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.5, 5.0, 40)
    measured = (1.3 * raw + 0.2) * (1 + rng.normal(0, 0.005, raw.size))
    cal = fit_calibration(raw, measured)
    assert cal.scale == pytest.approx(1.3, rel=0.02) and cal.offset_ms == pytest.approx(0.2, abs=0.03)
    assert cal.n == 40 and cal.outliers == []
    exact = fit_calibration([1.0, 2.0, 4.0], [2.5, 4.5, 8.5])  # 2 * raw + 0.5 exactly
    assert (exact.scale, exact.offset_ms) == (pytest.approx(2.0), pytest.approx(0.5))
    assert exact.apply(3.0) == pytest.approx(6.5)


def test_calibration_leaves_out_an_outlier():
    rng = np.random.default_rng(1)
    raw = rng.uniform(1.0, 3.0, 30)
    measured = 0.9 * raw + 0.1 + rng.normal(0, 0.005, raw.size)
    measured[7] *= 1.6  # one subnet timed while another job ran
    cal = fit_calibration(raw, measured)
    assert cal.outliers == [7]
    assert cal.scale == pytest.approx(0.9, rel=0.02) and cal.offset_ms == pytest.approx(0.1, abs=0.03)
    plain = np.polyfit(raw, measured, 1)  # what an untrimmed fit would give
    assert abs(plain[0] - 0.9) > abs(cal.scale - 0.9)


def test_calibration_edge_cases():
    assert fit_calibration([], []).scale == 1.0 and fit_calibration([], []).n == 0
    one = fit_calibration([2.0], [2.5])
    assert (one.scale, one.offset_ms, one.n) == (1.0, pytest.approx(0.5), 1)
    same = fit_calibration([2.0, 2.0, 2.0], [2.4, 2.5, 2.6])
    assert same.scale == 1.0 and same.offset_ms == pytest.approx(0.5, abs=0.02)
    # a slope that comes out negative (noise larger than the raw sums' span): the median ratio, no offset
    flat = fit_calibration([1.0, 1.1, 1.2], [1.3, 1.2, 1.1])
    assert flat.scale == pytest.approx(1.2 / 1.1) and flat.offset_ms == 0.0 and flat.method.startswith("ratio")
    with pytest.raises(ValueError, match="not all positive"):
        fit_calibration([-1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="positive measured"):
        fit_calibration([1.0, 2.0], [1.0, 0.0])


def test_error_figures_by_hand():
    fig = error_figures([1.1, 2.0, 2.7, 4.0], [1.0, 2.0, 3.0, 5.0])
    # relative errors 10%, 0%, 10%, 20%
    assert fig.median_rel_error == pytest.approx(0.10) and fig.max_rel_error == pytest.approx(0.20)
    assert fig.within_10pct == pytest.approx(0.75) and fig.kendall_tau == pytest.approx(1.0)
    assert fig.mean_signed_rel_error == pytest.approx((0.1 + 0 - 0.1 - 0.2) / 4)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# ----- build arithmetic with a fake measurer -------------------------------------------------------------------
class _FakeMeasurer:
    """Latency = 1 us per parameter + a fixed 10 us per run (the session overhead of a real runtime)."""

    overhead_ms = 0.01

    def measure_many(self, models, input_shapes):
        out = []
        for m in models:
            ms = sum(p.numel() for p in m.parameters()) * 1e-3 + self.overhead_ms
            out.append(LatencyStats.from_samples([ms] * 3, [ms]))
        return out


def test_context_method_cancels_per_run_overhead(space, profile):
    table = build_table(space, profile, calib_samples=5, measurer=_FakeMeasurer())
    cal = table.calibration
    # Blocks timed behind a prefix, minus the prefix: the raw sum is the end-to-end time exactly.
    assert cal.scale == pytest.approx(1.0, abs=1e-9) and cal.offset_ms == pytest.approx(0.0, abs=1e-9)
    assert cal.raw_ms == pytest.approx(cal.measured_ms)
    isolated = build_table(space, profile, calib_samples=5, method="isolated", measurer=_FakeMeasurer())
    # Bare blocks pay the overhead once each: the raw sum overshoots by 10 us per non-skip block + head.
    for arch, raw, meas in zip(cal.archs, isolated.calibration.raw_ms, isolated.calibration.measured_ms):
        blocks = sum(label != "skip" for label in space.labels(space.parse(arch)))
        assert raw - meas == pytest.approx(0.01 * (blocks + 1))



class _FusingMeasurer(_FakeMeasurer):
    """As the fake above, but inside a whole subnet every parameter costs half: a stand-in for what a
    runtime fuses across block boundaries (int8 QDQ graphs), which no block-level timing can see."""

    def measure_many(self, models, input_shapes):
        out = []
        for m in models:
            per = 0.5e-3 if isinstance(m, Subnet) else 1e-3
            ms = sum(p.numel() for p in m.parameters()) * per + self.overhead_ms
            out.append(LatencyStats.from_samples([ms] * 3, [ms]))
        return out


class _DriftingMeasurer(_FakeMeasurer):
    """The fake above on a host that slows down steadily: each model timed runs ``drift`` slower than
    the one before it (a warming laptop, a neighbour job ramping up), on top of a fixed ``speed``."""

    def __init__(self, drift=0.01, speed=1.0):
        self.drift, self.speed, self.clock = drift, speed, 0

    def measure_many(self, models, input_shapes):
        out = []
        for m in models:
            factor = self.speed * (1 + self.drift * self.clock)
            self.clock += 1
            ms = (sum(p.numel() for p in m.parameters()) * 1e-3 + self.overhead_ms) * factor
            out.append(LatencyStats.from_samples([ms] * 3, [ms]))
        return out


def test_speed_reference_cancels_drift_during_the_build_and_a_slower_host_later(space, profile):
    plain = build_table(space, profile, calib_samples=6, measurer=_DriftingMeasurer(), reference=False)
    table = build_table(space, profile, calib_samples=6, measurer=_DriftingMeasurer())
    ref = table.reference
    assert ref is not None and ref.arch == str(space.extreme_arch(space.macs_table((28, 28))))
    # every figure in units of the reference at its own build-time speed: the context method's exact
    # sum holds again, which the drift broke for the plain table
    assert table.calibration.raw_ms == pytest.approx(table.calibration.measured_ms, rel=0.01)
    assert max(abs(r / m - 1) for r, m in zip(plain.calibration.raw_ms, plain.calibration.measured_ms)) > 0.05
    # validated on a host 1.7x slower (and still drifting): the table is right in its units, and says how slow
    slow = _DriftingMeasurer(drift=0.005, speed=1.7)
    result = validate_table(table, space, n=12, seed=0, measurer=slow)
    assert result.median_rel_error < 0.02 and result.speed == pytest.approx(1.7, rel=0.15)
    assert result.raw_median_rel_error > 0.25 and len(result.raw_measured_ms) == 12
    assert "host at 1." in result.summary()
    again = LatencyTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again.reference == table.reference and again.predict(space.sample(np.random.default_rng(3))) == \
        table.predict(space.sample(np.random.default_rng(3)))


def test_referenced_timing_divides_out_a_slow_trial():
    from edgenas.hardware.table import measure_referenced

    class Trials:
        """Three trials; the whole host runs 3x slower in the second one; model k costs k+1 ms, the reference 2."""

        def measure_many(self, models, input_shapes):
            speeds = (1.0, 3.0, 1.0)
            out = []
            for m in models:
                base = 2.0 if m is ref else float(m.cost)
                trials = [[base * s] * 4 for s in speeds]
                out.append(LatencyStats.from_samples([t for tr in trials for t in tr], [tr[0] for tr in trials]))
            return out

    ref = nn.Identity()
    models = []
    for k in range(8):
        m = nn.Identity()
        m.cost = k + 1
        models.append(m)
    plain = Trials().measure_many(models, [None] * 8)
    assert plain[0].mean_ms == pytest.approx(5 / 3)  # the slow trial inflates plain timings
    timing = measure_referenced(Trials(), models, [(1, 8, 8)] * 8, ref, (1, 8, 8), every=3)
    assert [s.mean_ms for s in timing.stats] == pytest.approx([k + 1 for k in range(8)])
    assert all(max(s.trial_medians_ms) == pytest.approx(min(s.trial_medians_ms)) for s in timing.stats)
    assert timing.unit_ms == pytest.approx(2.0) and timing.speed == pytest.approx(1.0)
    assert [s.mean_ms for s in timing.raw] == pytest.approx([s.mean_ms for s in plain])
    later = measure_referenced(Trials(), models, [(1, 8, 8)] * 8, ref, (1, 8, 8), unit_ms=1.0, every=3)
    assert later.speed == pytest.approx(2.0) and later.stats[3].mean_ms == pytest.approx(2.0)  # in the unit given
    with pytest.raises(ValueError, match="every"):
        measure_referenced(Trials(), models, [(1, 8, 8)] * 8, ref, (1, 8, 8), every=0)


def test_network_method_sees_what_the_whole_network_does(space, profile):
    table = build_table(space, profile, calib_samples=5, method="network", measurer=_FusingMeasurer())
    cal = table.calibration
    assert table.method == "network" and table.head.count == 0 and all(c is None for c in table.context)
    # One-layer changes of the base subnet minus the base: additive here, so the raw sum is exact.
    assert cal.raw_ms == pytest.approx(cal.measured_ms)
    assert cal.scale == pytest.approx(1.0, abs=1e-9) and cal.offset_ms == pytest.approx(0.0, abs=1e-9)
    base = space.extreme_arch(space.macs_table((28, 28)))
    assert table.predict_raw(base) == pytest.approx(table.stem.median_ms)  # the base costs only the fixed part
    for i, layer in enumerate(space.layers):
        assert table.entries[i][base.choices[i]].median_ms == 0.0
        assert all(e.count == 0 for c, e in enumerate(table.entries[i]) if layer.choices[c] == "skip")
    # Blocks timed behind a prefix cost what they cost alone: twice too much in this network.
    context = build_table(space, profile, calib_samples=5, measurer=_FusingMeasurer())
    assert all(r > m for r, m in zip(context.calibration.raw_ms, context.calibration.measured_ms))
    assert LatencyTable.from_json(json.loads(json.dumps(table.to_json()))).predict(base) == table.predict(base)


def test_default_method_is_network_for_int8_only():
    assert default_method(load_profile("cpu-ort-int8")) == "network"
    assert default_method(load_profile("cpu-ort")) == "context"
    with pytest.raises(ConfigError, match="known: context, isolated, network"):
        build_table(_tiny_space(), load_profile("cpu-ort"), method="nope", measurer=_FakeMeasurer())


def test_zero_calibration_subnets_measure_none(space, profile):
    class Counting(_FakeMeasurer):
        def measure_many(self, models, input_shapes):
            self.subnets = sum(isinstance(m, Subnet) for m in models)
            return super().measure_many(models, input_shapes)

    meter = Counting()
    table = build_table(space, profile, calib_samples=0, measurer=meter, reference=False)
    assert meter.subnets == 0 and table.calibration.n == 0 and table.reference is None

# ----- a real table ----------------------------------------------------------------------------------------------
def test_predict_is_stem_plus_blocks_plus_head(built, space):
    data = built.to_json()
    assert data["format"] == FORMAT and set(data["format_doc"]) >= {"entries", "calibration", "environment"}
    identity = dataclasses.replace(built, calibration=type(built.calibration)())
    arch = space.sample(np.random.default_rng(3))
    by_hand = data["stem"]["median_ms"] + data["head"]["median_ms"] + sum(
        data["entries"][i][c]["median_ms"] for i, c in enumerate(arch.choices))
    assert identity.predict(arch) == pytest.approx(by_hand)
    assert built.predict(arch) == pytest.approx(built.calibration.scale * by_hand + built.calibration.offset_ms)
    skip_entries = [e for row in data["entries"] for e in row if e["choice"] == "skip"]
    assert skip_entries and all(e["count"] == 0 and e["median_ms"] == 0 for e in skip_entries)
    env = data["environment"]
    assert {"cpu", "logical_cores", "runtime_versions", "threads", "provider", "batch_size", "precision",
            "date"} <= set(env) and "hostname" not in json.dumps(env).lower()
    assert built.query_us is not None and 0 < built.query_us < 1000 and built.build_seconds > 0


def test_min_latency_arch_is_the_per_layer_argmin(built, space):
    best = built.min_latency_arch(space)
    rows = built.cost_rows()
    assert list(best.choices) == [int(np.argmin(r)) for r in rows]
    rng = np.random.default_rng(0)
    assert all(built.predict(best) <= built.predict(space.sample(rng)) + 1e-12 for _ in range(50))


def test_table_round_trip(built, space, profile, tmp_path):
    path = built.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path, space, profile, num_classes=10)
    assert loaded.to_json() == built.to_json()
    arch = space.sample(np.random.default_rng(5))
    assert loaded.predict(arch) == built.predict(arch)


def test_hash_mismatch_for_another_space_or_profile(built, space, profile, tmp_path):
    path = built.save(tmp_path / "t.json")
    with pytest.raises(TableError, match=r"built for space mbv3 config .* rebuild it with `edgenas profile build"):
        LatencyTable.load(path, space=_tiny_space(width_mult=0.5))
    with pytest.raises(TableError, match=r"threads 1 vs 2; rebuild it with `edgenas profile build --profile tiny-ort"):
        LatencyTable.load(path, profile=dataclasses.replace(profile, threads=2))
    with pytest.raises(TableError, match=r"input_shape \[1, 28, 28\] vs \[1, 32, 32\].*--input-shape 1,32,32"):
        LatencyTable.load(path, profile=profile.with_input_shape((1, 32, 32)))
    with pytest.raises(TableError, match="built for 10 classes, not 100"):
        LatencyTable.load(path, num_classes=100)
    # A change that does not alter latency (budgets, measurement protocol) keeps the table valid.
    LatencyTable.load(path, space, profile.with_budgets(latency_ms=0.5))


def test_corrupt_or_missing_table_is_one_line(tmp_path):
    with pytest.raises(TableError, match="latency table not found"):
        LatencyTable.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TableError, match="corrupt latency table"):
        LatencyTable.load(bad)
    bad.write_text(json.dumps({"format": FORMAT, "space": {}}))
    with pytest.raises(TableError, match="malformed latency table"):
        LatencyTable.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(TableError, match="not a latency table"):
        LatencyTable.load(bad)


def test_environment_warning_when_cpu_differs(built):
    assert environment_warnings(built) == []
    other = LatencyTable.from_json(built.to_json())
    other.environment["cpu"] = "Imaginary CPU 9000"
    other.environment["runtime_versions"] = {**other.environment["runtime_versions"], "onnxruntime": "0.1"}
    warnings = environment_warnings(other)
    assert any("CPU 'Imaginary CPU 9000'" in w for w in warnings)
    assert any("onnxruntime 0.1" in w for w in warnings)
    older = LatencyTable.from_json(built.to_json())  # built before another runtime was installed here
    older.environment["runtime_versions"] = {k: v for k, v in older.environment["runtime_versions"].items()
                                             if k != "onnx"}
    assert environment_warnings(older) == []


def test_infeasible_budget_reports_the_floor(built, space):
    from edgenas.search import check_feasible, latency_cost, make_budget_constraints

    def constraints(**budgets):
        return make_budget_constraints(space, input_hw=(28, 28), in_channels=1, num_classes=10,
                                       latency=latency_cost(built, space), **budgets)

    check_feasible(constraints(latency_ms=1e3, mflops=1e3))
    fastest = built.min_latency_arch(space)
    with pytest.raises(InfeasibleBudgetError) as info:
        check_feasible(constraints(latency_ms=1e-4))
    message = str(info.value)
    assert f"latency_ms<=0.0001 ms: the smallest is {built.predict(fastest):.4g} ({fastest})" in message
    assert "Relax the budget" in message
    with pytest.raises(InfeasibleBudgetError, match=r"mflops<=0.001 MFLOPs: the smallest is .*; params_m<=1e-06 M "
                                                     r"params: the smallest is"):
        check_feasible(constraints(mflops=0.001, params_m=1e-6))


def test_a_budget_above_the_slowest_architecture_is_called_loose(built, space):
    slowest = built.predict(built.max_latency_arch(space))
    [line] = loose_budget_warnings(space, built, Budgets(latency_ms=slowest * 2))
    assert f"budget {slowest * 2:g} ms admits every architecture of mbv3" in line
    assert f"{built.predict(built.min_latency_arch(space)):.3g}-{slowest:.3g} ms" in line
    assert loose_budget_warnings(space, built, Budgets(latency_ms=slowest * 0.99)) == []
    assert loose_budget_warnings(space, built, Budgets(mflops=1.0)) == []
    assert loose_budget_warnings(space, None, Budgets(latency_ms=1e3)) == []

def test_validation_uses_fresh_archs_and_is_stored(space, profile, tmp_path):
    table = build_table(space, profile, calib_samples=6, seed=0, measurer=_FakeMeasurer())
    result = validate_table(table, space, n=30, seed=0, measurer=_FakeMeasurer(), plot_path=tmp_path / "v.png")
    assert len(set(result.archs)) == 30 and not set(result.archs) & set(table.calibration.archs)
    assert result.median_rel_error == pytest.approx(0.0, abs=1e-9) and result.kendall_tau > 0.99
    assert (tmp_path / "v.png").stat().st_size > 1000
    reloaded = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert reloaded.validation == result and "validated on 30 fresh subnets" in reloaded.summary()


def test_retest_tau_ranks_one_half_of_the_trials_against_the_other():
    from edgenas.hardware.measure import LatencyStats
    from edgenas.hardware.table.validate import retest_tau

    def stats(*trials):
        return LatencyStats.from_samples(list(trials), trials)

    steady = [stats(m, m * 1.01, m * 0.99, m) for m in (1.0, 2.0, 3.0, 4.0)]  # trials agree on the order
    assert retest_tau(steady) == pytest.approx(1.0)
    swapped = [stats(1.0, 4.0), stats(2.0, 3.0), stats(3.0, 2.0), stats(4.0, 1.0)]  # the halves disagree
    assert retest_tau(swapped) == pytest.approx(-1.0)
    assert retest_tau([stats(1.0), stats(2.0)]) is None  # one trial each: nothing to compare


def test_real_validation_runs(built, space):
    table = LatencyTable.from_json(built.to_json())
    result = validate_table(table, space, n=3)
    assert result.n == 3 and all(m > 0 for m in result.measured_ms) and result.seconds_per_candidate > 0
    assert table.validation is result


# ----- CLI ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"root": root, "profile": str(_write_profile(root)),
            "torch": str(_write_profile(root, "tiny-torch", "torch"))}


def test_cli_profile_list_and_show():
    runner = CliRunner()
    listed = runner.invoke(cli, ["profile", "list"])
    assert listed.exit_code == 0 and "cpu-ort " in listed.output and "onnxruntime" in listed.output
    shown = runner.invoke(cli, ["profile", "show", "cpu-ort", "--input-shape", "3,32,32"])
    assert shown.exit_code == 0 and "latency_hash:" in shown.output and "- 32" in shown.output


def test_cli_build_validate_show(cli_env, space):
    runner = CliRunner()
    out = cli_env["root"] / "table.json"
    args = ["profile", "build", "--profile", cli_env["profile"], "--space", "mbv3", "--width-mult", "0.25",
            "--input-shape", "1,16,16", "--calib", "2", "--out", str(out)]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "built in" in res.stdout and "measuring" in res.stderr and out.is_file()
    again = runner.invoke(cli, args)
    assert again.exit_code == 2 and "exists; pass --force" in again.stderr
    val = runner.invoke(cli, ["profile", "validate", str(out), "--n", "3", "--trials", "2", "--repeats", "3"])
    assert val.exit_code == 0, val.output
    assert "Kendall tau" in val.stdout and "median relative error" in val.stdout and "measurement noise" in val.stdout
    assert out.with_suffix(".png").is_file() and json.loads(out.read_text())["validation"]["n"] == 3
    shown = runner.invoke(cli, ["profile", "show", str(out)])
    assert shown.exit_code == 0 and "validated on 3 fresh subnets" in shown.output


def test_cli_measure_onnx(cli_env):
    path = cli_env["root"] / "m.onnx"
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    path.write_bytes(export_onnx_bytes(model, (1, 1, 8, 8)))
    runner = CliRunner()
    res = runner.invoke(cli, ["profile", "measure", str(path), "--profile", cli_env["profile"], "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n"] == 5 and data["median_ms"] > 0 and "samples_ms" not in data
    text = runner.invoke(cli, ["profile", "measure", str(path), "--profile", cli_env["profile"]])
    assert text.exit_code == 0 and "median" in text.stdout and "IQR" in text.stdout and "n=5" in text.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["profile", "show", "no-such-profile"], "unknown hardware profile 'no-such-profile'"),
        (["profile", "build", "--profile", "no-such-profile"], "unknown hardware profile"),
        (["profile", "build", "--profile", "cpu-ort", "--input-shape", "1,28"], "--input-shape must be three"),
        (["profile", "build", "--profile", "cpu-ort", "--input-shape", "a,b,c"], "--input-shape must be three"),
        (["profile", "build", "--profile", "cpu-ort", "--trials", "0"], "'trials' must be >= 1"),
        (["profile", "validate", "{root}/missing.json"], "latency table not found"),
        (["profile", "validate", "{root}/corrupt.json"], "corrupt latency table"),
        (["profile", "show", "{root}/corrupt.json"], "corrupt latency table"),
        (["profile", "measure", "{root}/missing.onnx", "--profile", "cpu-ort"], "ONNX file not found"),
        (["profile", "measure", "{root}/corrupt.json", "--profile", "{torch}"], "not ONNX files"),
        (["profile", "measure", "{root}/corrupt.json", "--profile", "cpu-ort"], "not a valid ONNX model"),
        (["profile", "measure", "{root}/corrupt.json", "--profile", "cpu-ort", "--input-shape", "0,1"],
         "--input-shape must be positive"),
    ],
)
def test_cli_bad_input_is_one_line_error(cli_env, args, message):
    (cli_env["root"] / "corrupt.json").write_text("{oops")
    args = [a.format(root=cli_env["root"], torch=cli_env["torch"]) for a in args]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_space_floor_flops_match_count_flops(space):
    from edgenas.hardware.flops import count_flops
    from edgenas.search import make_budget_constraints

    flops, params = make_budget_constraints(space, input_hw=(28, 28), in_channels=1, num_classes=10)
    counted = count_flops(space.build_subnet(flops.floor_arch, 10, 1), (1, 1, 28, 28))
    assert flops.floor == pytest.approx(counted.mflops)
    assert params.floor == pytest.approx(sum(p.numel() for p in space.build_subnet(
        params.floor_arch, 10, 1).parameters()) / 1e6)
