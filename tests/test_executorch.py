"""ExecuTorch + XNNPACK: a runtime (profile cpu-executorch) and a bundle format (model.pte beside model.onnx).

Everything here lowers tiny real networks (digits subnets, small conv nets) with the real ExecuTorch and
runs them in its runtime with a shortened protocol; no assertion depends on how fast the machine is.
Lowering costs seconds per module, so the tests share one export and one lowered program.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from edgenas.cli import cli
from edgenas.data import DataConfig
from edgenas.errors import BundleError, ConfigError, EdgenasError
from edgenas.export import ExportConfig, export_bundle, read_manifest, verify_bundle
from edgenas.extract import data_facts, extract_subnet, save_subnet
from edgenas.hardware.measure import create_measurer, export_onnx_bytes, onnx_measurer
from edgenas.hardware.profile import MeasureSettings, Profile, load_profile
from edgenas.space import create_space
from edgenas.space.arch import Arch
from edgenas.supernet import Supernet

needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                      reason="ExecuTorch is not installed (pip install 'edgenas[executorch]')")
FAST = MeasureSettings(warmup=2, repeats=5, trials=3)
SHAPE = (1, 12, 12)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def _tiny_space():
    """Two inverted-residual layers, the second one optional: two architectures, small graphs to lower."""
    return create_space("mbv3", "small", width_mult=0.25, head_channels=32, kernels=(3,), expansions=(3,),
                        stages=({"channels": 16, "depth": 2, "stride": 2, "hswish": True, "se": True},))


def _profile(**changes) -> Profile:
    return Profile(**{"name": "tiny-executorch", "device": "cpu", "runtime": "executorch", "input_shape": SHAPE,
                      "measure": FAST, **changes})


def _one_error_line(res) -> str:
    """Exit 2, no traceback, one ``error:`` line and it ends stderr (progress lines may come before it)."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.stdout == ""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and res.stderr.endswith(errors[0] + "\n"), res.stderr
    return errors[0]


@pytest.fixture(scope="module")
def lowered():
    """The small conv net lowered once at batch 2, shared by the runtime tests."""
    from edgenas.hardware.executorch_runtime import lower_module

    return lower_module(_net(), (2, *SHAPE))


# ----- profiles (no ExecuTorch needed) -----------------------------------------------------------------------
def test_shipped_profile_loads_and_is_its_own_target():
    p = load_profile("cpu-executorch")
    assert (p.device, p.runtime, p.provider, p.precision) == ("cpu", "executorch", None, "fp32")
    assert (p.threads, p.batch_size, p.input_shape) == (1, 1, (1, 28, 28))
    assert p.measure == load_profile("cpu-ort").measure  # the same protocol as cpu-ort
    assert p.latency_hash() not in {load_profile(n).latency_hash() for n in ("cpu-ort", "cpu-torch")}
    listed = CliRunner().invoke(cli, ["profile", "list"])
    assert listed.exit_code == 0 and "cpu-executorch" in listed.output


@pytest.mark.parametrize("changes,message", [
    ({"precision": "int8"}, "'precision' int8 needs runtime onnxruntime"),
    ({"device": "cuda"}, "runtime executorch measures on device cpu"),
    ({"precision": "fp16"}, "'precision' fp16 needs device cuda"),
    ({"provider": "CPUExecutionProvider"}, "'provider' must be left out for runtime executorch"),
])
def test_bad_executorch_profiles_are_one_line_errors(tmp_path, changes, message):
    data = yaml.safe_load(Path(load_profile("cpu-executorch").source).read_text())
    data.update(changes)
    path = tmp_path / "cpu-executorch.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_profile(path)
    assert message in _one_error_line(CliRunner().invoke(cli, ["profile", "show", str(path)]))


def test_missing_executorch_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch.extension.pybindings.portable_lib", None)  # as if not installed
    with pytest.raises(EdgenasError, match=r"profile 'cpu-executorch' needs ExecuTorch.*edgenas\[executorch\]"):
        create_measurer(load_profile("cpu-executorch"))
    from edgenas.hardware.executorch_runtime import lower_module

    with pytest.raises(EdgenasError, match=r"this needs ExecuTorch.*pip install 'edgenas\[executorch\]'"):
        lower_module(_net(), (1, *SHAPE))


