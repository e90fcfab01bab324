"""int8 as a quality gate: the quantizer holds on binary images, and an int8 model that does not is left out.

The data is what a user reported: Fashion-MNIST thresholded to binary silhouettes (pixel > 0 -> 255, else 0),
loaded through ``npz:``. There, int8 with 8-bit per-channel weights lost 3-41 points of accuracy on an
x86 host without VNNI (ONNX Runtime's u8 x s8 kernels saturate int16 sums when inputs sit at 255)
while the unfused QDQ graph lost none; 7-bit weights fixed it (see edgenas.quantize).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgenas.cli import cli
from edgenas.data import DataConfig, iterate_batches, load_dataset
from edgenas.errors import ConfigError
from edgenas.export import (
    INT8_FILE,
    INT8_TOLERANCE,
    MODEL_FILE,
    ExportConfig,
    Int8GateError,
    _ImageCalibration,
    _preprocess,
    export_bundle,
    read_manifest,
)
from edgenas.extract import data_facts, extract_subnet
from edgenas.finetune import FinetuneConfig, finetune
from edgenas.onnx_graph import export_onnx
from edgenas.quantize import quantize_int8
from edgenas.space import create_space
from edgenas.supernet import Supernet

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION_MNIST.is_dir(),
                                   reason="Debian package dataset-fashion-mnist not installed")


class _Batches:
    """A calibration reader over fixed batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches, self.i = batches, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return {"input": self.batches[self.i - 1]} if self.i <= len(self.batches) else None

    def rewind(self) -> None:
        self.i = 0


def _run(model: bytes, x: np.ndarray, *, fused: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not fused:  # Q/DQ pairs around float kernels: the quantization error alone
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_int8_kernels_compute_the_quantized_graph_on_binary_images():
    """A stem-like conv on binary images: ONNX Runtime's fused int8 kernels must compute what the QDQ graph
    says. With 8-bit per-channel weights they saturated (errors up to a third of the output range on AVX2
    without VNNI); with 7-bit weights nothing can."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    fp32 = export_onnx(conv, (1, 1, 28, 28), opset=17)
    rng = np.random.default_rng(0)
    binary = np.where(rng.random((64, 1, 28, 28)) < 0.5, -1.0, 1.0).astype(np.float32)
    int8, _ = quantize_int8(fp32, _Batches([binary]))
    fused, unfused = _run(int8, binary, fused=True), _run(int8, binary, fused=False)
    span = float(np.abs(unfused).max())
    assert float(np.abs(fused - unfused).max()) <= 0.02 * span
    assert float(np.abs(unfused - _run(fp32, binary, fused=True)).max()) <= 0.05 * span  # and it is close to fp32


def test_calibration_images_are_preprocessed_as_at_inference(digits):
    """Calibration feeds training images exactly as a deployment feeds the model (the manifest's recipe)."""
    reader = _ImageCalibration(digits.train, 100)
    feeds = []
    while (batch := reader.get_next()) is not None:
        feeds.append(batch["input"])
    calib = np.concatenate(feeds)
    assert calib.shape == (100, 1, 8, 8) and calib.dtype == np.float32 and reader.used == 100
    spec = {"input": {"mean": list(digits.mean), "std": list(digits.std), "scale": 1 / 255}}
    train = _preprocess(digits.train.images.numpy(), spec).reshape(len(digits.train), -1)
    distance = np.abs(calib.reshape(100, 1, -1) - train[None]).max(axis=2)  # calib image x train image
    assert (distance.min(axis=1) <= 1e-6).all()  # every calibration input is a preprocessed training image
    assert len(set(distance.argmin(axis=1).tolist())) == 100  # and they are 100 different ones
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], feeds[0])  # seeded: the same order again


def test_int8_tolerance_and_require_int8_are_validated():
    assert ExportConfig(name="x").int8_tolerance == INT8_TOLERANCE == 1.0
    for bad in (-0.5, 101, True, "1", float("nan")):
        with pytest.raises(ConfigError, match="int8_tolerance"):
            ExportConfig(name="x", int8_tolerance=bad)
    assert ExportConfig(name="x", int8_tolerance=0).int8_tolerance == 0
    with pytest.raises(ConfigError, match="require_int8 needs int8"):
        ExportConfig(name="x", int8=False, require_int8=True)


