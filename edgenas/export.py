"""Export a subnet checkpoint as a deployable ONNX bundle: export → check → compare, every time.

A bundle is one directory ``<out_dir>/<name>/`` holding ``model.onnx`` (fp32, dynamic batch, batch norm
folded), optionally ``model.int8.onnx`` (static QDQ quantization calibrated on real training images,
shipped only when it keeps its accuracy) and ``manifest.json`` (format ``edgenas-bundle/1``): what the
model is (architecture, space, dataset, classes), how to feed it (input name, shape, normalisation),
what it was verified to do (torch vs ONNX Runtime parity, test accuracy of torch, fp32 ONNX and int8
with image counts, and the int8 gate's verdict: ``int8`` is ``null`` when int8 was not asked for, else
its ``status`` "shipped" or "left_out", the ``reason``, the tolerance and the measured figures;
``accuracy.int8`` describes the shipped int8 file only), what it costs (FLOPs, parameters, ONNX
multiply-adds, measured latency) and the hash of every file.

Why every step is checked rather than trusted:

* ``torch.onnx.export`` can succeed and still write a graph ONNX Runtime cannot run (an op without a
  CPU kernel) or one that computes something else, so the graph is checked with
  ``onnx.checker`` (full check), against ONNX Runtime's kernel registry, and then run on the *real*
  test split next to the torch model: the export fails when the logits differ by more than
  :data:`PARITY_TOLERANCE` or the top-1 predictions agree on less than :data:`MIN_AGREEMENT` of images.
* int8 accuracy depends on the calibration data and on the int8 kernels, so it is calibrated on
  training images (seeded, preprocessed exactly as at inference) and its test accuracy and agreement
  with fp32 are measured, not assumed. int8 is a quality gate like the latency check: when its top-1
  accuracy on the evaluation split falls more than ``int8_tolerance`` points below the fp32 ONNX
  model's, ``model.int8.onnx`` is left out of the bundle and the manifest's ``int8`` entry says why,
  with the measured figures. The fp32 bundle is still valid, so the export succeeds, unless
  ``require_int8`` made a shipped int8 file part of the request (:class:`Int8GateError`).
* The bundle is written to a temporary directory beside the target and renamed into place, so a
  failed or interrupted export never leaves half a bundle behind.

The manifest is the contract the CI check (``edgenas check``) and deployments read; the check adds
its own ``baseline`` entry later through :func:`write_manifest`. :func:`onnx_cost` counts the graph's
own multiply-adds and parameters so that check can compare a bundle's file with its manifest exactly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgenas.errors import BundleError, ConfigError, EdgenasError
from edgenas.onnx_graph import (
    _MAX_OPSET,
    _MIN_OPSET,
    _set_metadata,
    _simplify,
    check_onnx,
    export_onnx,
    onnx_cost,
)
from edgenas.quantize import INT8_SCHEME, first_line, quantize_int8

if TYPE_CHECKING:
    from edgenas.hardware.profile import Profile

__all__ = [
    "BUNDLE_FORMAT",
    "INT8_FILE",
    "INT8_TOLERANCE",
    "MANIFEST_FILE",
    "MIN_AGREEMENT",
    "MODEL_FILE",
    "PARITY_TOLERANCE",
    "BundleError",
    "ExportConfig",
    "ExportResult",
    "Int8GateError",
    "check_onnx",
    "export_bundle",
    "export_onnx",
    "onnx_cost",
    "read_manifest",
    "verify_bundle",
    "write_manifest",
]

BUNDLE_FORMAT = "edgenas-bundle/1"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
MANIFEST_FILE = "manifest.json"
PARITY_TOLERANCE = 1e-4  # max |logit difference| between torch fp32 and ONNX Runtime fp32
MIN_AGREEMENT = 0.999  # fraction of test images whose top-1 class must agree
INT8_TOLERANCE = 1.0  # default: max top-1 accuracy drop of int8 vs fp32 ONNX, in percentage points
EVAL_BATCH = 256
CALIB_BATCH = 64
CALIB_SEED = 0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how to verify it.

    ``parity_images`` limits the test images used for parity and accuracy (``None``: the whole test
    split). ``profile`` is a hardware profile name, YAML path or :class:`~edgenas.hardware.profile.Profile`
    (for example one with a shortened measurement protocol); it must be an fp32 onnxruntime profile,
    because both files are measured as they are.

    ``int8_tolerance`` is the largest top-1 accuracy drop of the int8 model below the fp32 ONNX model,
    in percentage points on the evaluation split (the test images used for parity), that still ships
    ``model.int8.onnx``; above it the file is left out and the manifest records why. ``int8=True``
    asks for int8 *if it holds*: leaving it out is a result, not an error. ``require_int8`` demands it:
    a left-out int8 then fails the export (:class:`Int8GateError`, nothing written), for pipelines
    that must deploy int8.

    ``formats`` names extra deployment formats (:data:`edgenas.bundle_formats.FORMATS`, e.g. ``openvino``)
    converted from the same network, parity-checked against ONNX Runtime on the evaluation images and
    added to the bundle.
    """

    name: str
    out_dir: str | Path = "export"
    opset: int = 17
    int8: bool = True
    simplify: bool = False
    calib_images: int = 512
    parity_images: int | None = None
    profile: str | Path | Profile = "cpu-ort"
    measure: bool = True
    int8_tolerance: float = INT8_TOLERANCE
    require_int8: bool = False
    formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"bundle name must be letters, digits, '.', '_' or '-' (it is a folder name), "
                              f"not {self.name!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not (
                _MIN_OPSET <= self.opset <= _MAX_OPSET):
            raise ConfigError(f"opset must be between {_MIN_OPSET} and {_MAX_OPSET} (the TorchScript exporter's "
                              f"newest), not {self.opset!r}")
        if isinstance(self.calib_images, bool) or not isinstance(self.calib_images, int) or self.calib_images < 1:
            raise ConfigError(f"calib_images must be a positive integer, not {self.calib_images!r}")
        if self.parity_images is not None and (isinstance(self.parity_images, bool)
                                               or not isinstance(self.parity_images, int) or self.parity_images < 1):
            raise ConfigError(f"parity_images must be a positive integer or None, not {self.parity_images!r}")
        tol = self.int8_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= tol <= 100.0:
            raise ConfigError(f"int8_tolerance must be a number of accuracy points between 0 and 100, not {tol!r}")
        if self.require_int8 and not self.int8:
            raise ConfigError("require_int8 needs int8 (--require-int8 with --no-int8 asks for both and neither)")
        if isinstance(self.formats, str) or not isinstance(self.formats, (tuple, list)):
            raise ConfigError(f"formats must be a list of format names, not {self.formats!r}")
        from edgenas.bundle_formats import FORMATS

        for name in self.formats:
            FORMATS.get(name)  # one line naming the known formats
        if len(set(self.formats)) != len(self.formats):
            raise ConfigError(f"formats name one format twice: {list(self.formats)}")
        object.__setattr__(self, "formats", tuple(self.formats))


