"""Latency measurers: statistics, the shared protocol, each runtime on CPU, clean skips without a GPU."""

from __future__ import annotations

import dataclasses
import gc
import json
import math

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.measure import (
    LatencyMeasurer,
    LatencyStats,
    OrtMeasurer,
    TorchCpuMeasurer,
    TorchCudaMeasurer,
    create_measurer,
    export_onnx_bytes,
    runtime_versions,
)
from edgenas.hardware.profile import MeasureSettings, Profile, load_profile

FAST = MeasureSettings(warmup=3, repeats=10, trials=2)
HAS_CUDA = torch.cuda.is_available()


def _profile(name: str, **changes) -> Profile:
    return dataclasses.replace(load_profile(name), measure=FAST, **changes)


def _stack(channels: int, convs: int = 2, cin: int = 8) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                   nn.ReLU()]
    return nn.Sequential(*layers)


def _check(stats: LatencyStats, n: int) -> None:
    assert stats.n == n == len(stats.samples_ms)
    assert len(stats.trial_medians_ms) == FAST.trials
    values = [stats.median_ms, stats.mean_ms, stats.p10_ms, stats.p90_ms, stats.min_ms]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert stats.min_ms <= stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.iqr_ms >= 0 and stats.std_ms >= 0


# ----- statistics --------------------------------------------------------------------------------------------
def test_stats_from_known_samples():
    stats = LatencyStats.from_samples([float(v) for v in range(11, 0, -1)], trial_medians_ms=[3.0, 9.0])
    assert stats.median_ms == 6.0 and stats.mean_ms == 6.0
    assert stats.p10_ms == pytest.approx(2.0) and stats.p90_ms == pytest.approx(10.0)
    assert stats.iqr_ms == pytest.approx(5.0)  # p75 8.5 - p25 3.5
    assert stats.min_ms == 1.0 and stats.n == 11
    assert stats.std_ms == pytest.approx(float(np.std(np.arange(1, 12), ddof=1)))
    assert stats.trial_medians_ms == [3.0, 9.0]
    assert stats.value("median") == 6.0 and stats.value("p90") == pytest.approx(10.0)
    assert stats.value("mean") == 6.0
    with pytest.raises(ConfigError, match="unknown latency statistic 'p99'"):
        stats.value("p99")
    single = LatencyStats.from_samples([2.5])
    assert (single.median_ms, single.p10_ms, single.iqr_ms, single.std_ms, single.n) == (2.5, 2.5, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="at least one sample"):
        LatencyStats.from_samples([])


def test_stats_json_round_trip():
    stats = LatencyStats.from_samples([0.5, 0.25, 0.75, 1.0], trial_medians_ms=[0.4, 0.8])
    text = json.dumps(stats.to_json())
    assert LatencyStats.from_json(json.loads(text)) == stats
    assert "median 0.6250 ms" in stats.summary()
    with pytest.raises(ConfigError, match="malformed latency statistics"):
        LatencyStats.from_json({"median_ms": 1.0, "n": 1, "speed": 3})


