"""ExecuTorch with the XNNPACK delegate as a latency runtime: what a phone runs, on the one protocol.

A mobile deployment of a PyTorch network runs an ExecuTorch program (``.pte``), whose convolutions,
matrix products and activations XNNPACK executes; that runtime ranks networks differently from ONNX
Runtime (other kernels, other fusions, NHWC throughout), so a profile with ``runtime: executorch`` lets
the latency table, the search's end-to-end checks and the benchmarks time on it, and
``edgenas export --format executorch`` ships and times the ``.pte`` itself (:mod:`edgenas.bundle_executorch`).
How differently: on the development machine (AMD EPYC, AVX2, 1 thread; ExecuTorch 1.5.1) XNNPACK runs
3x3 depthwise convolutions about as fast as ONNX Runtime but 7x7 ones 12-16x slower (a 24-channel 28x28
7x7 depthwise: 1.63 ms vs 0.10 ms), so an mbv3 subnet with three 7x7 layers took 3.6x ONNX Runtime's time.

What is timed: the module is captured with ``torch.export`` at the measured static shape, lowered
with ``to_edge_transform_and_lower`` and the ``XnnpackPartitioner`` (batch norm folded), serialised, and
loaded back from those bytes by the ExecuTorch runtime's Python bindings. What XNNPACK did not take runs
in ExecuTorch's portable kernels; :class:`LoweredProgram` records it (in an mbv3 subnet: the head's
``mean((2, 3))`` without ``keepdim``, which splits the graph into two partitions, and twelve scalar
constant copies). The input is copied into the program's planned input buffer once (``set_inputs``); a
timed run is one ``execute()`` of the loaded method, with no output copied out: ``method([x])`` would
also convert the input list and clone the outputs (about 0.05 ms of a 0.1 ms run of a small conv net on
the development machine), i.e. Python glue, not the model.

Threads: ExecuTorch's thread pool is process-wide and XNNPACK binds the pool it sees when a method
is *loaded*; resizing the pool later frees the one a loaded method still uses. So the pool is sized to
the profile's ``threads`` before a program is loaded, and resizing it while a program loaded for
another thread count is alive is refused with a one-line error instead of crashing the process
(:func:`load_program`). The pool stays at that size afterwards. ``inter_op_threads``,
``graph_optimization`` and ``opset`` are ONNX settings that ExecuTorch does not use.

Lowering is slow: on the busy 2-core development machine 4-8 s for one block and 35-60 s for a whole
11-layer mbv3 subnet, nearly all of it ``torch.export``'s decompositions and ExecuTorch's Python passes.
A module passed to :meth:`ExecuTorchMeasurer.measure_many` twice is lowered once, but a latency table or
a search verification on this runtime takes minutes to an hour where ONNX Runtime takes seconds.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.measure import LatencyMeasurer, LatencyStats, _Runner
from edgenas.hardware.profile import Profile
from edgenas.quantize import first_line
from edgenas.torch_utils import torch_threads

__all__ = [
    "BACKEND",
    "ExecuTorchMeasurer",
    "LoadedProgram",
    "LoweredProgram",
    "create_executorch_measurer",
    "executorch_profile",
    "executorch_version",
    "import_executorch",
    "load_program",
    "lower_module",
    "onnxruntime_profile",
]

BACKEND = "XnnpackBackend"
METHOD = "forward"
# Graph nodes that are plumbing, not compute left outside the delegate.
_PLUMBING = frozenset({"executorch_call_delegate", "getitem"})


def import_executorch(profile_name: str | None = None) -> Any:
    """The ExecuTorch runtime bindings (``portable_lib``), or a one-line error saying how to install them."""
    try:
        import executorch.extension.pybindings.portable_lib as portable_lib
    except ImportError:
        who = f"profile '{profile_name}' needs" if profile_name else "this needs"
        raise EdgenasError(f"{who} ExecuTorch, which is not installed here; install it with "
                           "pip install 'edgenas[executorch]' (or pip install executorch)") from None
    if not portable_lib._is_available(BACKEND):
        raise EdgenasError(f"this ExecuTorch build has no {BACKEND} (backends: "
                           f"{', '.join(portable_lib._get_registered_backend_names()) or 'none'})")
    return portable_lib


def executorch_version() -> str:
    """The installed ``executorch`` package's version (from its metadata)."""
    from importlib import metadata

    return metadata.version("executorch")


# ----- module -> program ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoweredProgram:
    """A module lowered to an ExecuTorch program: the ``.pte`` bytes and what XNNPACK took over.

    ``partitions`` counts the XNNPACK delegate calls; ``ops_outside`` the operators left to ExecuTorch's
    portable kernels (op name -> nodes), empty when XNNPACK runs the whole network.
    """

    pte: bytes
    input_shape: tuple[int, int, int, int]
    partitions: int
    ops_outside: dict[str, int]

    def delegation(self) -> dict[str, Any]:
        return {"backend": BACKEND, "partitions": self.partitions, "ops_outside_delegate": dict(self.ops_outside)}