@pytest.fixture(scope="module")
def silhouette_ckpt(tmp_path_factory):
    """A tiny mbv3 subnet (the space's smallest architecture) trained for 2 epochs on 3000 Fashion-MNIST
    silhouettes, saved as a user's ``npz:`` dataset with 1000 test images; about 65% test accuracy."""
    if not FASHION_MNIST.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    root = tmp_path_factory.mktemp("silhouettes")
    fm = load_dataset(DataConfig(name="fashion-mnist", download=False, val_fraction=0.01))
    binary = {key: np.where(ds.images[:n, 0].numpy() > 0, 255, 0).astype(np.uint8)
              for key, ds, n in (("x", fm.train, 3000), ("x_test", fm.test, 1000))}
    np.savez(root / "silhouettes.npz", **binary, y=fm.train.labels[:3000].numpy(), y_test=fm.test.labels[:1000].numpy())
    config = DataConfig(name=f"npz:{root / 'silhouettes.npz'}", seed=0, val_limit=200)
    data = load_dataset(config)
    space = create_space("mbv3", "small", width_mult=0.25, head_channels=64)
    smallest = space.arch([0 if "skip" not in layer.choices else layer.choices.index("skip") for layer in space.layers])
    torch.manual_seed(0)
    subnet = extract_subnet(Supernet(space, data.num_classes, data.in_channels), smallest, data, recal=1,
                            batch_size=64, device=torch.device("cpu"), channels_last=False)
    result = finetune(subnet, data, FinetuneConfig(epochs=2, from_scratch=True, batch_size=64, lr=0.1,
                                                   label_smoothing=0.0, amp=False, channels_last=False),
                      root / "finetune", device=torch.device("cpu"), meta={"data": data_facts(data, config)})
    assert result.test_accuracy > 0.5  # trained: a drop of accuracy can show
    return result.checkpoint


def _raw_pixel_calibration(self):
    """The classic calibration bug, on purpose: images fed as 0..255 pixels, not normalised as at inference."""
    self.used = 0
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (self.train.mean, self.train.std))
    for x, _ in iterate_batches(self.train, 64, shuffle=False):
        take = min(int(x.shape[0]), self.count - self.used)
        if take <= 0:
            return
        self.used += take
        yield {"input": ((x[:take] * std + mean) * 255).numpy()}


@pytest.mark.slow
@needs_fashion
def test_int8_holds_on_binary_silhouettes(silhouette_ckpt, tmp_path):
    result = export_bundle(silhouette_ckpt, ExportConfig(name="sil", out_dir=tmp_path, measure=False))
    m, gate = result.manifest, result.manifest["int8"]
    assert sorted(p.name for p in result.bundle_dir.iterdir()) == ["manifest.json", INT8_FILE, MODEL_FILE]
    assert gate["status"] == "shipped" and gate["file"] == INT8_FILE and gate["reason"] is None
    assert gate["count"] == 1000 and gate["tolerance_points"] == 1.0
    assert gate["drop_points"] <= 1.0  # with 8-bit weights the gate left it out (AVX2 without VNNI)
    assert gate["drop_points"] == pytest.approx(100 * (gate["fp32_accuracy"] - gate["int8_accuracy"]))
    assert gate["fp32_accuracy"] == m["accuracy"]["onnx"]["accuracy"]
    assert gate["int8_accuracy"] == m["accuracy"]["int8"]["accuracy"]
    assert gate["calibration"]["weights"] == "int8 per-channel, 7-bit range (reduce_range)"
    assert gate["calibration"]["calib_images"] == 512 and gate["calibration"]["calib_split"] == "train"