class Int8GateError(EdgenasError):
    """int8 was required (``require_int8``) but lost more accuracy than the tolerance; exit code 1, as a
    failed check, not 2 (bad input)."""

    exit_code = 1


@dataclass(frozen=True)
class ExportResult:
    """Where the bundle went and its manifest (as written to ``manifest.json``)."""

    bundle_dir: Path
    manifest: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [self.bundle_dir / f for f in self.manifest["files"]] + [self.bundle_dir / MANIFEST_FILE]


# ----- evaluation -----------------------------------------------------------------------------------------
def _ort_session(model: bytes) -> Any:
    """CPU session as deployed (all graph optimisations), threads following torch's setting."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, NotImplemented)
        raise EdgenasError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


def _test_subset(ds: Any, limit: int | None) -> Any:
    from torch.utils.data import Subset

    from edgenas.data import ArrayDataset

    if limit is None or limit >= len(ds):
        return ds
    index = torch.arange(limit)
    return ds.subset(index) if isinstance(ds, ArrayDataset) else Subset(ds, index.tolist())


@dataclass
class _Predictions:
    """Top-1 predictions of the torch model and the ONNX models on the same images."""

    labels: list[np.ndarray] = dataclasses.field(default_factory=list)
    torch_pred: list[np.ndarray] = dataclasses.field(default_factory=list)
    onnx_pred: list[np.ndarray] = dataclasses.field(default_factory=list)
    int8_pred: list[np.ndarray] = dataclasses.field(default_factory=list)
    max_abs_diff: float = 0.0
    batch_sizes: list[int] = dataclasses.field(default_factory=list)

    def correct(self, key: str) -> int:
        return int((np.concatenate(getattr(self, key)) == np.concatenate(self.labels)).sum())

    def figures(self, key: str) -> dict[str, Any]:
        y, pred = np.concatenate(self.labels), np.concatenate(getattr(self, key))
        correct = int((pred == y).sum())
        return {"accuracy": correct / len(y), "correct": correct, "count": len(y)}

    def agreement(self, a: str, b: str) -> float:
        return float((np.concatenate(getattr(self, a)) == np.concatenate(getattr(self, b))).mean())


def _compare(subnet: nn.Module, fp32: bytes, int8: bytes | None, test: Any) -> _Predictions:
    from edgenas.data import iterate_batches

    sess = _ort_session(fp32)
    sess8 = _ort_session(int8) if int8 is not None else None
    out = _Predictions()
    model = subnet.cpu().float().eval()
    with torch.inference_mode():
        for x, y in iterate_batches(test, EVAL_BATCH, shuffle=False):
            ref = model(x).numpy()
            feed = {"input": x.numpy()}
            got = sess.run(["logits"], feed)[0]
            out.max_abs_diff = max(out.max_abs_diff, float(np.abs(ref - got).max()))
            out.labels.append(y.numpy())
            out.torch_pred.append(ref.argmax(1))
            out.onnx_pred.append(got.argmax(1))
            out.batch_sizes.append(int(x.shape[0]))
            if sess8 is not None:
                out.int8_pred.append(sess8.run(["logits"], feed)[0].argmax(1))
    if not out.labels:
        raise EdgenasError("the test split is empty: parity needs test images")
    return out


class _ImageCalibration:
    """Calibration batches of real training images, drawn in a seeded order and made lazily.

    A ``CalibrationDataReader`` by duck typing; batches are produced one at a time so calibrating on
    hundreds of large images never holds them all in memory.
    """

    def __init__(self, train: Any, count: int, seed: int = CALIB_SEED) -> None:
        self.train, self.count, self.seed = train, count, seed
        self.used = 0
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        from edgenas.data import iterate_batches

        self.used = 0
        gen = torch.Generator().manual_seed(self.seed)
        for x, _ in iterate_batches(self.train, CALIB_BATCH, shuffle=True, generator=gen):
            take = min(int(x.shape[0]), self.count - self.used)
            if take <= 0:
                return
            self.used += take
            yield {"input": np.ascontiguousarray(x[:take].numpy(), dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


_FORMAT_IMAGE_BYTES = 1 << 30  # evaluation images held in memory for the extra formats' parity checks


def _convert_formats(config: ExportConfig, subnet: nn.Module, *, files_fp32: bytes, test: Any, preds: _Predictions,
                     profile: Profile | None, input_shape: tuple[int, int, int, int],
                     progress: Callable[[str], None]) -> dict[str, Any]:
    """Each requested extra format converted and checked on the evaluation images (at most 1 GiB of them)."""
    if not config.formats:
        return {}
    from edgenas.bundle_formats import FORMATS, FormatContext
    from edgenas.data import iterate_batches

    per_image = int(np.prod(input_shape[1:])) * 4
    limit = max(1, _FORMAT_IMAGE_BYTES // per_image)
    images: list[np.ndarray] = []
    held = 0
    for x, _y in iterate_batches(test, EVAL_BATCH, shuffle=False):
        take = min(len(x), limit - held)
        images.append(x[:take].numpy().astype(np.float32))
        held += take
        if held >= limit:
            break
    context = FormatContext(subnet=subnet, onnx_model=files_fp32, images=np.concatenate(images),
                            labels=np.concatenate(preds.labels)[:held],
                            onnx_pred=np.concatenate(preds.onnx_pred)[:held],
                            input_shape=input_shape, profile=profile, progress=progress)
    results = {}
    for name in config.formats:
        progress(f"converting to {name} and checking it against ONNX Runtime on {held} test images")
        results[name] = FORMATS.get(name)(context)
    return results


def _int8_gate(preds: _Predictions, tolerance: float, calibration: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``int8`` entry: shipped, or left out because the top-1 accuracy drop below fp32 ONNX
    on the evaluation images exceeds ``tolerance`` points (counted from correct images, so a drop of
    exactly the tolerance ships)."""
    count = sum(preds.batch_sizes)
    fp32_correct, int8_correct = preds.correct("onnx_pred"), preds.correct("int8_pred")
    drop = 100.0 * (fp32_correct - int8_correct) / count
    shipped = drop <= tolerance
    reason = None if shipped else (
        f"int8 left out: top-1 accuracy {int8_correct / count:.2%} vs fp32 {fp32_correct / count:.2%} on {count} "
        f"test images, a drop of {drop:.2f} points over the {tolerance:g}-point tolerance")
    return {"status": "shipped" if shipped else "left_out", "file": INT8_FILE if shipped else None, "reason": reason,
            "tolerance_points": float(tolerance), "drop_points": drop, "fp32_accuracy": fp32_correct / count,
            "int8_accuracy": int8_correct / count, "count": count, "split": "test",
            "top1_agreement_with_fp32": preds.agreement("int8_pred", "onnx_pred"), "calibration": calibration}


