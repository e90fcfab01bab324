"""ONNX graphs of subnets: export (one op named when it fails), the full checker, a kernel check
against ONNX Runtime, metadata, and the multiply-add and parameter count read off the graph.

Split from :mod:`edgenas.export`, which assembles these into a verified bundle; the latency check
(:mod:`edgenas.check`) reads a bundle's cost with :func:`onnx_cost` too.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgenas.errors import ConfigError, EdgenasError
from edgenas.quantize import first_line, stdout_to

if TYPE_CHECKING:
    pass

__all__ = ["check_onnx", "export_onnx", "onnx_cost"]

_MIN_OPSET = 17  # QDQ per-channel, and the opset every profile and the CI check assume
_MAX_OPSET = 20  # the highest opset torch's TorchScript exporter writes
# Ops ONNX Runtime resolves while loading a graph instead of running a kernel for them.
_NO_KERNEL_NEEDED = frozenset({"Constant"})


# ----- ONNX export and checks -----------------------------------------------------------------------------
def _locate_op(model: nn.Module, input_shape: tuple[int, ...], op: str) -> str | None:
    """``path (Type)`` of the module whose forward calls ``op`` (e.g. ``aten::fft_fft2``), from trace scopes."""
    m = copy.deepcopy(model).cpu().float().eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(m, torch.zeros(input_shape), check_trace=False)
        graph = traced.inlined_graph
    except Exception:  # tracing can fail for the same reason the export did
        return None
    modules = dict(m.named_modules())
    for node in graph.nodes():
        if node.kind() == op:
            scope = node.scopeName().split("/")[-1]
            path = scope.removeprefix("__module.").removeprefix("__module")
            module = modules.get(path)
            if module is not None:
                return f"{path or '<root>'} ({type(module).__name__})"
    return None


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int, int], opset: int = 17) -> bytes:
    """Export ``model`` (eval, CPU, BN folded) with a dynamic batch axis and check ONNX Runtime can run it.

    An op the exporter rejects is reported with the op and the module that calls it (``aten::fft_fft2 in
    body.1 (Spectral)``); an op the exporter writes but ONNX Runtime's CPU provider lacks is named too.
    """
    from edgenas.hardware.measure import export_onnx_bytes

    try:
        with stdout_to("devnull"):
            data = export_onnx_bytes(model, input_shape, opset=opset, dynamic_batch=True)
    except EdgenasError as exc:
        found = re.search(r"operator '([\w.]+::[\w.]+)'", str(exc))
        if found is None:
            raise
        op = found.group(1)
        where = _locate_op(model, input_shape, op)
        raise EdgenasError(
            f"cannot export {type(model).__name__} to ONNX: op {op}"
            + (f" in module {where}" if where else "")
            + f" is not supported by torch's ONNX exporter at opset {opset}; replace it with supported ops"
        ) from None
    check_onnx(data, label=f"the ONNX export of {type(model).__name__}")
    return data


def _ort_missing_kernels(proto: Any, provider: str = "CPUExecutionProvider") -> list[str]:
    """``op (node)`` for each node ONNX Runtime has no ``provider`` kernel (nor ONNX function body) for."""
    import onnx.defs

    try:
        from onnxruntime.capi import _pybind_state
    except ImportError:  # a build without the kernel registry: the session load still catches it
        return []
    ranges: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in _pybind_state.get_all_opkernel_def():
        if k.provider == provider:
            ranges.setdefault((k.domain, k.op_name), []).append(tuple(k.version_range))
    opsets = {("" if imp.domain == "ai.onnx" else imp.domain): int(imp.version) for imp in proto.opset_import}
    missing: list[str] = []
    for node in proto.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain == "" and node.op_type in _NO_KERNEL_NEEDED:
            continue
        version = opsets.get(domain, 1)
        try:
            schema = onnx.defs.get_schema(node.op_type, version, domain)
            since = int(schema.since_version)
            has_body = bool(schema.has_function or schema.has_context_dependent_function)
        except Exception:  # unknown to onnx (a custom domain): the kernel registry decides alone
            since, has_body = version, False
        if not any(lo <= since <= hi for lo, hi in ranges.get((domain, node.op_type), [])) and not has_body:
            missing.append(f"{(domain + '.') if domain else ''}{node.op_type} (node '{node.name}')")
    return missing


def check_onnx(model: bytes | Any, label: str = "ONNX model", provider: str = "CPUExecutionProvider") -> Any:
    """The parsed model, after ONNX Runtime's kernel registry and ``onnx.checker`` (full check) accept it."""
    import onnx

    try:
        proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else model
    except Exception as exc:  # protobuf raises DecodeError and others
        raise EdgenasError(f"{label} is not a valid ONNX model: {first_line(exc)}") from None
    missing = _ort_missing_kernels(proto, provider)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise EdgenasError(f"{label} uses op {missing[0]}{more}, which onnxruntime {provider} cannot run")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise EdgenasError(f"{label} fails onnx.checker: {first_line(exc)}") from None
    return proto


