"""Reading a bundle and measuring its latency ratio to the reference; recording the baseline."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.check.reference import Reference, ReferenceSpec, TwinReference, reference_from_json
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
    """What ``--update`` recorded in the manifest under ``"baseline"``; every check compares with it.

    Validated when read, before anything is measured: ratios and latencies positive and finite,
    ``trials`` the number of stored ratios, ``ratio_median`` their median, counts non-negative.
    """

    profile: str
    profile_hash: str
    reference: Reference
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

    def __post_init__(self) -> None:
        for key in ("ratio_median", "bundle_median_ms", "reference_median_ms"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"'{key}' must be a positive finite number, not {value!r}")
        if not self.ratios:
            raise ConfigError("'ratios' must not be empty")
        bad = [r for r in self.ratios if not (math.isfinite(r) and r > 0)]
        if bad:
            raise ConfigError(f"'ratios' must all be positive finite numbers, not {bad[0]!r}")
        if self.trials != len(self.ratios):
            raise ConfigError(f"'trials' is {self.trials} but there are {len(self.ratios)} ratios")
        median = float(np.median(self.ratios))
        if not math.isclose(self.ratio_median, median, rel_tol=1e-6):
            raise ConfigError(f"'ratio_median' {self.ratio_median!r} is not the median of 'ratios' ({median!r})")
        for key in ("onnx_macs", "onnx_params"):
            if getattr(self, key) < 0:
                raise ConfigError(f"'{key}' must be >= 0, not {getattr(self, key)}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ConfigError(f"'sha256' must be 64 lowercase hex digits, not {self.sha256[:80]!r}")
        if self.model_file not in (MODEL_FILE, INT8_FILE):
            raise ConfigError(f"'model_file' must be {MODEL_FILE} or {INT8_FILE}, not {self.model_file[:80]!r}")

    def to_json(self) -> dict[str, Any]:
        return to_mapping(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "baseline") -> Baseline:
        if isinstance(data, dict) and isinstance(data.get("reference"), dict):
            data = {**data, "reference": reference_from_json(data["reference"], where=f"{where}: reference")}
        return from_mapping(cls, data, where=where)


def format_baseline(baseline: Baseline, path: str | Path) -> str:
    """What ``--update`` prints: where the baseline went and the numbers in it."""
    b = baseline
    lines = [
        f"wrote baseline for profile {b.profile} ({b.profile_hash}) into {path}",
        f"  latency ratio bundle/reference {b.ratio_median:.4f} (median of {b.trials} trials; range "
        f"{min(b.ratios):.4f} .. {max(b.ratios):.4f})",
        f"  bundle {b.bundle_median_ms:.4f} ms, reference {b.reference_median_ms:.4f} ms ({b.reference.describe()})",
        f"  FLOPs {b.onnx_macs:,} (1 MAC = 1 FLOP), params {b.onnx_params:,}; {b.model_file} sha256 {b.sha256[:16]}",
        f"  machine {b.machine}; onnxruntime {b.runtime_versions.get('onnxruntime', '?')}; created {b.created}",
    ]
    spread = baseline_spread(b.ratios)
    if spread is not None:
        lines.insert(2, f"  the baseline's median ratio is known to ±{spread:.1%} (95% bootstrap CI)")
        if spread > CheckConfig().tolerance / 2:
            lines.append(f"warning: the baseline is noisy (±{spread:.1%}): every check's CI gets as wide; re-record "
                         "it on a quiet machine or with a larger --max-trials / --max-seconds")
    if isinstance(b.reference, ReferenceSpec) and not _TARGET_BAND[0] <= b.ratio_median <= _TARGET_BAND[1]:
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
    """The profile at the bundle's input shape with the check's protocol; only runtimes that time ONNX files."""
    from edgenas.hardware.measure import onnx_measurer

    onnx_measurer(profile)  # torch eager cannot time the bundle's file: one line before measuring
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
Timer = Callable[[Profile, Sequence[bytes], tuple[int, int, int]], list[list[float]]]
"""Times models interleaved with ``profile.measure`` and returns each model's per-trial medians (ms).

