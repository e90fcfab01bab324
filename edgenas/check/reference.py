"""The fixed reference workload timed beside a bundle, so a runner's drift hits both and cancels.

Two kinds, both rebuilt exactly from what the baseline stores:

- :class:`TwinReference` (``ref-twin/1``, what ``--update`` records): the bundle's own graph as it
  was at ``--update``, with its large weights replaced by seeded random ones. It has the bundle's op
  mix by construction, so load and CPU type move both alike.
- :class:`ReferenceSpec` (``ref-mbconv/1``, older baselines and ``--reference mbconv``): a fixed
  inverted-residual network sized to the bundle's latency.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgenas.check.rule import _WIDTH_RANGE, REFERENCE_NAME, TWIN_NAME
from edgenas.config import from_mapping, to_mapping
from edgenas.errors import ConfigError

__all__ = ["Reference", "ReferenceSpec", "TwinReference", "reference_from_json"]


# ----- the reference workload --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceSpec:
    """A fixed ONNX workload of the kind edgenas finds: a 3x3 stride-2 stem Conv+Relu to ``width``
    channels, ``depth`` inverted-residual blocks (1x1 expand by ``expand`` + Relu, 3x3 depthwise +
    Relu, 1x1 project, residual Add), GlobalAveragePool, Gemm to ``classes``.

    Depthwise and pointwise convolutions like the bundles of the mbv3 and spos spaces, so that a
    runner whose CPU favours other kernels (another vector width, another cache size) speeds up or
    slows down both models alike and the ratio carries over between runners; that part is reasoning,
    not measured here (one CPU type). On one machine its ratio was as stable as that of a dense
    3x3-convolution reference (relative std 4.1% vs 4.4% over 30 checks under load). Everything that
    determines the graph and its weights is a field, so the spec stored in a baseline rebuilds the
    same model (weights from ``numpy.random.default_rng(seed)``); a new design gets a new ``name``.
    """

    input_shape: tuple[int, int, int]
    width: int
    depth: int = 3
    expand: int = 4
    classes: int = 10
    seed: int = 0
    opset: int = 17
    name: str = REFERENCE_NAME

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.name != REFERENCE_NAME:
            raise ConfigError(f"unknown reference workload '{self.name}' (this edgenas knows {REFERENCE_NAME}); "
                              "rewrite the baseline with --update")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"reference input shape must be three positive sizes C, H, W, not {self.input_shape}")
        for key in ("width", "depth", "expand", "classes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"reference {key} must be >= 1, not {getattr(self, key)}")

    def macs(self) -> int:
        """Multiply-adds at batch 1 (the stem halves H and W; the blocks keep them)."""
        a, b = _reference_macs_terms(self.input_shape, self.depth, self.expand, self.classes)
        return int(a * self.width * self.width + b * self.width)

    def graph_parts(self, input_name: str, output_name: str, prefix: str = "ref_") -> tuple[list[Any], list[Any]]:
        """The nodes and initializers computing ``output_name`` (N x classes) from ``input_name`` (N, C, H, W).

        Exposed so a benchmark can graft the same workload onto another graph as a side branch.
        """
        from onnx import helper, numpy_helper

        rng = np.random.default_rng(self.seed)
        nodes: list[Any] = []
        inits: list[Any] = []

        def conv(x: str, cin: int, cout: int, name: str, kernel: int = 1, stride: int = 1, group: int = 1,
                 relu: bool = True) -> str:
            fan_in = cin // group * kernel * kernel
            w = (rng.standard_normal((cout, cin // group, kernel, kernel)) * math.sqrt(2.0 / fan_in)).astype(np.float32)
            b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
            inits.extend([numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")])
            nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], kernel_shape=[kernel] * 2,
                                          pads=[kernel // 2] * 4, strides=[stride] * 2, group=group, name=name))
            if not relu:
                return name
            nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"], name=f"{name}_relu"))
            return f"{name}_relu"

        width, hidden = self.width, self.width * self.expand
        x = conv(input_name, self.input_shape[0], width, f"{prefix}stem", kernel=3, stride=2)
        for i in range(self.depth):
            h = conv(x, width, hidden, f"{prefix}b{i}_expand")
            h = conv(h, hidden, hidden, f"{prefix}b{i}_dw", kernel=3, group=hidden)
            h = conv(h, hidden, width, f"{prefix}b{i}_project", relu=False)
            nodes.append(helper.make_node("Add", [x, h], [f"{prefix}b{i}_add"], name=f"{prefix}b{i}_add"))
            x = f"{prefix}b{i}_add"
        fc_w = (rng.standard_normal((self.classes, width)) * math.sqrt(1.0 / width)).astype(np.float32)
        fc_b = np.zeros(self.classes, dtype=np.float32)
        inits += [numpy_helper.from_array(fc_w, f"{prefix}fc_w"), numpy_helper.from_array(fc_b, f"{prefix}fc_b")]
        nodes += [
            helper.make_node("GlobalAveragePool", [x], [f"{prefix}pool"], name=f"{prefix}pool"),
            helper.make_node("Flatten", [f"{prefix}pool"], [f"{prefix}flat"], axis=1, name=f"{prefix}flat"),
            helper.make_node("Gemm", [f"{prefix}flat", f"{prefix}fc_w", f"{prefix}fc_b"], [output_name], transB=1,
                             name=f"{prefix}fc"),
        ]
        return nodes, inits

    def model_bytes(self) -> bytes:
        """The serialized model: input ``input`` (batch, C, H, W) float32, output ``logits``."""
        import onnx
        from onnx import TensorProto, helper

        nodes, inits = self.graph_parts("input", "logits")
        graph = helper.make_graph(
            nodes, "edgenas_reference", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                       ["batch", *self.input_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", self.classes])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="edgenas-reference", producer_version=self.name)
        model.ir_version = 8  # pinned: the default follows the installed onnx, runtimes lag behind
        onnx.checker.check_model(model)
        return model.SerializeToString()

    def to_json(self) -> dict[str, Any]:
        return to_mapping(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "reference") -> ReferenceSpec:
        return from_mapping(cls, data, where=where)

    def describe(self) -> str:
        """One line for reports."""
        return f"{self.name} (width {self.width}, depth {self.depth})"

    def summary_json(self) -> dict[str, Any]:
        """What a check report shows of the reference (all of it: it is small)."""
        return self.to_json()

    @classmethod
    def for_macs(cls, input_shape: Sequence[int], macs: float, **fields: Any) -> ReferenceSpec:
        """The spec whose MACs come closest to ``macs`` by width (clamped to 2..512)."""
        shape = tuple(int(d) for d in input_shape)
        a, b = _reference_macs_terms(shape, int(fields.get("depth", cls.depth)),
                                        int(fields.get("expand", cls.expand)), int(fields.get("classes", cls.classes)))
        target = max(float(macs), 1.0)
        width = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
        return cls(input_shape=shape, width=int(min(max(round(width), _WIDTH_RANGE[0]), _WIDTH_RANGE[1])), **fields)


def _reference_macs_terms(shape: Sequence[int], depth: int, expand: int, classes: int) -> tuple[int, int]:
    """MACs of the reference = a * width**2 + b * width: pointwise convs give the square term,
    the stem, the depthwise convs and the Gemm the linear one."""
    c, h, w = shape
    pixels = ((h + 1) // 2) * ((w + 1) // 2)  # 3x3 stride-2 stem with padding 1
    a = pixels * 2 * expand * depth
    b = pixels * (9 * c + 9 * expand * depth) + classes
    return a, b


# ----- the bundle's twin -------------------------------------------------------------------------------------
# Initializers with more elements than this are stored as shape + fill parameters and regenerated;
# smaller ones (biases of narrow layers, quantization scales and zero points, Reshape shapes) verbatim.
_KEEP_ELEMENTS = 64
_FILL_MARK = "edgenas-twin-fill:"
_FLOAT_TYPES = (1, 10, 11)  # onnx TensorProto FLOAT, FLOAT16, DOUBLE
_INT_TYPES = (2, 3, 4, 5, 6, 7, 12, 13)  # UINT8, INT8, UINT16, INT16, INT32, INT64, UINT32, UINT64


@dataclass(frozen=True)
class TwinReference:
    """The bundle's model graph as it was at ``--update``, with seeded weights: the bundle's op mix.

    ``graph`` is the ONNX model with every initializer of more than 64 elements emptied (its shape,
    type and fill parameters kept: the standard deviation of a float tensor, the range of an integer
    one), zlib-compressed and base64-encoded, so the baseline stays a few KiB to a few tens of KiB.
    :meth:`model_bytes` refills those tensors from ``numpy.random.default_rng(seed)``; latency does not
    depend on weight values (no denormals: the fill keeps each tensor's scale), so the twin runs as
    fast as the baseline's model did and the baseline ratio is about 1. Timed beside the current
    bundle it answers: is the bundle slower than its own baseline graph, on this machine, now?

    Measured (docs/BENCHMARKS.md, check_reliability: a shared 2-core host, five load scenarios of
    20 checks each, both references checked in turn under the same conditions): against its twin
    the unchanged bundle's d stayed within 0.91-1.06 and the check raised 0/100 false alarms and
    caught 100/100 of a +24.5% slowdown at 10% tolerance; against ``ref-mbconv/1`` d ranged
    0.78-1.62, with 28/100 false alarms (19/20 beside two busy processes) and 89/100 detections
    (9/20 against a baseline recorded beside them). What the twin cannot see: an onnxruntime upgrade
    that slows the bundle's kernels slows the twin alike (the check notes a runtime version change).
    """

    input_shape: tuple[int, int, int]
    graph: str
    nodes: int
    seed: int = 0
    name: str = TWIN_NAME

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.name != TWIN_NAME:
            raise ConfigError(f"unknown reference workload '{self.name}' (this edgenas knows {TWIN_NAME} and "
                              f"{REFERENCE_NAME}); rewrite the baseline with --update")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"reference input shape must be three positive sizes C, H, W, not {self.input_shape}")
        proto = self._proto()  # a corrupt graph is an error when the baseline is read, before measuring
        if len(proto.graph.node) != self.nodes or self.nodes < 1:
            raise ConfigError(f"reference graph has {len(proto.graph.node)} nodes, the baseline says {self.nodes}")

    @classmethod
    def from_model(cls, model: bytes, input_shape: Sequence[int], seed: int = 0) -> TwinReference:
        """The twin of a serialized ONNX model (the file ``--update`` measures)."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_model_from_string(model)
        for tensor in proto.graph.initializer:
            if math.prod(tensor.dims) <= _KEEP_ELEMENTS or tensor.data_type not in _FLOAT_TYPES + _INT_TYPES:
                continue
            values = numpy_helper.to_array(tensor)
            if tensor.data_type in _FLOAT_TYPES:
                fill: dict[str, float] = {"std": float(np.std(values.astype(np.float64)))}
            else:
                fill = {"low": int(values.min()), "high": int(values.max())}
            name, dims, dtype = tensor.name, list(tensor.dims), tensor.data_type
            tensor.Clear()
            tensor.name, tensor.data_type = name, dtype
            tensor.dims.extend(dims)
            tensor.doc_string = _FILL_MARK + json.dumps(fill, sort_keys=True)
        packed = base64.b64encode(zlib.compress(proto.SerializeToString(), 9)).decode("ascii")
        return cls(input_shape=tuple(input_shape), graph=packed, nodes=len(proto.graph.node), seed=seed)

    def _proto(self) -> Any:
        import onnx

        try:
            data = zlib.decompress(base64.b64decode(self.graph.encode("ascii"), validate=True))
            return onnx.load_model_from_string(data)
        except (binascii.Error, zlib.error, ValueError, UnicodeError) as exc:
            raise ConfigError(f"reference graph is not a valid encoded ONNX model ({exc})") from None
        except Exception as exc:  # protobuf's DecodeError
            raise ConfigError(f"reference graph is not a valid ONNX model ({type(exc).__name__})") from None

    def model_bytes(self) -> bytes:
        """The graph with its emptied initializers refilled from the seed; the same bytes every time."""
        from onnx import helper, numpy_helper

        proto = self._proto()
        rng = np.random.default_rng(self.seed)
        for tensor in proto.graph.initializer:
            if not tensor.doc_string.startswith(_FILL_MARK):
                continue
            fill = json.loads(tensor.doc_string[len(_FILL_MARK):])
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            shape = tuple(tensor.dims)
            if tensor.data_type in _FLOAT_TYPES:
                values = (rng.standard_normal(shape) * fill["std"]).astype(dtype)
            else:
                values = rng.integers(fill["low"], fill["high"] + 1, size=shape, dtype=np.int64).astype(dtype)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        return proto.SerializeToString()

    def to_json(self) -> dict[str, Any]:
        return to_mapping(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "reference") -> TwinReference:
        return from_mapping(cls, data, where=where)

    def describe(self) -> str:
        return f"{self.name} (the baseline's graph, {self.nodes} nodes, seeded weights)"

    def summary_json(self) -> dict[str, Any]:
        """What a check report shows of the reference: not the encoded graph, a digest of it."""
        return {"name": self.name, "input_shape": list(self.input_shape), "nodes": self.nodes, "seed": self.seed,
                "graph_sha256": hashlib.sha256(self.graph.encode("ascii")).hexdigest()}


Reference = ReferenceSpec | TwinReference


def reference_from_json(data: Any, where: str = "reference") -> Reference:
    """A stored reference of either kind, told apart by its ``name``."""
    if isinstance(data, dict) and data.get("name") == TWIN_NAME:
        return TwinReference.from_json(data, where=where)
    return ReferenceSpec.from_json(data, where=where)
