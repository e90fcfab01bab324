"""The one int8 quantizer: what the latency table times is what the bundle ships.

Static quantization with ONNX Runtime: the fp32 graph is pre-processed (symbolic shape inference
and graph optimisation, when they handle it), then quantized to QDQ with per-channel int8 weights
in a 7-bit range (``reduce_range``), uint8 activations and MinMax calibration. ``edgenas export``
calibrates on training images; the latency table and ``profile measure`` of an fp32 file on an int8
profile calibrate on a few random inputs of the measured shape, which changes the scales but not the
graph, and so not the latency. Before, the table skipped the pre-processing and timed a different
graph from the shipped one.

Why 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) ONNX Runtime runs the fused
uint8 x int8 convolutions and matrix products with ``vpmaddubsw``, which adds two u8*s8 products in
a *saturating* int16: 255 * 127 * 2 = 64770 does not fit, 255 * 63 * 2 = 32130 does. Per-channel
weights put every channel's largest weight at +-127, and inputs at the top of their calibrated range
are 255 (every foreground pixel of a binary image is), so on Fashion-MNIST silhouettes 30% of a stem
convolution's outputs came out more than 5% wrong and small models trained on them lost 3-41 points
of accuracy (51.6 in the report that found it), while the same QDQ graph run unfused (quantization
error only) lost none. 7-bit weights cannot saturate, run the same kernels in the same time, and
make the bundle behave alike on VNNI and non-VNNI machines; the bit of weight precision they give up
cost nothing measurable (Fashion-MNIST: drop 0.26 -> 0.12 points). ONNX Runtime's quantizer
documentation recommends the same for x86 without VNNI. The export's accuracy gate still checks the
result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from edgenas.errors import EdgenasError

__all__ = ["INT8_SCHEME", "RandomCalibration", "first_line", "quantize_int8", "stdout_to"]

# What quantize_int8 produces, as the bundle manifest records it (read-only).
INT8_SCHEME: Mapping[str, str] = MappingProxyType({
    "format": "QDQ", "weights": "int8 per-channel, 7-bit range (reduce_range)", "activations": "uint8",
    "calibration": "MinMax"})


@contextlib.contextmanager
def stdout_to(target: str) -> Iterator[None]:
    """Point fd 1 at ``target`` ("stderr" or "devnull") for the block.

    torch's TorchScript exporter enables its C++ log whenever it runs (``setup_onnx_logging`` tests
    the function object instead of calling it), so a failed export dumps the whole Torch IR graph to
    stdout, and native libraries (onnxsim, the quantizer) may print there too; stdout must stay
    clean for ``--json``. The exporter's dump is dropped (the error names the op and module instead);
    other native output goes to stderr with the progress messages.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable fd 1 (embedded interpreters): nothing to protect
        yield
        return
    sink = os.open(os.devnull, os.O_WRONLY) if target == "devnull" else os.dup(2)
    try:
        os.dup2(sink, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(sink)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class RandomCalibration:
    """``count`` seeded standard-normal batches of the given input shapes (a ``CalibrationDataReader``)."""

    def __init__(self, shapes: dict[str, Sequence[int]], count: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._batches = [{k: rng.standard_normal(tuple(s)).astype(np.float32) for k, s in shapes.items()}
                         for _ in range(count)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize_int8(fp32: bytes, reader: Any) -> tuple[bytes, bool]:
    """Static int8 QDQ of an fp32 ONNX model (:data:`INT8_SCHEME`); returns the model and whether
    pre-processing ran.

    ``reader`` is an onnxruntime ``CalibrationDataReader`` (``get_next() -> feeds or None``).
    Any failure of the quantizer is one line (:class:`EdgenasError`).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs hints on the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="edgenas-int8-") as tmp, stdout_to("stderr"):
            src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(fp32)
            try:
                quant_pre_process(str(src), str(pre))
                preprocessed = pre.is_file()
            except Exception:  # optional: symbolic shape inference or the optimizer may not handle a graph
                preprocessed = False
            quantize_static(str(pre if preprocessed else src), str(dst), reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            return dst.read_bytes(), preprocessed
    except Exception as exc:  # onnxruntime's quantizer raises many types
        raise EdgenasError(f"int8 quantization failed: {first_line(exc)}") from None
    finally:
        root.setLevel(level)
