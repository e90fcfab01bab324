"""Architecture search: the evolutionary loop, budgets, supernet scoring, Supernet Shifting, transfer.

The loop (:class:`EvolutionarySearch`) is generic over the space, the scorer and the constraints;
:func:`run_search` is the supernet pipeline behind ``edgenas search``.
"""

from __future__ import annotations

from edgenas.search.constraints import (
    AdditiveCost,
    Budget,
    budget_sampler,
    check_feasible,
    flops_cost,
    latency_cost,
    make_budget_constraints,
    params_cost,
)
from edgenas.search.evolution import (
    Constraint,
    EvolutionarySearch,
    EvolutionConfig,
    EvolvableSpace,
    Scorer,
    SearchError,
    SearchHook,
)
from edgenas.search.pipeline import run_search
from edgenas.search.results import (
    Candidate,
    GenerationRecord,
    SearchResult,
    pareto_mask,
    plot_candidates,
    result_to_json,
    write_candidates_csv,
    write_search_json,
)
from edgenas.search.scoring import SCORERS, CachedScorer, ScoreConfig, SupernetScorer
from edgenas.search.shifting import ShiftConfig, SupernetShifting
from edgenas.search.strategies import STRATEGIES
from edgenas.search.transfer import TransferResult, adapt_stem_input, transfer_supernet

__all__ = [
    "SCORERS",
    "STRATEGIES",
    "AdditiveCost",
    "Budget",
    "CachedScorer",
    "Candidate",
    "Constraint",
    "EvolutionConfig",
    "EvolutionarySearch",
    "EvolvableSpace",
    "GenerationRecord",
    "ScoreConfig",
    "Scorer",
    "SearchError",
    "SearchHook",
    "SearchResult",
    "ShiftConfig",
    "SupernetScorer",
    "SupernetShifting",
    "TransferResult",
    "adapt_stem_input",
    "budget_sampler",
    "check_feasible",
    "flops_cost",
    "latency_cost",
    "make_budget_constraints",
    "params_cost",
    "pareto_mask",
    "plot_candidates",
    "result_to_json",
    "run_search",
    "transfer_supernet",
    "write_candidates_csv",
    "write_search_json",
]
