"""Evolutionary search (SPOS defaults) as a template with hooks and a ``state_dict``.

The loop needs only capabilities: a space that can ``sample``, ``mutate``, ``crossover`` and
``validate`` architectures, a scorer (architecture -> score, higher is better, optionally with
metrics) and constraint callables (architecture -> ``(ok, metrics)``). It knows nothing about
supernets, so a user can plug in their own space or an accuracy predictor, and Supernet Shifting,
progress display and logging plug in as :class:`SearchHook` objects instead of forks of the loop.

One generation (SPOS): the first population is random; later ones are ``mutations`` children of
random top-k parents, ``crossovers`` children of two distinct top-k parents, then random samples
up to ``population`` (drawn by ``space.sample``, or by a ``sampler`` such as
:func:`~edgenas.search.constraints.budget_sampler` that steers them into a tight budget). A
proposal already seen in this generation, or equal to a current top-k member, is not evaluated
again (a top-k member's score is refreshed by the final re-scoring). A proposal that breaks a
constraint is rejected before any scorer or hook sees it. Each kind of proposal is capped at
``max_tries`` attempts per wanted candidate, so a tight budget cannot hang the loop; if the
first generation finds no legal architecture at all, :class:`SearchError` names the constraints
that rejected them.

Determinism and resume: all randomness comes from one ``numpy`` Generator seeded with
``config.seed``; its ``bit_generator.state`` is part of :meth:`EvolutionarySearch.state_dict`
(plain JSON-able values, plus each stateful hook's own state), so a search resumed from the state
saved after generation ``g`` proposes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from edgenas.errors import CheckpointError, ConfigError, SearchError
from edgenas.search.results import Candidate, GenerationRecord, SearchResult
from edgenas.space.arch import Arch

__all__ = [
    "STATE_FORMAT",
    "Constraint",
    "EvolutionConfig",
    "EvolutionarySearch",
    "EvolvableSpace",
    "Scorer",
    "SearchError",
    "SearchHook",
    "constraint_label",
]

STATE_FORMAT = "edgenas-evolution/1"
REQUIRED_CAPABILITIES = ("sample", "mutate", "crossover", "validate")

#: ``constraint(arch) -> (ok, metrics)``; a ``name`` (and ``label``) attribute names it in reports.
Constraint = Callable[[Arch], tuple[bool, Mapping[str, float]]]
#: ``scorer(arch) -> score`` or ``(score, metrics)``; higher scores are better.
Scorer = Callable[[Arch], float | tuple[float, Mapping[str, float]]]


@runtime_checkable
class EvolvableSpace(Protocol):
    """What evolution needs from a space (``edgenas.space.SearchSpace`` provides all four).

    The contract for a custom space: every method returns an :class:`~edgenas.space.Arch` (build
    one with ``Arch(name, version, choices)``: a name of letters, digits, ``_ . -``, a version and
    one integer per position; numpy integers are converted), draws randomness only from the ``rng``
    it is given (so a seed reproduces the search and a resume continues it), and never changes its
    arguments (an ``Arch`` is immutable anyway).
    """

    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random architecture."""
        ...

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float) -> Arch:
        """A copy of ``arch`` where each position is re-drawn with probability ``prob``."""
        ...

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """A child taking each position from ``a`` or ``b``."""
        ...

    def validate(self, arch: Arch) -> Arch:
        """``arch`` itself if it belongs to this space; raise :class:`~edgenas.errors.SpaceError` otherwise
        (a resumed search validates its saved top-k with it)."""
        ...


