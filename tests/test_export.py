"""Export: a subnet checkpoint becomes a checked ONNX bundle whose manifest describes it exactly."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgenas.cli import cli
from edgenas.data import ArrayDataset, DataConfig, iterate_batches
from edgenas.errors import ConfigError, EdgenasError
from edgenas.export import (
    BUNDLE_FORMAT,
    PARITY_TOLERANCE,
    BundleError,
    ExportConfig,
    check_onnx,
    export_bundle,
    export_onnx,
    onnx_cost,
    read_manifest,
    verify_bundle,
    write_manifest,
)
from edgenas.extract import data_facts, extract_subnet, load_subnet, save_subnet
from edgenas.hardware.flops import count_flops
from edgenas.hardware.profile import MeasureSettings, load_profile
from edgenas.space import create_space
from edgenas.supernet import Supernet

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "classify_onnx.py"


def _subnet(digits):
    """A tiny mbv3 subnet with inherited (random) weights and recalibrated BN: untrained, so accuracies are
    near chance, but every figure the export records is still computed on real images."""
    space = create_space("mbv3", "small", width_mult=0.25, head_channels=64)
    torch.manual_seed(0)
    supernet = Supernet(space, digits.num_classes, digits.in_channels)
    return extract_subnet(supernet, space.sample(np.random.default_rng(0)), digits, recal=2, batch_size=64,
                          device=torch.device("cpu"), channels_last=False)


@pytest.fixture(scope="module")
def subnet_ckpt(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("subnet") / "subnet.pt"
    meta = {"data": data_facts(digits, DataConfig(name="digits", seed=0)),
            "source": {"run_dir": "runs/x", "supernet": "runs/x/supernet.pt"}}
    return save_subnet(path, _subnet(digits), meta)


@pytest.fixture(scope="module")
def fast_profile():
    return dataclasses.replace(load_profile("cpu-ort"), measure=MeasureSettings(warmup=2, repeats=5, trials=2))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, subnet_ckpt, fast_profile):
    """One full export (int8 and a shortened latency measurement) shared by the read-only tests. The subnet
    is untrained (accuracy at chance, so its int8 drop is noise), and these tests are about the files and
    figures of a bundle with int8, so the accuracy gate is opened (it is tested in test_int8_gate.py)."""
    out = tmp_path_factory.mktemp("export")
    stages: list[str] = []
    result = export_bundle(subnet_ckpt, ExportConfig(name="digits-net", out_dir=out, calib_images=64,
                                                     profile=fast_profile, int8_tolerance=100),
                           on_progress=stages.append)
    return result, stages


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_bundle_files_and_manifest(bundle, subnet_ckpt, digits):
    result, stages = bundle
    d, m = result.bundle_dir, result.manifest
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "model.int8.onnx", "model.onnx"]
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")]  # no temporary directories left
    assert read_manifest(d) == json.loads(json.dumps(m))
    subnet, meta, _ = load_subnet(subnet_ckpt)
    assert m["format"] == BUNDLE_FORMAT and m["name"] == "digits-net" and "baseline" not in m
    assert m["arch"] == subnet.arch.to_str() and m["arch_id"] == subnet.arch.arch_id and m["space"] == meta["space"]
    assert m["data"] == meta["data"] and m["opset"] == 17 and m["created"].endswith("+00:00")
    assert m["input"] == {**m["input"], "name": "input", "shape": [None, 1, 8, 8], "dtype": "float32",
                          "layout": "NCHW", "mean": list(digits.mean), "std": list(digits.std), "scale": 1 / 255}
    assert m["output"] == {"name": "logits", "classes": list(digits.class_names)}
    for name, info in m["files"].items():
        blob = (d / name).read_bytes()
        assert info == {"sha256": __import__("hashlib").sha256(blob).hexdigest(), "bytes": len(blob)}
    assert m["source"] == {"subnet": str(subnet_ckpt.resolve()), "source": meta["source"]}
    assert set(m["runtime_versions"]) >= {"torch", "onnxruntime", "onnx"}
    assert any("exporting" in s for s in stages) and any("int8" in s for s in stages) and "writing" in stages[-1]


def test_onnx_checker_passes_and_batch_is_dynamic(bundle, subnet_ckpt, digits):
    d = bundle[0].bundle_dir
    onnx.checker.check_model(onnx.load(d / "model.onnx"), full_check=True)
    onnx.checker.check_model(onnx.load(d / "model.int8.onnx"), full_check=True)
    subnet, _, _ = load_subnet(subnet_ckpt)
    x, _ = next(iterate_batches(digits.test, 7, shuffle=False))
    sess = _session(d / "model.onnx")
    assert sess.get_inputs()[0].shape[0] == "batch"
    for n in (1, 7):
        got = sess.run(["logits"], {"input": x[:n].numpy()})[0]
        assert got.shape == (n, digits.num_classes)
        np.testing.assert_allclose(got, subnet(x[:n]).detach().numpy(), atol=PARITY_TOLERANCE, rtol=0)


def test_parity_and_accuracy_figures(bundle, digits):
    m = bundle[0].manifest
    n = len(digits.test)
    par, acc = m["parity"], m["accuracy"]
    assert par["count"] == n and par["batch_sizes"] == [256, n - 256]  # a final partial batch ran
    assert par["max_abs_diff"] <= par["tolerance"] == PARITY_TOLERANCE and par["top1_agreement"] >= 0.999
    assert acc["split"] == "test"
    for key in ("torch", "onnx", "int8"):
        assert acc[key]["count"] == n and acc[key]["accuracy"] == pytest.approx(acc[key]["correct"] / n)
    assert abs(acc["torch"]["accuracy"] - acc["onnx"]["accuracy"]) <= 1 - par["top1_agreement"] + 1e-12


def test_int8_file_and_figures(bundle):
    d, m = bundle[0].bundle_dir, bundle[0].manifest
    ops = {node.op_type for node in onnx.load(d / "model.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    i8 = m["accuracy"]["int8"]
    assert i8["calib_images"] == 64 and i8["calib_split"] == "train" and i8["format"] == "QDQ"
    assert 0.0 <= i8["top1_agreement_with_fp32"] <= 1.0
    assert m["accuracy"]["int8_drop_points"] == pytest.approx(100 * (m["accuracy"]["onnx"]["accuracy"]
                                                                     - i8["accuracy"]))
    gate = m["int8"]
    assert gate["status"] == "shipped" and gate["file"] == "model.int8.onnx" and gate["reason"] is None
    assert gate["tolerance_points"] == 100 and gate["drop_points"] == pytest.approx(m["accuracy"]["int8_drop_points"])
    assert gate["calibration"] == {k: i8[k] for k in gate["calibration"]}


def test_metadata_props_describe_the_model(bundle, digits):
    d, m = bundle[0].bundle_dir, bundle[0].manifest
    for name in ("model.onnx", "model.int8.onnx"):
        proto = onnx.load(d / name)
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["arch"] == m["arch"] and props["arch_id"] == m["arch_id"]
        assert props["space"] == m["space"]["name"] and props["dataset"] == "digits" and props["opset"] == "17"
        assert json.loads(props["class_names"]) == list(digits.class_names)
        norm = json.loads(props["normalization"])
        assert norm == {"mean": list(digits.mean), "std": list(digits.std), "scale": 1 / 255, "layout": "NCHW",
                        "input_size": [8, 8]}
        assert props["edgenas_version"] and m["arch"] in proto.graph.doc_string


def test_cost_figures_match_the_torch_model_and_the_graph(bundle, subnet_ckpt):
    d, cost = bundle[0].bundle_dir, bundle[0].manifest["cost"]
    subnet, _, _ = load_subnet(subnet_ckpt)
    flops = count_flops(subnet, (1, 1, 8, 8))
    assert cost["flops"] == flops.flops and cost["params"] == sum(p.numel() for p in subnet.parameters())
    assert cost["mflops"] == pytest.approx(flops.flops / 1e6) and "multiply-add" in cost["flops_convention"]
    # the graph's Conv/Gemm multiply-adds are fvcore's conv + linear counts (BN is folded, not dropped)
    assert cost["onnx_macs"] == flops.by_operator["conv"] + flops.by_operator["linear"]
    assert onnx_cost((d / "model.onnx").read_bytes(), (1, 8, 8)) == {k: cost[k] for k in ("onnx_macs", "onnx_params")}
    by_op = onnx_cost(onnx.load(d / "model.onnx"), (1, 1, 8, 8), by_op=True)["onnx_macs_by_op"]
    assert by_op == cost["onnx_macs_by_op"]
    assert onnx_cost(onnx.load(d / "model.int8.onnx"), (1, 1, 8, 8))["onnx_macs"] == cost["onnx_macs"]


def test_latency_is_measured_interleaved(bundle, fast_profile):
    m = bundle[0].manifest
    lat = m["latency"]
    assert m["profile"]["name"] == "cpu-ort"
    assert m["profile"]["latency_hash"] == fast_profile.with_input_shape((1, 8, 8)).latency_hash()
    for name in ("model.onnx", "model.int8.onnx"):
        assert lat[name]["n"] == 10 and "samples_ms" not in lat[name]
        assert lat[name]["p10_ms"] <= lat[name]["median_ms"] <= lat[name]["p90_ms"]
    assert lat["int8_speedup"] == pytest.approx(lat["model.onnx"]["median_ms"] / lat["model.int8.onnx"]["median_ms"])


def test_onnx_cost_equals_hand_computed_macs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 7))
    cost = onnx_cost(export_onnx(model.eval(), (1, 3, 5, 6)), (3, 5, 6), by_op=True)
    conv1 = (4 * 5 * 6) * (3 * 3 * 3)  # output elements x (in channels / groups x kernel)
    conv2 = (4 * 3 * 3) * (1 * 3 * 3)  # depthwise, stride 2: 5x6 -> 3x3
    gemm = 7 * 36
    assert cost["onnx_macs_by_op"] == {"Conv": conv1 + conv2, "Gemm": gemm}
    assert cost["onnx_macs"] == conv1 + conv2 + gemm
    assert cost["onnx_params"] == sum(p.numel() for p in model.parameters())
    # MatMul: (1 x 5) @ (5 x 3) is 15 multiply-adds
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((5, 3), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    matmul = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_cost(matmul, (5,), by_op=True) == {"onnx_macs": 15, "onnx_params": 15,
                                                   "onnx_macs_by_op": {"MatMul": 15}}
    assert onnx_cost(matmul.SerializeToString(), (4, 5))["onnx_macs"] == 15  # the batch is always 1
    with pytest.raises(ConfigError, match="has 2 dimensions"):
        onnx_cost(matmul, (1, 2, 5))


class Spectral(nn.Module):
    """FFT mixing: no ONNX symbolic for aten::fft_fft2 in torch's TorchScript exporter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x).real


