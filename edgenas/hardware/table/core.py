"""The latency table itself: its file format, entries, calibration and predictions (see the package docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgenas.errors import ConfigError, EdgenasError, TableError
from edgenas.hardware.calibration import Calibration
from edgenas.hardware.profile import Profile
from edgenas.io import atomic_write_json, read_json
from edgenas.space import Arch, SearchSpace

FORMAT = "edgenas-latency-table/1"
Method = Literal["context", "isolated", "network"]
METHODS: tuple[str, ...] = ("context", "isolated", "network")
BASE_COPIES = 3  # method "network": separate measurements of the base subnet, pooled
REFERENCE_EVERY = 6  # models between two copies of the speed reference (see reference.py)

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
                  "re-measuring a subnet moves it), measure (the protocol used), plot, date; with a reference: "
                  "measured_ms in reference units, raw_measured_ms as timed, speed (reference median then / at build) "
                  "and raw_median_rel_error / raw_kendall_tau (the same figures without the reference). "
                  "null until `edgenas profile validate` runs.",
    "reference": "The speed reference every figure is expressed in: arch (a subnet timed interleaved, one copy "
                 "per 'every' models), median_ms (its median at build time) and noise_rel (its trial-to-trial "
                 "spread then). Each measured model's per-trial timings were divided by the bracketing reference "
                 "copies' and multiplied by median_ms, so all milliseconds here are 'at the build's reference "
                 "speed'; validation and search measurements are converted the same way. null in tables built "
                 "before it existed or with reference off (plain milliseconds).",
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


@dataclass(frozen=True)
class SpeedReference:
    """The subnet a table's milliseconds are expressed in (:mod:`edgenas.hardware.table.reference`):
    its architecture, its median at build time (the unit) and how noisy it was then."""

    arch: str
    median_ms: float
    every: int = REFERENCE_EVERY
    noise_rel: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "median_ms": self.median_ms, "every": self.every, "noise_rel": self.noise_rel}

    @classmethod
    def from_json(cls, data: Any) -> SpeedReference:
        if not isinstance(data, dict):
            raise TypeError(f"expected a reference mapping, got {type(data).__name__}")
        median = float(data["median_ms"])
        if not median > 0:
            raise ValueError(f"reference median_ms must be > 0, not {median}")
        return cls(arch=str(data["arch"]), median_ms=median, every=int(data.get("every", REFERENCE_EVERY)),
                   noise_rel=float(data.get("noise_rel", 0.0)))


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
    speed: float | None = None
    raw_measured_ms: list[float] | None = None
    raw_median_rel_error: float | None = None
    raw_kendall_tau: float | None = None
    retest_kendall_tau: float | None = None

    def summary(self) -> str:
        """One line a search prints next to every latency figure it shows."""
        speed = f" (host at {self.speed:.2f}x the build's reference time)" if self.speed is not None else ""
        return (f"validated on {self.n} fresh subnets: median error {self.median_rel_error:.1%}, "
                f"max {self.max_rel_error:.1%}, {self.within_10pct:.0%} within ±10%, "
                f"Kendall tau {self.kendall_tau:.3f}{speed}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableValidation:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeyError(f"unknown validation key {unknown[0]!r}")
        return cls(**data)


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
    reference: SpeedReference | None = None
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
            "reference": self.reference.to_json() if self.reference is not None else None,
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
                reference=SpeedReference.from_json(data["reference"]) if data.get("reference") else None,
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