# ----- the bundle -------------------------------------------------------------------------------------------
def _load_profile(spec: str | Path | Profile, input_shape: tuple[int, int, int]) -> Profile:
    from edgenas.hardware.profile import Profile, load_profile

    profile = spec.with_input_shape(input_shape) if isinstance(spec, Profile) else load_profile(spec, input_shape)
    if profile.precision != "fp32":
        raise ConfigError(
            f"profile '{profile.name}' is {profile.runtime}/{profile.precision}; export measures the fp32 and "
            "int8 files as they are and needs an fp32 profile such as cpu-ort"
        )
    from edgenas.hardware.measure import onnx_measurer

    onnx_measurer(profile)  # a runtime that cannot time ONNX files (torch eager) fails here, before any work
    return profile


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bundle(target: Path, files: dict[str, bytes], manifest: dict[str, Any], overwrite: bool) -> None:
    """Everything into a temporary sibling directory, then one rename: never half a bundle."""
    from edgenas.io import atomic_write_bytes, atomic_write_json

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    old: Path | None = None
    try:
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        if target.exists():
            if not overwrite:
                raise BundleError(f"bundle {target} already exists; pass --force (overwrite=True) to replace it")
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "bundle")
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old / "bundle", target)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def export_bundle(subnet_ckpt: str | Path, config: ExportConfig, *, overwrite: bool = False,
                  on_progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export, check, compare, quantize, gate int8, measure and write the bundle ``<out_dir>/<name>/``.

    Raises :class:`EdgenasError` (one line) when the checkpoint is not a subnet, an op cannot be
    exported or run, parity fails, or the bundle exists and ``overwrite`` is false; and
    :class:`Int8GateError` when ``config.require_int8`` and int8 loses more than ``config.int8_tolerance``
    points. Nothing is written unless every step succeeded. An int8 model over the tolerance without
    ``require_int8`` is not a failure: the bundle is written without it (and measured without it) and
    ``manifest["int8"]`` records ``status`` "left_out", the ``reason`` and the figures.
    """
    import onnx

    import edgenas
    from edgenas.config import from_mapping
    from edgenas.data import DataConfig, load_dataset
    from edgenas.extract import load_subnet
    from edgenas.hardware.flops import FLOPS_CONVENTION, count_flops
    from edgenas.hardware.measure import onnx_measurer, runtime_versions

    progress = on_progress or (lambda _stage: None)
    target = Path(config.out_dir) / config.name
    if target.exists() and not overwrite:
        raise BundleError(f"bundle {target} already exists; pass --force (overwrite=True) to replace it")
    ckpt = Path(subnet_ckpt)

    progress(f"loading {ckpt}")
    subnet, meta, _ = load_subnet(ckpt)
    facts = meta.get("data")
    if not isinstance(facts, dict) or not isinstance(facts.get("config"), dict):
        raise BundleError(f"{ckpt} records no dataset (meta 'data'); re-extract it with `edgenas extract`")
    data_cfg = from_mapping(DataConfig, facts["config"], where=f"{ckpt}: data")
    data = load_dataset(data_cfg)
    channels, (height, width) = data.in_channels, tuple(data.input_size)
    saved = (facts.get("in_channels"), list(facts.get("input_size", [])), list(facts.get("class_names", [])))
    if (channels, [height, width], list(data.class_names)) != saved:
        raise BundleError(f"{data.name} now loads as {channels}x{height}x{width} with classes "
                          f"{list(data.class_names)}, not as when {ckpt} was saved; the dataset changed")
    same = [len(a) == len(b) and np.allclose(a, b, rtol=0, atol=1e-9)
            for a, b in ((data.mean, facts.get("mean", [])), (data.std, facts.get("std", [])))]
    if not all(same):
        raise BundleError(f"{data.name}'s normalisation changed since {ckpt} was saved (mean/std differ)")
    profile = _load_profile(config.profile, (channels, height, width)) if config.measure else None
    input_shape = (1, channels, height, width)

    progress(f"exporting to ONNX (opset {config.opset}, dynamic batch)")
    fp32 = export_onnx(subnet, input_shape, opset=config.opset)  # checked there
    proto = onnx.load_model_from_string(fp32)
    if config.simplify:
        progress("simplifying with onnxsim")
        proto = check_onnx(_simplify(proto), label="the simplified model.onnx")

    arch = subnet.arch
    space = meta["space"]
    normalization = {"mean": list(data.mean), "std": list(data.std), "scale": 1 / 255, "layout": "NCHW",
                     "input_size": [height, width]}
    props = {
        "arch": arch.to_str(), "arch_id": arch.arch_id, "space": str(space.get("name")), "dataset": data.name,
        "class_names": json.dumps(list(data.class_names)), "normalization": json.dumps(normalization),
        "edgenas_version": edgenas.__version__, "opset": str(config.opset), "format": BUNDLE_FORMAT,
    }
    doc = (f"edgenas subnet {arch.to_str()} (space {space.get('name')}, arch_id {arch.arch_id}) for {data.name}: "
           f"input 'input' float32 NCHW [N, {channels}, {height}, {width}] = (pixel / 255 - mean) / std; "
           f"output 'logits' [N, {data.num_classes}] over classes {', '.join(data.class_names)}")
    _set_metadata(proto, props, doc)
    fp32 = proto.SerializeToString()

    int8: bytes | None = None
    int8_info: dict[str, Any] = {}
    if config.int8:
        progress(f"quantizing to int8 (QDQ, 7-bit per-channel weights), calibrating on {config.calib_images} "
                 "training images")
        reader = _ImageCalibration(data.train, config.calib_images)
        int8, preprocessed = quantize_int8(fp32, reader)
        proto8 = check_onnx(int8, label="model.int8.onnx")
        _set_metadata(proto8, {**props, "precision": "int8"}, doc + "; int8 QDQ quantized")
        int8 = proto8.SerializeToString()
        int8_info = {"calib_images": reader.used, "calib_seed": CALIB_SEED, "calib_split": "train",
                     "preprocessed": preprocessed, **INT8_SCHEME}

    test = _test_subset(data.test, config.parity_images)
    progress(f"comparing torch and ONNX Runtime on {len(test)} test images")
    preds = _compare(subnet, fp32, int8, test)
    agreement = preds.agreement("torch_pred", "onnx_pred")
    count = sum(preds.batch_sizes)
    if preds.max_abs_diff > PARITY_TOLERANCE or agreement < MIN_AGREEMENT:
        raise EdgenasError(
            f"ONNX Runtime disagrees with torch on {count} test images: max |logit diff| {preds.max_abs_diff:.3g} "
            f"(tolerance {PARITY_TOLERANCE:g}), top-1 agreement {agreement:.4%} (need {MIN_AGREEMENT:.1%})"
        )
    accuracy: dict[str, Any] = {"split": "test", "torch": preds.figures("torch_pred"),
                                "onnx": preds.figures("onnx_pred"), "int8": None, "int8_drop_points": None}
    gate: dict[str, Any] | None = None
    if int8 is not None:
        gate = _int8_gate(preds, config.int8_tolerance, int8_info)
        if gate["status"] == "shipped":
            accuracy["int8"] = {**preds.figures("int8_pred"),
                                "top1_agreement_with_fp32": gate["top1_agreement_with_fp32"], **int8_info}
            accuracy["int8_drop_points"] = gate["drop_points"]
        else:
            int8 = None
            progress(gate["reason"])
            if config.require_int8:
                raise Int8GateError(f"{gate['reason']} and int8 was required (--require-int8, require_int8=True); "
                                    "nothing written")

    formats = _convert_formats(config, subnet, files_fp32=fp32, test=test, preds=preds, profile=profile,
                               input_shape=input_shape, progress=progress)

    progress("counting FLOPs and parameters")
    flops = count_flops(subnet, input_shape)
    cost = {"flops": flops.flops, "mflops": flops.mflops, "params": sum(p.numel() for p in subnet.parameters()),
            "flops_convention": FLOPS_CONVENTION, "input_shape": list(input_shape),
            **onnx_cost(fp32, input_shape, by_op=True)}

    files = {MODEL_FILE: fp32, **({INT8_FILE: int8} if int8 is not None else {})}
    for name, result in formats.items():
        clash = sorted(set(result.files) & (set(files) | {MANIFEST_FILE}))
        if clash:
            raise EdgenasError(f"bundle format {name} writes {', '.join(clash)}, which the bundle already has")
        files.update(result.files)
    latency: dict[str, Any] | None = None
    profile_info: dict[str, Any] | None = None
    if profile is not None:
        m = profile.measure
        progress(f"measuring latency on {profile.name} ({m.trials} trials x {m.repeats} runs, interleaved)")
        onnx_files = {name: files[name] for name in (MODEL_FILE, INT8_FILE) if name in files}
        stats = onnx_measurer(profile).measure_onnx_many(list(onnx_files.values()))
        latency = {name: {k: v for k, v in s.to_json().items() if k != "samples_ms"}
                   for name, s in zip(onnx_files, stats)}
        latency["int8_speedup"] = (stats[0].median_ms / stats[1].median_ms) if len(stats) > 1 else None
        profile_info = {"name": profile.name, "latency_hash": profile.latency_hash(), "batch_size": profile.batch_size,
                        "threads": profile.threads, "measure": dataclasses.asdict(m)}

    source: dict[str, Any] = {"subnet": str(ckpt.resolve())}
    for key in ("source", "finetune"):
        if isinstance(meta.get(key), dict):
            source[key] = meta[key]
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "name": config.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "arch": arch.to_str(),
        "arch_id": arch.arch_id,
        "space": space,
        "data": facts,
        "input": {"name": "input", "shape": [None, channels, height, width], "dtype": "float32", "layout": "NCHW",
                  "mean": list(data.mean), "std": list(data.std), "scale": 1 / 255,
                  "resize": {"method": "bilinear", "antialias": True, "align_corners": False,
                             "when": "the image size differs from the input size; after normalisation"}},
        "output": {"name": "logits", "classes": list(data.class_names)},
        "opset": config.opset,
        "simplified": config.simplify,
        "files": {name: {"sha256": _sha256(blob), "bytes": len(blob)} for name, blob in files.items()},
        "accuracy": accuracy,
        "int8": gate,
        "formats": {name: result.manifest for name, result in formats.items()},
        "parity": {"max_abs_diff": preds.max_abs_diff, "top1_agreement": agreement, "count": count,
                   "tolerance": PARITY_TOLERANCE, "min_agreement": MIN_AGREEMENT,
                   "batch_sizes": sorted(set(preds.batch_sizes), reverse=True)},
        "cost": cost,
        "profile": profile_info,
        "latency": latency,
        "runtime_versions": runtime_versions(),
        "source": source,
    }
    progress(f"writing {target}")
    _write_bundle(target, files, manifest, overwrite)
    return ExportResult(target, manifest)


# ----- reading bundles ----------------------------------------------------------------------------------------
def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The manifest of a bundle directory; one-line errors for anything that is not an edgenas bundle."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(f"bundle directory {bundle} does not exist")
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle} has no {MANIFEST_FILE}: not an edgenas bundle (write one with `edgenas export`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {first_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is not an edgenas bundle manifest (a JSON {type(manifest).__name__})")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} has format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Replace a bundle's manifest atomically (the CI check records its baseline this way)."""
    from edgenas.io import atomic_write_json

    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(f"bundle directory {bundle} does not exist")
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"refusing to write a manifest without format {BUNDLE_FORMAT!r} to {bundle}")
    return atomic_write_json(bundle / MANIFEST_FILE, manifest)


