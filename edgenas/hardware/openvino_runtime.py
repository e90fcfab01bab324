"""OpenVINO as a latency runtime: the exported ONNX model compiled by OpenVINO's CPU plugin, on the one protocol.

Many x86 deployments run OpenVINO rather than ONNX Runtime, and the two do not rank networks alike
(other kernels, other fusions, another int8 path), so a profile with ``runtime: openvino`` lets the
latency table, the search's end-to-end checks, ``edgenas export`` and ``edgenas check`` time on it.

What is timed is what ONNX Runtime times: :class:`~edgenas.hardware.measure.OnnxModelMeasurer` exports
a module to ONNX in memory (or reads an ONNX file), makes its inputs, and for an int8 profile runs the
one quantizer (:mod:`edgenas.quantize`: QDQ, 7-bit per-channel weights, uint8 activations). OpenVINO's
ONNX frontend reads the bytes, every dynamic input dimension is fixed to the fed shape (a static model
is what a latency deployment compiles), and the model is compiled for ``CPU`` with
:func:`compile_properties`: the profile's thread count, the latency hint with one stream, f32 inference
precision, and the settings that otherwise vary by machine fixed (see there). A timed run is one
synchronous ``infer`` on a request whose input tensors share memory with arrays allocated beforehand.

int8: OpenVINO reads QuantizeLinear/DequantizeLinear pairs as FakeQuantize and its low-precision
transformations run the quantized convolutions and matrix products as u8 x i8 kernels. That is checked,
not assumed: :func:`layer_precisions` reads the runtime (execution) graph, where on the development
machine (AMD EPYC, AVX2, no VNNI; OpenVINO 2026.4) every Convolution and FullyConnected of an int8 mbv3
subnet runs in ``u8`` and of the fp32 one in ``f32``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.measure import LatencyStats, OnnxModelMeasurer, OrtMeasurer, _Runner
from edgenas.hardware.profile import Profile
from edgenas.quantize import first_line

__all__ = [
    "OpenVinoMeasurer",
    "as_onnxruntime",
    "as_openvino",
    "compile_model",
    "compile_properties",
    "create_openvino_measurer",
    "import_openvino",
    "layer_precisions",
    "measure_ir_beside_onnx",
    "read_model",
]

DEVICE = "CPU"
# Layers whose runtime precision says whether int8 kernels run (the rest are reorders, pooling, eltwise).
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")


def import_openvino(profile_name: str | None = None) -> Any:
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        who = f"profile '{profile_name}' needs" if profile_name else "this needs"
        raise EdgenasError(f"{who} OpenVINO, which is not installed here; install it with "
                           "pip install 'edgenas[openvino]' (or pip install openvino)") from None
    return openvino


def compile_properties(threads: int, supported: Sequence[str] | None = None) -> dict[str, Any]:
    """The CPU plugin's settings for a latency measurement, each fixed because its default varies.

    * ``INFERENCE_NUM_THREADS`` = the profile's threads, ``NUM_STREAMS`` 1 and ``PERFORMANCE_HINT``
      LATENCY: one inference at a time on a fixed number of threads, as the other runtimes are timed.
    * ``INFERENCE_PRECISION_HINT`` f32: on CPUs with bf16 (AVX-512 BF16, AMX) OpenVINO otherwise runs
      fp32 models in bf16; int8 models keep their quantized layers in int8 and the rest in f32.
    * ``EXECUTION_MODE_HINT`` PERFORMANCE (the default; ACCURACY would forbid the low-precision paths).
    * ``ENABLE_CPU_PINNING`` off: ONNX Runtime and torch do not pin their threads either, and a pinned
      thread cannot move off a core another job holds on a shared machine.
    * ``ENABLE_HYPER_THREADING`` off and ``SCHEDULING_CORE_TYPE`` ANY_CORE: threads on physical cores,
      of whichever kind (on hybrid CPUs the latency hint would otherwise choose by itself).
    * ``CPU_DENORMALS_OPTIMIZATION`` off: denormals computed as such, as ONNX Runtime does by default.
    * ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` 0: no run-time quantization of activations, which OpenVINO
      applies to layers with compressed weights by default; the profile's precision decides instead.

    ``supported`` (the plugin's ``SUPPORTED_PROPERTIES``) drops settings an older OpenVINO lacks.
    """
    props: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "PERFORMANCE", "ENABLE_CPU_PINNING": False,
        "ENABLE_HYPER_THREADING": False, "SCHEDULING_CORE_TYPE": "ANY_CORE", "CPU_DENORMALS_OPTIMIZATION": False,
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
    }
    if supported is not None:
        props = {k: v for k, v in props.items() if k in supported}
    return props


def layer_precisions(compiled: Any, layers: Sequence[str] = COMPUTE_LAYERS) -> dict[str, dict[str, int]]:
    """Layer type -> runtime precision -> count in a compiled model's execution graph (what actually ran).

    An int8 model whose compute layers show ``u8``/``i8`` runs integer kernels; ``f32`` would mean
    OpenVINO dequantized the weights and ran the layer in floating point.
    """
    counts: dict[str, Counter[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if kind in layers:
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            counts.setdefault(kind, Counter())[precision] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}


class _OpenVinoRunner(_Runner):
    """One compiled model and one infer request, its inputs set once as tensors sharing numpy's memory.

    The pybind11 ``InferRequest.infer`` is timed with the outputs shared rather than the Python
    ``infer()`` wrapper, which dispatches the (empty) inputs and copies every output into a new dict on
    each call: 25 us against 11 us per run of a 1x16x28x28 ReLU graph on the development machine (ONNX
    Runtime's bound run: 9 us), i.e. Python glue, not the model. The first run happens here, untimed.
    """

    def __init__(self, compiled: Any, feeds: Mapping[str, np.ndarray]) -> None:
        import openvino as ov

        self.compiled = compiled
        self.request = request = compiled.create_infer_request()
        self._arrays = [np.ascontiguousarray(a) for a in feeds.values()]  # alive as long as the tensors
        for name, arr in zip(feeds, self._arrays):
            request.set_tensor(name, ov.Tensor(arr, shared_memory=True))
        raw = super(ov.InferRequest, request).infer
        try:
            raw({}, True, False)
            self.run = lambda: raw({}, True, False)
        except TypeError:  # another OpenVINO's binding signature: the public call, slower but correct
            request.infer()
            self.run = request.infer

    def outputs(self) -> list[np.ndarray]:
        """The last run's outputs (copies)."""
        return [np.array(self.request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))]


class OpenVinoMeasurer(OnnxModelMeasurer):
    """OpenVINO's CPU plugin with the profile's threads; ONNX models compiled as :func:`compile_properties` says."""

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self._check_profile("openvino", "cpu")
        self._ov = import_openvino(profile.name)
        self.core = self._ov.Core()
        if DEVICE not in self.core.available_devices:
            raise EdgenasError(f"profile '{profile.name}': OpenVINO {self._ov.__version__} has no {DEVICE} device here "
                               f"(available: {', '.join(self.core.available_devices) or 'none'})")

    def read(self, model: bytes, weights: bytes | None = None, label: str = "ONNX model") -> Any:
        """An ``ov.Model`` from ONNX bytes, or from IR (``.xml`` bytes and ``.bin`` ``weights``)."""
        return read_model(self.core, model, weights, label)

    def compile(self, model: Any, shapes: Mapping[str, Sequence[int]] | None = None, threads: int | None = None,
                label: str = "the model") -> Any:
        """Compile an ``ov.Model`` for the CPU; ``shapes`` (input name -> shape) fixes its dynamic dimensions."""
        return compile_model(self.core, model, self.profile.threads if threads is None else threads, shapes,
                             label=f"{label} for profile '{self.profile.name}'")

    def runner(self, compiled: Any, feeds: Mapping[str, np.ndarray]) -> _OpenVinoRunner:
        """A compiled model made ready to run on ``feeds`` (input name -> array)."""
        return _OpenVinoRunner(compiled, feeds)

    def ir_runner(self, xml: bytes, weights: bytes, input_shape: Sequence[int]) -> _OpenVinoRunner:
        """An IR (one input) at ``input_shape`` (N, C, H, W) with seeded random input, ready to time."""
        model = self.read(xml, weights, label="the OpenVINO IR")
        name = model.inputs[0].get_any_name()
        x = np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(np.float32)
        return self.runner(self.compile(model, {name: x.shape}, label="the OpenVINO IR"), {name: x})

    def _runner(self, model: bytes, feeds: dict[str, np.ndarray]) -> _Runner:
        compiled = self.compile(self.read(model), {k: v.shape for k, v in feeds.items()})
        return self.runner(compiled, feeds)


def read_model(core: Any, model: bytes, weights: bytes | None = None, label: str = "ONNX model") -> Any:
    """An ``ov.Model`` from ONNX bytes, or from IR (``.xml`` bytes and ``.bin`` ``weights``); one-line errors."""
    import openvino as ov

    try:
        if weights is None:
            return core.read_model(model)
        return core.read_model(model, ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
    except Exception as exc:  # OpenVINO raises RuntimeError with multi-line reports
        raise EdgenasError(f"OpenVINO cannot read {label}: {first_line(exc)}") from None


def compile_model(core: Any, model: Any, threads: int, shapes: Mapping[str, Sequence[int]] | None = None,
                  label: str = "the model") -> Any:
    """``model`` compiled for the CPU with :func:`compile_properties` (as far as this OpenVINO has them);
    ``shapes`` (input name -> shape) fixes its dynamic dimensions first."""
    import openvino as ov

    try:
        if shapes:
            model.reshape({name: ov.PartialShape([int(d) for d in shape]) for name, shape in shapes.items()})
        supported = list(core.get_property(DEVICE, "SUPPORTED_PROPERTIES"))
        return core.compile_model(model, DEVICE, compile_properties(threads, supported))
    except Exception as exc:  # reshape or compile failures: RuntimeError with multi-line reports
        raise EdgenasError(f"OpenVINO cannot compile {label}: {first_line(exc)}") from None


def create_openvino_measurer(profile: Profile) -> OpenVinoMeasurer:
    """The ``openvino`` entry of :data:`edgenas.hardware.measure.RUNTIMES` (imported on first use)."""
    if profile.device != "cpu":
        raise ConfigError(f"no latency measurer for runtime openvino on {profile.device} "
                          "(runtime openvino measures on: cpu)")
    return OpenVinoMeasurer(profile)


# ----- one target, two runtimes -------------------------------------------------------------------------------
def as_openvino(profile: Profile) -> Profile:
    """The same target (device, threads, batch, input, precision, protocol) timed in OpenVINO."""
    if profile.runtime == "openvino":
        return profile
    return dataclasses.replace(profile, runtime="openvino", provider=None, graph_optimization="all")


def as_onnxruntime(profile: Profile) -> Profile:
    """The same target timed in ONNX Runtime's CPU execution provider with all graph optimisations."""
    if profile.runtime == "onnxruntime":
        return profile
    return dataclasses.replace(profile, runtime="onnxruntime", provider="CPUExecutionProvider",
                               graph_optimization="all")


def measure_ir_beside_onnx(profile: Profile, xml: bytes, weights: bytes, onnx_model: bytes,
                           input_shape: tuple[int, int, int, int]) -> tuple[LatencyStats, LatencyStats, float]:
    """An OpenVINO IR and the ONNX model it came from, timed interleaved in OpenVINO and in ONNX Runtime
    on ``profile``'s target with its protocol: their ratio is measured under the same load.

    Returns the IR's statistics, the ONNX model's and the seconds spent.
    """
    start = time.perf_counter()
    ov_meter = OpenVinoMeasurer(as_openvino(profile))
    ort_meter = OrtMeasurer(as_onnxruntime(profile))
    runners = [ov_meter.ir_runner(xml, weights, input_shape), ort_meter._onnx_runner(onnx_model, input_shape)]
    ir_stats, onnx_stats = ov_meter._measure_runners(runners)
    return ir_stats, onnx_stats, time.perf_counter() - start