def test_unsupported_op_is_named_with_its_module(capfd):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Spectral(), nn.Flatten())
    with pytest.raises(EdgenasError) as info:
        export_onnx(model.eval(), (1, 1, 8, 8))
    message = str(info.value)
    assert "aten::fft_fft2" in message and "1 (Spectral)" in message and "opset 17" in message
    assert "\n" not in message
    assert capfd.readouterr().out == ""  # the exporter's IR dump does not reach stdout


def test_op_onnxruntime_cannot_run_is_named():
    from onnx import TensorProto, helper

    node = helper.make_node("Foo", ["x"], ["y"], domain="com.example", name="foo0")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(EdgenasError, match=r"op com\.example\.Foo \(node 'foo0'\).*cannot run"):
        check_onnx(model.SerializeToString())
    with pytest.raises(EdgenasError, match="not a valid ONNX model"):
        check_onnx(b"not onnx")


def test_verify_bundle_and_standalone_example_agree_with_the_manifest(bundle, digits, tmp_path):
    d, m = bundle[0].bundle_dir, bundle[0].manifest
    onnx_acc = m["accuracy"]["onnx"]
    assert verify_bundle(d, digits) == {"accuracy": onnx_acc["accuracy"], "correct": onnx_acc["correct"],
                                        "count": onnx_acc["count"], "file": "model.onnx"}
    assert verify_bundle(d, digits, file="model.int8.onnx")["correct"] == m["accuracy"]["int8"]["correct"]
    assert verify_bundle(d, limit=10)["count"] == 10  # data loaded from the manifest
    npz = tmp_path / "digits-test.npz"
    np.savez(npz, x=digits.test.images.numpy()[:, 0], y=digits.test.labels.numpy())  # N x H x W, as users have
    out = subprocess.run([sys.executable, str(EXAMPLE), str(d), "--npz", str(npz), "--json"],
                         capture_output=True, text=True, check=True, timeout=120)
    got = json.loads(out.stdout)
    assert got["count"] == onnx_acc["count"] and got["accuracy"] == onnx_acc["accuracy"]
    imports = {line.split()[1].split(".")[0] for line in EXAMPLE.read_text().splitlines()
               if line.startswith(("import ", "from "))}
    assert imports == {"__future__", "argparse", "gzip", "json", "struct", "sys", "pathlib", "numpy", "onnxruntime"}