@dataclass(frozen=True)
class EvolutionConfig:
    """SPOS / Supernet Shifting defaults: 50 x 20 generations, top-10, 25 mutations (p=0.1), 25 crossovers."""

    population: int = 50
    generations: int = 20
    topk: int = 10
    mutations: int = 25
    mutation_prob: float = 0.1
    crossovers: int = 25
    seed: int = 0
    max_tries: int = 100
    rescore: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.population >= 1, "population must be >= 1"),
            (self.generations >= 1, "generations must be >= 1"),
            (1 <= self.topk <= self.population, "topk must be between 1 and population"),
            (self.mutations >= 0 and self.crossovers >= 0, "mutations and crossovers must be >= 0"),
            (self.mutations + self.crossovers <= self.population,
             "mutations + crossovers must not exceed population (the rest is random fill-up)"),
            (0.0 < self.mutation_prob <= 1.0, "mutation_prob must be in (0, 1]"),
            (self.max_tries >= 1, "max_tries must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"evolution config: {message}")


class SearchHook:
    """Base class of the loop's extension points; every method is a no-op by default.

    A hook that must survive a resume sets ``state_key`` and implements :meth:`state_dict` /
    :meth:`load_state_dict`; its state is stored under that key in the search's state.
    """

    state_key: ClassVar[str | None] = None

    def on_generation_start(self, generation: int) -> None:
        """Before the generation's proposals are drawn."""

    def on_candidate(self, candidate: Candidate) -> None:
        """After a legal candidate was scored (never for rejected ones, nor for the final re-scoring)."""

    def on_generation_end(self, record: GenerationRecord) -> None:
        """After the top-k was updated and before the generation's checkpoint is written."""

    def on_search_end(self, result: SearchResult) -> None:
        """After the final re-scoring."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def constraint_label(constraint: Constraint) -> str:
    """A constraint's readable name: its ``label``, else ``name``, else the function's name."""
    for attr in ("label", "name", "__name__"):
        value = getattr(constraint, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(constraint).__name__


def _constraint_key(constraint: Constraint) -> str:
    value = getattr(constraint, "name", None)
    return value if isinstance(value, str) and value else constraint_label(constraint)


class EvolutionarySearch:
    """The evolutionary loop; see the module docstring for one generation's recipe."""

    def __init__(
        self,
        space: EvolvableSpace,
        scorer: Scorer,
        constraints: Sequence[Constraint] = (),
        config: EvolutionConfig | None = None,
        hooks: Sequence[SearchHook] = (),
        sampler: Callable[[np.random.Generator], Arch] | None = None,
    ) -> None:
        missing = [name for name in REQUIRED_CAPABILITIES if not callable(getattr(space, name, None))]
        if missing:
            raise SearchError(
                f"evolution needs a space with {', '.join(REQUIRED_CAPABILITIES)}; "
                f"{type(space).__name__} has no {', '.join(missing)}"
            )
        if not callable(scorer):
            raise SearchError(f"the scorer must be callable (arch -> score), got {type(scorer).__name__}")
        keys = [h.state_key for h in hooks if h.state_key is not None]
        if len(keys) != len(set(keys)):
            raise SearchError(f"two hooks share a state_key: {sorted(keys)}")
        self.space = space
        self.scorer = scorer
        self.constraints = tuple(constraints)
        self.config = config or EvolutionConfig()
        self.hooks = tuple(hooks)
        self.sampler = sampler if sampler is not None else space.sample
        self._rng = np.random.default_rng(self.config.seed)
        self._generation = 0
        self._topk: list[Candidate] = []
        self._least: dict[str, float] = {}  # smallest value of each rejecting metric seen (for the error)
        self._history: list[GenerationRecord] = []

    # ----- public API --------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """The next generation to run (equals ``config.generations`` once the loop is done)."""
        return self._generation

    @property
    def topk(self) -> list[Candidate]:
        return list(self._topk)

    @property
    def history(self) -> list[GenerationRecord]:
        return list(self._history)

    def check(self, arch: Arch) -> tuple[bool, dict[str, float], list[str]]:
        """Run every constraint: legality, their metrics, and the keys of those that failed."""
        metrics: dict[str, float] = {}
        failed: list[str] = []
        for constraint in self.constraints:
            ok, values = constraint(arch)
            metrics.update({str(k): float(v) for k, v in values.items()})
            if not ok:
                failed.append(_constraint_key(constraint))
        return not failed, metrics, failed

    def run(self, checkpoint_fn: Callable[[EvolutionarySearch], None] | None = None) -> SearchResult:
        """Run the remaining generations, then re-score the top-k.

        ``checkpoint_fn(self)`` is called after every generation (after the hooks' ``on_generation_end``,
        so a supernet step is included); it is where a caller saves :meth:`state_dict`.
        """
        cfg = self.config
        while self._generation < cfg.generations:
            gen = self._generation
            start = time.perf_counter()
            for hook in self.hooks:
                hook.on_generation_start(gen)
            proposals, rejected, duplicates, tries = self._propose(gen)
            if not proposals and gen == 0:
                raise SearchError(self._infeasible_message(rejected, tries))
            population = []
            for index, (arch, origin, metrics) in enumerate(proposals):
                score, extra = self._score(arch)
                candidate = Candidate(arch, score, gen, index, origin, {**metrics, **extra})
                population.append(candidate)
                for hook in self.hooks:
                    hook.on_candidate(candidate)
            self._topk = self._merge_topk(population)
            record = GenerationRecord(gen, tuple(population), tuple(self._topk), dict(rejected), duplicates, tries,
                                      time.perf_counter() - start)
            self._history.append(record)
            self._generation = gen + 1
            for hook in self.hooks:
                hook.on_generation_end(record)
            if checkpoint_fn is not None:
                checkpoint_fn(self)
        result = self._finish()
        for hook in self.hooks:
            hook.on_search_end(result)
        return result

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed generation.

        The loop's own part is plain JSON-able data; hooks with a ``state_key`` add theirs (which may
        hold tensors, e.g. an optimiser state) under ``hooks``.
        """
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "generation": self._generation,
            "rng": self._rng.bit_generator.state,
            "topk": [c.to_json() for c in self._topk],
            "history": [r.to_json() for r in self._history],
            "hooks": {h.state_key: h.state_dict() for h in self.hooks if h.state_key is not None},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`; only ``generations`` may differ (to extend a run)."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"not an evolution state (expected format {STATE_FORMAT!r})")
        saved, now = dict(state["config"]), dataclasses.asdict(self.config)
        changed = sorted(k for k in now if k != "generations" and saved.get(k) != now[k])
        if changed:
            raise CheckpointError(
                "the saved search used other settings (" + ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}"
                                                                   for k in changed) + "); resume needs the same ones"
            )
        generation = int(state["generation"])
        if generation > self.config.generations:
            raise CheckpointError(
                f"the saved search already ran {generation} generations; "
                f"cannot resume it with {self.config.generations}"
            )
        hook_states = dict(state.get("hooks", {}))
        keys = {h.state_key for h in self.hooks if h.state_key is not None}
        if set(hook_states) != keys:
            raise CheckpointError(
                f"the saved search had hook state for {sorted(hook_states) or 'none'}, this one has "
                f"{sorted(keys) or 'none'} (e.g. shifting on one side and --no-shift on the other)"
            )
        topk = [Candidate.from_json(c) for c in state["topk"]]
        history = [GenerationRecord.from_json(r) for r in state["history"]]
        for candidate in topk:
            self.space.validate(candidate.arch)
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        for hook in self.hooks:
            if hook.state_key is not None:
                hook.load_state_dict(hook_states[hook.state_key])
        self._rng, self._generation, self._topk, self._history = rng, generation, topk, history

    # ----- one generation ------------------------------------------------------------------------------
    def _propose(self, gen: int) -> tuple[list[tuple[Arch, str, dict[str, float]]], Counter[str], int, int]:
        cfg, rng, space = self.config, self._rng, self.space
        seen: set[Arch] = {c.arch for c in self._topk}
        out: list[tuple[Arch, str, dict[str, float]]] = []
        rejected: Counter[str] = Counter()
        duplicates = tries = 0

        def fill(wanted: int, make: Callable[[], Arch], origin: str) -> None:
            nonlocal duplicates, tries
            target = min(len(out) + wanted, cfg.population)
            attempts = wanted * cfg.max_tries
            while len(out) < target and attempts > 0:
                attempts -= 1
                tries += 1
                arch = make()
                if not isinstance(arch, Arch):
                    method = {"mutation": "mutate", "crossover": "crossover"}.get(origin, "sample")
                    raise SearchError(f"{type(space).__name__}.{method} returned {type(arch).__name__}, not an "
                                      "edgenas Arch; return Arch(name, version, choices) (see EvolvableSpace)")
                if arch in seen:
                    duplicates += 1
                    continue
                seen.add(arch)
                ok, metrics, failed = self.check(arch)
                if ok:
                    out.append((arch, origin, metrics))
                else:
                    rejected.update(failed)
                    for key in failed:
                        if key in metrics:
                            self._least[key] = min(self._least.get(key, float("inf")), metrics[key])

        parents = [c.arch for c in self._topk]
        if gen > 0 and parents:
            fill(cfg.mutations, lambda: space.mutate(parents[int(rng.integers(len(parents)))], rng,
                                                     cfg.mutation_prob), "mutation")
            if len(parents) >= 2:

                def cross() -> Arch:
                    i, j = rng.choice(len(parents), size=2, replace=False)
                    return space.crossover(parents[int(i)], parents[int(j)], rng)

                fill(cfg.crossovers, cross, "crossover")
        fill(cfg.population - len(out), lambda: self.sampler(rng), "random")
        return out, rejected, duplicates, tries

    def _score(self, arch: Arch) -> tuple[float, dict[str, float]]:
        value = self.scorer(arch)
        if isinstance(value, tuple):
            score, metrics = value
            return float(score), {str(k): float(v) for k, v in metrics.items()}
        return float(value), {}

    def _merge_topk(self, population: Sequence[Candidate]) -> list[Candidate]:
        """Best ``topk`` of the previous top-k and this generation; a newer evaluation of an
        architecture replaces its older one; equal scores go to the cheaper, then the earlier one."""
        pool: dict[Arch, Candidate] = {c.arch: c for c in self._topk}
        for c in population:
            pool[c.arch] = c
        ranked = sorted(pool.values(), key=lambda c: c.rank_key)
        return ranked[: self.config.topk]

    def _finish(self) -> SearchResult:
        cfg = self.config
        if not self._topk:
            raise SearchError("the search evaluated no candidate")
        final = list(self._topk)
        rescored: list[Candidate] = []
        if cfg.rescore:
            for index, old in enumerate(self._topk):
                score, extra = self._score(old.arch)
                rescored.append(Candidate(old.arch, score, cfg.generations, index, "rescore",
                                          {**old.metrics, **extra}))
            final = sorted(rescored, key=lambda c: c.rank_key)
        candidates = [c for record in self._history for c in record.population] + rescored
        return SearchResult(config={"evolution": dataclasses.asdict(cfg)}, history=list(self._history),
                            candidates=candidates, topk=final, best=final[0])

    def _infeasible_message(self, rejected: Counter[str], tries: int) -> str:
        labels = {_constraint_key(c): constraint_label(c) for c in self.constraints}
        if not rejected:
            return (f"no new architecture found in {tries} proposals: the space may be smaller than the "
                    f"population ({self.config.population})")
        parts = ", ".join(f"{labels.get(k, k)} rejected {n}"
                          + (f", smallest seen {self._least[k]:.4g}" if k in self._least else "")
                          for k, n in rejected.most_common())
        return (f"no architecture within the constraints found in {tries} random proposals ({parts}); "
                "relax the budget, check the space's floor (check_feasible) or steer the random proposals "
                "into it (sampler=budget_sampler(space, constraints))")
