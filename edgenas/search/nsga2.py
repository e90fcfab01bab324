"""NSGA-II (pymoo) as a search strategy: score against predicted cost, the front and its hypervolume.

Two objectives, both minimised by pymoo: ``-score`` (the scorer's value, higher is better) and the
cost a constraint reports for every candidate: predicted latency (``latency_ms``) when a latency
constraint is given, else FLOPs (``mflops``), else parameters (``params_m``), or any metric named by
``cost_key``. A :class:`~edgenas.search.constraints.Budget` without a limit only reports its metric,
so a cost objective needs no budget.

pymoo is driven in ask-and-tell mode, so this loop, not pymoo's ``minimize``, proposes, checks the
constraints, scores, calls the hooks and checkpoints, exactly as
:class:`~edgenas.search.evolution.EvolutionarySearch` does (it is that class with other proposals,
state and final step); Supernet Shifting therefore trains on the candidates NSGA-II proposes.

- **Encoding**: one integer per layer, the choice index (bounds ``0 .. len(choices) - 1`` when the
  space reports ``num_choices``). Variation uses the space's own operators: each child comes from two
  parents chosen by NSGA-II's binary tournament (constraint, then dominance, then crowding), the
  space's ``crossover`` with probability :data:`CROSSOVER_PROB` (else a copy of one parent), then the
  space's ``mutate`` with ``config.mutation_prob`` per layer. Choice indices are categories (a kernel
  and an expansion, or ``skip``), so SBX/PM arithmetic on them would invent an order they lack; the
  space's operators also keep whatever validity rules a custom space has.
- **Budget**: the same as evolution's, ``population`` legal evaluations per generation for
  ``generations`` generations. ``mutations`` and ``crossovers`` are ignored (every child is a
  crossover and a mutation); ``population``, ``generations``, ``topk``, ``mutation_prob``, ``seed``,
  ``max_tries`` and ``rescore`` mean what they mean for evolution.
- **Generation 0** is drawn by the ``sampler`` (a budget-steered sampler when a budget is tight) as in
  evolution; later generations are pymoo's offspring of the surviving population (origin
  ``offspring``), topped up by the sampler (origin ``random``) if too few legal new ones come.
- **Constraints**: rejection and resampling, not a constraint violation handed to pymoo. An
  over-budget proposal is refused before any scorer or hook sees it (the loop's rule), and pymoo is
  told only scored candidates, so it never needs objective values for unscored ones and its ranking
  and crowding compare like with like. The budget usually bounds the very metric the cost objective
  minimises, so constraint-domination would add little, and refusing keeps every strategy at the
  same number of legal evaluations.
- **Duplicates**: pymoo drops offspring equal to a survivor or to each other; the loop also skips a
  proposal already seen in this generation, equal to a survivor or to a current top-k member (as
  evolution does), so ``duplicates`` counts only what reached the loop.
- **Output**: best and top-k by score, as evolution gives them (the top-k and the front are re-scored
  with the final weights when ``rescore`` is on, and the final top-k is the best of those), plus
  :attr:`SearchResult.front_summary`: the objectives, the non-dominated latest evaluations (the
  same points as :meth:`SearchResult.pareto_front` of the cost) and their hypervolume (pymoo's HV) in
  raw units of (``-score``, cost) against the reference point score 0 and cost = the cost budget's
  limit, else the space's largest cost (an additive cost model), else the largest cost evaluated.
  Points with a score <= 0 or a cost at or beyond the reference add nothing.

Determinism and resume: the loop's proposals come from ``numpy`` Generators seeded by
``config.seed`` (one for the sampler, one handed to pymoo as its ``random_state``, so pymoo's own
seeding is not relied on). pymoo is told a generation's candidates when the next one is proposed, so
the state after generation ``g`` holds pymoo's surviving population of the generation before (arch,
objectives, and the rank and crowding its tournaments read if the next tell adds nothing), both
Generators' states and the loop's history (from which that next tell comes), all plain JSON-able
data (no pickled pymoo objects), and a search resumed from it proposes exactly what the
uninterrupted one would have. Failed (NaN) evaluations are never told to pymoo.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.indicators.hv import HV
from pymoo.version import __version__ as PYMOO_VERSION

from edgenas.errors import CheckpointError, SearchError
from edgenas.search.constraints import AdditiveCost
from edgenas.search.evolution import STATE_FORMAT as EVOLUTION_STATE_FORMAT
from edgenas.search.evolution import (
    Constraint,
    EvolutionarySearch,
    EvolutionConfig,
    EvolvableSpace,
    Scorer,
    SearchHook,
    _constraint_key,
)
from edgenas.search.results import COST_KEYS, Candidate, SearchResult
from edgenas.space.arch import Arch

__all__ = ["CROSSOVER_PROB", "STATE_FORMAT", "NSGA2Search", "front_hypervolume"]

STATE_FORMAT = "edgenas-nsga2/1"
#: Probability that a child is a crossover of its two parents (else a copy of one), Deb's NSGA-II value.
CROSSOVER_PROB = 0.9
_PYMOO_STREAM = 1  # pymoo's Generator is seeded with (seed, 1), the sampler's with seed: independent streams

Proposal = tuple[Arch, str, dict[str, float]]


def _check_pymoo() -> None:
    """pymoo before 0.6.1.6 drew from numpy's global RNG instead of the ``random_state`` handed to
    operators, which a seeded, resumable search cannot use."""
    parts = tuple(int(p) if p.isdigit() else 0 for p in PYMOO_VERSION.split(".")[:4])
    if parts < (0, 6, 1, 6):
        raise SearchError(f"nsga2 needs pymoo >= 0.6.1.6 (operators given a random_state); found {PYMOO_VERSION}: "
                          "pip install -U pymoo")


def _checked(arch: Any, space: Any, method: str) -> Arch:
    if not isinstance(arch, Arch):
        raise SearchError(f"{type(space).__name__}.{method} returned {type(arch).__name__}, not an "
                          "edgenas Arch; return Arch(name, version, choices) (see EvolvableSpace)")
    return arch


class _SpaceCrossover(Crossover):
    """One child per pair of parents, by the space's own ``crossover`` on pymoo's Generator."""

    def __init__(self, space: Any, to_arch: Callable[[np.ndarray], Arch]) -> None:
        super().__init__(n_parents=2, n_offsprings=1, prob=CROSSOVER_PROB)
        self._space, self._to_arch = space, to_arch

    def _do(self, problem: Any, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        out = np.empty((1, X.shape[1], X.shape[2]), dtype=X.dtype)
        for k in range(X.shape[1]):
            child = self._space.crossover(self._to_arch(X[0, k]), self._to_arch(X[1, k]), random_state)
            out[0, k] = _checked(child, self._space, "crossover").choices
        return out


class _SpaceMutation(Mutation):
    """Every child goes through the space's ``mutate`` (each layer re-drawn with ``prob``)."""

    def __init__(self, space: Any, to_arch: Callable[[np.ndarray], Arch], prob: float) -> None:
        super().__init__(prob=1.0)
        self._space, self._to_arch, self._layer_prob = space, to_arch, prob

    def _do(self, problem: Any, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rows = [_checked(self._space.mutate(self._to_arch(x), random_state, self._layer_prob), self._space,
                         "mutate").choices for x in X]
        return np.asarray(rows, dtype=X.dtype).reshape(X.shape)


def front_hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Hypervolume (pymoo's HV) of (score, cost) points against a (score, cost) reference, in raw units:
    the area of objective space (``-score``, cost) they dominate below the reference."""
    finite = [(s, c) for s, c in points if math.isfinite(s) and math.isfinite(c)]
    if not finite:
        return 0.0
    F = np.array([(-s, c) for s, c in finite], dtype=float)
    return float(HV(ref_point=np.array([-reference[0], reference[1]], dtype=float))(F))


def _encode(value: float) -> float | str:
    """A float as JSON can hold it exactly: non-finite values (a crowding distance of inf) as text."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


class NSGA2Search(EvolutionarySearch):
    """NSGA-II over (score, cost); see the module docstring. ``cost_key`` names the cost objective's
    metric (default: the first of ``latency_ms``, ``mflops``, ``params_m`` a constraint is named)."""

    def __init__(
        self,
        space: EvolvableSpace,
        scorer: Scorer,
        constraints: Sequence[Constraint] = (),
        config: EvolutionConfig | None = None,
        hooks: Sequence[SearchHook] = (),
        sampler: Callable[[np.random.Generator], Arch] | None = None,
        *,
        cost_key: str | None = None,
    ) -> None:
        _check_pymoo()
        super().__init__(space, scorer, constraints, config, hooks, sampler)
        names = [_constraint_key(c) for c in self.constraints]
        chosen = cost_key if cost_key is not None else next((k for k in COST_KEYS if k in names), None)
        if chosen is None or chosen not in names:
            wanted = repr(cost_key) if cost_key is not None else " or ".join(COST_KEYS)
            raise SearchError(f"nsga2 needs a cost objective: a constraint named {wanted} that reports it for "
                              f"every candidate (a Budget, with or without a limit); the constraints are "
                              f"{', '.join(names) or 'none'}")
        self.cost_key = chosen
        self._pymoo_rng = np.random.default_rng((self.config.seed, _PYMOO_STREAM))
        self._nsga: NSGA2 | None = None
        self._template: Arch | None = None  # name and version for decoding pymoo's integer vectors

    # ----- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Evolution's state (history, top-k, sampler RNG, hooks) plus pymoo's survivors and Generator."""
        state = super().state_dict()
        population = None
        if self._nsga is not None and self._nsga.pop is not None:
            pop = self._nsga.pop
            population = [
                {"arch": self._to_arch(x).to_str(), "objectives": [_encode(v) for v in f], "rank": int(rank),
                 "crowding": _encode(crowding)}
                for x, f, rank, crowding in zip(pop.get("X"), pop.get("F"), pop.get("rank"), pop.get("crowding"))
            ]
        state["format"] = STATE_FORMAT
        state["nsga2"] = {
            "cost": self.cost_key,
            "rng": self._pymoo_rng.bit_generator.state,
            "n_iter": None if self._nsga is None else int(self._nsga.n_iter),
            "population": population,
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`; only ``generations`` may differ (to extend a run)."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"not an NSGA-II search state (expected format {STATE_FORMAT!r})")
        part = dict(state["nsga2"])
        if part["cost"] != self.cost_key:
            raise CheckpointError(f"the saved search minimised {part['cost']}, this one {self.cost_key}; "
                                  "resume needs the same cost objective")
        super().load_state_dict({**state, "format": EVOLUTION_STATE_FORMAT})
        rng = np.random.default_rng()
        rng.bit_generator.state = part["rng"]
        self._pymoo_rng, self._nsga, self._template = rng, None, None
        saved = part["population"]
        if saved is None:
            return
        archs = [self.space.validate(Arch.from_str(str(p["arch"]))) for p in saved]
        algorithm = self._algorithm(archs[0])
        pop = Population.new(X=np.array([a.choices for a in archs], dtype=int),
                             F=np.array([[float(v) for v in p["objectives"]] for p in saved], dtype=float))
        pop.set("rank", np.array([int(p["rank"]) for p in saved]))
        pop.set("crowding", np.array([float(p["crowding"]) for p in saved], dtype=float))
        algorithm.pop, algorithm.is_initialized, algorithm.n_iter = pop, True, int(part["n_iter"])

    # ----- pymoo -----------------------------------------------------------------------------------------
    def _to_arch(self, x: np.ndarray) -> Arch:
        assert self._template is not None
        return Arch(self._template.space, self._template.version, tuple(int(v) for v in x))

    def _algorithm(self, template: Arch) -> NSGA2:
        """pymoo's NSGA-II on this space's integer encoding, set up once (from the first architecture)."""
        if self._nsga is None:
            self._template = template
            n_var = len(template.choices)
            counts = getattr(self.space, "num_choices", None)
            bounded = (isinstance(counts, Sequence) and len(counts) == n_var
                       and all(isinstance(n, numbers.Integral) and n >= 1 for n in counts))
            problem = Problem(n_var=n_var, n_obj=2, vtype=int,
                              xl=np.zeros(n_var, dtype=int) if bounded else None,
                              xu=np.array(counts, dtype=int) - 1 if bounded else None)
            # sampling is never used: generation 0 comes from the loop's sampler and is told, not asked
            algorithm = NSGA2(pop_size=self.config.population, crossover=_SpaceCrossover(self.space, self._to_arch),
                              mutation=_SpaceMutation(self.space, self._to_arch, self.config.mutation_prob),
                              eliminate_duplicates=True, output=None)
            algorithm.setup(problem, termination=NoTermination(), seed=self.config.seed)
            algorithm.random_state = self._pymoo_rng  # ours, so its state is saved and restored with the search
            self._nsga = algorithm
        return self._nsga

    def _objectives(self, candidate: Candidate) -> tuple[float, float] | None:
        """(``-score``, cost) as pymoo minimises them; ``None`` for a failed (NaN) evaluation."""
        if self.cost_key not in candidate.metrics:
            raise SearchError(f"constraint {self.cost_key} reported no {self.cost_key} for {candidate.arch}; "
                              "nsga2's cost objective needs it for every candidate")
        cost = candidate.metrics[self.cost_key]
        if math.isnan(candidate.score) or not math.isfinite(cost):
            return None
        return -candidate.score, cost

    def _tell(self, population: Sequence[Candidate]) -> None:
        told = [(c, f) for c in population if (f := self._objectives(c)) is not None]
        if not told:
            return
        algorithm = self._algorithm(told[0][0].arch)
        algorithm.tell(infills=Population.new(X=np.array([c.arch.choices for c, _ in told], dtype=int),
                                              F=np.array([f for _, f in told], dtype=float)))

    # ----- one generation ----------------------------------------------------------------------------------
    def _propose(self, gen: int) -> tuple[list[Proposal], Counter[str], int, int]:
        cfg, rng, space = self.config, self._rng, self.space
        if gen > 0 and self._history:
            self._tell(self._history[-1].population)  # told late, so a checkpoint needs no pymoo objects
        seen: set[Arch] = {c.arch for c in self._topk}
        algorithm = self._nsga if self._nsga is not None and self._nsga.is_initialized else None
        if algorithm is not None:
            seen.update(self._to_arch(x) for x in algorithm.pop.get("X"))
        out: list[Proposal] = []
        rejected: Counter[str] = Counter()
        duplicates = tries = 0

        def consider(arch: Arch, origin: str) -> None:
            nonlocal duplicates, tries
            tries += 1
            if arch in seen:
                duplicates += 1
                return
            seen.add(arch)
            ok, metrics, failed = self.check(arch)
            if ok:
                out.append((arch, origin, metrics))
                return
            rejected.update(failed)
            for key in failed:
                if key in metrics:
                    self._least[key] = min(self._least.get(key, math.inf), metrics[key])

        if algorithm is not None:
            attempts = cfg.population * cfg.max_tries
            while len(out) < cfg.population and attempts > 0:
                offspring = algorithm.ask()
                algorithm.termination.force_termination = False  # set by pymoo when mating finds nothing new
                if offspring is None or len(offspring) == 0:
                    break
                for x in offspring.get("X"):
                    if len(out) >= cfg.population or attempts <= 0:
                        break
                    attempts -= 1
                    consider(space.validate(self._to_arch(x)), "offspring")
        attempts = (cfg.population - len(out)) * cfg.max_tries
        while len(out) < cfg.population and attempts > 0:
            attempts -= 1
            consider(_checked(self.sampler(rng), space, "sample"), "random")
        return out, rejected, duplicates, tries

    # ----- the end -----------------------------------------------------------------------------------------
    def _finish(self) -> SearchResult:
        cfg = self.config
        if not self._topk:
            raise SearchError("the search evaluated no candidate")
        evaluated = [c for record in self._history for c in record.population]
        result = SearchResult(config={"evolution": dataclasses.asdict(cfg),
                                      "nsga2": {"cost": self.cost_key, "crossover_prob": CROSSOVER_PROB}},
                              history=list(self._history), candidates=evaluated, topk=list(self._topk),
                              best=self._topk[0])
        if cfg.rescore:
            latest = {c.arch: c for c in result.latest()}
            todo = list(dict.fromkeys([c.arch for c in self._topk]
                                      + [c.arch for c in result.pareto_front(self.cost_key)]))
            rescored = []
            for index, arch in enumerate(todo):
                score, extra = self._score(arch)
                rescored.append(Candidate(arch, score, cfg.generations, index, "rescore",
                                          {**latest[arch].metrics, **extra}))
            result.candidates = evaluated + rescored
            result.topk = sorted(rescored, key=lambda c: c.rank_key)[: cfg.topk]
            result.best = result.topk[0]
        result.front_summary = self._front_summary(result)
        return result

    def _front_summary(self, result: SearchResult) -> dict[str, Any]:
        key = self.cost_key
        front = result.pareto_front(key)
        ref_cost, ref_from = self._reference_cost([c.metrics.get(key, math.nan) for c in result.latest()])
        return {
            "strategy": "nsga2",
            "objectives": ["-score", key],
            "cost": key,
            "reference": {"score": 0.0, "cost": ref_cost, "cost_from": ref_from},
            "hypervolume": front_hypervolume([(c.score, c.metrics[key]) for c in front], (0.0, ref_cost)),
            "size": len(front),
            "front": [{"arch": c.arch.to_str(), "arch_id": c.arch.arch_id, "score": c.score, "cost": c.metrics[key]}
                      for c in front],
        }

    def _reference_cost(self, costs: Sequence[float]) -> tuple[float, str]:
        constraint = next(c for c in self.constraints if _constraint_key(c) == self.cost_key)
        limit = getattr(constraint, "limit", None)
        if isinstance(limit, numbers.Real) and math.isfinite(limit):
            return float(limit), "budget"
        cost = getattr(constraint, "cost", None)
        if isinstance(cost, AdditiveCost):
            return float(cost.maximum()[0]), "space maximum"
        return max((v for v in costs if math.isfinite(v)), default=0.0), "largest evaluated"