def _simplify(proto: Any) -> Any:
    try:
        import onnxsim
    except ImportError:
        raise EdgenasError("--simplify needs onnxsim, which is not installed: pip install onnxsim "
                           "(or pip install 'edgenas[export]')") from None
    try:
        with stdout_to("stderr"):
            simplified, ok = onnxsim.simplify(proto)
    except Exception as exc:  # onnxsim raises many types
        raise EdgenasError(f"onnxsim could not simplify the model: {first_line(exc)}") from None
    if not ok:
        raise EdgenasError("onnxsim's simplified model does not match the original; export without --simplify")
    return simplified


def _set_metadata(proto: Any, props: dict[str, str], doc: str) -> None:
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.graph.doc_string = doc
    proto.doc_string = doc


# ----- cost from the graph ---------------------------------------------------------------------------------
def onnx_cost(model: bytes | Any, input_shape: Sequence[int], by_op: bool = False) -> dict[str, Any]:
    """Multiply-adds and parameters read from an ONNX graph itself, at batch 1.

    ``onnx_macs`` counts Conv (``output elements x weight elements per output channel``) and Gemm /
    MatMul (``output elements x reduced dimension``) from shapes inferred with the first input fixed to
    ``input_shape`` at batch 1 (C, H, W; or N, C, H, W with N ignored); ``onnx_params`` is the number of elements
    of all initializers. Works on QDQ int8 graphs too (weights come out of DequantizeLinear with their
    shapes). Deterministic for a given file, so a manifest's figures can be compared exactly.
    ``by_op`` adds ``onnx_macs_by_op`` (Conv, Gemm, MatMul separately).
    """
    import onnx
    from onnx import shape_inference

    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else model
    proto = copy.deepcopy(proto)
    initializers = {t.name: [int(d) for d in t.dims] for t in proto.graph.initializer}
    first = next((i for i in proto.graph.input if i.name not in initializers), None)
    if first is None:
        raise EdgenasError("the ONNX model has no input")
    shape = first.type.tensor_type.shape
    dims = [int(d) for d in input_shape]
    if len(dims) == len(shape.dim) - 1:
        dims = [1, *dims]
    if len(dims) != len(shape.dim) or not dims:
        raise ConfigError(f"input '{first.name}' has {len(shape.dim)} dimensions; give its shape without or with the "
                          f"batch dimension, not {list(input_shape)}")
    dims[0] = 1
    for d, value in zip(shape.dim, dims):
        d.Clear()
        d.dim_value = value
    try:
        inferred = shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:  # InferenceError
        raise EdgenasError(f"cannot infer the ONNX graph's shapes at {dims}: {first_line(exc)}") from None
    shapes: dict[str, list[int]] = dict(initializers)
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = [int(d.dim_value) for d in tensor.shape.dim]

    def known(name: str, node: Any) -> list[int]:
        if name not in shapes:
            raise EdgenasError(f"onnx_cost: no static shape for '{name}' ({node.op_type} node '{node.name}')")
        return shapes[name]

    macs_by_op: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            out = known(node.output[0], node)
            weight = known(node.input[1], node)
            macs = int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "Gemm":
            attrs = {a.name: a for a in node.attribute}
            a = known(node.input[0], node)
            k = a[0] if ("transA" in attrs and attrs["transA"].i) else a[1]
            macs = int(np.prod(known(node.output[0], node))) * k
        elif node.op_type == "MatMul":
            macs = int(np.prod(known(node.output[0], node))) * known(node.input[0], node)[-1]
        else:
            continue
        macs_by_op[node.op_type] = macs_by_op.get(node.op_type, 0) + macs
    params = sum(int(np.prod(d)) for d in initializers.values())
    out: dict[str, Any] = {"onnx_macs": int(sum(macs_by_op.values())), "onnx_params": int(params)}
    if by_op:
        out["onnx_macs_by_op"] = dict(sorted(macs_by_op.items()))
    return out
