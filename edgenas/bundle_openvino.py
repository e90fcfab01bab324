"""The OpenVINO IR as a bundle format: ``model.openvino.xml`` and ``.bin`` beside ``model.onnx``, checked like it.

A deployment on OpenVINO loads its IR (no ONNX frontend at start-up), so ``edgenas export --format
openvino`` ships one. Converted from the exact ``model.onnx`` bytes the export verified (not re-exported
from torch), torch, ONNX and IR describe one graph. The weights stay fp32 (``compress_to_fp16=False``;
OpenVINO's default would halve them to fp16, which parity against fp32 ONNX Runtime would then measure)
and the batch dimension stays dynamic, as in ``model.onnx``.

Checked before anything is written: the written bytes are read back, compiled for the CPU (f32, see
:func:`edgenas.hardware.openvino_runtime.compile_properties`) and run on the export's evaluation images
beside ONNX Runtime on ``model.onnx``. The export fails (one line, nothing written) when a logit differs by
more than :data:`PARITY_TOLERANCE` or the top-1 predictions agree on fewer than ``MIN_AGREEMENT`` of the
images: the same bar as torch vs ONNX Runtime. On the reference Fashion-MNIST bundle the largest
difference was 2.9e-6 on 10,000 test images.

When the export measures latency, the IR is timed in OpenVINO and ``model.onnx`` in ONNX Runtime,
interleaved with the export profile's protocol, threads and batch, so their ratio is measured under one
load. :func:`verify_openvino` re-checks a written bundle: file hashes against the manifest, then accuracy
and agreement with ONNX Runtime on the test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.bundle_formats import FormatContext, FormatResult, top1_record
from edgenas.errors import BundleError, EdgenasError
from edgenas.hardware.openvino_runtime import (
    DEVICE,
    compile_model,
    compile_properties,
    import_openvino,
    layer_precisions,
    measure_ir_beside_onnx,
    read_model,
)

__all__ = ["BIN_FILE", "PARITY_TOLERANCE", "XML_FILE", "convert_to_ir", "openvino_format", "predict_ir",
           "verify_openvino"]

XML_FILE = "model.openvino.xml"
BIN_FILE = "model.openvino.bin"
PARITY_TOLERANCE = 1e-4  # max |logit difference| between the IR in OpenVINO and model.onnx in ONNX Runtime
EVAL_BATCH = 256


def convert_to_ir(onnx_model: bytes) -> tuple[bytes, bytes]:
    """``(xml, bin)`` of the OpenVINO IR of an ONNX model, weights kept in fp32."""
    ov = import_openvino()
    model = read_model(ov.Core(), onnx_model, label="model.onnx")
    with tempfile.TemporaryDirectory(prefix="edgenas-openvino-") as tmp:
        xml = Path(tmp) / XML_FILE
        try:
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:  # serialisation errors are RuntimeErrors with multi-line reports
            raise EdgenasError(f"OpenVINO cannot write the IR of model.onnx: {str(exc).strip()[:200]}") from None
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _compiled_ir(xml: bytes, weights: bytes) -> Any:
    """The IR compiled as shipped (dynamic batch), f32, on as many threads as torch uses here."""
    ov = import_openvino()
    core = ov.Core()
    return compile_model(core, read_model(core, xml, weights, label="the OpenVINO IR"), _threads(),
                         label="the OpenVINO IR")


def predict_ir(compiled: Any, images: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Logits of a compiled IR for float32 NCHW ``images``, ``batch`` at a time."""
    request = compiled.create_infer_request()
    out = [np.array(request.infer({0: np.ascontiguousarray(images[i:i + batch], dtype=np.float32)})[0])
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def _onnx_logits(onnx_model: bytes, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    from edgenas.export import _ort_session

    sess = _ort_session(onnx_model)
    for x in batches:
        yield sess.run(["logits"], {"input": x})[0]


def openvino_format(context: FormatContext) -> FormatResult:
    """The ``openvino`` entry of :data:`edgenas.bundle_formats.FORMATS`: IR files and their manifest record.

    Raises a one-line :class:`EdgenasError` when OpenVINO is missing, cannot convert or compile the
    model, or the IR fails its parity check against ONNX Runtime.
    """
    from importlib import metadata

    from edgenas.export import MIN_AGREEMENT, MODEL_FILE

    ov = import_openvino()
    version = metadata.version("openvino")
    context.progress(f"converting {MODEL_FILE} to OpenVINO IR (OpenVINO {version}, fp32 weights)")
    xml, weights = convert_to_ir(context.onnx_model)
    compiled = _compiled_ir(xml, weights)
    images = context.images
    logits = predict_ir(compiled, images)
    batches = (images[i:i + EVAL_BATCH] for i in range(0, len(images), EVAL_BATCH))
    reference = np.concatenate(list(_onnx_logits(context.onnx_model, batches)))
    max_diff = float(np.abs(logits - reference).max())
    accuracy = top1_record(logits.argmax(1), context)
    agreement, count = accuracy["top1_agreement_with_onnx"], accuracy["count"]
    if not max_diff <= PARITY_TOLERANCE or agreement < MIN_AGREEMENT:
        raise EdgenasError(
            f"the OpenVINO IR disagrees with ONNX Runtime on {count} test images: max |logit diff| {max_diff:.3g} "
            f"(tolerance {PARITY_TOLERANCE:g}), top-1 agreement {agreement:.4%} (need {MIN_AGREEMENT:.1%}); "
            "nothing written")
    parity = {"max_abs_diff": max_diff, "tolerance": PARITY_TOLERANCE, "top1_agreement": agreement,
              "min_agreement": MIN_AGREEMENT, "count": count, "against": f"onnxruntime on {MODEL_FILE}"}
    summary = (f"{XML_FILE} + .bin (OpenVINO {version}, fp32 weights): top-1 agreement with ONNX Runtime "
               f"{agreement:.2%} on {count} test images, max |logit diff| {max_diff:.2g} (tolerance "
               f"{PARITY_TOLERANCE:g}), accuracy {accuracy['accuracy']:.2%}")
    latency = None
    if context.profile is not None:
        profile = context.profile
        shape = (profile.batch_size, *context.input_shape[1:])
        m = profile.measure
        context.progress(f"timing the IR in OpenVINO beside {MODEL_FILE} in ONNX Runtime ({m.trials} trials x "
                         f"{m.repeats} runs, interleaved)")
        ir_stats, onnx_stats, _seconds = measure_ir_beside_onnx(profile, xml, weights, context.onnx_model, shape)
        ratio = ir_stats.median_ms / onnx_stats.median_ms

        def brief(stats: Any) -> dict[str, Any]:
            return {k: v for k, v in stats.to_json().items() if k != "samples_ms"}

        latency = {"profile": profile.name, "threads": profile.threads, "batch_size": profile.batch_size,
                   "input_shape": list(shape), "measure": dataclasses.asdict(m),
                   "openvino": {"file": XML_FILE, **brief(ir_stats)},
                   "onnxruntime": {"file": MODEL_FILE, **brief(onnx_stats)},
                   "openvino_over_onnxruntime": ratio}
        summary += (f"; latency {ir_stats.median_ms:.4f} ms in OpenVINO vs {onnx_stats.median_ms:.4f} ms in ONNX "
                    f"Runtime ({ratio:.2f}x), interleaved on {profile.name}'s protocol")
    record = {
        "files": [XML_FILE, BIN_FILE],
        "converted_from": MODEL_FILE,
        "runtime": "openvino",
        "version": version,
        "build": ov.get_version(),
        "weights": "fp32",
        "device": DEVICE,
        "compile_properties": compile_properties(_threads()),
        "layer_precisions": layer_precisions(compiled),
        "summary": summary,
        "parity": parity,
        "accuracy": accuracy,
        "latency": latency,
    }
    return FormatResult({XML_FILE: xml, BIN_FILE: weights}, record)


# ----- reading a bundle back ------------------------------------------------------------------------------------
def _checked_files(bundle: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """The IR files, each compared with the hash the manifest recorded at export."""
    listed = manifest.get("files") or {}
    out = {}
    for name in (XML_FILE, BIN_FILE):
        path = bundle / name
        info = listed.get(name) if isinstance(listed, dict) else None
        if not isinstance(info, dict) or "sha256" not in info:
            raise BundleError(f"{bundle}'s manifest lists no {name}; re-export with --format openvino")
        if not path.is_file():
            raise BundleError(f"{bundle} has no {name} although its manifest lists it")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != info["sha256"]:
            raise BundleError(f"{path} changed since export: sha256 {actual[:16]} but the manifest records "
                              f"{str(info['sha256'])[:16]}")
        out[name] = data
    return out


def _test_batches(manifest: dict[str, Any], data: Any, limit: int | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Raw uint8 test images preprocessed as the manifest says, in evaluation batches, and their labels."""
    from edgenas.export import _preprocess, manifest_test_images

    images, labels = manifest_test_images(manifest, data, limit, "verify_openvino", "bundle manifest: data")
    _, channels, height, width = manifest["input"]["shape"]
    if images.shape[1:] != (channels, height, width):
        raise BundleError(f"the test images are {'x'.join(map(str, images.shape[1:]))}, the model takes "
                          f"{channels}x{height}x{width}; verify_openvino does not resize")
    return [_preprocess(images[i:i + EVAL_BATCH], manifest) for i in range(0, len(labels), EVAL_BATCH)], labels


def verify_openvino(bundle_dir: str | Path, data: Any = None, limit: int | None = None) -> dict[str, Any]:
    """Re-check a bundle's OpenVINO IR: its files against the manifest's hashes (a changed ``.bin`` or
    ``.xml`` is a one-line :class:`BundleError`), then its test accuracy and its agreement with
    ``model.onnx`` in ONNX Runtime on the raw test images preprocessed as the manifest says.

    ``data`` is a :class:`~edgenas.data.DatasetSplits` (default: loaded from the manifest's data config).
    """
    from edgenas.export import MODEL_FILE, read_manifest

    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    if not isinstance((manifest.get("formats") or {}).get("openvino"), dict):
        raise BundleError(f"{bundle} carries no OpenVINO IR (export it with --format openvino)")
    files = _checked_files(bundle, manifest)
    if not (bundle / MODEL_FILE).is_file():
        raise BundleError(f"{bundle} has no {MODEL_FILE}")
    batches, labels = _test_batches(manifest, data, limit)
    if not len(labels):
        raise BundleError(f"no test images to verify {bundle} on")
    logits = predict_ir(_compiled_ir(files[XML_FILE], files[BIN_FILE]), np.concatenate(batches))
    reference = np.concatenate(list(_onnx_logits((bundle / MODEL_FILE).read_bytes(), iter(batches))))
    pred = logits.argmax(1)
    correct = int((pred == labels).sum())
    return {"file": XML_FILE, "accuracy": correct / len(labels), "correct": correct, "count": len(labels),
            "top1_agreement_with_onnx": float((pred == reference.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(logits - reference).max())}