def lower_module(model: nn.Module, input_shape: Sequence[int]) -> LoweredProgram:
    """A copy of ``model`` (eval mode, CPU, fp32) exported at the static ``input_shape`` (N, C, H, W) and
    lowered to XNNPACK; raises a one-line :class:`EdgenasError` when export or lowering fails."""
    import_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    shape = tuple(int(d) for d in input_shape)
    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings(), torch_threads(1), torch.no_grad():
            warnings.simplefilter("ignore")  # export and lowering deprecation notices
            edge = to_edge_transform_and_lower(torch.export.export(m, (x,)), partitioner=[XnnpackPartitioner()])
            graph = edge.exported_program().graph
            pte = bytes(edge.to_executorch().buffer)
    except Exception as exc:  # torch.export and the lowering passes raise many types
        raise EdgenasError(f"cannot lower {type(model).__name__} to ExecuTorch with XNNPACK at input "
                           f"{list(shape)}: {first_line(exc)}") from None
    names = [_op_name(n.target) for n in graph.nodes if n.op == "call_function"]
    outside = Counter(n for n in names if n not in _PLUMBING)
    return LoweredProgram(pte, shape, names.count("executorch_call_delegate"), dict(sorted(outside.items())))


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return str(name).split(":")[0].strip()


# ----- program -> loaded method ---------------------------------------------------------------------------------
class LoadedProgram:
    """A ``.pte`` loaded (verified) by the ExecuTorch runtime, its ``forward`` method ready to execute.

    ``threads`` is the thread-pool size XNNPACK bound at load; ``input_shape`` the static input shape.
    """

    def __init__(self, pte: bytes, threads: int, label: str) -> None:
        lib = import_executorch()
        self.label, self.threads = label, threads
        self._pte = pte  # the runtime reads the program from these bytes without copying: keep them alive
        try:
            self.program = lib._load_program_from_buffer(pte, program_verification=lib.Verification.InternalConsistency)
            self.method = self.program.load_method(METHOD)
        except Exception as exc:  # RuntimeError with an error code from the C++ runtime
            raise EdgenasError(f"ExecuTorch cannot load {label}: {first_line(exc)}") from None
        meta = self.method.method_meta()
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise EdgenasError(f"{label} has {meta.num_inputs()} inputs and {meta.num_outputs()} outputs; "
                               "edgenas runs one image tensor in, one logits tensor out")
        self.input_shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())

    def set_input(self, x: torch.Tensor) -> None:
        """Copy ``x`` into the method's input (float32, exactly :attr:`input_shape`)."""
        if tuple(x.shape) != self.input_shape or x.dtype != torch.float32:
            raise EdgenasError(f"{self.label} takes a float32 input of shape {list(self.input_shape)}, "
                               f"not {str(x.dtype).removeprefix('torch.')} {list(x.shape)}")
        self.method.set_inputs([x.contiguous()])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Outputs for float32 NCHW ``images``, run ``input_shape[0]`` at a time (the last group zero-padded)."""
        batch = self.input_shape[0]
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        out = []
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            if len(chunk) < batch:
                chunk = torch.cat([chunk, chunk.new_zeros((batch - len(chunk), *chunk.shape[1:]))])
            self.set_input(chunk)
            self.method.execute()
            out.append(self.method.get_outputs(clone_outputs=True)[0].numpy()[:len(x) - start])
        return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


# Programs alive now, so the process-wide pool is never resized under a method that bound it (see the module doc).
_LIVE: weakref.WeakSet[LoadedProgram] = weakref.WeakSet()


def load_program(pte: bytes | str | Path, threads: int, label: str | None = None) -> LoadedProgram:
    """A ``.pte`` (bytes or a file) loaded with ExecuTorch's thread pool at ``threads``.

    The pool is resized first when it has another size; that is refused (one-line :class:`EdgenasError`)
    while a program loaded for another thread count is still alive.
    """
    lib = import_executorch()
    if isinstance(pte, bytes):
        data, label = pte, label or "the ExecuTorch program"
    else:
        path = Path(pte)
        if not path.is_file():
            raise EdgenasError(f"ExecuTorch program not found: {path}")
        data, label = path.read_bytes(), label or str(path)
    if threads < 1:
        raise ConfigError(f"ExecuTorch needs at least one thread, not {threads}")
    if lib._threadpool_get_thread_count() != threads:
        other = sorted({p.threads for p in _LIVE if p.threads != threads})
        if other:
            raise EdgenasError(
                f"cannot run ExecuTorch on {threads} thread(s) while a program loaded for {other[0]} is alive: "
                "its thread pool is process-wide and XNNPACK keeps the one it was loaded with")
        lib._unsafe_reset_threadpool(threads)
    program = LoadedProgram(data, threads, label)
    _LIVE.add(program)
    return program


class _ExecuTorchRunner(_Runner):
    """A loaded method whose input was set once; ``run`` is one ``execute()``. The first run happens here."""

    def __init__(self, program: LoadedProgram, x: torch.Tensor) -> None:
        self.program, self.x = program, x
        program.set_input(x)
        method = program.method
        method.execute()
        self.run = method.execute


# ----- the measurer -----------------------------------------------------------------------------------------------
class ExecuTorchMeasurer(LatencyMeasurer):
    """ExecuTorch + XNNPACK on the CPU with the profile's threads; modules are lowered at the measured shape."""

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self._check_profile("executorch", "cpu")
        if profile.precision != "fp32":
            raise ConfigError(f"profile '{profile.name}': runtime executorch measures fp32 only, not "
                              f"{profile.precision}")
        import_executorch(profile.name)

    def measure_module(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> LatencyStats:
        return self.measure_many([model], [input_shape])[0]

    def measure_many(self, models: Sequence[nn.Module], input_shapes: Sequence[tuple[int, ...] | None]
                     ) -> list[LatencyStats]:
        """As :meth:`LatencyMeasurer.measure_many`, but a module passed more than once at one shape (the latency
        table's speed reference brackets the other models) is lowered once, then loaded once per copy:
        lowering costs seconds, loading milliseconds."""
        if len(models) != len(input_shapes):
            raise ValueError(f"{len(models)} models but {len(input_shapes)} input shapes")
        lowered: dict[tuple[int, tuple[int, ...]], bytes] = {}  # (id, shape): `models` keeps every id alive
        runners = []
        for model, shape in zip(models, input_shapes):
            full = self._full_shape(shape)
            key = (id(model), full)
            if key not in lowered:
                lowered[key] = lower_module(model, full).pte
            runners.append(self.pte_runner(lowered[key], label=f"{type(model).__name__} lowered"))
        return self._measure_runners(runners)

    def measure_pte_many(self, programs: Sequence[bytes | str | Path]) -> list[LatencyStats]:
        """Several ``.pte`` programs (bytes or files) timed interleaved at their own static input shapes."""
        return self._measure_runners([self.pte_runner(p) for p in programs])

    def pte_runner(self, pte: bytes | str | Path, label: str | None = None) -> _Runner:
        """A ``.pte`` loaded on the profile's threads with a seeded random input, ready to time (for
        interleaving with other runtimes' runners in :meth:`LatencyMeasurer._measure_runners`)."""
        program = load_program(pte, self.profile.threads, label)
        x = torch.randn(program.input_shape, generator=torch.Generator().manual_seed(0))
        return _ExecuTorchRunner(program, x)

    def module_runner(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> _Runner:
        """``model`` lowered at ``input_shape`` (default: the profile's batch and input) and ready to time."""
        return self._prepare(model, self._full_shape(input_shape))

    def _prepare(self, model: nn.Module, input_shape: tuple[int, int, int, int]) -> _Runner:
        return self.pte_runner(lower_module(model, input_shape).pte, label=f"{type(model).__name__} lowered")


def create_executorch_measurer(profile: Profile) -> ExecuTorchMeasurer:
    """The ``executorch`` entry of :data:`edgenas.hardware.measure.RUNTIMES` (imported on first use)."""
    if profile.device != "cpu":
        raise ConfigError(f"no latency measurer for runtime executorch on {profile.device} "
                          "(runtime executorch measures on: cpu)")
    return ExecuTorchMeasurer(profile)


def executorch_profile(profile: Profile) -> Profile:
    """The same CPU target (threads, input, batch, protocol) timed in ExecuTorch, e.g. for a bundle exported
    with an onnxruntime profile."""
    if profile.runtime == "executorch":
        return profile
    return Profile(name=profile.name, device="cpu", runtime="executorch", input_shape=profile.input_shape,
                   description=f"{profile.name}'s target in ExecuTorch + XNNPACK", threads=profile.threads,
                   batch_size=profile.batch_size, measure=profile.measure)


def onnxruntime_profile(profile: Profile) -> Profile:
    """The same CPU target timed in ONNX Runtime's CPU execution provider (all graph optimisations); an
    onnxruntime CPU profile is used as it is."""
    if profile.runtime == "onnxruntime" and profile.provider == "CPUExecutionProvider":
        return profile
    return Profile(name=profile.name, device="cpu", runtime="onnxruntime", provider="CPUExecutionProvider",
                   input_shape=profile.input_shape, threads=profile.threads, batch_size=profile.batch_size,
                   measure=profile.measure)
