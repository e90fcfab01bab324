"""OpenVINO: a runtime (profiles cpu-openvino and cpu-openvino-int8) and a bundle format (the IR beside model.onnx).

Everything here runs the real OpenVINO on tiny real models (digits subnets, small conv nets) with a
shortened protocol; no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'edgenas[openvino]')")

from edgenas.bundle_openvino import BIN_FILE, PARITY_TOLERANCE, XML_FILE, verify_openvino
from edgenas.cli import cli
from edgenas.data import DataConfig
from edgenas.errors import BundleError, ConfigError, EdgenasError
from edgenas.export import ExportConfig, export_bundle, read_manifest, verify_bundle
from edgenas.extract import data_facts, extract_subnet, save_subnet
from edgenas.hardware.measure import create_measurer, export_onnx_bytes, onnx_measurer, runtime_versions
from edgenas.hardware.openvino_runtime import OpenVinoMeasurer, layer_precisions
from edgenas.hardware.profile import MeasureSettings, Profile, load_profile
from edgenas.space import create_space
from edgenas.supernet import Supernet

FAST = MeasureSettings(warmup=2, repeats=5, trials=3)
SHAPE = (1, 12, 12)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def _profile(precision: str = "fp32") -> Profile:
    return Profile(name="tiny-openvino", device="cpu", runtime="openvino", input_shape=SHAPE, precision=precision,
                   measure=FAST)


def _profile_file(directory: Path, name: str, measure: MeasureSettings = FAST) -> str:
    """A shipped profile with a shortened protocol, as a YAML file the CLI loads (the name matches the file)."""
    data = yaml.safe_load(Path(load_profile(name).source).read_text())
    data["measure"] = dataclasses.asdict(measure)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _one_error_line(res) -> str:
    """Exit 2, no traceback, one ``error:`` line and it ends stderr (progress lines may come before it)."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.stdout == ""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and res.stderr.endswith(errors[0] + "\n"), res.stderr
    return errors[0]


# ----- the runtime -------------------------------------------------------------------------------------------
def test_measurer_times_modules_and_onnx_files_with_the_protocols_sample_counts(tmp_path):
    meter = create_measurer(_profile())
    assert isinstance(meter, OpenVinoMeasurer) and onnx_measurer(_profile()).__class__ is OpenVinoMeasurer
    stats = meter.measure_many([_net(), _net()], [None, (1, 16, 16)])
    assert [s.n for s in stats] == [15, 15] and all(len(s.trial_medians_ms) == 3 for s in stats)
    assert all(0 < s.p10_ms <= s.median_ms <= s.p90_ms for s in stats)
    path = tmp_path / "net.onnx"
    path.write_bytes(export_onnx_bytes(_net(), (1, *SHAPE), dynamic_batch=True))
    one, = meter.measure_onnx_many([path])
    assert one.n == 15 and len(one.samples_ms) == 15 and one.min_ms > 0
    assert meter.measure_onnx(path, (2, *SHAPE)).n == 15  # the dynamic batch fixed to 2


def test_the_runner_computes_what_onnx_runtime_computes():
    """What is timed is the model: the compiled runner's logits equal ONNX Runtime's on the same input."""
    data = export_onnx_bytes(_net(), (1, *SHAPE), dynamic_batch=True)
    runner = OpenVinoMeasurer(_profile())._onnx_runner(data, (3, *SHAPE))
    x = runner._arrays[0]
    assert x.shape == (3, *SHAPE)
    runner.run()
    got, = runner.outputs()
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.shape == (3, 10) and np.abs(got - want).max() < 1e-4


def test_int8_runs_integer_kernels_and_fp32_runs_float_ones():
    data = export_onnx_bytes(_net(), (1, *SHAPE))
    fp32 = layer_precisions(OpenVinoMeasurer(_profile())._onnx_runner(data, None).compiled)
    int8 = layer_precisions(OpenVinoMeasurer(_profile("int8"))._onnx_runner(data, None).compiled)
    assert fp32 == {"Convolution": {"f32": 3}, "FullyConnected": {"f32": 1}}
    assert set(int8) == {"Convolution", "FullyConnected"}
    assert all(set(counts) <= {"u8", "i8"} for counts in int8.values()), int8
    # an already quantized (QDQ) file is timed as it is, not quantized twice
    from edgenas.hardware.measure import _quantize_int8

    qdq = _quantize_int8(data, {"input": (1, *SHAPE)})
    again = OpenVinoMeasurer(_profile("int8")).measure_onnx_many([qdq])[0]
    assert again.n == 15