:func:`ort_timer` is the real one; tests pass a deterministic fake to test the protocol's logic."""


def ort_timer(target: Profile, models: Sequence[bytes], shape: tuple[int, int, int]) -> list[list[float]]:
    """The one latency protocol, in the profile's runtime (:func:`edgenas.hardware.measure.onnx_measurer`),
    models interleaved per trial."""
    from edgenas.hardware.measure import onnx_measurer

    stats = onnx_measurer(target).measure_onnx_many(list(models), [shape] * len(models))
    return [list(st.trial_medians_ms) for st in stats]


@dataclass(frozen=True)
class RatioMeasurement:
    """One interleaved measurement of bundle and reference (one or more rounds): per-trial medians and ratios."""

    reference: Reference
    model_file: str
    ratios: tuple[float, ...]
    bundle_medians_ms: tuple[float, ...]
    reference_medians_ms: tuple[float, ...]
    bundle_median_ms: float
    reference_median_ms: float
    trials: int
    seconds: float
    rounds: int = 1

    @property
    def ratio_median(self) -> float:
        return float(np.median(self.ratios))

    def to_json(self) -> dict[str, Any]:
        return {**to_mapping(self), "reference": self.reference.summary_json()}


def _measure(bundle: _Bundle, target: Profile, reference: Reference, timer: Timer | None = None,
             reference_bytes: bytes | None = None) -> RatioMeasurement:
    start = time.perf_counter()
    ref_model = reference_bytes if reference_bytes is not None else reference.model_bytes()
    b, r = (timer or ort_timer)(target, [bundle.model, ref_model], bundle.input_shape)
    if len(b) != len(r) or not b:
        raise EdgenasError(f"the timer returned {len(b)} bundle and {len(r)} reference trials")
    ratios = tuple(x / y for x, y in zip(b, r))
    if not all(math.isfinite(q) and q > 0 for q in ratios):
        raise EdgenasError("the measurement gave a non-positive or non-finite latency; is the timer working?")
    return RatioMeasurement(reference, bundle.model_file, ratios, tuple(b), tuple(r), float(np.median(b)),
                            float(np.median(r)), len(b), time.perf_counter() - start)


def _measure_until(bundle: _Bundle, target: Profile, reference: Reference, config: CheckConfig,
                   decided: Callable[[Sequence[float]], bool], say: Callable[[str], None],
                   timer: Timer | None = None) -> RatioMeasurement:
    """Rounds of interleaved trials until ``decided(ratios)``, the trial cap or the time cap.

    The first round has ``target.measure.trials`` trials; each further round as many as measured so
    far (doubling the total), cut to the cap; no round starts after ``config.max_seconds`` (so a
    check takes at most about twice that). Each round is one call of the timer, which opens fresh
    sessions, so no one session's state is shared by all trials.
    """
    start = time.perf_counter()
    first = target.measure.trials
    cap = config.trial_cap(first)
    ref_model = reference.model_bytes()
    rounds: list[RatioMeasurement] = []
    done = 0
    while True:
        n = first if not rounds else min(done, cap - done)
        this_round = dataclasses.replace(target, measure=dataclasses.replace(target.measure, trials=n))
        rounds.append(_measure(bundle, this_round, reference, timer, ref_model))
        done += n
        ratios = [q for m in rounds for q in m.ratios]
        if decided(ratios):
            break
        elapsed = time.perf_counter() - start
        if done >= cap or elapsed >= config.max_seconds:
            say(f"undecided after {done} trials in {elapsed:.1f} s (caps: {cap} trials, {config.max_seconds:g} s)")
            break
        say(f"undecided after {done} trials: measuring {min(done, cap - done)} more")
    b = tuple(x for m in rounds for x in m.bundle_medians_ms)
    r = tuple(x for m in rounds for x in m.reference_medians_ms)
    return RatioMeasurement(reference, bundle.model_file, tuple(ratios), b, r, float(np.median(b)), float(np.median(r)),
                            done, time.perf_counter() - start, len(rounds))


