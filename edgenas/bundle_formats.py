"""Extra deployment formats a bundle can carry beside ``model.onnx``: one registry entry per format.

A user who deploys with OpenVINO or a mobile runtime wants that runtime's file in the bundle, checked
like the ONNX model is: converted from the same network, run on the same test images, its top-1
predictions compared with ONNX Runtime's (agreement and accuracy), and timed in its own runtime when
the export measures latency. Each format is a function ``convert(context) -> FormatResult`` in its own
module (registered lazily, so an optional dependency costs nothing until a bundle asks for the format);
:func:`edgenas.export.export_bundle` calls the formats named in ``ExportConfig.formats`` after the ONNX
parity check and before anything is written, so a format that fails its parity check fails the export
with nothing written.

A format's files must be new names in the bundle; their hashes are recorded with the other files (so
``verify_bundle`` and the latency check see a tampered file), and ``manifest["formats"][name]`` holds
the format's own record (files, runtime version, parity, accuracy, latency).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from edgenas.errors import ConfigError
from edgenas.registry import Registry

__all__ = ["FORMATS", "FormatContext", "FormatResult", "top1_record"]


@dataclass(frozen=True)
class FormatContext:
    """What a format converter gets: the verified network in both forms and the images it was checked on.

    ``subnet`` is the fp32 torch network in eval mode on the CPU; ``onnx_model`` the bundle's verified
    ``model.onnx`` (dynamic batch, input ``input``, output ``logits``); ``images`` and ``labels`` the
    evaluation images, preprocessed exactly as at inference (float32 NCHW), with ``onnx_pred`` ONNX
    Runtime's top-1 prediction for each; ``input_shape`` the single-image shape (1, C, H, W) used for
    timing; ``profile`` the export's measurement profile or ``None`` when the export does not measure.
    """

    subnet: nn.Module
    onnx_model: bytes
    images: np.ndarray
    labels: np.ndarray
    onnx_pred: np.ndarray
    input_shape: tuple[int, int, int, int]
    profile: Any | None
    progress: Callable[[str], None] = field(default=lambda _message: None)


@dataclass(frozen=True)
class FormatResult:
    """The files a format adds to the bundle (name -> bytes) and its manifest record."""

    files: dict[str, bytes]
    manifest: dict[str, Any]


def top1_record(pred: np.ndarray, context: FormatContext) -> dict[str, Any]:
    """Accuracy of a format's top-1 predictions and their agreement with ONNX Runtime's, as in the manifest."""
    pred = np.asarray(pred).reshape(-1)
    if pred.shape != context.labels.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {context.labels.shape[0]} images")
    correct = int((pred == context.labels).sum())
    return {"accuracy": correct / len(pred), "correct": correct, "count": len(pred),
            "top1_agreement_with_onnx": float((pred == context.onnx_pred).mean())}


def _lazy(module: str, attribute: str) -> Callable[[FormatContext], FormatResult]:
    def convert(context: FormatContext) -> FormatResult:
        import importlib

        function: Callable[[FormatContext], FormatResult] = getattr(importlib.import_module(module), attribute)
        return function(context)

    return convert


def _builtins(registry: Registry[Callable[[FormatContext], FormatResult]]) -> None:
    registry.register("openvino", _lazy("edgenas.bundle_openvino", "openvino_format"))
    registry.register("executorch", _lazy("edgenas.bundle_executorch", "executorch_format"))


FORMATS: Registry[Callable[[FormatContext], FormatResult]] = Registry("bundle format", ConfigError, _builtins)
"""Format name (``edgenas export --format NAME``) -> ``convert(FormatContext) -> FormatResult``."""