def test_shipped_profiles_and_runtime_versions():
    fp32, int8 = load_profile("cpu-openvino"), load_profile("cpu-openvino-int8")
    for p, precision in ((fp32, "fp32"), (int8, "int8")):
        assert (p.device, p.runtime, p.provider, p.precision) == ("cpu", "openvino", None, precision)
        assert (p.threads, p.batch_size, p.input_shape) == (1, 1, (1, 28, 28))
        assert p.measure == load_profile("cpu-ort").measure  # the same protocol as cpu-ort
    hashes = {load_profile(n).latency_hash() for n in ("cpu-ort", "cpu-ort-int8", "cpu-openvino", "cpu-openvino-int8")}
    assert len(hashes) == 4
    from importlib import metadata

    assert runtime_versions()["openvino"] == metadata.version("openvino")


@pytest.mark.parametrize("changes,message", [
    ({"provider": "CPUExecutionProvider"}, "'provider' must be left out for runtime openvino"),
    ({"device": "cuda"}, "runtime openvino measures on device cpu"),
    ({"precision": "fp16", "device": "cuda"}, "runtime openvino measures on device cpu"),
    ({"precision": "int8", "opset": 12}, "'precision' int8 needs 'opset' >= 13"),
])
def test_bad_openvino_profiles_are_one_line_errors(tmp_path, changes, message):
    data = yaml.safe_load(Path(load_profile("cpu-openvino").source).read_text())
    data.update(changes)
    path = tmp_path / "cpu-openvino.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_profile(path)
    line = _one_error_line(CliRunner().invoke(cli, ["profile", "show", str(path)]))
    assert message in line


def test_int8_still_needs_a_runtime_that_runs_qdq(tmp_path):
    with pytest.raises(ConfigError, match="'precision' int8 needs runtime onnxruntime or openvino"):
        Profile(name="x", device="cpu", runtime="torch", input_shape=SHAPE, precision="int8")


def test_missing_openvino_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(EdgenasError, match=r"profile 'cpu-openvino' needs OpenVINO.*edgenas\[openvino\]"):
        create_measurer(load_profile("cpu-openvino"))


# ----- latency tables -----------------------------------------------------------------------------------------
def test_table_build_and_validate_on_cpu_openvino(tmp_path):
    """A real table on OpenVINO with a tiny space (one kernel, one expansion), as tests/test_table.py builds one
    on ONNX Runtime: the build, its storage and a validation on fresh subnets all time in OpenVINO."""
    from edgenas.hardware.table import LatencyTable, build_table, validate_table

    space = create_space("mbv3", "small", width_mult=0.25, head_channels=32, kernels=(3,), expansions=(3,))
    profile = dataclasses.replace(load_profile("cpu-openvino"), measure=MeasureSettings(warmup=2, repeats=5, trials=1))
    table = build_table(space, profile, calib_samples=2, seed=0)
    assert table.environment["runtime"] == "openvino" and "openvino" in table.environment["runtime_versions"]
    cal = table.calibration
    assert cal.n == len(cal.measured_ms) >= 3 and all(m > 0 for m in cal.measured_ms)  # measured in OpenVINO
    archs = [space.sample(np.random.default_rng(s)) for s in range(3)]
    assert all(table.predict(a) > 0 for a in archs)
    reloaded = LatencyTable.load(table.save(tmp_path / "table.json"))
    assert reloaded.profile_object().runtime == "openvino"
    result = validate_table(reloaded, space, n=3)
    assert result.n == 3 and all(m > 0 for m in result.measured_ms) and len(result.predicted_ms) == 3
    assert LatencyTable.load(reloaded.save(tmp_path / "table.json")).validation.n == 3


# ----- the bundle format ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subnet_ckpt(tmp_path_factory, digits):
    """A tiny mbv3 subnet of the digits data with inherited (random) weights and recalibrated BN."""
    space = create_space("mbv3", "small", width_mult=0.25, head_channels=64)
    torch.manual_seed(0)
    subnet = extract_subnet(Supernet(space, digits.num_classes, digits.in_channels),
                            space.sample(np.random.default_rng(0)), digits, recal=2, batch_size=64,
                            device=torch.device("cpu"), channels_last=False)
    meta = {"data": data_facts(digits, DataConfig(name="digits", seed=0)), "source": {}}
    return save_subnet(tmp_path_factory.mktemp("subnet") / "subnet.pt", subnet, meta)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    return {name: _profile_file(root, name) for name in ("cpu-ort", "cpu-openvino", "cpu-openvino-int8")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, subnet_ckpt, profiles):
    """One CLI export with int8 (gate opened: the subnet is untrained) and --format openvino, measured on cpu-ort."""
    out = tmp_path_factory.mktemp("export")
    res = CliRunner().invoke(cli, ["export", str(subnet_ckpt), "--name", "net", "--out-dir", str(out),
                                   "--calib-images", "32", "--int8-tolerance", "100", "--profile", profiles["cpu-ort"],
                                   "--format", "openvino"])
    assert res.exit_code == 0, res.output
    return out / "net", res.stdout


