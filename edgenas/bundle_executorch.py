"""The ExecuTorch program as a bundle format: ``model.pte`` (XNNPACK delegate) beside ``model.onnx``, checked like it.

A mobile app that runs PyTorch networks loads an ExecuTorch program, so ``edgenas export --format
executorch`` ships one, lowered from the same verified fp32 network as ``model.onnx`` (captured with
``torch.export``, lowered with the XNNPACK partitioner; :func:`edgenas.hardware.executorch_runtime.lower_module`).
The program takes one image at a time: a static input of shape ``[1, C, H, W]`` (the manifest's
``input_shape``), because XNNPACK splits a dynamic-batch graph into several partitions with portable
reshapes between them, and a phone classifies one image per call.

Checked before anything is written: the ``.pte`` bytes are loaded by the ExecuTorch runtime (verified),
run on every evaluation image of the export and compared with ONNX Runtime's logits for ``model.onnx``.
The export fails (one line, nothing written) when a logit differs by more than :data:`PARITY_TOLERANCE`
or the top-1 predictions agree on fewer than ``MIN_AGREEMENT`` of the images, the bar torch vs ONNX
Runtime meets. The record also says how much of the graph XNNPACK runs (``delegation``: partitions and
any operators left to ExecuTorch's portable kernels, which would be slow on a phone).

When the export measures latency, the program is timed in ExecuTorch and ``model.onnx`` in ONNX
Runtime (CPU execution provider), interleaved with the export profile's protocol and threads, both at
batch 1, so their ratio is measured under one load. :func:`verify_executorch` re-checks a written
bundle: the file's hash against the manifest, then accuracy and agreement with ONNX Runtime on the
test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.bundle_formats import FormatContext, FormatResult, top1_record
from edgenas.errors import BundleError, EdgenasError
from edgenas.hardware.executorch_runtime import (
    BACKEND,
    ExecuTorchMeasurer,
    LoweredProgram,
    executorch_profile,
    executorch_version,
    import_executorch,
    load_program,
    lower_module,
    onnxruntime_profile,
)
from edgenas.hardware.measure import LatencyStats, OrtMeasurer

__all__ = ["PARITY_TOLERANCE", "PTE_FILE", "executorch_format", "verify_executorch"]

PTE_FILE = "model.pte"
PARITY_TOLERANCE = 1e-4  # max |logit difference| between the program in ExecuTorch and model.onnx in ONNX Runtime
EVAL_BATCH = 256


def _onnx_logits(onnx_model: bytes, images: np.ndarray) -> np.ndarray:
    from edgenas.export import _ort_session

    sess = _ort_session(onnx_model)
    return np.concatenate([sess.run(["logits"], {"input": images[i:i + EVAL_BATCH]})[0]
                           for i in range(0, len(images), EVAL_BATCH)])


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def _brief(stats: LatencyStats) -> dict[str, Any]:
    return {k: v for k, v in stats.to_json().items() if k != "samples_ms"}


def _parity(logits: np.ndarray, reference: np.ndarray, pred_record: dict[str, Any]) -> dict[str, Any]:
    from edgenas.export import MIN_AGREEMENT, MODEL_FILE

    max_diff = float(np.abs(logits - reference).max()) if len(logits) else float("nan")
    agreement, count = pred_record["top1_agreement_with_onnx"], pred_record["count"]
    if not max_diff <= PARITY_TOLERANCE or agreement < MIN_AGREEMENT:
        raise EdgenasError(
            f"the ExecuTorch program disagrees with ONNX Runtime on {count} test images: max |logit diff| "
            f"{max_diff:.3g} (tolerance {PARITY_TOLERANCE:g}), top-1 agreement {agreement:.4%} (need "
            f"{MIN_AGREEMENT:.1%}); nothing written")
    return {"max_abs_diff": max_diff, "tolerance": PARITY_TOLERANCE, "top1_agreement": agreement,
            "min_agreement": MIN_AGREEMENT, "count": count, "against": f"onnxruntime on {MODEL_FILE}"}


def _latency(context: FormatContext, pte: bytes) -> dict[str, Any]:
    """``model.pte`` in ExecuTorch and ``model.onnx`` in ONNX Runtime, interleaved at batch 1 on the export
    profile's threads and protocol."""
    from edgenas.export import MODEL_FILE

    profile = context.profile
    m = profile.measure
    context.progress(f"timing {PTE_FILE} in ExecuTorch beside {MODEL_FILE} in ONNX Runtime ({m.trials} trials x "
                     f"{m.repeats} runs, interleaved, batch 1)")
    et_meter = ExecuTorchMeasurer(executorch_profile(profile))
    ort_profile = onnxruntime_profile(profile)
    runners = [et_meter.pte_runner(pte, label=PTE_FILE),
               OrtMeasurer(ort_profile)._onnx_runner(context.onnx_model, context.input_shape)]
    et_stats, ort_stats = et_meter._measure_runners(runners)
    return {"profile": profile.name, "device": "cpu", "threads": profile.threads, "batch_size": 1,
            "input_shape": list(context.input_shape), "measure": dataclasses.asdict(m),
            "executorch": {"file": PTE_FILE, **_brief(et_stats)},
            "onnxruntime": {"file": MODEL_FILE, "provider": ort_profile.provider,
                            "graph_optimization": ort_profile.graph_optimization, **_brief(ort_stats)},
            "executorch_over_onnxruntime": et_stats.median_ms / ort_stats.median_ms}


