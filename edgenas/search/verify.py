"""Measure the search's finalists end to end, so the budget is checked against real latency.

The search ranks candidates with the latency table's *prediction*, which is within a few percent of
measured latency but not exact. Before an architecture is recommended for deployment, the top-k
are built as standalone networks and timed on the profile's target, interleaved (one protocol, see
:mod:`edgenas.hardware.measure`), and the recommendation is the best-scoring finalist whose measured
latency (the profile's statistic) is within the budget. Weights do not change latency, so the
networks are built with their initial weights: no training data is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgenas.hardware.measure import LatencyStats, create_measurer
from edgenas.hardware.profile import Profile
from edgenas.search.results import Candidate
from edgenas.space import SearchSpace

__all__ = ["MeasuredFinalist", "MeasuredFinalists", "deployable_arch", "measure_finalists"]


@dataclass(frozen=True)
class MeasuredFinalist:
    arch: str
    score: float
    predicted_ms: float | None
    measured: LatencyStats
    statistic: str
    within_budget: bool | None
    raw_ms: float | None = None  # as timed, when ``measured`` is in the table's reference units

    @property
    def measured_ms(self) -> float:
        return self.measured.value(self.statistic)

    def to_json(self) -> dict[str, Any]:
        stats = {k: v for k, v in self.measured.to_json().items() if k != "samples_ms"}
        return {"arch": self.arch, "score": self.score, "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms, "raw_measured_ms": self.raw_ms, "within_budget": self.within_budget,
                "stats": stats}


@dataclass(frozen=True)
class MeasuredFinalists:
    profile: str
    statistic: str
    budget_ms: float | None
    finalists: list[MeasuredFinalist]
    speed: float | None = None  # the host's reference time over the table's build-time one

    @property
    def recommended(self) -> MeasuredFinalist | None:
        """The best-scoring finalist that fits the budget when measured (the best one without a budget)."""
        fits = [f for f in self.finalists if f.within_budget is not False]
        return fits[0] if fits else None

    def to_json(self) -> dict[str, Any]:
        rec = self.recommended
        return {"profile": self.profile, "statistic": self.statistic, "budget_ms": self.budget_ms, "speed": self.speed,
                "recommended": rec.arch if rec is not None else None,
                "finalists": [f.to_json() for f in self.finalists]}


def measure_finalists(space: SearchSpace, finalists: Sequence[Candidate], profile: Profile, *, num_classes: int,
                      in_channels: int, budget_ms: float | None, table: Any | None = None) -> MeasuredFinalists:
    """Time each finalist (in the given order, best first) on ``profile``, interleaved.

    With the latency ``table`` the budget was set on, and a speed reference in it, the finalists are
    timed beside that reference and compared with the budget in the table's units: a host running
    slower than when the table was built does not push every finalist over the budget.
    """
    measurer = create_measurer(profile)
    models = [space.build_subnet(c.arch, num_classes, in_channels) for c in finalists]
    shape = tuple(profile.input_shape)
    timing = None
    if table is not None and getattr(table, "reference", None) is not None:
        from edgenas.hardware.table.validate import measure_in_table_units

        timing = measure_in_table_units(table, space, measurer, models, [shape] * len(models))  # type: ignore[list-item]
    stats = timing.stats if timing is not None else measurer.measure_many(models, [None] * len(models))
    statistic = profile.measure.statistic
    out = []
    for k, (cand, st) in enumerate(zip(finalists, stats, strict=True)):
        value = st.value(statistic)
        predicted = cand.metrics.get("latency_ms")
        raw = timing.raw[k].value(statistic) if timing is not None else None
        out.append(MeasuredFinalist(cand.arch.to_str(), cand.score, None if predicted is None else float(predicted),
                                    st, statistic, None if budget_ms is None else value <= budget_ms, raw))
    return MeasuredFinalists(profile.name, statistic, budget_ms, out, timing.speed if timing is not None else None)


def deployable_arch(search_doc: Mapping[str, Any]) -> str:
    """The architecture a ``search.json`` recommends: the best finalist within the budget as measured
    end to end, else (no measurement, or no finalist fits) the best-scoring one."""
    return (search_doc.get("measured") or {}).get("recommended") or search_doc["best"]["arch"]
