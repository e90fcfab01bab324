"""Latencies in the units of a reference subnet timed beside them: what keeps a table true on a
host whose speed changes.

A shared laptop or CI runner does not run at one speed. Another job starts, the clock governor
steps, the machine warms up: measured on this project's 2-core hosts, a table's predictions went
from 2.6% median error to 23-36% within 12 minutes on an idle machine, every subnet slower by about
the same factor. A table in absolute milliseconds cannot survive that. So every measurement made for
a table -- its blocks at build time, the subnets that validate it, the finalists a search measures --
is made with copies of one fixed *reference subnet* interleaved among the models, and each model's
per-trial timings are divided by the reference's timing next to it in the same trial, then
multiplied by the reference's median at build time. The table's milliseconds are therefore
"milliseconds when the reference runs as fast as it did at build time": a slowdown of the whole
machine, whether it lasts a trial or an hour, divides out, and what remains is each model's cost
relative to a fixed workload of the same ops.

The reference is the space's all-minimum subnet (by MACs): the same op families as every candidate,
and the cheapest to time, since it is timed once per ``every`` models. ``speed`` (the reference's
median now over its median at build time) says how much slower or faster the host ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from edgenas.hardware.measure import LatencyStats
from edgenas.hardware.table.core import REFERENCE_EVERY

__all__ = ["ReferencedTiming", "measure_referenced"]


@dataclass(frozen=True)
class ReferencedTiming:
    """What one referenced measurement gives: every model in reference units, and the reference."""

    stats: list[LatencyStats]  # per model, samples scaled to the unit
    raw: list[LatencyStats]  # per model, as timed
    reference_ms: float  # the reference's median in this run
    unit_ms: float  # the reference median the stats are expressed in
    noise_rel: float  # trial-to-trial relative spread of the reference copies (median over copies)

    @property
    def speed(self) -> float:
        """Reference now over the unit: 1.2 means the host ran 20% slower than when the unit was set."""
        return self.reference_ms / self.unit_ms


def _trials(stats: LatencyStats) -> list[list[float]]:
    """The samples of each trial (``measure_many`` appends one trial's repeats at a time)."""
    t = len(stats.trial_medians_ms)
    if t == 0 or len(stats.samples_ms) % t:
        return [list(stats.samples_ms)]
    per = len(stats.samples_ms) // t
    return [list(stats.samples_ms[k * per:(k + 1) * per]) for k in range(t)]


def _trial_medians(stats: LatencyStats) -> list[float]:
    return list(stats.trial_medians_ms) or [stats.median_ms]


def _between(before: float, after: float, w: float) -> float:
    """Log-linear interpolation: the reference's time at fraction ``w`` of the way between two copies."""
    return float(before ** (1 - w) * after ** w)


def measure_referenced(meter: Any, models: Sequence[nn.Module], shapes: Sequence[tuple[int, int, int]],
                       reference: nn.Module, reference_shape: tuple[int, int, int],
                       unit_ms: float | None = None, every: int = REFERENCE_EVERY) -> ReferencedTiming:
    """Time ``models`` with a copy of ``reference`` before every ``every`` of them and after the last,
    all interleaved in one ``measure_many`` call, and express each model's samples in reference units.

    Model ``j`` in trial ``t`` is scaled by ``unit / r``, ``r`` the trial medians of the two
    reference copies that bracket it in that trial, interpolated log-linearly by position (exact for
    a steady drift; the nearer copy weighs more). ``unit_ms`` is the table's
    reference median (validation, search); at build time it is left ``None`` and becomes this run's
    own reference median.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, not {every}")
    order: list[nn.Module] = []
    order_shapes: list[tuple[int, int, int]] = []
    slots: list[int] = []  # position of model j in `order`
    copies: list[int] = []  # positions of the reference copies
    for j, (model, shape) in enumerate(zip(models, shapes)):
        if j % every == 0:
            copies.append(len(order))
            order.append(reference)
            order_shapes.append(reference_shape)
        slots.append(len(order))
        order.append(model)
        order_shapes.append(shape)
    copies.append(len(order))
    order.append(reference)
    order_shapes.append(reference_shape)

    timed = meter.measure_many(order, order_shapes)
    ref_trials = [_trial_medians(timed[c]) for c in copies]
    trials = min(len(r) for r in ref_trials)
    reference_ms = float(np.median([m for r in ref_trials for m in r]))
    unit = reference_ms if unit_ms is None else float(unit_ms)
    noise = float(np.median([np.std(r, ddof=1) / np.median(r) for r in ref_trials if len(r) > 1] or [0.0]))

    out: list[LatencyStats] = []
    for j, slot in enumerate(slots):
        k = j // every
        before, after = ref_trials[k], ref_trials[k + 1]
        w = (slot - copies[k]) / (copies[k + 1] - copies[k])  # nearer copy weighs more
        per_trial = _trials(timed[slot])
        if len(per_trial) != trials:  # a measurer without trials: one factor for the whole run
            factors = [unit / _between(float(np.median(before)), float(np.median(after)), w)] * len(per_trial)
        else:
            factors = [unit / _between(before[t], after[t], w) for t in range(trials)]
        samples = [s * f for chunk, f in zip(per_trial, factors) for s in chunk]
        medians = [float(np.median(chunk)) * f for chunk, f in zip(per_trial, factors)] if len(per_trial) > 1 else []
        out.append(LatencyStats.from_samples(samples, medians))
    return ReferencedTiming(stats=out, raw=[timed[s] for s in slots], reference_ms=reference_ms, unit_ms=unit,
                            noise_rel=noise)