def executorch_format(context: FormatContext) -> FormatResult:
    """The ``executorch`` entry of :data:`edgenas.bundle_formats.FORMATS`: ``model.pte`` and its manifest record.

    Raises a one-line :class:`EdgenasError` when ExecuTorch is missing, cannot lower or load the network,
    or the program fails its parity check against ONNX Runtime.
    """
    import_executorch()
    version = executorch_version()
    shape = (1, *context.input_shape[1:])
    context.progress(f"lowering the network to ExecuTorch {version} with XNNPACK (static input {list(shape)})")
    lowered: LoweredProgram = lower_module(context.subnet, shape)
    # one thread count for the parity run and the timing: ExecuTorch's pool is resized only between programs
    threads = context.profile.threads if context.profile is not None else _threads()
    logits = load_program(lowered.pte, threads, label=PTE_FILE).predict(context.images)
    reference = _onnx_logits(context.onnx_model, context.images)
    accuracy = top1_record(logits.argmax(1), context)
    parity = _parity(logits, reference, accuracy)
    delegation = lowered.delegation()
    outside = sum(delegation["ops_outside_delegate"].values())
    summary = (f"{PTE_FILE} (ExecuTorch {version}, XNNPACK: {lowered.partitions} partition(s), "
               f"{outside} op(s) outside): top-1 agreement with ONNX Runtime {parity['top1_agreement']:.2%} on "
               f"{parity['count']} test images, max |logit diff| {parity['max_abs_diff']:.2g} (tolerance "
               f"{PARITY_TOLERANCE:g}), accuracy {accuracy['accuracy']:.2%}")
    latency = None
    if context.profile is not None:
        latency = _latency(context, lowered.pte)
        et, ort = latency["executorch"]["median_ms"], latency["onnxruntime"]["median_ms"]
        summary += (f"; latency {et:.4f} ms in ExecuTorch vs {ort:.4f} ms in ONNX Runtime "
                    f"({latency['executorch_over_onnxruntime']:.2f}x), interleaved on {context.profile.name}'s "
                    "protocol")
    record = {
        "files": [PTE_FILE],
        "converted_from": "the fp32 torch network (torch.export, then to_edge_transform_and_lower)",
        "runtime": "executorch",
        "version": version,
        "backend": BACKEND,
        "weights": "fp32",
        "input_shape": list(shape),
        "delegation": delegation,
        "summary": summary,
        "parity": parity,
        "accuracy": accuracy,
        "latency": latency,
    }
    return FormatResult({PTE_FILE: lowered.pte}, record)


# ----- reading a bundle back ------------------------------------------------------------------------------------
def _checked_pte(bundle: Path, manifest: dict[str, Any]) -> bytes:
    listed = manifest.get("files") or {}
    info = listed.get(PTE_FILE) if isinstance(listed, dict) else None
    if not isinstance(info, dict) or "sha256" not in info:
        raise BundleError(f"{bundle}'s manifest lists no {PTE_FILE}; re-export with --format executorch")
    path = bundle / PTE_FILE
    if not path.is_file():
        raise BundleError(f"{bundle} has no {PTE_FILE} although its manifest lists it")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != info["sha256"]:
        raise BundleError(f"{path} changed since export: sha256 {actual[:16]} but the manifest records "
                          f"{str(info['sha256'])[:16]}")
    return data


def verify_executorch(bundle_dir: str | Path, data: Any = None, limit: int | None = None) -> dict[str, Any]:
    """Re-check a bundle's ExecuTorch program: its hash against the manifest (a changed ``model.pte`` is a
    one-line :class:`BundleError`), then its test accuracy and agreement with ``model.onnx`` in ONNX
    Runtime on the raw test images preprocessed as the manifest says.

    ``data`` is a :class:`~edgenas.data.DatasetSplits` (default: loaded from the manifest's data config).
    """
    from edgenas.export import MODEL_FILE, _preprocess, manifest_test_images, read_manifest

    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    if not isinstance((manifest.get("formats") or {}).get("executorch"), dict):
        raise BundleError(f"{bundle} carries no ExecuTorch program (export it with --format executorch)")
    pte = _checked_pte(bundle, manifest)
    if not (bundle / MODEL_FILE).is_file():
        raise BundleError(f"{bundle} has no {MODEL_FILE}")
    images, labels = manifest_test_images(manifest, data, limit, "verify_executorch", f"{bundle}: data")
    if not len(labels):
        raise BundleError(f"no test images to verify {bundle} on")
    _, channels, height, width = manifest["input"]["shape"]
    if images.shape[1:] != (channels, height, width):
        raise BundleError(f"the test images are {'x'.join(map(str, images.shape[1:]))}, the model takes "
                          f"{channels}x{height}x{width}; verify_executorch does not resize")
    x = _preprocess(images, manifest)
    logits = load_program(pte, _threads(), label=str(bundle / PTE_FILE)).predict(x)
    reference = _onnx_logits((bundle / MODEL_FILE).read_bytes(), x)
    pred = logits.argmax(1)
    correct = int((pred == labels).sum())
    return {"file": PTE_FILE, "accuracy": correct / len(labels), "correct": correct, "count": len(labels),
            "top1_agreement_with_onnx": float((pred == reference.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(logits - reference).max())}
