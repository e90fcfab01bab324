"""How far a table can be trusted: fresh subnets measured end to end against its predictions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.errors import ConfigError, EdgenasError
from edgenas.hardware.calibration import error_figures, kendall_tau
from edgenas.hardware.profile import Profile
from edgenas.hardware.table.build import measurer_for
from edgenas.hardware.table.core import LatencyTable, TableValidation
from edgenas.hardware.table.reference import ReferencedTiming, measure_referenced
from edgenas.io import atomic_write_bytes
from edgenas.space import Arch, SearchSpace


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


def retest_tau(stats: Sequence[Any]) -> float | None:
    """Kendall tau between two halves of the same measurement (per model, the median of its even-numbered
    trials against that of its odd-numbered ones): how well one measurement of these subnets ranks them
    against another: the scale a table's (and the MAC count's) Kendall tau is read on. Each half holds
    fewer trials than the whole measurement the table is compared with, so a near-perfect predictor can
    score somewhat above it; a table far below it ranks worse than re-measuring would. ``None`` with
    fewer than 2 trials per model."""
    if any(len(s.trial_medians_ms) < 2 for s in stats) or len(stats) < 2:
        return None
    first = [float(np.median(s.trial_medians_ms[0::2])) for s in stats]
    second = [float(np.median(s.trial_medians_ms[1::2])) for s in stats]
    return float(kendall_tau(first, second))


def measure_in_table_units(table: LatencyTable, space: SearchSpace, meter: Any, models: Sequence[Any],
                           shapes: Sequence[tuple[int, int, int]]) -> ReferencedTiming | None:
    """Time ``models`` beside the table's speed reference, in the table's units (None for a table
    without a reference: the caller measures plainly). Validation and a search's end-to-end checks
    use it, so a host that runs slower than at build time does not read as a wrong table."""
    if table.reference is None:
        return None
    ref_model = space.build_subnet(space.parse(table.reference.arch), table.num_classes, table.input_shape[0])
    return measure_referenced(meter, models, shapes, ref_model, table.input_shape, unit_ms=table.reference.median_ms,
                              every=table.reference.every)


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
    meter = measurer_for(profile, measurer)
    start = time.perf_counter()
    models = [space.build_subnet(a, table.num_classes, in_channels) for a in archs]
    timing = measure_in_table_units(table, space, meter, models, [(in_channels, h, w)] * n)
    seconds = time.perf_counter() - start
    stats = timing.stats if timing is not None else meter.measure_many(models, [(in_channels, h, w)] * n)
    measured = [s.value(table.statistic) for s in stats]
    predicted = [table.predict(a) for a in archs]
    figures = error_figures(predicted, measured)
    raw = error_figures(predicted, [s.value(table.statistic) for s in timing.raw]) if timing is not None else None
    result = TableValidation(
        n=figures.n, median_rel_error=figures.median_rel_error, max_rel_error=figures.max_rel_error,
        within_10pct=figures.within_10pct, kendall_tau=figures.kendall_tau,
        mean_signed_rel_error=figures.mean_signed_rel_error, archs=[str(a) for a in archs],
        predicted_ms=predicted, raw_ms=[table.predict_raw(a) for a in archs], measured_ms=measured,
        seconds_measuring=seconds, seconds_per_candidate=seconds / n, seed=seed, noise_rel=_trial_noise(stats),
        measure=dataclasses.asdict(profile.measure),
        date=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        speed=timing.speed if timing is not None else None,
        raw_measured_ms=[s.value(table.statistic) for s in timing.raw] if timing is not None else None,
        raw_median_rel_error=raw.median_rel_error if raw is not None else None,
        raw_kendall_tau=raw.kendall_tau if raw is not None else None,
        retest_kendall_tau=retest_tau(stats),
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