# ----- measurers on CPU --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cpu-ort", "cpu-torch"])
def test_cpu_measurers_return_positive_finite_stats(name):
    measurer = create_measurer(_profile(name))
    model = _stack(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    threads = torch.get_num_threads()
    gc_enabled = gc.isenabled()
    stats = measurer.measure_module(model, (1, 8, 28, 28))
    _check(stats, FAST.trials * FAST.repeats)
    # the caller's model, torch's thread count and the collector are left as they were
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.get_num_threads() == threads and gc.isenabled() == gc_enabled
    # the default input shape is (batch_size, *profile.input_shape); C, H, W gets the batch size
    first = _stack(8, cin=1)
    _check(measurer.measure_module(first), FAST.trials * FAST.repeats)
    _check(measurer.measure_module(first, (1, 16, 16)), FAST.trials * FAST.repeats)
    assert json.loads(json.dumps(stats.to_json()))["n"] == stats.n


def test_create_measurer_picks_the_runtime():
    assert type(create_measurer(_profile("cpu-ort"))) is OrtMeasurer
    assert type(create_measurer(_profile("cpu-ort-int8"))) is OrtMeasurer
    assert type(create_measurer(_profile("cpu-torch"))) is TorchCpuMeasurer
    with pytest.raises(ConfigError, match="TorchCpuMeasurer cannot measure profile 'cpu-ort'"):
        TorchCpuMeasurer(_profile("cpu-ort"))


@pytest.mark.parametrize("name", ["cpu-ort", "cpu-torch"])
def test_bigger_model_is_slower(name):
    """64x the multiply-adds (8 vs 64 channels at 28x28): robust against noise from other jobs."""
    measurer = create_measurer(_profile(name))
    small, big = measurer.measure_many([_stack(8), _stack(64)], [(1, 8, 28, 28), (1, 8, 28, 28)])
    assert big.median_ms > 2 * small.median_ms, (small.summary(), big.summary())
    assert big.min_ms > small.min_ms


def test_repeated_measurements_agree():
    measurer = create_measurer(_profile("cpu-ort"))
    model = _stack(24)
    first = measurer.measure_module(model, (1, 8, 28, 28))
    second = measurer.measure_module(model, (1, 8, 28, 28))
    ratio = first.median_ms / second.median_ms
    assert 0.25 < ratio < 4.0, (first.summary(), second.summary())


def test_measure_many_interleaves_round_robin():
    order: list[int] = []

    class Recording(TorchCpuMeasurer):
        def _prepare(self, model, input_shape):
            runner = super()._prepare(model, input_shape)
            inner, tag = runner.run, model.tag
            runner.run = lambda: (order.append(tag), inner())
            return runner

    models = []
    for tag in range(3):
        m = nn.ReLU()
        m.tag = tag
        models.append(m)
    settings = MeasureSettings(warmup=0, repeats=1, trials=3)
    stats = Recording(dataclasses.replace(_profile("cpu-torch"), measure=settings)).measure_many(
        models, [(1, 1, 4, 4)] * 3)
    assert order == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert [s.n for s in stats] == [3, 3, 3]


def test_measure_many_falls_back_to_measure_module():
    class Fixed(LatencyMeasurer):
        def measure_module(self, model, input_shape=None):
            return LatencyStats.from_samples([1.0, 2.0])

    stats = Fixed(_profile("cpu-torch")).measure_many([nn.ReLU(), nn.ReLU()], [None, None])
    assert [s.median_ms for s in stats] == [1.5, 1.5]


def test_int8_measurer_runs_on_a_quantized_graph():
    profile = _profile("cpu-ort-int8")
    measurer = create_measurer(profile)
    _check(measurer.measure_module(_stack(16), (1, 8, 28, 28)), FAST.trials * FAST.repeats)


def test_measure_onnx_file_and_shapes(tmp_path):
    measurer = create_measurer(_profile("cpu-ort"))
    path = tmp_path / "model.onnx"
    path.write_bytes(export_onnx_bytes(_stack(8), (1, 8, 28, 28)))
    _check(measurer.measure_onnx(path), FAST.trials * FAST.repeats)
    _check(measurer.measure_onnx(str(path), (1, 8, 28, 28)), FAST.trials * FAST.repeats)
    # dynamic batch: the profile's batch size; other dynamic dims must be given
    dynamic = export_onnx_bytes(_stack(8), (2, 8, 28, 28), dynamic_batch=True)
    _check(measurer.measure_onnx(dynamic), FAST.trials * FAST.repeats)
    with pytest.raises(EdgenasError, match="ONNX file not found"):
        measurer.measure_onnx(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgenasError, match=r"junk\.onnx is not a valid ONNX model"):
        measurer.measure_onnx(tmp_path / "junk.onnx")
    # an already quantized file is measured as it is by the int8 profile
    int8 = create_measurer(_profile("cpu-ort-int8"))
    _check(int8.measure_onnx(path), FAST.trials * FAST.repeats)


def test_measure_onnx_names_a_dynamic_spatial_dim():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "height", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "height", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    onnx.checker.check_model(model)
    measurer = create_measurer(_profile("cpu-ort"))
    with pytest.raises(EdgenasError, match=r"input 'x' has dynamic dimension 'height' \(axis 2\)"):
        measurer.measure_onnx(data)
    _check(measurer.measure_onnx(data, (1, 3, 5, 8)), FAST.trials * FAST.repeats)


def test_export_onnx_bytes_names_and_folds_batch_norm():
    import onnx

    model = _stack(8)
    model.train()
    proto = onnx.load_model_from_string(export_onnx_bytes(model, (1, 8, 16, 16), opset=13))
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert proto.opset_import[0].version == 13
    assert model.training


def test_runtime_versions():
    versions = runtime_versions()
    assert versions["torch"] == torch.__version__ and versions["onnxruntime"] == onnxruntime.__version__
    assert {"onnx", "numpy"} <= set(versions)


# ----- CUDA ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised without a GPU")
def test_cuda_measurers_without_gpu_raise_clear_errors():
    with pytest.raises(EdgenasError, match="no CUDA device"):
        create_measurer(_profile("cuda-torch"))
    with pytest.raises(EdgenasError, match="no CUDA device"):
        TorchCudaMeasurer(_profile("cuda-torch"))
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(EdgenasError, match=r"CUDAExecutionProvider.*install the `gpu` extra"):
            create_measurer(_profile("cuda-ort"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_torch_measurer(precision):
    measurer = create_measurer(_profile("cuda-torch", precision=precision))
    assert type(measurer) is TorchCudaMeasurer
    bench = torch.backends.cudnn.benchmark
    stats = measurer.measure_module(_stack(16), (1, 8, 56, 56))
    _check(stats, FAST.trials * FAST.repeats)
    assert torch.backends.cudnn.benchmark == bench
    small, big = measurer.measure_many([_stack(8), _stack(256, convs=4)], [(1, 8, 112, 112)] * 2)
    assert big.median_ms > small.median_ms


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or "CUDAExecutionProvider" not in onnxruntime.get_available_providers(),
                    reason="needs a CUDA device and onnxruntime-gpu")
def test_cuda_ort_measurer():
    measurer = create_measurer(_profile("cuda-ort"))
    _check(measurer.measure_module(_stack(16), (1, 8, 56, 56)), FAST.trials * FAST.repeats)