def test_example_resize_matches_training_preprocessing():
    spec = importlib.util.spec_from_file_location("classify_onnx", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = np.random.default_rng(0)
    for size, out in ((8, 12), (16, 10), (28, 27), (8, 8)):
        images = rng.integers(0, 256, (3, 1, size, size), dtype=np.uint8)
        ds = ArrayDataset(torch.from_numpy(images), torch.zeros(3, dtype=torch.int64), [0.3], [0.2],
                          resize=out if out != size else None)
        expected = ds.batch(torch.arange(3))[0].numpy()
        got = example.preprocess(images, {"shape": [None, 1, out, out], "mean": [0.3], "std": [0.2], "scale": 1 / 255})
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_cli_export_json_then_existing_bundle_and_force(subnet_ckpt, tmp_path):
    runner = CliRunner()
    args = ["export", str(subnet_ckpt), "--name", "cli", "--out-dir", str(tmp_path), "--no-int8", "--no-measure",
            "--parity-images", "100"]
    res = runner.invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["bundle_dir"] == str(tmp_path / "cli") and list(m["files"]) == ["model.onnx"]
    assert m["accuracy"]["int8"] is None and m["int8"] is None and m["latency"] is None and m["profile"] is None
    assert m["parity"]["count"] == 100 and m["accuracy"]["onnx"]["count"] == 100
    before = (tmp_path / "cli" / "manifest.json").read_text()
    res = runner.invoke(cli, args)
    assert res.exit_code == 2 and "already exists" in res.output and "--force" in res.output
    assert (tmp_path / "cli" / "manifest.json").read_text() == before
    extra = ["--simplify"] if importlib.util.find_spec("onnxsim") else []
    res = runner.invoke(cli, [*args, "--force", *extra])
    assert res.exit_code == 0, res.output
    assert "parity torch vs onnxruntime on 100 test images" in res.stdout and "test accuracy" in res.stdout
    assert read_manifest(tmp_path / "cli")["simplified"] == bool(extra)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]


