"""What a search produces: candidate records, the result, its Pareto front and its files.

Kept apart from the loop so that writers, plots and the CLI depend only on plain records. Every
record round-trips through JSON (the loop's ``state_dict`` is made of them), and every file is
written atomically, so an interrupted run never leaves half a ``search.json``.

Scores from different generations of a shifting search come from different weights. The Pareto
front therefore uses each architecture's *latest* evaluation (the final re-scoring wins), and the
CSV marks which rows those are (``is_latest``) next to ``is_pareto``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from edgenas.space.arch import Arch

__all__ = [
    "COST_KEYS",
    "Candidate",
    "GenerationRecord",
    "SearchResult",
    "pareto_mask",
    "plot_candidates",
    "result_to_json",
    "write_candidates_csv",
    "write_pareto_csv",
    "write_search_json",
]

#: Cost metrics a Pareto front can be drawn against, in order of preference.
COST_KEYS = ("latency_ms", "mflops", "params_m")


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class Candidate:
    """One evaluation of one architecture.

    ``origin`` says how it was made (``random``, ``mutation``, ``crossover``) or ``rescore`` for the
    final re-scoring of the top-k; ``metrics`` holds the constraint figures (``latency_ms``,
    ``mflops``, ``params_m``) and whatever the scorer reports (``accuracy``, ``loss``, ``error``).
    Higher ``score`` is better.
    """

    arch: Arch
    score: float
    generation: int
    index: int
    origin: str
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def sort_score(self) -> float:
        """The score with NaN ranked last, so a failed evaluation never sorts to the top."""
        return -math.inf if math.isnan(self.score) else self.score

    @property
    def rank_key(self) -> tuple[float, float]:
        """Sort key of "better first": higher score, then (at equal score) the cheaper candidate by
        the first of :data:`COST_KEYS` it reports, so a tie never prefers a dearer architecture."""
        cost = next((self.metrics[k] for k in COST_KEYS if k in self.metrics), 0.0)
        return -self.sort_score, cost if math.isfinite(cost) else math.inf

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch.to_str(),
            "arch_id": self.arch.arch_id,
            "score": _finite_or_none(self.score),
            "generation": self.generation,
            "index": self.index,
            "origin": self.origin,
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            Arch.from_str(str(data["arch"])), _float(data["score"]), int(data["generation"]), int(data["index"]),
            str(data["origin"]), {str(k): _float(v) for k, v in dict(data.get("metrics", {})).items()},
        )


@dataclass(frozen=True)
class GenerationRecord:
    """One generation: the evaluated population, the top-k after it, and what was turned away.

    ``rejected`` counts distinct candidates refused per constraint name (one candidate may break
    several), ``duplicates`` the proposals already seen in this generation or in the top-k, and
    ``tries`` all proposals. ``seconds`` is wall time, the one figure that is not reproducible.
    """

    generation: int
    population: tuple[Candidate, ...]
    topk: tuple[Candidate, ...]
    rejected: Mapping[str, int]
    duplicates: int
    tries: int
    seconds: float

    @property
    def best(self) -> Candidate | None:
        return self.topk[0] if self.topk else None

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "evaluated": len(self.population),
            "best_score": _finite_or_none(self.topk[0].score) if self.topk else None,
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "tries": self.tries,
            "seconds": self.seconds,
            "population": [c.to_json() for c in self.population],
            "topk": [c.to_json() for c in self.topk],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GenerationRecord:
        return cls(
            int(data["generation"]), tuple(Candidate.from_json(c) for c in data["population"]),
            tuple(Candidate.from_json(c) for c in data["topk"]),
            {str(k): int(v) for k, v in dict(data["rejected"]).items()}, int(data["duplicates"]),
            int(data["tries"]), float(data["seconds"]),
        )


def pareto_mask(costs: Sequence[float], scores: Sequence[float]) -> list[bool]:
    """``True`` where no other point has cost <= and score >= with one of them strict.

    Lower cost and higher score are better; NaN points are never on the front. Equal points are
    both kept (neither dominates the other). O(n log n): sort by cost, sweep the best score.
    """
    n = len(costs)
    if len(scores) != n:
        raise ValueError("costs and scores must have the same length")
    valid = [i for i in range(n) if math.isfinite(costs[i]) and not math.isnan(scores[i])]
    order = sorted(valid, key=lambda i: (costs[i], -scores[i]))
    mask = [False] * n
    best = -math.inf
    pos = 0
    while pos < len(order):
        end = pos
        while end < len(order) and costs[order[end]] == costs[order[pos]]:
            end += 1
        group = order[pos:end]
        top = max(scores[i] for i in group)
        if top > best:
            for i in group:
                mask[i] = scores[i] == top
            best = top
        pos = end
    return mask


@dataclass
class SearchResult:
    """Everything one search found.

    ``candidates`` lists every evaluation in order (the final re-scoring last); ``topk`` is the
    final top-k, re-scored with the final weights when re-scoring is on, so its scores are
    comparable with each other; ``best`` is its first entry. ``front_summary`` is what a
    multi-objective strategy reports about its front (NSGA-II: the objectives, the front, the
    reference point and the hypervolume); ``None`` for the others. It is set by the strategy, apart
    from ``info``, which the caller fills.
    """

    config: dict[str, Any]
    history: list[GenerationRecord]
    candidates: list[Candidate]
    topk: list[Candidate]
    best: Candidate
    info: dict[str, Any] = field(default_factory=dict)
    front_summary: dict[str, Any] | None = None

    def latest(self) -> list[Candidate]:
        """Each architecture's most recent evaluation, in order of first appearance."""
        last: dict[Arch, Candidate] = {}
        for c in self.candidates:
            last[c.arch] = c
        return list(last.values())

    def cost_key(self) -> str | None:
        """The first of :data:`COST_KEYS` that every evaluated candidate reports."""
        latest = self.latest()
        for key in COST_KEYS:
            if latest and all(key in c.metrics for c in latest):
                return key
        return None

    def pareto_front(self, cost_key: str | None = None) -> list[Candidate]:
        """Latest evaluations not dominated in (cost, score), sorted by cost; empty without a cost."""
        key = cost_key or self.cost_key()
        if key is None:
            return []
        latest = self.latest()
        mask = pareto_mask([_float(c.metrics.get(key)) for c in latest], [c.score for c in latest])
        return sorted((c for c, m in zip(latest, mask) if m), key=lambda c: (c.metrics[key], -c.score))


