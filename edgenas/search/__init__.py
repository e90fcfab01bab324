"""Architecture search: the evolutionary loop, budgets, supernet scoring, Supernet Shifting, transfer.

The loop (:class:`EvolutionarySearch`) is generic over the space, the scorer and the constraints;
:func:`run_search` is the supernet pipeline behind ``edgenas search``. The loop, budgets and
results need only numpy; the supernet parts (and torch) load when first used, so a search over a
custom space with a cheap scorer does not pay torch's import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from edgenas.search.strategies import STRATEGIES
from edgenas.search.warm_start import WarmStart, WarmStartConfig

if TYPE_CHECKING:
    from edgenas.search.scoring import SCORERS, CachedScorer, ScoreConfig, SupernetScorer
    from edgenas.search.shifting import ShiftConfig, SupernetShifting
    from edgenas.search.supernet_search import run_search
    from edgenas.search.transfer import TransferResult, adapt_stem_input, transfer_supernet

_LAZY = {"run_search": "supernet_search", "SCORERS": "scoring", "CachedScorer": "scoring", "ScoreConfig": "scoring",
         "SupernetScorer": "scoring", "ShiftConfig": "shifting", "SupernetShifting": "shifting",
         "TransferResult": "transfer", "adapt_stem_input": "transfer", "transfer_supernet": "transfer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"edgenas.search.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgenas.search' has no attribute {name!r}")


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
    "WarmStart",
    "WarmStartConfig",
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