def test_export_writes_the_ir_its_hashes_and_its_record(exported, digits):
    bundle, stdout = exported
    assert sorted(p.name for p in bundle.iterdir()) == sorted(["manifest.json", "model.int8.onnx", "model.onnx",
                                                               BIN_FILE, XML_FILE])
    m = read_manifest(bundle)
    for name in (XML_FILE, BIN_FILE):
        blob = (bundle / name).read_bytes()
        assert m["files"][name] == {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    rec = m["formats"]["openvino"]
    assert rec["files"] == [XML_FILE, BIN_FILE] and rec["runtime"] == "openvino" and rec["weights"] == "fp32"
    assert rec["version"] == runtime_versions()["openvino"] == m["runtime_versions"]["openvino"]
    n = len(digits.test)
    par = rec["parity"]
    assert par["count"] == n and par["max_abs_diff"] <= par["tolerance"] == PARITY_TOLERANCE
    assert par["top1_agreement"] >= 0.999 and rec["accuracy"]["top1_agreement_with_onnx"] == par["top1_agreement"]
    acc, onnx_acc = rec["accuracy"], m["accuracy"]["onnx"]
    assert acc["count"] == n and abs(acc["accuracy"] - onnx_acc["accuracy"]) <= 1 - par["top1_agreement"] + 1e-12
    assert set(rec["layer_precisions"]) == {"Convolution", "FullyConnected"}
    assert all(set(c) == {"f32"} for c in rec["layer_precisions"].values())
    lat = rec["latency"]
    assert lat["profile"] == "cpu-ort" and lat["measure"] == dataclasses.asdict(FAST)
    for runtime in ("openvino", "onnxruntime"):
        stats = lat[runtime]
        assert stats["n"] == 15 and len(stats["trial_medians_ms"]) == 3 and "samples_ms" not in stats
    ratio = lat["openvino"]["median_ms"] / lat["onnxruntime"]["median_ms"]
    assert lat["openvino_over_onnxruntime"] == pytest.approx(ratio)
    assert f"openvino: {rec['summary']}" in stdout and "top-1 agreement with ONNX Runtime" in rec["summary"]
    # the IR is a real OpenVINO model: dynamic batch, fp32 weights (the .bin holds them at 4 bytes each)
    import openvino as ov

    model = ov.Core().read_model(str(bundle / XML_FILE))
    assert model.inputs[0].get_partial_shape().is_dynamic and model.inputs[0].get_partial_shape()[0].is_dynamic
    params = sum(int(np.prod(i.dims)) for i in onnx.load(bundle / "model.onnx").graph.initializer)
    assert (bundle / BIN_FILE).stat().st_size >= 4 * params * 0.9


def test_verify_accepts_the_bundle_and_catches_a_tampered_bin(exported, digits, tmp_path):
    bundle, _ = exported
    m = read_manifest(bundle)
    assert verify_bundle(bundle, digits)["accuracy"] == m["accuracy"]["onnx"]["accuracy"]
    checked = verify_openvino(bundle, digits)
    assert checked["accuracy"] == m["formats"]["openvino"]["accuracy"]["accuracy"]
    assert checked["count"] == len(digits.test) and checked["max_abs_diff"] <= PARITY_TOLERANCE
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    blob = bytearray((copy / BIN_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / BIN_FILE).write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=rf"{BIN_FILE} changed since export: sha256"):
        verify_openvino(copy, digits)
    (copy / XML_FILE).unlink()
    with pytest.raises(BundleError, match=f"has no {XML_FILE}"):
        verify_openvino(copy, digits)
    plain = Path(shutil.copytree(bundle, tmp_path / "plain"))
    manifest = json.loads((plain / "manifest.json").read_text())
    manifest["formats"] = {}
    (plain / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="carries no OpenVINO IR"):
        verify_openvino(plain, digits)


def test_an_ir_that_computes_something_else_fails_the_export_with_nothing_written(subnet_ckpt, tmp_path,
                                                                                    monkeypatch):
    """A converter that changed the network (here: the classifier's weights scaled by 1.5) is caught by the
    parity check against ONNX Runtime, before anything is written."""
    import edgenas.bundle_openvino as bov

    convert = bov.convert_to_ir

    def wrong(onnx_model: bytes) -> tuple[bytes, bytes]:
        proto = onnx.load_model_from_string(onnx_model)
        gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
        weights = next(t for t in proto.graph.initializer if t.name == gemm.input[1])
        scaled = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weights) * 1.5, weights.name)
        weights.CopyFrom(scaled)
        return convert(proto.SerializeToString())

    monkeypatch.setattr(bov, "convert_to_ir", wrong)
    config = ExportConfig(name="bad", out_dir=tmp_path, int8=False, measure=False, parity_images=60,
                          formats=("openvino",))
    with pytest.raises(EdgenasError, match=r"the OpenVINO IR disagrees with ONNX Runtime on 60 test images: max "
                                           r"\|logit diff\| .* \(tolerance 0.0001\)"):
        export_bundle(subnet_ckpt, config)
    assert list(tmp_path.iterdir()) == []


