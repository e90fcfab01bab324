"""Reading a bundle and measuring its latency ratio to the reference; recording the baseline."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.check.reference import ReferenceSpec
from edgenas.check.rule import (
    _ACCEPT_BAND,
    _CALIBRATION_MEASURE,
    _CALIBRATION_STEPS,
    _TARGET_BAND,
    BASELINE_KEY,
    CheckConfig,
    baseline_spread,
)
from edgenas.config import from_mapping, to_mapping
from edgenas.errors import ConfigError, EdgenasError
from edgenas.export import INT8_FILE, MANIFEST_FILE, MODEL_FILE, onnx_cost, read_manifest, write_manifest
from edgenas.hardware.profile import MeasureSettings, Profile


# ----- baseline ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """What ``--update`` recorded in the manifest under ``"baseline"``; every check compares with it."""

    profile: str
    profile_hash: str
    reference: ReferenceSpec
    ratio_median: float
    ratios: tuple[float, ...]
    trials: int
    bundle_median_ms: float
    reference_median_ms: float
    onnx_macs: int
    onnx_params: int
    sha256: str
    machine: str
    runtime_versions: dict[str, str]
    created: str
    model_file: str = MODEL_FILE

    def to_json(self) -> dict[str, Any]:
        return to_mapping(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "baseline") -> Baseline:
        return from_mapping(cls, data, where=where)


def format_baseline(baseline: Baseline, path: str | Path) -> str:
    """What ``--update`` prints: where the baseline went and the numbers in it."""
    b = baseline
    lines = [
        f"wrote baseline for profile {b.profile} ({b.profile_hash}) into {path}",
        f"  latency ratio bundle/reference {b.ratio_median:.4f} (median of {b.trials} trials; range "
        f"{min(b.ratios):.4f} .. {max(b.ratios):.4f})",
        f"  bundle {b.bundle_median_ms:.4f} ms, reference {b.reference_median_ms:.4f} ms "
        f"({b.reference.name}, width {b.reference.width}, depth {b.reference.depth})",
        f"  FLOPs {b.onnx_macs:,} (1 MAC = 1 FLOP), params {b.onnx_params:,}; {b.model_file} sha256 {b.sha256[:16]}",
        f"  machine {b.machine}; onnxruntime {b.runtime_versions.get('onnxruntime', '?')}; created {b.created}",
    ]
    spread = baseline_spread(b.ratios)
    if spread is not None:
        lines.insert(2, f"  the baseline's median ratio is known to ±{spread:.1%} (95% bootstrap CI)")
        if spread > CheckConfig().tolerance / 2:
            lines.append(f"warning: the baseline is noisy (±{spread:.1%}): every check's CI gets as wide; re-record "
                         "it on a quiet machine or with more --trials")
    if not _TARGET_BAND[0] <= b.ratio_median <= _TARGET_BAND[1]:
        lines.append(f"warning: the bundle runs {b.ratio_median:.2f}x the reference's time, outside 0.3x-3x (the "
                     f"width search stopped at {b.reference.width} channels): expect noisier ratios")
    return "\n".join(lines)


# ----- bundles --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Bundle:
    """A bundle read from disk: manifest, model bytes, input shape."""

    path: Path
    manifest: dict[str, Any]
    input_shape: tuple[int, int, int]
    model: bytes
    model_file: str
    fp32: bytes


def _load_bundle(bundle_dir: str | Path, profile: Profile) -> _Bundle:
    """Read and validate a bundle; the model measured is the int8 file for an int8 profile when there is one."""
    import onnx

    path = Path(bundle_dir)
    manifest = read_manifest(path)
    shape = _input_shape(manifest, path)
    model_path = path / MODEL_FILE
    if not model_path.is_file():
        raise EdgenasError(f"bundle {path} has no {MODEL_FILE}")
    fp32 = model_path.read_bytes()
    try:
        onnx.checker.check_model(onnx.load_model_from_string(fp32))
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, ...
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise EdgenasError(f"{model_path} is not a valid ONNX model: {first}") from None
    model_file, model = MODEL_FILE, fp32
    if profile.precision == "int8" and (path / INT8_FILE).is_file():
        model_file, model = INT8_FILE, (path / INT8_FILE).read_bytes()
    return _Bundle(path, manifest, shape, model, model_file, fp32)


def _input_shape(manifest: dict[str, Any], path: Path) -> tuple[int, int, int]:
    shape = (manifest.get("input") or {}).get("shape")
    if isinstance(shape, list) and len(shape) == 4:
        chw = shape[1:]
    else:
        data = manifest.get("data") or {}
        chw = [data.get("in_channels"), *(data.get("input_size") or [None, None])]
    if len(chw) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in chw):
        raise EdgenasError(f"{path / MANIFEST_FILE} has no valid input shape (input.shape [null, C, H, W])")
    return (chw[0], chw[1], chw[2])


def _cost(bundle: _Bundle) -> dict[str, int]:
    cost = onnx_cost(bundle.fp32, (1, *bundle.input_shape))
    return {"onnx_macs": int(cost["onnx_macs"]), "onnx_params": int(cost["onnx_params"])}


def _target(profile: Profile, shape: tuple[int, int, int], config: CheckConfig) -> Profile:
    """The profile at the bundle's input shape with the check's protocol; only ONNX Runtime profiles."""
    if profile.runtime != "onnxruntime":
        raise ConfigError(f"profile '{profile.name}' runs {profile.runtime}; checking a bundle's ONNX model needs "
                          "an onnxruntime profile (e.g. cpu-ort)")
    return dataclasses.replace(profile.with_input_shape(shape), measure=check_protocol(profile.measure, config))


def check_protocol(measure: MeasureSettings, config: CheckConfig) -> MeasureSettings:
    """The check's protocol from a profile's: ``config.repeats`` runs per trial, at most ``config.warmup``
    warm-up runs, and ``config.trials`` trials or else the profile's timed-run budget (at least 5)."""
    trials = config.trials if config.trials is not None else max(5, measure.trials * measure.repeats // config.repeats)
    return dataclasses.replace(measure, warmup=min(measure.warmup, config.warmup), repeats=config.repeats,
                               trials=trials)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----- measurement ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatioMeasurement:
    """One interleaved measurement of bundle and reference: per-trial medians and their ratios."""

    reference: ReferenceSpec
    model_file: str
    ratios: tuple[float, ...]
    bundle_medians_ms: tuple[float, ...]
    reference_medians_ms: tuple[float, ...]
    bundle_median_ms: float
    reference_median_ms: float
    trials: int
    seconds: float

    @property
    def ratio_median(self) -> float:
        return float(np.median(self.ratios))

    def to_json(self) -> dict[str, Any]:
        return to_mapping(self)


def _measure(bundle: _Bundle, target: Profile, reference: ReferenceSpec) -> RatioMeasurement:
    from edgenas.hardware.measure import OrtMeasurer

    start = time.perf_counter()
    stats_bundle, stats_ref = OrtMeasurer(target).measure_onnx_many(
        [bundle.model, reference.model_bytes()], [bundle.input_shape, bundle.input_shape])
    b, r = stats_bundle.trial_medians_ms, stats_ref.trial_medians_ms
    return RatioMeasurement(reference, bundle.model_file, tuple(x / y for x, y in zip(b, r)), tuple(b), tuple(r),
                            stats_bundle.median_ms, stats_ref.median_ms, len(b), time.perf_counter() - start)


def _calibrate_reference(bundle: _Bundle, target: Profile, macs: int, on_progress: Callable[[str], None]
                         ) -> ReferenceSpec:
    """A reference whose latency is of the bundle's order: start from the bundle's MACs, then rescale
    the width by measured ratios (latency is not proportional to MACs) until it lands in 0.5x-2x."""
    quick = dataclasses.replace(target, measure=_CALIBRATION_MEASURE)
    spec = ReferenceSpec.for_macs(bundle.input_shape, macs)
    best: tuple[float, ReferenceSpec] | None = None
    for _ in range(_CALIBRATION_STEPS):
        q = _measure(bundle, quick, spec).ratio_median
        on_progress(f"reference width {spec.width}: bundle/reference {q:.3f}")
        if best is None or abs(math.log(q)) < abs(math.log(best[0])):
            best = (q, spec)
        if _ACCEPT_BAND[0] <= q <= _ACCEPT_BAND[1]:
            break
        nxt = ReferenceSpec.for_macs(bundle.input_shape, spec.macs() * q)
        if nxt.width == spec.width:
            break
        spec = nxt
    assert best is not None
    return best[1]


def _measure_ratio(bundle: _Bundle, target: Profile, reference: ReferenceSpec | None,
                   say: Callable[[str], None]) -> RatioMeasurement:
    if reference is None:
        reference = _calibrate_reference(bundle, target, _cost(bundle)["onnx_macs"], say)
    say(f"measuring {bundle.path / bundle.model_file} and {reference.name} (width {reference.width}) interleaved "
        f"on {target.name}: {target.measure.trials} trials x {target.measure.repeats} runs")
    return _measure(bundle, target, reference)


def measure_ratio(bundle_dir: str | Path, profile: Profile, config: CheckConfig | None = None,
                  reference: ReferenceSpec | None = None,
                  on_progress: Callable[[str], None] | None = None) -> RatioMeasurement:
    """Time the bundle and the reference interleaved with the check's protocol (:func:`check_protocol`).

    Without ``reference`` one is calibrated to the bundle first (as ``--update`` does).
    """
    config = config or CheckConfig()
    bundle = _load_bundle(bundle_dir, profile)
    target = _target(profile, bundle.input_shape, config)
    return _measure_ratio(bundle, target, reference, on_progress or _quiet)


def _quiet(_message: str) -> None:
    pass


def update_baseline(bundle_dir: str | Path, profile: Profile, config: CheckConfig | None = None,
                    on_progress: Callable[[str], None] | None = None) -> Baseline:
    """Measure the bundle now and (re)write its baseline into the manifest (atomically)."""
    from edgenas.hardware.measure import runtime_versions
    from edgenas.hardware.table import cpu_model

    config = config or CheckConfig()
    bundle = _load_bundle(bundle_dir, profile)
    target = _target(profile, bundle.input_shape, config)
    cost = _cost(bundle)
    m = _measure_ratio(bundle, target, None, on_progress or _quiet)
    baseline = Baseline(
        profile=profile.name, profile_hash=target.latency_hash(), reference=m.reference,
        ratio_median=m.ratio_median, ratios=m.ratios, trials=m.trials, bundle_median_ms=m.bundle_median_ms,
        reference_median_ms=m.reference_median_ms, onnx_macs=cost["onnx_macs"], onnx_params=cost["onnx_params"],
        sha256=_sha256(bundle.model), machine=cpu_model(), runtime_versions=runtime_versions(),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), model_file=bundle.model_file)
    manifest = read_manifest(bundle.path)  # re-read: keep anything written meanwhile
    manifest[BASELINE_KEY] = baseline.to_json()
    write_manifest(bundle.path, manifest)
    return baseline
