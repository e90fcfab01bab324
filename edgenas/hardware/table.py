"""Latency lookup table: per-(layer, choice) latencies measured on the target, summed per architecture.

Why a table: timing one candidate end to end costs seconds (export, session, warm-up, repeats); the
table costs one build per (profile, space) and then answers in microseconds, which is what lets a
search reject over-budget candidates before spending any compute on them.

How a table is measured (:func:`build_table`), and why:

* Every (layer, choice) block is its own small model at the layer's real input shape
  (``space.layer_input_shapes``), the stem at the network input and the head at
  ``space.head_input_shape``. Skip choices cost 0 (their entry exists, with count 0).
* **In context** (``method="context"``, the default): each block is timed behind a *context prefix*,
  a depthwise 1x1 convolution at the block's input shape, and the prefix alone is timed too; the
  block's entry is the difference. The prefix makes the block see what it sees inside a network: its
  input arrives as the output of a convolution. With ONNX Runtime that matters twice over. A block
  run alone pays a session run and, on CPU, a layout change of its input (``ReorderInput`` to the
  blocked NCHWc layout) and of its output (``ReorderOutput``); inside the network there is one
  session run and no reorders between blocks. And a block run alone cannot fuse its residual
  ``Add`` into its last convolution (the shortcut is still in plain NCHW), which the network does.
  Behind the prefix the residual is fused, and the session overhead, the input reorder and the
  prefix itself cancel in the difference, while the output reorders telescope along the chain
  (each block adds the reorder of its output and removes that of its input). ``method="isolated"``
  times the bare blocks and leaves all of this to the calibration; it is kept for comparison.
* **In the network** (``method="network"``): every entry is timed inside a whole subnet. A *base*
  subnet (the all-minimum by MACs: every skippable layer skipped, the cheapest block elsewhere) is
  measured, and so is, for every (layer, choice), the base with only that layer changed; the entry
  is the difference, the base's choice costs 0 and the base's own latency is the fixed part (stored
  as ``stem``; ``head`` is 0). This sees whatever a runtime does across block boundaries, which no
  block-level timing can. It matters for int8: ONNX Runtime's QDQ graphs of a block on its own
  (behind a prefix or not) kept quantize/dequantize work that the whole int8 network fuses away, so
  the in-context entries of the large blocks of the late stages came out 4-6x what changing that
  layer costs in a network (measured on ``cpu-ort-int8``, see docs/BENCHMARKS.md); for fp32 the two
  methods agree. Its cost: about one small subnet per entry instead of one block.
* All blocks, prefixes, stem, head and the calibration subnets are timed in one interleaved
  :meth:`~edgenas.hardware.measure.LatencyMeasurer.measure_many` call, so drift of the machine hits
  the parts and the end-to-end measurements alike.
* Prediction = stem + sum of the chosen blocks + head ("raw"), corrected by a calibration
  ``scale * raw + offset`` fitted on end-to-end measurements of uniformly sampled subnets plus the
  all-minimum and all-maximum (by MACs) ones, so the fit spans the whole range a search visits
  (:mod:`edgenas.hardware.calibration`).
* :func:`validate_table` measures *fresh* subnets (another seed, calibration ones excluded) end to
  end and stores median/max relative error, the fraction within 10%, and Kendall's tau in the
  table file, so every user of the table sees how far its numbers can be trusted.

The file is JSON (:data:`FORMAT`), self-describing (``format_doc``), and records the space config
hash, the profile's latency hash and the environment it was measured in; loading it against another
space or profile is an error that says how to rebuild, and using it on another machine is a warning
(:func:`environment_warnings`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import platform
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from edgenas.errors import ConfigError, EdgenasError, TableError
from edgenas.hardware.calibration import Calibration, error_figures, fit_calibration
from edgenas.hardware.profile import Budgets, Profile
from edgenas.io import atomic_write_bytes, atomic_write_json, read_json
from edgenas.space import Arch, SearchSpace, space_to_dict

__all__ = [
    "BASE_COPIES",
    "FORMAT",
    "FORMAT_DOC",
    "METHODS",
    "EntryStats",
    "LatencyTable",
    "TableError",
    "TableValidation",
    "build_table",
    "check_quantile",
    "cpu_model",
    "default_method",
    "environment_of",
    "environment_warnings",
    "loose_budget_warnings",
    "plot_validation",
    "quantile_budget",
    "rebuild_hint",
    "time_predict",
    "validate_table",
]

FORMAT = "edgenas-latency-table/1"
Method = Literal["context", "isolated", "network"]
METHODS: tuple[str, ...] = ("context", "isolated", "network")
BASE_COPIES = 3  # method "network": separate measurements of the base subnet, pooled

FORMAT_DOC: dict[str, str] = {
    "format": f"'{FORMAT}'; readers refuse other values.",
    "format_doc": "This description of the fields.",
    "space": "The search space: name, version, full config and its hash (space_to_dict). A table is valid "
             "only for a space with the same hash.",
    "profile": "The hardware profile measured on (Profile.to_json) plus 'latency_hash', the hash of the "
               "fields that change a latency (device, runtime, provider, threads, batch, input shape, "
               "precision, graph optimisation, opset). A table is valid only for a profile with the same hash.",
    "environment": "Where it was measured: CPU model, logical and usable cores, GPU, runtime versions, "
                   "threads, provider, batch, precision, OS, date (UTC). No hostname. Using the table where "
                   "these differ gives a warning.",
    "input_shape": "[C, H, W] of the network input (the profile's input_shape).",
    "num_classes": "Classifier outputs of the head that was measured.",
    "statistic": "Which statistic of the samples the predictions use (the profile's measure.statistic).",
    "method": "'context': each block timed behind a depthwise 1x1 context prefix, minus the prefix alone "
              "(session overhead and layout reorders cancel, residual adds fuse as in the network); "
              "'isolated': each block timed alone; 'network': each entry is a whole subnet (the all-min base with "
              "that one layer changed) minus the base subnet.",
    "stem": "Stem statistics in ms: median_ms, mean_ms, p90_ms, var_ms2 (variance, ms^2), count (timed runs); "
            "with method 'network', the whole base subnet's.",
    "head": "Head statistics (same keys); with method 'context', net of the head's context prefix; 0 with "
            "'network' (the base subnet includes it).",
    "entries": "entries[layer][choice]: {choice label, median_ms, mean_ms, p90_ms, var_ms2, count} of each "
               "block at its layer's input shape; with method 'context', net of the layer's context prefix "
               "(each statistic minus the prefix's, variances added); with 'network', the one-layer variant "
               "minus the base (the base's own choice 0; a skip choice where the base does not skip is "
               "measured like any other). Otherwise skip choices: all 0, count 0.",
    "context": "Per layer, the statistics of the context prefix that was subtracted (null otherwise); "
               "'head_context' likewise for the head.",
    "calibration": "predicted_ms = scale * raw_ms + offset_ms, raw_ms = stem + sum(entries) + head; fitted on n "
                   "end-to-end measurements (archs, raw_ms, measured_ms kept; outliers = indices left out).",
    "validation": "Figures on fresh subnets measured end to end (not the calibration ones): n, median_rel_error, "
                  "max_rel_error, within_10pct (fraction with |error| <= 10%), kendall_tau, mean_signed_rel_error, "
                  "archs, predicted_ms, raw_ms, measured_ms, seconds_measuring, seconds_per_candidate, noise_rel "
                  "(median over the subnets of the relative standard deviation of their per-trial medians: how much "
                  "re-measuring a subnet moves it), measure (the protocol used), plot, date. "
                  "null until `edgenas profile validate` runs.",
    "build_seconds": "Wall time of the build: export, session creation, timing, calibration.",
    "query_us": "Mean time of one predict() call in microseconds, timed right after the build.",
}


# ----- statistics of one entry -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EntryStats:
    """Latency statistics of one table entry, in milliseconds (variance in ms^2)."""

    median_ms: float = 0.0
    mean_ms: float = 0.0
    p90_ms: float = 0.0
    var_ms2: float = 0.0
    count: int = 0

    def value(self, statistic: str) -> float:
        values = {"median": self.median_ms, "mean": self.mean_ms, "p90": self.p90_ms}
        if statistic not in values:
            raise ConfigError(f"unknown latency statistic '{statistic}' (known: {', '.join(values)})")
        return values[statistic]

    @classmethod
    def of(cls, stats: Any) -> EntryStats:
        """From a :class:`~edgenas.hardware.measure.LatencyStats`."""
        return cls(median_ms=float(stats.median_ms), mean_ms=float(stats.mean_ms), p90_ms=float(stats.p90_ms),
                   var_ms2=float(stats.std_ms) ** 2, count=int(stats.n))

    @classmethod
    def difference(cls, gross: Any, context: Any) -> EntryStats:
        """Block behind its prefix minus the prefix alone: each statistic subtracted, variances added
        (the two were timed independently)."""
        return cls(median_ms=float(gross.median_ms - context.median_ms),
                   mean_ms=float(gross.mean_ms - context.mean_ms),
                   p90_ms=float(gross.p90_ms - context.p90_ms),
                   var_ms2=float(gross.std_ms) ** 2 + float(context.std_ms) ** 2, count=int(gross.n))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EntryStats:
        if not isinstance(data, dict):
            raise TypeError(f"expected a mapping of statistics, got {type(data).__name__}")
        return cls(median_ms=float(data["median_ms"]), mean_ms=float(data["mean_ms"]),
                   p90_ms=float(data.get("p90_ms", data["median_ms"])), var_ms2=float(data["var_ms2"]),
                   count=int(data["count"]))


# ----- validation ----------------------------------------------------------------------------------------------
@dataclass
class TableValidation:
    """How a table's predictions compare with end-to-end measurements of fresh subnets."""

    n: int
    median_rel_error: float
    max_rel_error: float
    within_10pct: float
    kendall_tau: float
    mean_signed_rel_error: float
    archs: list[str]
    predicted_ms: list[float]
    raw_ms: list[float]
    measured_ms: list[float]
    seconds_measuring: float
    seconds_per_candidate: float
    seed: int
    noise_rel: float = 0.0
    measure: dict[str, Any] = field(default_factory=dict)
    plot: str | None = None
    date: str = ""

    def summary(self) -> str:
        """One line a search prints next to every latency figure it shows."""
        return (f"validated on {self.n} fresh subnets: median error {self.median_rel_error:.1%}, "
                f"max {self.max_rel_error:.1%}, {self.within_10pct:.0%} within ±10%, "
                f"Kendall tau {self.kendall_tau:.3f}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableValidation:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeyError(f"unknown validation key {unknown[0]!r}")
        return cls(**data)


# ----- environment ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu_name(profile: Profile) -> str | None:
    if profile.device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unavailable"


def environment_of(profile: Profile) -> dict[str, Any]:
    """What a latency depends on besides the model: recorded in the table, compared on use.

    Deliberately without a hostname: tables are shared between identical machines.
    """
    from edgenas.hardware.measure import runtime_versions

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "gpu": _gpu_name(profile),
        "device": profile.device,
        "runtime": profile.runtime,
        "runtime_versions": runtime_versions(),
        "provider": profile.provider,
        "threads": profile.threads,
        "inter_op_threads": profile.inter_op_threads,
        "batch_size": profile.batch_size,
        "precision": profile.precision,
        "graph_optimization": profile.graph_optimization,
        "os": platform.platform(terse=True),
        "machine": platform.machine(),
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


_ENV_CHECKED = (("cpu", "CPU"), ("logical_cores", "logical cores"), ("usable_cores", "usable cores"),
                ("gpu", "GPU"), ("threads", "threads"), ("inter_op_threads", "inter-op threads"),
                ("provider", "provider"), ("os", "OS"))


def environment_warnings(table: LatencyTable, profile: Profile | None = None) -> list[str]:
    """Differences between where ``table`` was measured and here (with ``profile``, default the
    table's own): CPU model, cores, GPU, threads, provider, runtime versions. Empty when they agree.

    These are warnings, not errors: a table from a sibling machine is often good enough, but the
    user must know its numbers were not measured here.
    """
    here = environment_of(profile if profile is not None else table.profile_object())
    there = table.environment
    out = []
    for key, label in _ENV_CHECKED:
        if key in there and there[key] != here[key]:
            out.append(f"latency table measured with {label} {there[key]!r}, here {here[key]!r}: "
                       "its latencies may not hold on this machine")
    theirs, ours = there.get("runtime_versions") or {}, here["runtime_versions"]
    for name in sorted(set(theirs) | set(ours)):
        if theirs.get(name) != ours.get(name):
            out.append(f"latency table measured with {name} {theirs.get(name)}, here {ours.get(name)}: "
                       "its latencies may not hold with this version")
    return out


# ----- the table ---------------------------------------------------------------------------------------------------
def rebuild_hint(profile_name: str, space_name: str, input_shape: Sequence[int], path: str | Path | None = None
                 ) -> str:
    """The command that rebuilds a stale table, quoted in every mismatch error."""
    shape = ",".join(str(int(d)) for d in input_shape)
    out = f" --out {path}" if path is not None else ""
    return (f"rebuild it with `edgenas profile build --profile {profile_name} --space {space_name} "
            f"--input-shape {shape}{out} --force` (with the --preset/--width-mult you search with)")


def _latency_differences(old: dict[str, Any], new: Profile) -> str:
    fields = ("device", "runtime", "provider", "threads", "inter_op_threads", "batch_size", "input_shape",
              "precision", "graph_optimization", "opset")
    now = new.to_json()
    diffs = [f"{k} {old.get(k)} vs {now.get(k)}" for k in fields if old.get(k) != now.get(k)]
    return "; ".join(diffs) if diffs else "latency hash differs"


@dataclass
class LatencyTable:
    """A measured table for one (space config, profile); see the module docstring for the method."""

    space: dict[str, Any]
    profile: dict[str, Any]
    environment: dict[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    statistic: str
    method: str
    stem: EntryStats
    head: EntryStats
    entries: list[list[EntryStats]]
    labels: list[list[str]]
    context: list[EntryStats | None]
    head_context: EntryStats | None = None
    calibration: Calibration = field(default_factory=Calibration)
    validation: TableValidation | None = None
    build_seconds: float = 0.0
    query_us: float | None = None
    format: str = FORMAT

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(d) for d in self.input_shape)  # type: ignore[assignment]
        self._refresh()

    def _refresh(self) -> None:
        """Cache plain-float cost rows so :meth:`predict` is a few microseconds."""
        if len(self.entries) != len(self.labels) or len(self.context) != len(self.entries):
            raise ValueError("entries, labels and context must have one row per layer")
        self._rows: list[list[float]] = [[e.value(self.statistic) for e in row] for row in self.entries]
        self._fixed = self.stem.value(self.statistic) + self.head.value(self.statistic)
        self._space_name = str(self.space["name"])
        self._space_version = int(self.space["version"])

    # -- identity --
    @property
    def space_hash(self) -> str:
        return str(self.space["hash"])

    @property
    def profile_hash(self) -> str:
        return str(self.profile["latency_hash"])

    @property
    def profile_name(self) -> str:
        return str(self.profile.get("name", "?"))

    def profile_object(self) -> Profile:
        """The profile stored in the table (as it was at build time)."""
        data = {k: v for k, v in self.profile.items() if k != "latency_hash"}
        return Profile.from_json(data, where="latency table profile")

    # -- prediction --
    def cost_rows(self) -> list[list[float]]:
        """Uncalibrated per-(layer, choice) cost in ms (skip = 0): the additive part of the model."""
        return [list(r) for r in self._rows]

    def predict_raw(self, arch: Arch) -> float:
        """stem + sum of the chosen blocks + head, uncalibrated (ms)."""
        if arch.space != self._space_name or arch.version != self._space_version or len(arch.choices) != len(
                self._rows):
            raise EdgenasError(f"architecture {arch} does not belong to the space of this latency table "
                               f"({self._space_name}@v{self._space_version}, {len(self._rows)} layers)")
        try:
            return self._fixed + sum([row[c] for row, c in zip(self._rows, arch.choices)])
        except IndexError:
            raise EdgenasError(f"architecture {arch} has a choice out of range for this latency table") from None

    def predict(self, arch: Arch) -> float:
        """Calibrated latency prediction (ms) in the profile's statistic."""
        return self.calibration.scale * self.predict_raw(arch) + self.calibration.offset_ms

    def min_latency_arch(self, space: SearchSpace) -> Arch:
        """Per-layer argmin: exact for an additive model with a positive calibration scale."""
        return space.extreme_arch(self._rows)

    def max_latency_arch(self, space: SearchSpace) -> Arch:
        return space.extreme_arch(self._rows, largest=True)

    # -- consistency --
    def check(self, space: SearchSpace | None = None, profile: Profile | None = None,
              num_classes: int | None = None, where: str | Path | None = None) -> None:
        """Raise :class:`TableError` when the table was built for another space, profile or head."""
        label = f"latency table {where}" if where is not None else "latency table"
        pname = profile.name if profile is not None else self.profile_name
        sname = space.name if space is not None else self._space_name
        shape = profile.input_shape if profile is not None else self.input_shape
        hint = rebuild_hint(pname, sname, shape, where)
        if space is not None and space.config_hash() != self.space_hash:
            raise TableError(f"{label} was built for space {self._space_name} config {self.space_hash}, "
                             f"not {space.name} config {space.config_hash()}; {hint}")
        if profile is not None and profile.latency_hash() != self.profile_hash:
            raise TableError(f"{label} was built for profile {self.profile_name} ({self.profile_hash}), "
                             f"which differs from profile {profile.name} ({profile.latency_hash()}): "
                             f"{_latency_differences(self.profile, profile)}; {hint}")
        if num_classes is not None and num_classes != self.num_classes:
            raise TableError(f"{label} was built for {self.num_classes} classes, not {num_classes}; {hint}")

    def summary(self) -> str:
        """How far this table's numbers can be trusted, in one line."""
        h, w = self.input_shape[1:]
        head = f"latency table {self.profile_name}/{self._space_name} at {h}x{w}"
        if self.validation is None:
            return f"{head}: NOT validated (run `edgenas profile validate`); calibrated on {self.calibration.n} subnets"
        return f"{head}: {self.validation.summary()}"

    # -- I/O --
    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_doc": FORMAT_DOC,
            "space": self.space,
            "profile": self.profile,
            "environment": self.environment,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "statistic": self.statistic,
            "method": self.method,
            "stem": self.stem.to_json(),
            "head": self.head.to_json(),
            "entries": [[{"choice": lab, **e.to_json()} for lab, e in zip(labs, row)]
                        for labs, row in zip(self.labels, self.entries)],
            "context": [c.to_json() if c is not None else None for c in self.context],
            "head_context": self.head_context.to_json() if self.head_context is not None else None,
            "calibration": self.calibration.to_json(),
            "validation": self.validation.to_json() if self.validation is not None else None,
            "build_seconds": self.build_seconds,
            "query_us": self.query_us,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "latency table") -> LatencyTable:
        if not isinstance(data, dict):
            raise TableError(f"{where}: not a latency table (expected a JSON object)")
        if data.get("format") != FORMAT:
            raise TableError(f"{where}: not a latency table of format {FORMAT} (format {data.get('format')!r})")
        try:
            entries = [[EntryStats.from_json(e) for e in row] for row in data["entries"]]
            labels = [[str(e["choice"]) for e in row] for row in data["entries"]]
            return cls(
                space=dict(data["space"]), profile=dict(data["profile"]), environment=dict(data["environment"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),  # type: ignore[arg-type]
                num_classes=int(data["num_classes"]), statistic=str(data["statistic"]), method=str(data["method"]),
                stem=EntryStats.from_json(data["stem"]), head=EntryStats.from_json(data["head"]),
                entries=entries, labels=labels,
                context=[EntryStats.from_json(c) if c is not None else None for c in data["context"]],
                head_context=EntryStats.from_json(data["head_context"]) if data.get("head_context") else None,
                calibration=Calibration.from_json(data["calibration"]),
                validation=TableValidation.from_json(data["validation"]) if data.get("validation") else None,
                build_seconds=float(data.get("build_seconds", 0.0)),
                query_us=float(data["query_us"]) if data.get("query_us") is not None else None,
            )
        except TableError:
            raise
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise TableError(f"{where}: malformed latency table ({detail})") from None

    def save(self, path: str | Path) -> Path:
        """Atomic JSON write: an interrupted save leaves the previous file intact."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None, profile: Profile | None = None,
             num_classes: int | None = None) -> LatencyTable:
        """Read a table; with ``space``/``profile``/``num_classes`` it must have been built for them."""
        path = Path(path)
        if not path.is_file():
            raise TableError(f"latency table not found: {path} (build one with `edgenas profile build`)")
        try:
            data = read_json(path)
        except ConfigError as exc:
            raise TableError(f"corrupt latency table: {exc}") from None
        table = cls.from_json(data, where=str(path))
        table.check(space, profile, num_classes, where=path)
        return table


# ----- building ---------------------------------------------------------------------------------------------------
class _ContextPrefix(nn.Conv2d):
    """Depthwise 1x1 convolution (identity weights): the cheapest op that hands a block its input the
    way the previous block does inside a network (e.g. already in ONNX Runtime's NCHWc layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 1, groups=channels, bias=False)
        nn.init.ones_(self.weight)


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON (tuples become lists), so a loaded table equals the built one."""
    return dict(json.loads(json.dumps(data)))


def _calibration_archs(space: SearchSpace, input_hw: tuple[int, int], count: int, seed: int) -> list[Arch]:
    """All-minimum and all-maximum (by MACs) plus ``count`` uniform samples, without duplicates."""
    if count <= 0:
        return []
    macs = space.macs_table(input_hw)
    rng = np.random.default_rng([seed, 0xCA1])
    archs = [space.extreme_arch(macs), space.extreme_arch(macs, largest=True)]
    seen = set(archs)
    attempts = 0
    while len(archs) < count + 2 and attempts < 100 * (count + 2):
        attempts += 1
        arch = space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    return archs


def time_predict(table: LatencyTable, space: SearchSpace, samples: int = 256, number: int = 20) -> float:
    """Mean microseconds per :meth:`LatencyTable.predict` over random architectures."""
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(samples)]
    predict = table.predict
    timer = timeit.Timer(lambda: [predict(a) for a in archs])
    best = min(timer.repeat(repeat=5, number=number))
    return best / (number * samples) * 1e6


def _measurer(profile: Profile, measurer: Any | None) -> Any:
    if measurer is not None:
        return measurer
    from edgenas.hardware.measure import create_measurer

    return create_measurer(profile)


def default_method(profile: Profile) -> Method:
    """``network`` for int8 profiles, whose block-level timings miss what the whole quantized network
    fuses (see the module docstring); ``context`` otherwise, which costs less and is as accurate there."""
    return "network" if profile.precision == "int8" else "context"


def build_table(space: SearchSpace, profile: Profile, num_classes: int = 10, calib_samples: int = 30,
                seed: int = 0, method: Method = "context", on_progress: Callable[[str], None] | None = None,
                measurer: Any | None = None) -> LatencyTable:
    """Measure every (layer, choice) block, stem and head on ``profile``'s target and calibrate.

    ``calib_samples`` uniform subnets plus the all-min and all-max ones are measured end to end in
    the same interleaved run as the blocks; ``calib_samples=0`` leaves the identity calibration.
    ``measurer`` is for tests (a fake); by default :func:`~edgenas.hardware.measure.create_measurer`.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown latency table method '{method}' (known: {', '.join(METHODS)})")
    if calib_samples < 0:
        raise ConfigError(f"calibration samples must be >= 0, not {calib_samples}")
    say = on_progress or (lambda message: None)
    start = time.perf_counter()
    meter = _measurer(profile, measurer)
    if method == "network":
        return _build_network_table(space, profile, num_classes, calib_samples, seed, meter, say, start)
    in_channels, h, w = profile.input_shape
    hw = (h, w)
    shapes = space.layer_input_shapes(hw)
    head_shape = space.head_input_shape(hw)

    models: list[nn.Module] = []
    inputs: list[tuple[int, int, int]] = []

    def add(model: nn.Module, shape: tuple[int, int, int]) -> int:
        models.append(model)
        inputs.append(shape)
        return len(models) - 1

    stem_i = add(space.build_stem(in_channels), (in_channels, h, w))
    in_context = method == "context"
    head_model = space.build_head(num_classes)
    head_i = add(nn.Sequential(_ContextPrefix(head_shape[0]), head_model) if in_context else head_model, head_shape)
    prefix_of: dict[tuple[int, int, int], int] = {}
    if in_context:
        for shape in [*shapes, head_shape]:
            if shape not in prefix_of:
                prefix_of[shape] = add(_ContextPrefix(shape[0]), shape)
    block_of: dict[tuple[int, int], int] = {}
    for i, (layer, shape) in enumerate(zip(space.layers, shapes)):
        for c, label in enumerate(layer.choices):
            if label == "skip":
                continue
            block = space.build_choice(i, c)
            block_of[(i, c)] = add(nn.Sequential(_ContextPrefix(shape[0]), block) if in_context else block, shape)
    calib = _calibration_archs(space, hw, calib_samples, seed)
    calib_i = [add(space.build_subnet(a, num_classes, in_channels), (in_channels, h, w)) for a in calib]

    m = profile.measure
    say(f"measuring {len(block_of)} blocks, stem, head, {len(prefix_of)} context prefixes and {len(calib)} "
        f"calibration subnets on {profile.name} at {h}x{w} ({len(models)} models, interleaved, "
        f"{m.trials} trials x ({m.warmup} warm-up + {m.repeats} timed runs))")
    stats = meter.measure_many(models, inputs)

    def net(index: int, shape: tuple[int, int, int]) -> EntryStats:
        if not in_context:
            return EntryStats.of(stats[index])
        return EntryStats.difference(stats[index], stats[prefix_of[shape]])

    entries = [[net(block_of[(i, c)], shapes[i]) if (i, c) in block_of else EntryStats()
                for c in range(len(layer.choices))] for i, layer in enumerate(space.layers)]
    context = [EntryStats.of(stats[prefix_of[s]]) if in_context else None for s in shapes]
    table = _new_table(space, profile, num_classes, method, EntryStats.of(stats[stem_i]), net(head_i, head_shape),
                       entries, context, EntryStats.of(stats[prefix_of[head_shape]]) if in_context else None)
    return _finish(table, space, calib, [stats[k] for k in calib_i], say, start)


def _new_table(space: SearchSpace, profile: Profile, num_classes: int, method: str, stem: EntryStats,
               head: EntryStats, entries: list[list[EntryStats]], context: list[EntryStats | None],
               head_context: EntryStats | None = None) -> LatencyTable:
    """A table of measured parts, identified by the space, the profile and where it was measured."""
    return LatencyTable(
        space=_plain(space_to_dict(space)),
        profile=_plain({**profile.to_json(), "latency_hash": profile.latency_hash()}),
        environment=environment_of(profile), input_shape=profile.input_shape, num_classes=num_classes,
        statistic=profile.measure.statistic, method=method, stem=stem, head=head, entries=entries,
        labels=[list(layer.choices) for layer in space.layers], context=context, head_context=head_context,
    )


def _finish(table: LatencyTable, space: SearchSpace, calib: list[Arch], calib_stats: list[Any],
            say: Callable[[str], None], start: float) -> LatencyTable:
    """Fit the calibration on the end-to-end subnets and time a prediction."""
    if calib:
        measured = [st.value(table.statistic) for st in calib_stats]
        raw = [table.predict_raw(a) for a in calib]
        try:
            table.calibration = fit_calibration(raw, measured, [str(a) for a in calib])
        except ValueError as exc:
            raise EdgenasError(f"latency table calibration failed: {exc}") from None
        cal = table.calibration
        say(f"calibration on {cal.n} subnets: measured = {cal.scale:.4f} x raw {cal.offset_ms:+.4f} ms"
            + (f" ({len(cal.outliers)} outliers left out)" if cal.outliers else ""))
    table.query_us = time_predict(table, space)
    table.build_seconds = time.perf_counter() - start
    say(f"built in {table.build_seconds:.1f} s; one prediction takes {table.query_us:.2f} us")
    return table


def _build_network_table(space: SearchSpace, profile: Profile, num_classes: int, calib_samples: int, seed: int,
                         meter: Any, say: Callable[[str], None], start: float) -> LatencyTable:
    """``method="network"`` (see the module docstring): entries are subnet-minus-base differences.

    The base is measured ``BASE_COPIES`` times (separate models, pooled samples): its latency is
    subtracted from every entry, so an error in it would enter a prediction once per changed layer.
    A skip choice gets a (negative) entry too where the base does not skip that layer.
    """
    from edgenas.hardware.measure import LatencyStats

    in_channels, h, w = profile.input_shape
    base = space.extreme_arch(space.macs_table((h, w)))
    variants: dict[tuple[int, int], Arch] = {}
    for i, layer in enumerate(space.layers):
        for c in range(len(layer.choices)):
            if c != base.choices[i]:
                variants[(i, c)] = dataclasses.replace(base, choices=(*base.choices[:i], c, *base.choices[i + 1:]))
    calib = _calibration_archs(space, (h, w), calib_samples, seed)
    archs = [*[base] * BASE_COPIES, *variants.values(), *calib]
    m = profile.measure
    say(f"measuring the base subnet ({BASE_COPIES} copies), {len(variants)} one-layer variants of it and "
        f"{len(calib)} calibration subnets on {profile.name} at {h}x{w} ({len(archs)} models, interleaved, "
        f"{m.trials} trials x ({m.warmup} warm-up + {m.repeats} timed runs))")
    models = [space.build_subnet(a, num_classes, in_channels) for a in archs]
    stats = meter.measure_many(models, [(in_channels, h, w)] * len(models))
    copies = stats[:BASE_COPIES]
    base_stats = LatencyStats.from_samples([t for st in copies for t in st.samples_ms],
                                           [t for st in copies for t in st.trial_medians_ms])
    by_variant = dict(zip(variants, stats[BASE_COPIES:BASE_COPIES + len(variants)]))
    entries = [[EntryStats.difference(by_variant[(i, c)], base_stats) if (i, c) in by_variant else EntryStats()
                for c in range(len(layer.choices))] for i, layer in enumerate(space.layers)]
    table = _new_table(space, profile, num_classes, "network", EntryStats.of(base_stats), EntryStats(), entries,
                       [None] * len(space.layers))
    return _finish(table, space, calib, list(stats[BASE_COPIES + len(variants):]), say, start)


# ----- validation -----------------------------------------------------------------------------------------------------
def _fresh_archs(space: SearchSpace, n: int, seed: int, exclude: set[str]) -> list[Arch]:
    rng = np.random.default_rng([seed, 0x5A1])
    out: list[Arch] = []
    seen = set(exclude)
    attempts = 0
    while len(out) < n and attempts < 100 * max(n, 1):
        attempts += 1
        arch = space.sample(rng)
        key = str(arch)
        if key not in seen:
            seen.add(key)
            out.append(arch)
    if len(out) < n:
        raise EdgenasError(f"space {space.name} has too few architectures for {n} fresh validation subnets")
    return out


def _trial_noise(stats: Sequence[Any]) -> float:
    """Median over models of std(per-trial medians) / median: how much one re-measurement moves a
    figure (0 with a single trial, where it cannot be told). Errors of this size are noise."""
    spreads = [float(np.std(s.trial_medians_ms, ddof=1)) / s.median_ms
               for s in stats if len(s.trial_medians_ms) > 1 and s.median_ms > 0]
    return float(np.median(spreads)) if spreads else 0.0


def validate_table(table: LatencyTable, space: SearchSpace, profile: Profile | None = None, n: int = 50,
                   seed: int = 1, plot_path: str | Path | None = None, measurer: Any | None = None,
                   on_progress: Callable[[str], None] | None = None) -> TableValidation:
    """Measure ``n`` fresh subnets end to end and compare with the table; stored in ``table.validation``.

    Fresh means drawn with a seed stream the calibration never uses and never equal to a calibration
    subnet. ``profile`` defaults to the one stored in the table (it must match the table's latency
    hash either way). The time spent measuring is recorded too: per candidate it is the cost a
    search would pay without the table.
    """
    if n < 2:
        raise ConfigError(f"validation needs at least 2 subnets (Kendall tau), not {n}")
    profile = profile if profile is not None else table.profile_object()
    table.check(space, profile)
    say = on_progress or (lambda message: None)
    archs = _fresh_archs(space, n, seed, set(table.calibration.archs))
    in_channels, h, w = table.input_shape
    say(f"measuring {n} fresh subnets end to end on {profile.name} at {h}x{w}")
    meter = _measurer(profile, measurer)
    start = time.perf_counter()
    models = [space.build_subnet(a, table.num_classes, in_channels) for a in archs]
    stats = meter.measure_many(models, [(in_channels, h, w)] * n)
    seconds = time.perf_counter() - start
    measured = [s.value(table.statistic) for s in stats]
    predicted = [table.predict(a) for a in archs]
    figures = error_figures(predicted, measured)
    result = TableValidation(
        n=figures.n, median_rel_error=figures.median_rel_error, max_rel_error=figures.max_rel_error,
        within_10pct=figures.within_10pct, kendall_tau=figures.kendall_tau,
        mean_signed_rel_error=figures.mean_signed_rel_error, archs=[str(a) for a in archs],
        predicted_ms=predicted, raw_ms=[table.predict_raw(a) for a in archs], measured_ms=measured,
        seconds_measuring=seconds, seconds_per_candidate=seconds / n, seed=seed, noise_rel=_trial_noise(stats),
        measure=dataclasses.asdict(profile.measure),
        date=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )
    if plot_path is not None:
        result.plot = str(plot_validation(result, plot_path, title=table.summary().split(":")[0]))
    table.validation = result
    return result


def plot_validation(validation: TableValidation, path: str | Path, title: str = "latency table") -> Path:
    """Scatter of predicted vs measured latency with the ±10% band, written atomically as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    measured = np.asarray(validation.measured_ms)
    predicted = np.asarray(validation.predicted_ms)
    lo = float(min(measured.min(), predicted.min())) * 0.9
    hi = float(max(measured.max(), predicted.max())) * 1.1
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", lw=1, label="predicted = measured")
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10%")
    ax.scatter(measured, predicted, s=14, color="tab:blue", zorder=3, label=f"{validation.n} fresh subnets")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.text(0.03, 0.97, f"median |err| {validation.median_rel_error:.1%}\nmax |err| {validation.max_rel_error:.1%}\n"
            f"within ±10%: {validation.within_10pct:.0%}\nKendall tau {validation.kendall_tau:.3f}",
            transform=ax.transAxes, va="top", fontsize=9, family="monospace")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# ----- budgets ---------------------------------------------------------------------------------------------------
def loose_budget_warnings(space: SearchSpace, table: LatencyTable | None, budgets: Budgets) -> list[str]:
    """A latency budget above the slowest architecture's predicted latency constrains nothing: say so,
    with the space's range on this machine, since a budget carried over from a slower device (or
    another machine) silently turns a constrained search into an unconstrained one."""
    if table is None or budgets.latency_ms is None:
        return []
    slowest, fastest = table.max_latency_arch(space), table.min_latency_arch(space)
    top = table.predict(slowest)
    if top > budgets.latency_ms:
        return []
    return [f"the latency budget {budgets.latency_ms:g} ms admits every architecture of {space.name}: predicted "
            f"latencies on this target span {table.predict(fastest):.3g}-{top:.3g} ms, so latency constrains "
            "nothing; lower the budget to search under it"]


def check_quantile(q: float) -> float:
    """``q`` if it is a quantile strictly between 0 and 1, else a one-line error."""
    if not (isinstance(q, (int, float)) and 0.0 < q < 1.0):
        raise ConfigError(f"the latency quantile must be between 0 and 1 exclusive (e.g. 0.25), not {q!r}")
    return q


def quantile_budget(table: LatencyTable, space: SearchSpace, q: float, samples: int = 10_000, seed: int = 0
                    ) -> float:
    """The ``q``-quantile of predicted latency over ``samples`` seeded uniform architectures of ``space``.

    A budget given this way ("the fastest quarter of this space on this target") means the same
    thing on every machine, while a budget in milliseconds made for one device can admit every
    architecture, or none, on another; the demo and the benchmarks use it for that reason.
    """
    check_quantile(q)
    rng = np.random.default_rng([seed, 0x0B0D])
    predicted = np.array([table.predict(space.sample(rng)) for _ in range(samples)])
    return float(np.quantile(predicted, q))