def _preprocess(images: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """uint8 N,C,H,W -> the model's float input, exactly as the manifest (and training) defines it."""
    spec = manifest["input"]
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    x = images.astype(np.float32) / np.float32(1.0 / float(spec["scale"]))
    return (x - mean) / std


def manifest_test_images(manifest: dict[str, Any], data: Any, limit: int | None, who: str, where: str
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The raw uint8 test images and labels a bundle is verified on: ``data``'s test split (default: the
    dataset the manifest names), the first ``limit`` of them; ``who`` names the verifier in errors."""
    from edgenas.config import from_mapping
    from edgenas.data import ArrayDataset, DataConfig, load_dataset

    if data is None:
        data = load_dataset(from_mapping(DataConfig, manifest["data"]["config"], where=where))
    test = data.test
    if not isinstance(test, ArrayDataset):
        raise BundleError(f"{who} needs an in-memory dataset of uint8 images, not {type(test).__name__}")
    images, labels = test.images.numpy(), test.labels.numpy()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def verify_bundle(bundle_dir: str | Path, data: Any = None, limit: int | None = None,
                  file: str = MODEL_FILE) -> dict[str, Any]:
    """Test accuracy of a bundle's ONNX file run with onnxruntime and numpy alone, preprocessing raw uint8
    test images as its manifest says: an independent check that the manifest describes the model.

    ``data`` is a :class:`~edgenas.data.DatasetSplits` (default: loaded from the manifest's data config);
    images are resized (through :class:`~edgenas.data.ArrayDataset`) only when they are not the model's size.
    """
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    path = bundle / file
    if not path.is_file():
        raise BundleError(f"{bundle} has no {file}")
    from edgenas.data import ArrayDataset

    images, labels = manifest_test_images(manifest, data, limit, "verify_bundle", f"{bundle}: data")
    _, channels, height, width = manifest["input"]["shape"]
    if images.shape[1] != channels:
        raise BundleError(f"the test images have {images.shape[1]} channels, the model takes {channels}")
    sess = _ort_session(path.read_bytes())
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        chunk = images[start:start + EVAL_BATCH]
        if chunk.shape[2:] != (height, width):
            if height != width:
                raise BundleError(f"cannot resize {chunk.shape[2:]} images to a non-square input {height}x{width}")
            ds = ArrayDataset(torch.from_numpy(chunk), torch.zeros(len(chunk), dtype=torch.int64),
                              manifest["input"]["mean"], manifest["input"]["std"], resize=height)
            x = ds.batch(torch.arange(len(chunk)))[0].numpy()
        else:
            x = _preprocess(chunk, manifest)
        pred = sess.run([manifest["output"]["name"]], {manifest["input"]["name"]: x})[0].argmax(1)
        correct += int((pred == labels[start:start + EVAL_BATCH]).sum())
    count = len(labels)
    return {"accuracy": correct / count if count else float("nan"), "correct": correct, "count": count,
            "file": file}