@needs_executorch
def test_executorch_profiles_cannot_time_onnx_files(tmp_path):
    """ExecuTorch runs PyTorch modules lowered to .pte, not ONNX files: `profile measure`, `export --profile`
    and `check --profile` refuse it in one line naming the runtimes that can."""
    with pytest.raises(ConfigError, match="runs executorch, which times PyTorch modules, not ONNX files"):
        onnx_measurer(load_profile("cpu-executorch"))
    path = tmp_path / "m.onnx"
    path.write_bytes(export_onnx_bytes(_net(), (1, *SHAPE)))
    line = _one_error_line(CliRunner().invoke(cli, ["profile", "measure", str(path), "--profile", "cpu-executorch"]))
    assert "not ONNX files" in line and "onnxruntime" in line


# ----- the runtime --------------------------------------------------------------------------------------------------
@needs_executorch
def test_measurer_times_modules_and_programs_with_the_protocols_sample_counts(lowered):
    from edgenas.hardware.executorch_runtime import ExecuTorchMeasurer

    meter = create_measurer(_profile())
    assert isinstance(meter, ExecuTorchMeasurer)
    net = _net()
    stats = meter.measure_many([net, nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU()), net], [None, (1, 1, 6, 6), None])
    assert [s.n for s in stats] == [15, 15, 15] and all(len(s.trial_medians_ms) == 3 for s in stats)
    assert all(0 < s.p10_ms <= s.median_ms <= s.p90_ms for s in stats)
    one, = meter.measure_pte_many([lowered.pte])
    assert one.n == 15 and len(one.samples_ms) == 15 and one.min_ms > 0


@needs_executorch
def test_the_lowered_program_computes_what_torch_computes(lowered):
    """What is timed is the model: XNNPACK runs the whole net (one partition, nothing left outside) and the
    loaded program's outputs equal torch's for inputs of its static shape."""
    from edgenas.hardware.executorch_runtime import load_program

    assert lowered.input_shape == (2, *SHAPE) and lowered.partitions == 1 and lowered.ops_outside == {}
    program = load_program(lowered.pte, 1)
    assert program.input_shape == (2, *SHAPE)
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    got = program.predict(x.numpy())  # 2 + 2 + 1 (zero-padded) images
    with torch.no_grad():
        want = _net()(x).numpy()
    assert got.shape == (5, 10) and np.abs(got - want).max() < 1e-4
    with pytest.raises(EdgenasError, match=r"takes a float32 input of shape \[2, 1, 12, 12\], not float32 \[1, 1"):
        program.set_input(x[:1])