def result_to_json(result: SearchResult) -> dict[str, Any]:
    """The ``search.json`` document (also what ``--json`` prints)."""
    key = result.cost_key()
    return {
        "format": "edgenas-search/1",
        "seed": result.config.get("evolution", {}).get("seed"),
        "config": result.config,
        **result.info,
        "best": result.best.to_json(),
        "topk": [c.to_json() for c in result.topk],
        "pareto": {"cost": key, "score": "score", "front": [c.to_json() for c in result.pareto_front(key)]},
        **({"front_summary": _json_safe(result.front_summary)} if result.front_summary is not None else {}),
        "evaluated": len(result.candidates),
        "generations": [g.to_json() for g in result.history],
    }


def _json_safe(value: Any) -> Any:
    """Plain JSON: non-finite floats (a NaN score) as ``null``, like the candidates' own records."""
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_search_json(result: SearchResult, path: str | Path) -> Path:
    return atomic_write_json(path, result_to_json(result))


def write_candidates_csv(result: SearchResult, path: str | Path) -> Path:
    """One row per evaluation; ``is_latest`` marks each architecture's last one, ``is_pareto`` the
    latest evaluations on the front of score against :meth:`SearchResult.cost_key`."""
    latest_ids = {id(c) for c in result.latest()}
    front_ids = {id(c) for c in result.pareto_front()}
    metric_keys = sorted({k for c in result.candidates for k in c.metrics})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["generation", "index", "origin", "arch", "arch_id", "score", *metric_keys,
                     "is_latest", "is_pareto"])
    for c in result.candidates:
        values = [c.metrics.get(k) for k in metric_keys]
        writer.writerow([c.generation, c.index, c.origin, c.arch.to_str(), c.arch.arch_id, _csv_num(c.score),
                         *(_csv_num(v) for v in values), int(id(c) in latest_ids), int(id(c) in front_ids)])
    return atomic_write_text(path, buf.getvalue())


def write_pareto_csv(result: SearchResult, path: str | Path) -> Path:
    """A multi-objective strategy's front (:attr:`SearchResult.front_summary`), one row per architecture,
    cheapest first as the strategy recorded it: arch, arch_id, score, cost_key, cost."""
    if not result.front_summary:
        raise ValueError("this search recorded no front (only multi-objective strategies such as nsga2 do)")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["arch", "arch_id", "score", "cost_key", "cost"])
    key = result.front_summary["cost"]
    for f in result.front_summary["front"]:
        writer.writerow([f["arch"], f["arch_id"], _csv_num(f["score"]), key, _csv_num(f["cost"])])
    return atomic_write_text(path, buf.getvalue())


def _csv_num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def plot_candidates(result: SearchResult, path: str | Path, *, budget: float | None = None,
                    cost_key: str | None = None, title: str = "search") -> Path:
    """Cost (latency when known) against accuracy of every evaluated architecture, the Pareto
    front highlighted, the budget as a vertical line and the best architecture starred."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    key = cost_key or result.cost_key()
    if key is None:
        raise ValueError("no cost metric (latency_ms, mflops, params_m) to plot against")
    latest = result.latest()
    use_acc = all("accuracy" in c.metrics for c in latest)
    label = "accuracy (val)" if use_acc else "score"

    def y(c: Candidate) -> float:
        return _float(c.metrics["accuracy"]) if use_acc else c.score

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.add_subplot()
    ax.scatter([c.metrics[key] for c in latest], [y(c) for c in latest], s=14, c="0.6", label="evaluated")
    front = result.pareto_front(key)
    if front:
        ax.plot([c.metrics[key] for c in front], [y(c) for c in front], "o-", c="tab:red", ms=5, lw=1.2,
                label="Pareto front")
    ax.scatter([result.best.metrics.get(key, math.nan)], [y(result.best)], marker="*", s=160, c="tab:blue",
               zorder=5, label=f"best {result.best.arch.arch_id}")
    if budget is not None:
        ax.axvline(budget, ls="--", c="k", lw=1, label=f"budget {budget:g}")
    unit = {"latency_ms": "predicted latency (ms)", "mflops": "MFLOPs", "params_m": "parameters (M)"}
    ax.set_xlabel(unit.get(key, key))
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