def test_export_measured_on_cpu_openvino_times_both_files_in_openvino(subnet_ckpt, profiles, tmp_path):
    res = export_bundle(subnet_ckpt, ExportConfig(name="ov", out_dir=tmp_path, calib_images=32, int8_tolerance=100,
                                                  parity_images=60, profile=load_profile(profiles["cpu-openvino"]),
                                                  formats=("openvino",)))
    m = res.manifest
    assert m["profile"]["name"] == "cpu-openvino" and m["latency"]["model.onnx"]["n"] == 15
    assert m["latency"]["model.int8.onnx"]["n"] == 15 and m["latency"]["int8_speedup"] > 0
    lat = m["formats"]["openvino"]["latency"]
    assert lat["profile"] == "cpu-openvino" and lat["onnxruntime"]["n"] == lat["openvino"]["n"] == 15


def test_bad_format_and_int8_export_profile_are_one_line_errors(subnet_ckpt, profiles, tmp_path):
    runner = CliRunner()
    base = ["export", str(subnet_ckpt), "--name", "x", "--out-dir", str(tmp_path)]
    line = _one_error_line(runner.invoke(cli, [*base, "--format", "nosuch"]))
    assert "unknown bundle format 'nosuch'" in line and "openvino" in line
    line = _one_error_line(runner.invoke(cli, [*base, "--format", "openvino", "--format", "openvino"]))
    assert "name one format twice" in line
    line = _one_error_line(runner.invoke(cli, [*base, "--profile", profiles["cpu-openvino-int8"]]))
    assert "needs an fp32 profile" in line
    assert list(tmp_path.iterdir()) == []


# ----- the CI check ------------------------------------------------------------------------------------------------
def test_check_update_then_check_on_cpu_openvino(exported, tmp_path):
    """The real OpenVINO timer end to end; which verdict an unchanged bundle gets on a busy machine is not asserted."""
    bundle = Path(shutil.copytree(exported[0], tmp_path / "net"))
    data = yaml.safe_load(Path(load_profile("cpu-openvino").source).read_text())
    data["measure"] = {"warmup": 3, "repeats": 20, "trials": 4, "statistic": "median"}
    profile = tmp_path / "cpu-openvino.yaml"
    profile.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    res = runner.invoke(cli, ["check", str(bundle), "--profile", str(profile), "--update", "--max-seconds", "3"])
    assert res.exit_code == 0, res.output
    assert "wrote baseline for profile cpu-openvino" in res.stdout
    baseline = read_manifest(bundle)["baseline"]
    assert baseline["profile"] == "cpu-openvino" and baseline["model_file"] == "model.onnx"
    assert baseline["runtime_versions"]["openvino"] == runtime_versions()["openvino"]
    res = runner.invoke(cli, ["check", str(bundle), "--profile", str(profile), "--json", "--max-seconds", "3"])
    assert res.exit_code in (0, 1, 3), res.output
    report = json.loads(res.stdout)
    assert report["exit_code"] == res.exit_code and report["latency"]["trials"] == len(report["latency"]["ratios"])
    assert report["flops"]["verdict"] == "PASS" and report["params"]["verdict"] == "PASS"
    assert {f["name"]: f["status"] for f in report["files"]} == {
        "model.onnx": "ok", "model.int8.onnx": "ok", XML_FILE: "ok", BIN_FILE: "ok"}