def _calibrate_reference(bundle: _Bundle, target: Profile, macs: int, on_progress: Callable[[str], None],
                         timer: Timer | None = None) -> ReferenceSpec:
    """A ``ref-mbconv/1`` whose latency is of the bundle's order: start from the bundle's MACs, then
    rescale the width by measured ratios (latency is not proportional to MACs) until it lands in 0.5x-2x."""
    quick = dataclasses.replace(target, measure=_CALIBRATION_MEASURE)
    spec = ReferenceSpec.for_macs(bundle.input_shape, macs)
    best: tuple[float, ReferenceSpec] | None = None
    for _ in range(_CALIBRATION_STEPS):
        q = _measure(bundle, quick, spec, timer).ratio_median
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


def _new_reference(bundle: _Bundle, target: Profile, config: CheckConfig, say: Callable[[str], None],
                   timer: Timer | None = None) -> Reference:
    if config.reference == "twin":
        return TwinReference.from_model(bundle.model, bundle.input_shape, seed=config.seed)
    return _calibrate_reference(bundle, target, _cost(bundle)["onnx_macs"], say, timer)


def _say_measuring(bundle: _Bundle, target: Profile, reference: Reference, config: CheckConfig,
                   say: Callable[[str], None]) -> None:
    say(f"measuring {bundle.path / bundle.model_file} and {reference.describe()} interleaved on {target.name}: "
        f"{target.measure.trials} trials x {target.measure.repeats} runs, up to "
        f"{config.trial_cap(target.measure.trials)} trials while undecided")


def measure_ratio(bundle_dir: str | Path, profile: Profile, config: CheckConfig | None = None,
                  reference: Reference | None = None, on_progress: Callable[[str], None] | None = None,
                  timer: Timer | None = None) -> RatioMeasurement:
    """Time the bundle and the reference interleaved, one round of the check's protocol (:func:`check_protocol`).

    Without ``reference`` a new one is made for the bundle as ``--update`` does (``config.reference``).
    """
    config = config or CheckConfig()
    say = on_progress or _quiet
    bundle = _load_bundle(bundle_dir, profile)
    target = _target(profile, bundle.input_shape, config)
    reference = reference if reference is not None else _new_reference(bundle, target, config, say, timer)
    return _measure(bundle, target, reference, timer)


def _quiet(_message: str) -> None:
    pass


def _baseline_known(config: CheckConfig) -> Callable[[Sequence[float]], bool]:
    """When ``--update`` may stop: the baseline's median ratio known to ±tolerance/4 (95% bootstrap CI)."""
    def known(ratios: Sequence[float]) -> bool:
        spread = baseline_spread(ratios, config)
        return spread is not None and spread <= config.tolerance / 4
    return known


def update_baseline(bundle_dir: str | Path, profile: Profile, config: CheckConfig | None = None,
                    on_progress: Callable[[str], None] | None = None, timer: Timer | None = None) -> Baseline:
    """Measure the bundle now and (re)write its baseline into the manifest (atomically).

    The reference is ``config.reference`` (the bundle's twin by default). The baseline is measured
    with the check's rounds until its median ratio is known to ±tolerance/4, so that a check's CI
    is not dominated by the baseline's own noise.
    """
    from edgenas.hardware.measure import runtime_versions
    from edgenas.hardware.table import cpu_model

    config = config or CheckConfig()
    say = on_progress or _quiet
    bundle = _load_bundle(bundle_dir, profile)
    target = _target(profile, bundle.input_shape, config)
    cost = _cost(bundle)
    reference = _new_reference(bundle, target, config, say, timer)
    _say_measuring(bundle, target, reference, config, say)
    m = _measure_until(bundle, target, reference, config, _baseline_known(config), say, timer)
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
