"""CI latency-regression check of an exported bundle (``edgenas check BUNDLE --profile P``).

Absolute milliseconds on shared CI runners drift by more than the regressions worth catching (other
jobs, turbo states, a different runner each time), so the check never compares milliseconds across
runs. It times the bundle's model and a FIXED REFERENCE WORKLOAD interleaved in the same run and
compares their latency *ratio* with the ratio recorded in the bundle's baseline: whatever slows the
machine down slows both alike and cancels.

The reference workload (:class:`ReferenceSpec`, ``ref-mbconv/1``) is a small network of
inverted-residual blocks (Conv+Relu stem, 1x1 / depthwise 3x3 / 1x1 convolutions), GlobalAveragePool
and Gemm, built with ``onnx.helper`` from seeded weights (not with torch, so it does not change when
torch's exporter does), on the bundle's input shape. ``--update`` picks its width so that its
latency is of the order of the bundle's (0.3x-3x) and stores the spec in the baseline, so every
later check rebuilds exactly the same reference.

Protocol: T interleaved trials, each timing 10 runs of the bundle and 10 of the reference (after
3 untimed ones), alternating which goes first. By default T spends the profile's timed-run budget
(``measure.trials x measure.repeats`` / 10: 30 for cpu-ort); ``--trials`` sets it. Short trials
because contention from other jobs comes in bursts: a trial of 100 runs lets a burst hit one model's
block and not the other's, while short trials pair their timings up. In four comparisons of 12
checks each on a shared 2-core machine (an mbv3 bundle, load average about 3), the relative std of
the check's ratio was 3.5-11.3% with 3 trials of 100 runs and 1.7-3.6% with 30 trials of 10.

Statistical rule (the same text is in the CLI help and every report): the per-trial ratios are
``r_t = bundle_median_t / reference_median_t``; the relative change is ``d = median(r) /
baseline_ratio``; a 95% bootstrap CI of ``median(r) / baseline_ratio`` is taken from 2000 seeded
resamples of the T ratios. The verdict is REGRESSION iff the CI's lower bound > 1 + tolerance
(confidently slower than the tolerance), IMPROVED iff its upper bound < 1 - tolerance
(informational, passes), else PASS. A check passes unless it is confidently slower: a noisy run
widens the CI and passes rather than failing a build by chance; more trials narrow the CI (with 3
trials the CI spans the three ratios, so all three must exceed the tolerance). The baseline's
noise is in the CI too: ``--update`` stores the baseline's per-trial ratios and every resample
redraws them along with the current ones, so a baseline recorded on a busy machine cannot turn its
own noise into a regression later (measured: a baseline whose 30 ratios spread 0.86-2.38 was
recorded on one host; a quiet host of the same CPU family then measured a tight ratio 10.5% above
its median, which the one-sample rule called a regression). The check reports a noisy baseline and
asks for it to be re-recorded on a quiet machine, or with more ``--trials``.

Ratios carry over between CPUs only approximately: between two hosts of this workplace's CPU type,
the same bundle's ratio moved by 9-18% (20 checks on the first host measured 1.38-1.50, the second
1.64), of the order of the default tolerance. Record the
baseline on the runner class that checks it.

FLOPs (multiply-adds of Conv/Gemm/MatMul, 1 MAC = 1 FLOP as everywhere in edgenas) and parameters
are recomputed from ``model.onnx`` and must equal the baseline exactly: they do not drift, so any
difference is a changed architecture and fails the check. File checksums are compared with the
manifest's ``files`` and the baseline and only reported: retrained weights change the file without
changing its speed.

Exit codes: 0 pass (or improved), 1 regression, 2 usage or input error (one line).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgenas.config import from_mapping, to_mapping
from edgenas.errors import ConfigError, EdgenasError
from edgenas.export import INT8_FILE, MANIFEST_FILE, MODEL_FILE, onnx_cost, read_manifest, write_manifest
from edgenas.hardware.profile import MeasureSettings, Profile

__all__ = [
    "BASELINE_KEY",
    "CHECK_FORMAT",
    "REFERENCE_NAME",
    "Baseline",
    "CheckConfig",
    "CheckReport",
    "CostCheck",
    "Decision",
    "FileCheck",
    "RatioMeasurement",
    "ReferenceSpec",
    "baseline_spread",
    "check_bundle",
    "check_protocol",
    "decide",
    "format_baseline",
    "measure_ratio",
    "parse_tolerance",
    "rule_text",
    "update_baseline",
]

CHECK_FORMAT = "edgenas-check/1"
BASELINE_KEY = "baseline"
REFERENCE_NAME = "ref-mbconv/1"
Verdict = Literal["PASS", "REGRESSION", "IMPROVED"]
# Width search of the reference: accept a calibration ratio in this band (well inside 0.3x-3x).
_ACCEPT_BAND = (0.5, 2.0)
_TARGET_BAND = (1 / 3, 3.0)
_WIDTH_RANGE = (2, 512)
_CALIBRATION_STEPS = 5
_CALIBRATION_MEASURE = MeasureSettings(warmup=3, repeats=10, trials=5)


# ----- configuration ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckConfig:
    """How strict the check is and how it measures.

    Each trial times ``repeats`` runs of each model after ``warmup`` untimed ones (at most the
    profile's warm-up). ``trials=None`` spends the profile's timed-run budget (``measure.trials x
    measure.repeats``, at least 5 trials): the same work as one profile measurement, cut into short
    interleaved trials, because short trials pair the two models' timings more tightly (see the
    module docstring).
    """

    tolerance: float = 0.10
    trials: int | None = None
    repeats: int = 10
    warmup: int = 3
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, (int, float)) and 0.0 < self.tolerance < 1.0):
            raise ConfigError(f"tolerance must be between 0 and 1 (e.g. 10% or 0.1), not {self.tolerance!r}")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, not {self.trials}")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats must be >= 1 and warmup >= 0, not {self.repeats} and {self.warmup}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"confidence must be between 0 and 1, not {self.confidence!r}")
        if self.resamples < 1:
            raise ConfigError(f"resamples must be >= 1, not {self.resamples}")


def parse_tolerance(text: str | float) -> float:
    """``"10%"`` or ``"0.1"`` (or a float) to a fraction in (0, 1); anything else is a one-line error."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"--tolerance must be a percentage like 10% or a fraction like 0.1, not {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        hint = f" (did you mean {raw}%?)" if not raw.endswith("%") and 1.0 <= value < 100.0 else ""
        raise ConfigError(f"--tolerance must be between 0 and 1 exclusive (0%..100%), not {text!r}{hint}")
    return value


def rule_text(config: CheckConfig | None = None, trials: int | None = None) -> str:
    """The decision rule in one paragraph, with this check's numbers (``trials``: as measured)."""
    c = config or CheckConfig()
    t = trials if trials is not None else c.trials
    count = "T (default: the profile's timed runs / repeats)" if t is None else f"T = {t}"
    tol = f"{c.tolerance:.4g}"
    return (f"{count} interleaved trials of {c.repeats} runs each; per-trial ratio r_t = bundle median / reference "
            f"median; d = median(r) / baseline ratio; {c.confidence:.0%} bootstrap CI of d ({c.resamples} resamples "
            f"of both the trials and the baseline's stored trials, seed {c.seed}); REGRESSION iff CI low > 1 + {tol} "
            f"(confidently slower than the tolerance), IMPROVED "
            f"iff CI high < 1 - {tol} (passes), else PASS. FLOPs and params must equal the baseline exactly.")


# ----- the decision ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """The latency verdict: relative change ``change`` = median(r) / baseline ratio and its CI."""

    verdict: Verdict
    change: float
    ci_low: float
    ci_high: float
    ratio_median: float
    baseline_ratio: float
    tolerance: float
    confidence: float
    resamples: int
    seed: int
    n: int

    @property
    def failed(self) -> bool:
        return self.verdict == "REGRESSION"

    def summary(self) -> str:
        return (f"{self.verdict}: latency ratio {_pct(self.change)} vs baseline ({self.confidence:.0%} CI "
                f"{_pct(self.ci_low)} .. {_pct(self.ci_high)}, tolerance ±{self.tolerance:.1%}, {self.n} trials)")


def _positive_ratios(values: Sequence[float], what: str) -> np.ndarray:
    r = np.asarray(values, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"{what} must be a non-empty sequence of positive finite numbers")
    return r


def _bootstrap_medians(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Medians of ``resamples`` resamples (with replacement) of ``values``."""
    return np.median(values[rng.integers(0, values.size, size=(resamples, values.size))], axis=1)


def decide(ratios: Sequence[float], baseline_ratio: float, tolerance: float, confidence: float = 0.95,
           resamples: int = 2000, seed: int = 0, baseline_ratios: Sequence[float] | None = None) -> Decision:
    """Apply the rule of this module to per-trial ratios; pure and deterministic for a given seed.

    The bootstrap resamples the T ratios with replacement ``resamples`` times and takes the
    percentile interval of their medians over the baseline's. With ``baseline_ratios`` (the
    baseline's own per-trial ratios, as ``--update`` stores them) each resample also redraws those,
    so a noisy baseline widens the CI instead of passing its noise off as a change; without them
    ``baseline_ratio`` is taken as exact. A single ratio gives a zero-width CI, so one trial decides
    on its value alone; use several.
    """
    r = _positive_ratios(ratios, "ratios")
    if not (math.isfinite(baseline_ratio) and baseline_ratio > 0):
        raise ValueError(f"baseline ratio must be positive and finite, not {baseline_ratio!r}")
    CheckConfig(tolerance=tolerance, confidence=confidence, resamples=resamples, seed=seed)  # validates
    change = float(np.median(r)) / baseline_ratio
    rng = np.random.default_rng(seed)
    boot = _bootstrap_medians(r, rng, resamples)
    if baseline_ratios is not None:
        boot = boot / _bootstrap_medians(_positive_ratios(baseline_ratios, "baseline ratios"), rng, resamples)
    else:
        boot = boot / baseline_ratio
    alpha = 1.0 - confidence
    low, high = (float(v) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    verdict: Verdict = "PASS"
    if low > 1.0 + tolerance:
        verdict = "REGRESSION"
    elif high < 1.0 - tolerance:
        verdict = "IMPROVED"
    return Decision(verdict, change, low, high, float(np.median(r)), float(baseline_ratio), float(tolerance),
                    float(confidence), int(resamples), int(seed), int(r.size))


def baseline_spread(ratios: Sequence[float], config: CheckConfig | None = None) -> float | None:
    """Half the width of the bootstrap CI of the baseline's median ratio, relative to that median:
    how well the baseline itself is known (None without at least two stored ratios)."""
    if len(ratios) < 2:
        return None
    c = config or CheckConfig()
    b = _positive_ratios(ratios, "baseline ratios")
    boot = _bootstrap_medians(b, np.random.default_rng(c.seed), c.resamples)
    alpha = 1.0 - c.confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float((high - low) / 2 / np.median(b))


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


# ----- the check ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostCheck:
    """An exact comparison of a count (FLOPs or params) with the baseline."""

    name: str
    label: str
    baseline: int
    now: int

    @property
    def verdict(self) -> Verdict:
        return "PASS" if self.now == self.baseline else "REGRESSION"

    def message(self) -> str:
        if self.now == self.baseline:
            return f"{self.label} unchanged: {self.now:,}"
        return (f"{self.label} changed: baseline {self.baseline:,}, now {self.now:,} "
                f"({_pct(self.now / self.baseline) if self.baseline else 'new'})")


@dataclass(frozen=True)
class FileCheck:
    """A file's checksum against the manifest: ok, changed, missing or unlisted (reported only)."""

    name: str
    status: Literal["ok", "changed", "missing", "unlisted"]
    expected: str | None
    actual: str | None


@dataclass(frozen=True)
class CheckReport:
    """Everything one check found; ``exit_code`` is what the CLI exits with."""

    bundle: str
    profile: str
    profile_hash: str
    config: CheckConfig
    baseline: Baseline
    measurement: RatioMeasurement
    decision: Decision
    costs: tuple[CostCheck, ...]
    files: tuple[FileCheck, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def rule(self) -> str:
        return rule_text(self.config, self.measurement.trials)

    @property
    def failures(self) -> list[str]:
        out = []
        if self.decision.failed:
            out.append(f"latency regression: {self.decision.summary()}")
        out += [c.message() for c in self.costs if c.verdict == "REGRESSION"]
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    @property
    def verdict(self) -> Verdict:
        if self.failures:
            return "REGRESSION"
        return "IMPROVED" if self.decision.verdict == "IMPROVED" else "PASS"

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """metric, baseline, now, change, CI, verdict."""
        d, m, b = self.decision, self.measurement, self.baseline
        rows = [("latency ratio (bundle/ref)", f"{b.ratio_median:.4f}", f"{m.ratio_median:.4f}", _pct(d.change),
                 f"{_pct(d.ci_low)} .. {_pct(d.ci_high)}", d.verdict),
                ("bundle latency (ms, info)", f"{b.bundle_median_ms:.4f}", f"{m.bundle_median_ms:.4f}",
                 _pct(m.bundle_median_ms / b.bundle_median_ms), "", "INFO")]
        for c in self.costs:
            rows.append((c.label, f"{c.baseline:,}", f"{c.now:,}",
                         _pct(c.now / c.baseline) if c.baseline else "", "exact", c.verdict))
        changed = [f for f in self.files if f.status != "ok"]
        rows.append(("files sha256", f"{len(self.files)} listed", "all match" if not changed else
                     ", ".join(f"{f.name} {f.status}" for f in changed), "", "", "INFO"))
        return rows

    def render(self, use_rich: bool = False) -> str:
        """The table plus the rule, notes and failures; rich (colours) for a terminal, plain text for logs."""
        head = ("metric", "baseline", "now", "change", f"{self.config.confidence:.0%} CI", "verdict")
        rows = self.rows()
        lines = [f"edgenas check {self.bundle} on {self.profile} ({self.profile_hash}): {self.verdict}"]
        lines += [_rich_table(head, rows) if use_rich else _plain_table(head, rows), f"rule: {self.rule}"]
        m, ref = self.measurement, self.baseline.reference
        lines.append(f"{m.trials} trial ratios now: median {m.ratio_median:.4f}, range {min(m.ratios):.4f} .. "
                     f"{max(m.ratios):.4f}; reference {ref.name} width {ref.width}; {m.seconds:.1f} s measuring")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"FAIL: {f}" for f in self.failures]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        d, m, b = self.decision, self.measurement, self.baseline
        return {
            "format": CHECK_FORMAT, "bundle": self.bundle, "profile": self.profile, "profile_hash": self.profile_hash,
            "verdict": self.verdict, "exit_code": self.exit_code, "rule": self.rule,
            "config": to_mapping(self.config),
            "latency": {"verdict": d.verdict, "baseline_ratio": b.ratio_median, "ratio_median": m.ratio_median,
                        "change": d.change, "ci": [d.ci_low, d.ci_high], "ratios": list(m.ratios),
                        "trials": m.trials, "bundle_median_ms": m.bundle_median_ms,
                        "reference_median_ms": m.reference_median_ms, "baseline_bundle_median_ms": b.bundle_median_ms,
                        "baseline_reference_median_ms": b.reference_median_ms, "reference": b.reference.to_json(),
                        "seconds": m.seconds},
            **{c.name: {"verdict": c.verdict, "baseline": c.baseline, "now": c.now, "message": c.message()}
               for c in self.costs},
            "files": [dataclasses.asdict(f) for f in self.files],
            "failures": self.failures, "notes": list(self.notes), "seconds": self.seconds,
        }

    def to_junit(self) -> str:
        """JUnit XML: one testsuite, testcases latency, flops and params; a failure element per regression."""
        suite = ET.Element("testsuite", name="edgenas.check", tests=str(1 + len(self.costs)),
                           failures=str(int(self.decision.failed) + sum(c.verdict == "REGRESSION" for c in self.costs)),
                           errors="0", skipped="0", time=f"{self.seconds:.3f}",
                           timestamp=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        props = ET.SubElement(suite, "properties")
        for key, value in (("bundle", self.bundle), ("profile", self.profile), ("profile_hash", self.profile_hash),
                           ("tolerance", f"{self.config.tolerance:g}"), ("rule", self.rule)):
            ET.SubElement(props, "property", name=key, value=value)
        classname = f"edgenas.check.{Path(self.bundle).name}"
        case = ET.SubElement(suite, "testcase", classname=classname, name="latency",
                             time=f"{self.measurement.seconds:.3f}")
        if self.decision.failed:
            ET.SubElement(case, "failure", type="LatencyRegression", message=self.decision.summary()).text = (
                f"per-trial ratios {list(self.measurement.ratios)}; baseline ratio {self.baseline.ratio_median}")
        else:
            ET.SubElement(case, "system-out").text = self.decision.summary()
        for c in self.costs:
            case = ET.SubElement(suite, "testcase", classname=classname, name=c.name, time="0")
            if c.verdict == "REGRESSION":
                ET.SubElement(case, "failure", type="CostChanged", message=c.message()).text = c.message()
        ET.SubElement(suite, "system-out").text = self.render()
        ET.indent(suite)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _pct(x: float) -> str:
    """A ratio as a signed percentage change: 1.25 -> +25.0%."""
    return f"{(x - 1.0) * 100:+.1f}%"


def _plain_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns for CI logs: the first left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
                     for r in [head, *rows])


def _rich_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table drawn by rich with coloured verdicts, as text for the terminal."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the plain table is good enough without it
        return _plain_table(head, rows)
    colours = {"PASS": "green", "IMPROVED": "cyan", "REGRESSION": "bold red", "INFO": "dim"}
    table = Table(*head)
    for row in rows:
        table.add_row(*row[:-1], f"[{colours.get(row[-1], '')}]{row[-1]}[/]")
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=140).print(table)
    return buf.getvalue().rstrip()


def _file_checks(bundle: _Bundle) -> tuple[FileCheck, ...]:
    listed = bundle.manifest.get("files") or {}
    out = []
    for name, info in sorted(listed.items()) if isinstance(listed, dict) else []:
        expected = info.get("sha256") if isinstance(info, dict) else None
        p = bundle.path / name
        actual = _sha256(p.read_bytes()) if p.is_file() else None
        status = "missing" if actual is None else ("ok" if actual == expected else "changed")
        out.append(FileCheck(name, status, expected, actual))  # type: ignore[arg-type]
    if MODEL_FILE not in listed:
        out.append(FileCheck(MODEL_FILE, "unlisted", None, _sha256(bundle.fp32)))
    return tuple(out)


def _profile_arg(profile: Profile) -> str:
    """How to name the profile in a command hint: its registry name, or its file when the name finds another."""
    from edgenas.hardware.profile import list_profiles

    found = list_profiles().get(profile.name)
    if profile.source is None or (found is not None and found.resolve() == Path(profile.source).resolve()):
        return profile.name
    return profile.source


def _read_baseline(bundle: _Bundle, profile: Profile) -> Baseline:
    update = f"edgenas check {bundle.path} --profile {_profile_arg(profile)} --update"
    raw = bundle.manifest.get(BASELINE_KEY)
    if raw is None:
        raise EdgenasError(f"{bundle.path / MANIFEST_FILE} has no latency baseline; record one first: {update}")
    try:
        return Baseline.from_json(raw, where=f"{bundle.path / MANIFEST_FILE}: {BASELINE_KEY}")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; rewrite it with: {update}") from None


def check_bundle(bundle_dir: str | Path, profile: Profile, config: CheckConfig | None = None,
                 on_progress: Callable[[str], None] | None = None) -> CheckReport:
    """Compare the bundle's FLOPs, params and latency ratio with its baseline (see the module's rule).

    Input problems (no bundle, corrupt model, no baseline, another profile) raise EdgenasError
    before anything is measured; a regression is a report with ``exit_code`` 1, not an exception.
    """
    from edgenas.hardware.measure import runtime_versions
    from edgenas.hardware.table import cpu_model

    start = time.perf_counter()
    config = config or CheckConfig()
    bundle = _load_bundle(bundle_dir, profile)
    baseline = _read_baseline(bundle, profile)
    target = _target(profile, bundle.input_shape, config)
    if target.latency_hash() != baseline.profile_hash:
        raise ConfigError(
            f"the baseline of {bundle.path} was recorded with profile '{baseline.profile}' (latency hash "
            f"{baseline.profile_hash}), but '{profile.name}' at {'x'.join(map(str, bundle.input_shape))} has hash "
            f"{target.latency_hash()}; check with the baseline's profile or rewrite the baseline with --update")
    if tuple(baseline.reference.input_shape) != bundle.input_shape:
        raise ConfigError(f"the baseline's reference workload is for input {list(baseline.reference.input_shape)}, "
                          f"the bundle's input is {list(bundle.input_shape)}; rewrite the baseline with --update")
    cost = _cost(bundle)
    costs = (CostCheck("flops", "FLOPs (MACs)", baseline.onnx_macs, cost["onnx_macs"]),
             CostCheck("params", "params", baseline.onnx_params, cost["onnx_params"]))
    files = _file_checks(bundle)
    notes: list[str] = []
    if profile.name != baseline.profile:
        notes.append(f"profile '{profile.name}' has the same latency hash as the baseline's '{baseline.profile}'")
    if bundle.model_file != baseline.model_file:
        notes.append(f"measured {bundle.model_file}, but the baseline measured {baseline.model_file}")
    if _sha256(bundle.model) != baseline.sha256:
        notes.append(f"{bundle.model_file} changed since the baseline (sha256 {baseline.sha256[:12]} -> "
                     f"{_sha256(bundle.model)[:12]}); expected after retraining or re-export")
    notes += [f"{f.name}: sha256 {f.status} vs the manifest's files" for f in files if f.status != "ok"]
    machine = cpu_model()
    if machine != baseline.machine:
        notes.append(f"baseline measured on '{baseline.machine}', now on '{machine}': ratios mostly carry over "
                     "between CPUs of one family, less so across families")
    versions = runtime_versions()
    if versions.get("onnxruntime") != baseline.runtime_versions.get("onnxruntime"):
        notes.append(f"onnxruntime {baseline.runtime_versions.get('onnxruntime')} at baseline, now "
                     f"{versions.get('onnxruntime')}")
    m = _measure_ratio(bundle, target, baseline.reference, on_progress or _quiet)
    decision = decide(m.ratios, baseline.ratio_median, config.tolerance, config.confidence, config.resamples,
                      config.seed, baseline_ratios=baseline.ratios or None)
    spread = baseline_spread(baseline.ratios, config)
    if spread is not None and spread > config.tolerance / 2:
        notes.append(f"the baseline is noisy (its ratio is known to ±{spread:.1%} only), which widens every check's "
                     "CI: re-record it with --update on a quiet machine")
    if m.trials < 3:
        notes.append(f"only {m.trials} trial(s): the CI is as wide as the trials' spread; use --trials 5 or more")
    return CheckReport(str(bundle.path), profile.name, target.latency_hash(), config, baseline, m, decision, costs,
                       files, tuple(notes), time.perf_counter() - start)