@pytest.mark.slow
@needs_fashion
def test_gate_leaves_a_broken_int8_out_and_says_why(silhouette_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(_ImageCalibration, "_batches", _raw_pixel_calibration)
    stages: list[str] = []
    result = export_bundle(silhouette_ckpt, ExportConfig(name="sil", out_dir=tmp_path, calib_images=128,
                                                         measure=False), on_progress=stages.append)
    d, m = result.bundle_dir, result.manifest
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", MODEL_FILE]  # no int8 file on disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sil"]  # and nothing else left behind
    assert list(m["files"]) == [MODEL_FILE] and read_manifest(d) == json.loads(json.dumps(m))
    gate = m["int8"]
    assert gate["status"] == "left_out" and gate["file"] is None
    assert gate["drop_points"] > 10 and gate["tolerance_points"] == 1.0 and gate["count"] == 1000
    assert gate["drop_points"] == pytest.approx(100 * (gate["fp32_accuracy"] - gate["int8_accuracy"]))
    assert gate["fp32_accuracy"] == m["accuracy"]["onnx"]["accuracy"]
    assert gate["reason"].startswith("int8 left out: top-1 accuracy ") and "1-point tolerance" in gate["reason"]
    assert f"a drop of {gate['drop_points']:.2f} points" in gate["reason"] and "\n" not in gate["reason"]
    assert m["accuracy"]["int8"] is None and m["accuracy"]["int8_drop_points"] is None  # they describe files
    assert gate["reason"] in stages
    # the same model ships when the tolerance allows its drop
    wide = export_bundle(silhouette_ckpt, ExportConfig(name="wide", out_dir=tmp_path, calib_images=128, measure=False,
                                                       int8_tolerance=gate["drop_points"])).manifest
    assert wide["int8"]["status"] == "shipped" and wide["accuracy"]["int8"]["accuracy"] == gate["int8_accuracy"]
    required = r"int8 left out: .* \(--require-int8, require_int8=True\); nothing written"
    with pytest.raises(Int8GateError, match=required) as info:
        export_bundle(silhouette_ckpt, ExportConfig(name="req", out_dir=tmp_path, calib_images=128, measure=False,
                                                    require_int8=True))
    assert info.value.exit_code == 1 and not (tmp_path / "req").exists()


@pytest.mark.slow
@needs_fashion
def test_cli_export_says_int8_was_left_out(silhouette_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(_ImageCalibration, "_batches", _raw_pixel_calibration)
    runner = CliRunner()
    args = ["export", str(silhouette_ckpt), "--out-dir", str(tmp_path), "--no-measure", "--calib-images", "64",
            "--parity-images", "500"]
    res = runner.invoke(cli, [*args, "--name", "a"])
    assert res.exit_code == 0, res.output
    left_out = [line for line in res.stdout.splitlines() if line.startswith("int8 left out:")]
    assert len(left_out) == 1 and "on 500 test images" in left_out[0]
    assert left_out[0].endswith("over the 1-point tolerance (--int8-tolerance); the bundle ships fp32 only")
    assert "model.int8.onnx" not in res.stdout and not (tmp_path / "a" / INT8_FILE).exists()
    res = runner.invoke(cli, [*args, "--name", "b", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["int8"]["status"] == "left_out"
    res = runner.invoke(cli, [*args, "--name", "c", "--require-int8"])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 1 and len(errors) == 1 and "--require-int8" in errors[0], res.output
    assert not (tmp_path / "c").exists()
    for extra, message in ((["--int8-tolerance", "-1"], "int8_tolerance"),
                           (["--no-int8", "--require-int8"], "require_int8 needs int8")):
        res = runner.invoke(cli, [*args, "--name", "d", *extra])
        assert res.exit_code == 2 and message in res.stderr and not (tmp_path / "d").exists(), res.output


def test_run_summary_says_why_int8_was_left_out(tmp_path):
    import json as _json

    from edgenas.report import StageLog, pipeline_summary

    manifest = {"accuracy": {"onnx": {"accuracy": 0.775}, "int8": None},
                "int8": {"status": "left_out", "drop_points": 24.7, "tolerance_points": 1.0},
                "latency": {}, "cost": {"mflops": 1.0, "params": 10}}
    (tmp_path / "manifest.json").write_text(_json.dumps(manifest))
    log = StageLog.open(tmp_path / "run", {"x": 1}, resume=False)
    log.stages["export"] = {"manifest": str(tmp_path / "manifest.json")}
    rows = dict(pipeline_summary(tmp_path / "run", log))
    assert rows["ONNX int8: test accuracy"] == "left out: a drop of 24.70 points > 1 tolerated"
    assert rows["ONNX fp32: test accuracy"].startswith("77.5")