@needs_executorch
def test_bad_programs_and_unlowerable_modules_are_one_line_errors(lowered, tmp_path):
    from edgenas.hardware.executorch_runtime import load_program, lower_module

    with pytest.raises(EdgenasError, match="ExecuTorch cannot load the ExecuTorch program: "):
        load_program(b"not a program" * 8, 1)
    bad = tmp_path / "model.pte"
    bad.write_bytes(lowered.pte[: len(lowered.pte) // 2])
    with pytest.raises(EdgenasError, match=f"ExecuTorch cannot load {bad}"):
        load_program(bad, 1)
    with pytest.raises(EdgenasError, match="ExecuTorch program not found"):
        load_program(tmp_path / "missing.pte", 1)

    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if bool(x.sum() > 0) else -x

    with pytest.raises(EdgenasError, match=r"cannot lower DataDependent to ExecuTorch with XNNPACK at input "
                                           r"\[1, 1, 4, 4\]: "):
        lower_module(DataDependent(), (1, 1, 4, 4))


@needs_executorch
def test_the_process_wide_thread_pool_is_not_resized_under_a_loaded_program(lowered):
    """XNNPACK keeps the pool it was loaded with; resizing it would free that pool under the live program."""
    from edgenas.hardware.executorch_runtime import import_executorch, load_program

    lib = import_executorch()
    one = load_program(lowered.pte, 1)
    assert lib._threadpool_get_thread_count() == 1
    with pytest.raises(EdgenasError, match=r"cannot run ExecuTorch on 2 thread\(s\) while a program loaded for 1"):
        load_program(lowered.pte, 2)
    x = np.zeros((2, *SHAPE), dtype=np.float32)
    before = one.predict(x)
    del one
    two = load_program(lowered.pte, 2)
    assert lib._threadpool_get_thread_count() == 2
    np.testing.assert_allclose(two.predict(x), before, atol=1e-5)
    del two
    load_program(lowered.pte, 1)  # back to the size the rest of the suite uses
    assert lib._threadpool_get_thread_count() == 1


# ----- latency tables -----------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_executorch
def test_table_build_and_validate_on_cpu_executorch(tmp_path):
    """A real table timed in ExecuTorch on the two-layer space. Lowering costs seconds per module, so the build
    has no calibration subnets (both architectures are left for the validation) and no speed reference: it
    lowers 6 modules, the validation 2."""
    from edgenas.hardware.table import LatencyTable, build_table, validate_table

    space = _tiny_space()
    fast = MeasureSettings(warmup=2, repeats=5, trials=1)
    profile = dataclasses.replace(load_profile("cpu-executorch"), measure=fast)
    table = build_table(space, profile, calib_samples=0, seed=0, reference=False)
    assert table.environment["runtime"] == "executorch" and table.reference is None
    archs = [space.sample(np.random.default_rng(s)) for s in range(4)]
    assert all(table.predict(a) > 0 for a in archs)
    reloaded = LatencyTable.load(table.save(tmp_path / "table.json"))
    assert reloaded.profile_object().runtime == "executorch"
    result = validate_table(reloaded, space, n=2)  # measured end to end in ExecuTorch
    assert result.n == 2 and all(m > 0 for m in result.measured_ms) and len(result.predicted_ms) == 2
    assert LatencyTable.load(reloaded.save(tmp_path / "table.json")).validation.n == 2


# ----- the bundle format ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subnet_ckpt(tmp_path_factory, digits):
    """A subnet of the two-layer space on the digits data with inherited (random) weights and recalibrated
    BN: squeeze-excite, hard-swish and the head's pooling, in a graph small enough to lower in seconds."""
    space = _tiny_space()
    torch.manual_seed(0)
    arch = Arch.from_str("mbv3@v1:0-0")  # both layers present
    subnet = extract_subnet(Supernet(space, digits.num_classes, digits.in_channels), arch, digits, recal=2,
                            batch_size=64, device=torch.device("cpu"), channels_last=False)
    meta = {"data": data_facts(digits, DataConfig(name="digits", seed=0)), "source": {}}
    return save_subnet(tmp_path_factory.mktemp("subnet") / "subnet.pt", subnet, meta)


@pytest.fixture(scope="module")
def ort_profile(tmp_path_factory):
    data = yaml.safe_load(Path(load_profile("cpu-ort").source).read_text())
    data["measure"] = dataclasses.asdict(FAST)
    path = tmp_path_factory.mktemp("profiles") / "cpu-ort.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, subnet_ckpt, ort_profile):
    """One CLI export with --format executorch (no int8: that is test_export's), measured on cpu-ort."""
    if importlib.util.find_spec("executorch") is None:
        pytest.skip("ExecuTorch is not installed (pip install 'edgenas[executorch]')")
    out = tmp_path_factory.mktemp("export")
    res = CliRunner().invoke(cli, ["export", str(subnet_ckpt), "--name", "net", "--out-dir", str(out), "--no-int8",
                                   "--profile", ort_profile, "--format", "executorch"])
    assert res.exit_code == 0, res.output
    return out / "net", res.stdout


@needs_executorch
def test_export_writes_the_program_its_hash_and_its_record(exported, digits):
    from edgenas.bundle_executorch import PARITY_TOLERANCE, PTE_FILE
    from edgenas.hardware.executorch_runtime import load_program

    bundle, stdout = exported
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx", PTE_FILE]
    m = read_manifest(bundle)
    blob = (bundle / PTE_FILE).read_bytes()
    assert m["files"][PTE_FILE] == {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    rec = m["formats"]["executorch"]
    from importlib import metadata

    assert rec["files"] == [PTE_FILE] and rec["runtime"] == "executorch" and rec["backend"] == "XnnpackBackend"
    assert rec["version"] == metadata.version("executorch") and rec["input_shape"] == [1, 1, 8, 8]
    assert rec["delegation"]["partitions"] >= 1 and rec["delegation"]["backend"] == "XnnpackBackend"
    n = len(digits.test)
    par = rec["parity"]
    assert par["count"] == n and par["max_abs_diff"] <= par["tolerance"] == PARITY_TOLERANCE
    assert par["top1_agreement"] >= 0.999 and rec["accuracy"]["top1_agreement_with_onnx"] == par["top1_agreement"]
    acc, onnx_acc = rec["accuracy"], m["accuracy"]["onnx"]
    assert acc["count"] == n and abs(acc["accuracy"] - onnx_acc["accuracy"]) <= 1 - par["top1_agreement"] + 1e-12
    lat = rec["latency"]
    assert lat["profile"] == "cpu-ort" and lat["measure"] == dataclasses.asdict(FAST) and lat["batch_size"] == 1
    for runtime in ("executorch", "onnxruntime"):
        stats = lat[runtime]
        assert stats["n"] == 15 and len(stats["trial_medians_ms"]) == 3 and "samples_ms" not in stats
    assert lat["executorch_over_onnxruntime"] == pytest.approx(lat["executorch"]["median_ms"]
                                                               / lat["onnxruntime"]["median_ms"])
    assert f"executorch: {rec['summary']}" in stdout and "top-1 agreement with ONNX Runtime" in rec["summary"]
    # the file is a real ExecuTorch program of the network: its logits are ONNX Runtime's on test images
    x = digits.test.batch(torch.arange(16))[0].numpy()
    got = load_program(bundle / PTE_FILE, 1).predict(x)
    want = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.abs(got - want[0]).max() <= PARITY_TOLERANCE


@needs_executorch
def test_verify_accepts_the_bundle_and_catches_a_tampered_program(exported, digits, tmp_path):
    from edgenas.bundle_executorch import PTE_FILE, verify_executorch

    bundle, _ = exported
    m = read_manifest(bundle)
    assert verify_bundle(bundle, digits)["accuracy"] == m["accuracy"]["onnx"]["accuracy"]
    checked = verify_executorch(bundle, digits)
    assert checked["accuracy"] == m["formats"]["executorch"]["accuracy"]["accuracy"]
    assert checked["count"] == len(digits.test) and checked["top1_agreement_with_onnx"] >= 0.999
    assert verify_executorch(bundle, digits, limit=10)["count"] == 10
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    blob = bytearray((copy / PTE_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / PTE_FILE).write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=rf"{PTE_FILE} changed since export: sha256"):
        verify_executorch(copy, digits)
    (copy / PTE_FILE).unlink()
    with pytest.raises(BundleError, match=f"has no {PTE_FILE} although its manifest lists it"):
        verify_executorch(copy, digits)
    plain = Path(shutil.copytree(bundle, tmp_path / "plain"))
    manifest = json.loads((plain / "manifest.json").read_text())
    manifest["formats"] = {}
    (plain / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="carries no ExecuTorch program"):
        verify_executorch(plain, digits)


@needs_executorch
def test_a_program_that_computes_something_else_fails_the_export_with_nothing_written(subnet_ckpt, tmp_path,
                                                                                      monkeypatch):
    """A lowering that changed the network (here: its logits scaled by 1.5) is caught by the parity check
    against ONNX Runtime before anything is written; no latency is measured (--no-measure)."""
    import edgenas.bundle_executorch as bet

    lower = bet.lower_module
    monkeypatch.setattr(bet, "lower_module", lambda model, shape: lower(nn.Sequential(model, _Scale(1.5)), shape))
    config = ExportConfig(name="bad", out_dir=tmp_path, int8=False, measure=False, formats=("executorch",))
    with pytest.raises(EdgenasError, match=r"the ExecuTorch program disagrees with ONNX Runtime on \d+ test images: "
                                           r"max \|logit diff\| .* nothing written"):
        export_bundle(subnet_ckpt, config)
    assert list(tmp_path.iterdir()) == []


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_export_without_executorch_is_one_line(subnet_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.extension.pybindings.portable_lib", None)  # as if not installed
    res = CliRunner().invoke(cli, ["export", str(subnet_ckpt), "--name", "net", "--out-dir", str(tmp_path),
                                   "--no-int8", "--no-measure", "--format", "executorch"])
    assert "pip install 'edgenas[executorch]'" in _one_error_line(res)
    assert list(tmp_path.iterdir()) == []