def test_cli_one_line_errors(subnet_ckpt, tmp_path):
    runner = CliRunner()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    cases = [
        ([str(tmp_path / "bad.pt")], "corrupt or not an edgenas checkpoint"),
        ([str(tmp_path / "other.pt")], "not an edgenas subnet checkpoint"),
        ([str(tmp_path / "missing.pt")], "not found"),
        ([str(subnet_ckpt), "--opset", "16"], "opset must be between 17"),
        ([str(subnet_ckpt), "--calib-images", "0"], "calib_images"),
        ([str(subnet_ckpt), "--profile", "cpu-torch"], "times PyTorch modules, not ONNX files"),
    ]
    for extra, message in cases:
        res = runner.invoke(cli, ["export", *extra, "--name", "x", "--out-dir", str(tmp_path / "out")])
        assert res.exit_code == 2, (extra, res.output)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0] and res.stderr.endswith(errors[0] + "\n"), res.output
        assert res.stdout == "" and "Traceback" not in res.output
    assert not (tmp_path / "out" / "x").exists()
    with pytest.raises(ConfigError, match="bundle name"):
        ExportConfig(name="../escape")


def test_failed_export_leaves_nothing_behind(subnet_ckpt, tmp_path, monkeypatch):
    config = ExportConfig(name="b", out_dir=tmp_path, int8=False, measure=False, parity_images=40, simplify=True)
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # as if onnxsim were not installed
    with pytest.raises(EdgenasError, match="pip install onnxsim"):
        export_bundle(subnet_ckpt, config)
    monkeypatch.setattr("edgenas.export.PARITY_TOLERANCE", 0.0)
    with pytest.raises(EdgenasError, match=r"disagrees with torch on 40 test images.*tolerance 0\)"):
        export_bundle(subnet_ckpt, dataclasses.replace(config, simplify=False))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("edgenas.export.PARITY_TOLERANCE", 1e-4)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("edgenas.io.atomic_write_json", broken)  # fails after the model files are written
    with pytest.raises(OSError, match="disk full"):
        export_bundle(subnet_ckpt, dataclasses.replace(config, simplify=False))
    assert list(tmp_path.iterdir()) == []


def test_manifest_helpers(tmp_path, bundle):
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "edgenas-subnet/1"}))
    with pytest.raises(BundleError, match="expected 'edgenas-bundle/1'"):
        read_manifest(tmp_path)
    with pytest.raises(BundleError, match="refusing"):
        write_manifest(tmp_path, {"format": "other"})
    manifest = {**bundle[0].manifest, "baseline": {"onnx_macs": 1}}
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path)["baseline"] == {"onnx_macs": 1}
