"""Search strategies by name: what ``--strategy`` chooses and :func:`run_search` builds.

A strategy factory takes ``(space, scorer, constraints, config, hooks, sampler)`` and returns an
object with ``run(checkpoint_fn) -> SearchResult``, ``state_dict()``, ``load_state_dict(state)`` and
a ``generation`` property (the next generation to run): the contract of
:class:`~edgenas.search.evolution.EvolutionarySearch`, which is the first entry. The second,
``random``, is the same loop without mutation or crossover, i.e. random search with the same number
of evaluations, the same constraints and the same re-scoring: the baseline a strategy must beat.
The third, ``nsga2``, is NSGA-II (pymoo) on score against predicted cost with the same evaluation
budget, which also reports the front and its hypervolume (:mod:`edgenas.search.nsga2`).
Adding a strategy is one module with its factory and one ``STRATEGIES.register`` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from edgenas.errors import ConfigError
from edgenas.registry import Registry
from edgenas.search.evolution import EvolutionarySearch, EvolutionConfig

__all__ = ["STRATEGIES", "StrategyFactory", "nsga2_search", "random_search"]

#: ``factory(space, scorer, constraints, config, hooks, sampler) -> strategy``
StrategyFactory = Callable[..., Any]

STRATEGIES: Registry[StrategyFactory] = Registry("search strategy", ConfigError)


def random_search(space: Any, scorer: Any, constraints: Any, config: EvolutionConfig | None = None,
                  hooks: Any = (), sampler: Any = None) -> EvolutionarySearch:
    """Uniform (or budget-steered) random proposals, ``population`` per generation, top-k kept."""
    config = dataclasses.replace(config or EvolutionConfig(), mutations=0, crossovers=0)
    return EvolutionarySearch(space, scorer, constraints, config, hooks, sampler=sampler)


def nsga2_search(space: Any, scorer: Any, constraints: Any, config: EvolutionConfig | None = None,
                 hooks: Any = (), sampler: Any = None) -> Any:
    """NSGA-II over (score, predicted cost); pymoo is imported on first use, not with this module."""
    from edgenas.search.nsga2 import NSGA2Search

    return NSGA2Search(space, scorer, constraints, config, hooks, sampler)


STRATEGIES.register("evolution", EvolutionarySearch)
STRATEGIES.register("random", random_search)
STRATEGIES.register("nsga2", nsga2_search)
