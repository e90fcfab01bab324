"""FLOPs and parameter counts of real modules, with every op of our spaces accounted for.

fvcore's ``FlopCountAnalysis`` traces the model and counts convolutions, linear layers and batch
norm, but skips activations, element-wise arithmetic and ``mean`` (it warns, or drops them silently
when they are on its ignore list, like ``relu``). Its numbers would then undercount exactly the parts
that differ between choices of our spaces (hard-swish vs ReLU stages, squeeze-excite, residuals), so
:func:`count_flops` registers a handle for each of them and reports anything still unhandled in
:attr:`FlopsCount.uncounted` instead of hiding it. The tests cross-check the result against a count
derived by hand from the block structure.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgenas.torch_utils import torch_threads

__all__ = ["FLOPS_CONVENTION", "FlopsCount", "count_flops"]

FLOPS_CONVENTION = (
    "1 multiply-add = 1 FLOP (fvcore convention): convolutions and linear layers count their "
    "multiply-adds (bias adds not counted); batch norm in eval mode counts 1 FLOP per element (its "
    "folded scale-and-shift is one multiply-add); activations, SE gating multiplies and residual adds "
    "count 1 FLOP per output element; global average pooling (mean) counts 1 FLOP per input element; "
    "slicing, concatenation and dropout count 0"
)


@dataclass
class FlopsCount:
    """FLOPs (see :data:`FLOPS_CONVENTION`) and parameters of one model at one input shape.

    ``flops`` is for the whole input batch given to :func:`count_flops`; ``by_operator`` splits it
    (``conv``, ``linear``, ``batch_norm``, ``relu``, ``hardswish``, ``hardsigmoid``, ``add``, ``mul``,
    ``mean``, ...); ``uncounted`` names traced ops that no handle counted (empty for our spaces).
    """

    flops: int
    params: int
    by_operator: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)

    @property
    def mflops(self) -> float:
        return self.flops / 1e6

    @property
    def params_m(self) -> float:
        return self.params / 1e6


def _numel(value: Any) -> int:
    shape = value.type().sizes() if value.isCompleteTensor() else None
    if shape is None:
        raise ValueError("fvcore traced a tensor without a complete shape")
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _per_output(name: str) -> Callable[[list[Any], list[Any]], Counter[str]]:
    """1 FLOP per output element, reported under ``name`` (in-place variants share the name)."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
        return Counter({name: _numel(outputs[0])})

    return handle


def _per_input(name: str) -> Callable[[list[Any], list[Any]], Counter[str]]:
    """1 FLOP per element of the first input: one add per element for a reduction such as mean."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
        return Counter({name: _numel(inputs[0])})

    return handle


def _batch_norm(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """Eval-mode batch norm is one multiply-add per element (fvcore counts 2 with affine)."""
    return Counter({"batch_norm": _numel(inputs[0])})


def _extra_handles() -> dict[str, Callable[[list[Any], list[Any]], Counter[str]]]:
    """Handles for the element-wise ops fvcore skips (relu is even on its ignore list)."""
    handles: dict[str, Callable[[list[Any], list[Any]], Counter[str]]] = {"aten::batch_norm": _batch_norm}
    for op in ("relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh",
               "leaky_relu", "add", "sub", "mul", "div"):
        handles[f"aten::{op}"] = handles[f"aten::{op}_"] = _per_output(op)
    handles["aten::mean"] = _per_input("mean")
    return handles


def count_flops(model: nn.Module, input_shape: tuple[int, int, int, int]) -> FlopsCount:
    """Trace a copy of ``model`` in eval mode at ``input_shape`` (N, C, H, W) and count its FLOPs.

    Runs on CPU in float32 whatever the model's device, single-threaded (the counts do not depend on
    it, and contended OpenMP threads made tracing many times slower); the caller's model is not touched.
    """
    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    x = torch.zeros(tuple(int(d) for d in input_shape))
    with warnings.catch_warnings(), torch_threads(1):
        warnings.simplefilter("ignore")  # fvcore's import-time torch.jit.script deprecation; tracer warnings
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(m, (x,))
        analysis.set_op_handle(**_extra_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad():
            by_op = analysis.by_operator()
            unsupported = analysis.unsupported_ops()
    params = sum(p.numel() for p in m.parameters())
    by_operator = {k: int(v) for k, v in sorted(by_op.items()) if v}
    return FlopsCount(
        flops=int(sum(by_operator.values())), params=int(params), by_operator=by_operator,
        uncounted=sorted(unsupported),
    )
