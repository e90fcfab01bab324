"""Latency measurement of real models in real runtimes: one protocol, one class per runtime.

Every measurer follows the same protocol (the one the latency table, the search, the benchmarks
and the CI check share): for each trial, ``warmup`` untimed runs, then ``repeats`` runs each timed
on its own; statistics pool all samples and keep the per-trial medians and the raw samples. What
differs per runtime is only how a model is made ready (:meth:`LatencyMeasurer._prepare`) and how a
single run is timed:

* :class:`OnnxModelMeasurer` is the part every ONNX-running runtime shares: modules are exported to
  ONNX in memory (TorchScript exporter) and ONNX files read and fed, an int8 profile quantizes an fp32
  model with the one quantizer first; a subclass only turns ONNX bytes and inputs into a runner.
* :class:`OrtMeasurer` runs them in an ``InferenceSession`` built from the profile (graph
  optimisation level, intra/inter-op threads, sequential execution, one execution provider);
  ``edgenas.hardware.openvino_runtime`` compiles them with OpenVINO.
* :class:`TorchCpuMeasurer` runs the module eagerly under ``torch.inference_mode`` with
  ``torch.set_num_threads(profile.threads)`` and channels-last tensors.
* :class:`TorchCudaMeasurer` times each run with CUDA events and waits for it to finish, so a
  sample is the latency of one batch, not a pipelined throughput.

Inside the timed region nothing but the inference happens: inputs (and for ONNX Runtime, outputs)
are allocated beforehand, garbage collection is off, and nothing is logged.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import io
import platform
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.profile import Profile
from edgenas.registry import Registry
from edgenas.torch_utils import torch_threads

__all__ = [
    "RUNTIMES",
    "LatencyMeasurer",
    "LatencyStats",
    "OnnxModelMeasurer",
    "OrtMeasurer",
    "TorchCpuMeasurer",
    "TorchCudaMeasurer",
    "create_measurer",
    "export_onnx_bytes",
    "onnx_measurer",
    "runtime_versions",
]

_CALIBRATION_SAMPLES = 8
# Ops that only appear in an already quantized graph: such a file is measured as it is.
_QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul",
})


# ----- statistics -----------------------------------------------------------------------------------------
@dataclass
class LatencyStats:
    """Latency statistics of one model, in milliseconds per run (per batch).

    Percentiles use linear interpolation between order statistics (numpy's default), ``iqr_ms`` is
    p75 - p25 and ``std_ms`` the sample standard deviation (0 for a single sample). The raw samples
    are kept so a later analysis can apply another statistic or test for drift.
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    min_ms: float
    n: int
    trial_medians_ms: list[float] = field(default_factory=list)
    samples_ms: list[float] = field(default_factory=list)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], trial_medians_ms: Sequence[float] = ()) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError("latency statistics need at least one sample")
        p10, p25, p50, p75, p90 = np.percentile(a, [10, 25, 50, 75, 90])
        return cls(
            median_ms=float(p50), mean_ms=float(a.mean()), std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
            p10_ms=float(p10), p90_ms=float(p90), iqr_ms=float(p75 - p25), min_ms=float(a.min()),
            n=int(a.size), trial_medians_ms=[float(t) for t in trial_medians_ms], samples_ms=a.tolist(),
        )

    def value(self, statistic: str) -> float:
        """The number a profile's ``measure.statistic`` names (median, mean, p90; also p10, min)."""
        values = {"median": self.median_ms, "mean": self.mean_ms, "p90": self.p90_ms, "p10": self.p10_ms,
                  "min": self.min_ms}
        if statistic not in values:
            raise ConfigError(f"unknown latency statistic '{statistic}' (known: {', '.join(values)})")
        return values[statistic]

    def summary(self) -> str:
        """One line for logs and reports."""
        return (f"median {self.median_ms:.4f} ms (p10 {self.p10_ms:.4f}, p90 {self.p90_ms:.4f}, "
                f"IQR {self.iqr_ms:.4f}, n={self.n})")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatencyStats:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names or not {"median_ms", "n"} <= set(d):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"malformed latency statistics: expected keys {sorted(names)}, got {got}")
        try:
            return cls(**{k: (list(map(float, v)) if k.endswith("s_ms") else (int(v) if k == "n" else float(v)))
                          for k, v in d.items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed latency statistics: {exc}") from None


# ----- runners: one model made ready to run ---------------------------------------------------------------
class _Runner:
    """One prepared model: everything allocated, ``run`` does exactly one inference."""

    run: Callable[[], Any]

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Context entered around each trial's warm-up and timed runs (e.g. ``inference_mode``)."""
        return contextlib.nullcontext()

    def timed(self, repeats: int) -> list[float]:
        """``repeats`` runs, each timed with ``perf_counter_ns``; milliseconds."""
        run, clock = self.run, time.perf_counter_ns
        ticks = [0] * repeats
        for i in range(repeats):
            t0 = clock()
            run()
            ticks[i] = clock() - t0
        return [t / 1e6 for t in ticks]


class _OrtRunner(_Runner):
    """ONNX Runtime session with inputs and outputs bound once (I/O binding).

    ``run_with_iobinding`` on pre-bound ``OrtValue``s is timed rather than ``sess.run(None, feed)``:
    plain ``run`` converts the feed dict and allocates fresh numpy outputs on every call, which cost
    about 12 us per run on the development machine (20 us vs 8 us for a 1x16x28x28 ReLU graph),
    i.e. it measures Python glue, not the model. With CUDA the bound tensors stay on the GPU, so no
    host-device copy is timed either; ``Run`` synchronises the device before it returns.
    """

    def __init__(self, sess: Any, feeds: dict[str, np.ndarray], device: str) -> None:
        import onnxruntime as ort

        self.sess = sess
        binding = sess.io_binding()
        kind = "cuda" if device == "cuda" else "cpu"
        self._values = []  # keep the bound OrtValues alive as long as the binding
        for name, arr in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(arr, kind, 0)
            binding.bind_ortvalue_input(name, value)
            self._values.append(value)
        outputs = sess.run(None, feeds)  # learns the output shapes; also the first (untimed) run
        for meta, out in zip(sess.get_outputs(), outputs):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(out.shape), out.dtype, kind, 0)
            binding.bind_ortvalue_output(meta.name, value)
            self._values.append(value)
        if kind == "cuda":
            binding.synchronize_inputs()
        self.binding = binding
        self.run = lambda: sess.run_with_iobinding(binding)


class _TorchRunner(_Runner):
    """Eager module under ``inference_mode``; input allocated once."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.run = lambda: model(x)

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return torch.inference_mode()


class _TorchCudaRunner(_TorchRunner):
    """Each run between two CUDA events, waited for before the next starts (latency, not throughput)."""

    def timed(self, repeats: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        model, x = self.model, self.x
        torch.cuda.synchronize()
        for start, end in zip(starts, ends):
            start.record()
            model(x)
            end.record()
            end.synchronize()
        return [float(s.elapsed_time(e)) for s, e in zip(starts, ends)]


@contextlib.contextmanager
def _gc_off() -> Iterator[None]:
    """No collector pauses inside the timed regions; the previous state comes back afterwards.

    One collection first, then the collector stays off for the whole measurement rather than being
    toggled per timed run: a full collection costs ~0.1 s with torch loaded, which a latency table of
    hundreds of blocks would pay per block and trial, and inference makes no reference cycles.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ----- measurers ---------------------------------------------------------------------------------------------
class LatencyMeasurer(ABC):
    """Measures models on a profile's target with the profile's protocol."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    @abstractmethod
    def measure_module(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        """Latency of ``model`` at ``input_shape`` (N, C, H, W; default ``(batch_size, *input_shape)``
        of the profile; a C, H, W triple gets the profile's batch size). The caller's model is
        never mutated: a copy is put in eval mode."""

    def measure_many(self, models: Sequence[nn.Module], input_shapes: Sequence[tuple[int, ...] | None]
                     ) -> list[LatencyStats]:
        """Measure several models interleaved, so slow drift (thermal, other jobs) hits all alike.

        Every model is prepared first (exported, session built); then in each trial every model runs
        its warm-up and repeats in turn, starting one model later in each trial (round robin).
        A subclass that only implements :meth:`measure_module` gets them measured one after another.
        """
        if len(models) != len(input_shapes):
            raise ValueError(f"{len(models)} models but {len(input_shapes)} input shapes")
        if type(self)._prepare is LatencyMeasurer._prepare:
            return [self.measure_module(m, s) for m, s in zip(models, input_shapes)]
        runners = [self._prepare(m, self._full_shape(s)) for m, s in zip(models, input_shapes)]
        return self._measure_runners(runners)

    # -- shared machinery --
    def _prepare(self, model: nn.Module, input_shape: tuple[int, int, int, int]) -> _Runner:
        """Make one model ready to run; runtimes override this (``measure_many`` checks first)."""
        raise TypeError(f"{type(self).__name__} cannot prepare models for interleaved measurement")

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        """Context around a whole measurement (thread settings); restored afterwards."""
        return contextlib.nullcontext()

    def _full_shape(self, input_shape: Sequence[int] | None) -> tuple[int, int, int, int]:
        if input_shape is None:
            return (self.profile.batch_size, *self.profile.input_shape)
        shape = tuple(int(d) for d in input_shape)
        if len(shape) == 3:
            shape = (self.profile.batch_size, *shape)
        if len(shape) != 4 or any(d < 1 for d in shape):
            raise ConfigError(f"input shape must be positive N, C, H, W (or C, H, W), not {list(input_shape)}")
        return shape  # type: ignore[return-value]

    def _measure_runners(self, runners: Sequence[_Runner]) -> list[LatencyStats]:
        settings = self.profile.measure
        samples: list[list[float]] = [[] for _ in runners]
        medians: list[list[float]] = [[] for _ in runners]
        count = len(runners)
        with self._scope(), _gc_off():
            for trial in range(settings.trials):
                for k in range(count):
                    i = (trial + k) % count
                    runner = runners[i]
                    with runner.scope():
                        for _ in range(settings.warmup):
                            runner.run()
                        times = runner.timed(settings.repeats)
                    samples[i].extend(times)
                    medians[i].append(float(np.median(times)))
        return [LatencyStats.from_samples(s, m) for s, m in zip(samples, medians)]

    def _check_profile(self, runtime: str, device: str | None = None) -> None:
        p = self.profile
        if p.runtime != runtime or (device is not None and p.device != device):
            raise ConfigError(
                f"{type(self).__name__} cannot measure profile '{p.name}' (runtime {p.runtime}, device {p.device}); "
                "use create_measurer(profile)"
            )


class OnnxModelMeasurer(LatencyMeasurer):
    """A runtime that runs ONNX models: modules are exported to ONNX in memory, ONNX files are read and fed.

    Everything up to the runtime is shared, so every such runtime times the same graph with the same
    inputs (and, for an int8 profile, the same quantized graph); a subclass implements only
    :meth:`_runner`, which makes ONNX bytes and their inputs into a prepared :class:`_Runner`.
    """

    def measure_module(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        return self.measure_many([model], [input_shape])[0]

    def measure_onnx(self, model: bytes | str | Path, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        """Latency of any ONNX model (bytes or a file).

        The first input's shape comes from ``input_shape`` (N, C, H, W or C, H, W) or else from the
        model, with a dynamic first dimension read as the profile's batch size; any other dynamic
        dimension is an error naming it. An int8 profile quantizes an fp32 model first but measures
        an already quantized one (QDQ or QOperator) as it is.
        """
        return self.measure_onnx_many([model], [input_shape])[0]

    def measure_onnx_many(self, models: Sequence[bytes | str | Path],
                          input_shapes: Sequence[tuple[int, ...] | None] | None = None) -> list[LatencyStats]:
        """Several ONNX models measured interleaved (see :meth:`measure_many`), e.g. a model and a
        reference workload whose latency ratio is compared across runs on a noisy machine."""
        shapes = list(input_shapes) if input_shapes is not None else [None] * len(models)
        if len(shapes) != len(models):
            raise ValueError(f"{len(models)} models but {len(shapes)} input shapes")
        return self._measure_runners([self._onnx_runner(m, s) for m, s in zip(models, shapes)])

    def _onnx_runner(self, model: bytes | str | Path, input_shape: tuple[int, ...] | None) -> _Runner:
        import onnx

        if isinstance(model, bytes):
            data, label = model, "ONNX model"
        else:
            path = Path(model)
            if not path.is_file():
                raise EdgenasError(f"ONNX file not found: {path}")
            data, label = path.read_bytes(), str(path)
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf raises DecodeError and others
            raise EdgenasError(f"{label} is not a valid ONNX model: {str(exc).splitlines()[0][:120]}") from None
        feeds = _onnx_feeds(proto, input_shape, self.profile.batch_size, label)
        first = next(iter(feeds.values()))
        if self.profile.precision == "fp16" and first.dtype != np.float16:
            raise EdgenasError(
                f"profile '{self.profile.name}' is fp16 but {label} takes {first.dtype} input; export it in fp16"
            )
        if self.profile.precision == "int8" and not any(n.op_type in _QUANTIZED_OPS for n in proto.graph.node):
            data = _quantize_int8(data, {k: v.shape for k, v in feeds.items()})
        return self._runner(data, feeds)

    def _prepare(self, model: nn.Module, input_shape: tuple[int, int, int, int]) -> _Runner:
        p = self.profile
        dtype = torch.float16 if p.precision == "fp16" else torch.float32
        data = export_onnx_bytes(model, input_shape, opset=p.opset, dtype=dtype)
        if p.precision == "int8":
            data = _quantize_int8(data, {"input": input_shape})
        x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float16 if dtype == torch.float16
                                                                           else np.float32)
        return self._runner(data, {"input": x})

    @abstractmethod
    def _runner(self, model: bytes, feeds: dict[str, np.ndarray]) -> _Runner:
        """ONNX bytes made ready to run on ``feeds`` (graph input name -> array, allocated once)."""


class OrtMeasurer(OnnxModelMeasurer):
    """ONNX Runtime with the profile's execution provider; modules are exported to ONNX in memory."""

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self._check_profile("onnxruntime")
        import onnxruntime as ort

        available = ort.get_available_providers()
        if profile.provider not in available:
            hint = ""
            if profile.device == "cuda":
                hint = "; install the `gpu` extra (pip install 'edgenas[gpu]', which brings onnxruntime-gpu)"
            raise EdgenasError(
                f"profile '{profile.name}' needs onnxruntime's {profile.provider}, which onnxruntime "
                f"{ort.__version__} here lacks (available: {', '.join(available)}){hint}"
            )

    def session(self, model: bytes) -> Any:
        """An ``InferenceSession`` configured from the profile (also used by export checks)."""
        import onnxruntime as ort

        p = self.profile
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[p.graph_optimization]
        options.intra_op_num_threads = p.threads
        options.inter_op_num_threads = p.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: provider notices would interleave with progress output
        try:
            sess = ort.InferenceSession(model, sess_options=options, providers=[p.provider])
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise EdgenasError(f"onnxruntime cannot load the model for profile '{p.name}': "
                               f"{str(exc).splitlines()[0][:200]}") from None
        if not sess.get_providers() or sess.get_providers()[0] != p.provider:
            raise EdgenasError(
                f"onnxruntime fell back from {p.provider} to {', '.join(sess.get_providers())} for profile "
                f"'{p.name}'" + (" (no CUDA device?)" if p.device == "cuda" else "")
            )
        return sess

    def _runner(self, model: bytes, feeds: dict[str, np.ndarray]) -> _OrtRunner:
        return _OrtRunner(self.session(model), feeds, self.profile.device)


class TorchCpuMeasurer(LatencyMeasurer):
    """PyTorch eager on CPU: ``inference_mode``, channels-last model and input, pinned thread count.

    ``torch.set_num_threads(profile.threads)`` holds for the measurement and is restored afterwards.
    ``inter_op_threads`` is not applied: torch's inter-op pool can be sized only once per process,
    and eager inference of one module does not use it.
    """

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self._check_profile("torch", "cpu")

    def measure_module(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        return self.measure_many([model], [input_shape])[0]

    def _prepare(self, model: nn.Module, input_shape: tuple[int, int, int, int]) -> _Runner:
        m = copy.deepcopy(model).to("cpu", torch.float32).eval().to(memory_format=torch.channels_last)
        x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
        return _TorchRunner(m, x.contiguous(memory_format=torch.channels_last))

    def _scope(self) -> contextlib.AbstractContextManager[Any]:
        return torch_threads(self.profile.threads)


class TorchCudaMeasurer(LatencyMeasurer):
    """PyTorch eager on the current CUDA device, timed with CUDA events; fp16 via ``.half()``.

    cuDNN autotuning (``cudnn.benchmark``) is on during the measurement, as a deployment would set it,
    and restored afterwards; the warm-up runs absorb the tuning.
    """

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self._check_profile("torch", "cuda")
        if not torch.cuda.is_available():
            raise EdgenasError(
                f"profile '{profile.name}' needs a GPU, but there is no CUDA device (torch.cuda.is_available() "
                "is False); use a cpu-* profile"
            )

    def measure_module(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        return self.measure_many([model], [input_shape])[0]

    def _prepare(self, model: nn.Module, input_shape: tuple[int, int, int, int]) -> _Runner:
        dtype = torch.float16 if self.profile.precision == "fp16" else torch.float32
        m = copy.deepcopy(model).to("cuda", dtype).eval().to(memory_format=torch.channels_last)
        x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to("cuda", dtype)
        return _TorchCudaRunner(m, x.contiguous(memory_format=torch.channels_last))

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        bench = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            with torch_threads(self.profile.threads):
                yield
        finally:
            torch.backends.cudnn.benchmark = bench


RUNTIMES: Registry[Callable[[Profile], LatencyMeasurer]] = Registry("runtime", ConfigError)
"""Runtime name (a profile's ``runtime``) -> ``factory(profile) -> LatencyMeasurer``. A factory refuses
a device it cannot time on with a one-line :class:`ConfigError`. Registered at the end of this module."""


def _by_device(name: str, classes: dict[str, type[LatencyMeasurer]]) -> Callable[[Profile], LatencyMeasurer]:
    def create(profile: Profile) -> LatencyMeasurer:
        if profile.device not in classes:
            raise ConfigError(f"no latency measurer for runtime {name} on {profile.device} "
                              f"(runtime {name} measures on: {', '.join(classes)})")
        return classes[profile.device](profile)

    return create


def create_measurer(profile: Profile) -> LatencyMeasurer:
    """The measurer for a profile's runtime and device; raises if the runtime or device is missing here."""
    return RUNTIMES.get(profile.runtime)(profile)


# ----- ONNX helpers ---------------------------------------------------------------------------------------------
def export_onnx_bytes(model: nn.Module, input_shape: tuple[int, int, int, int], opset: int = 17,
                      dynamic_batch: bool = False, dtype: torch.dtype = torch.float32) -> bytes:
    """Export a copy of ``model`` (eval mode, CPU) to ONNX in memory; input ``input``, output ``logits``.

    Uses torch's TorchScript exporter (``dynamo=False``): in torch 2.14 it exports a small block in
    about 0.1 s against several seconds for the torch.export-based one, writes the requested opset
    without conversion, and folds eval-mode batch norm into the convolutions, as deployment does.
    Tracing runs single-threaded (see :func:`edgenas.hardware._threads.torch_threads`).
    """
    device = "cuda" if dtype == torch.float16 and torch.cuda.is_available() else "cpu"
    m = copy.deepcopy(model).to(device, dtype).eval()
    x = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings(), torch_threads(1):
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes=axes, do_constant_folding=True)
    except Exception as exc:  # the exporter raises many types for unsupported ops
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgenasError(f"cannot export {type(model).__name__} to ONNX (opset {opset}): {first}") from None
    return buf.getvalue()


def _onnx_feeds(proto: Any, input_shape: Sequence[int] | None, batch_size: int, label: str
                ) -> dict[str, np.ndarray]:
    """Random inputs for every graph input, shaped from ``input_shape`` (first input) or the model."""
    from onnx import helper

    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if not inputs:
        raise EdgenasError(f"{label} has no inputs")
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for k, value in enumerate(inputs):
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        if k == 0 and input_shape is not None:
            shape = [int(d) for d in input_shape]
            if len(shape) == len(dims) - 1:
                shape = [batch_size, *shape]
            if len(shape) != len(dims):
                raise EdgenasError(f"{label}: input '{value.name}' has {len(dims)} dimensions, "
                                   f"the given input shape {list(input_shape)} has {len(shape)}")
        else:
            shape = []
            for axis, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif axis == 0:
                    shape.append(batch_size)
                else:
                    raise EdgenasError(f"{label}: input '{value.name}' has dynamic dimension '{d}' (axis {axis}); "
                                       "give an input shape")
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _quantize_int8(model: bytes, shapes: dict[str, Sequence[int]]) -> bytes:
    """The shipped int8 graph (:func:`edgenas.quantize.quantize_int8`), calibrated on random inputs of the
    measured shape: the scales differ from a bundle's, the graph and so the latency do not."""
    from edgenas.quantize import RandomCalibration, quantize_int8

    return quantize_int8(model, RandomCalibration(shapes, _CALIBRATION_SAMPLES))[0]


def runtime_versions() -> dict[str, str]:
    """Versions that change measured latency, recorded next to every measurement; openvino's only where
    it is installed (read from its package metadata, so recording it does not load the runtime)."""
    from importlib import metadata

    import onnx
    import onnxruntime

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    try:
        versions["openvino"] = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        pass
    return versions


def onnx_measurer(profile: Profile) -> Any:
    """The measurer of a profile whose runtime times ONNX files (bundles, check references, ``profile
    measure``): anything with ``measure_onnx_many(models, input_shapes)``. A runtime that only runs
    PyTorch modules (torch eager) is a one-line :class:`ConfigError` naming the runtimes that can."""
    measurer = create_measurer(profile)
    if not callable(getattr(measurer, "measure_onnx_many", None)):
        able = [n for n in RUNTIMES.names() if n not in _MODULE_ONLY_RUNTIMES]
        raise ConfigError(f"profile '{profile.name}' runs {profile.runtime}, which times PyTorch modules, not ONNX "
                          f"files; use a profile whose runtime is one of: {', '.join(able)}")
    return measurer


def _lazy(module: str, attribute: str) -> Callable[[Profile], LatencyMeasurer]:
    """A factory that imports its runtime's module on first use, so an optional runtime (openvino) costs
    nothing, and is only an error, when a profile asks for it."""
    def create(profile: Profile) -> LatencyMeasurer:
        import importlib

        factory: Callable[[Profile], LatencyMeasurer] = getattr(importlib.import_module(module), attribute)
        return factory(profile)

    return create


_MODULE_ONLY_RUNTIMES = frozenset({"torch", "executorch"})
RUNTIMES.register("onnxruntime", _by_device("onnxruntime", {"cpu": OrtMeasurer, "cuda": OrtMeasurer}))
RUNTIMES.register("torch", _by_device("torch", {"cpu": TorchCpuMeasurer, "cuda": TorchCudaMeasurer}))
RUNTIMES.register("openvino", _lazy("edgenas.hardware.openvino_runtime", "create_openvino_measurer"))
RUNTIMES.register("remote", _lazy("edgenas.hardware.remote", "create_remote_measurer"))
RUNTIMES.register("executorch", _lazy("edgenas.hardware.executorch_runtime", "create_executorch_measurer"))
