"""The search stage: supernet scoring + optional shifting + budgets -> a run directory.

``run_search`` wires the generic loop to a supernet: :class:`SupernetScorer` (read-only, on the
validation split), :class:`SupernetShifting` (unless ``shift`` is ``None``, i.e. plain SPOS),
random proposals steered into the tightest additive budget (:func:`budget_sampler`), a
checkpoint after every generation, and the files of the run:

- ``checkpoint.pt`` (+ ``.json`` sidecar): the supernet in the usual checkpoint format, with the
  search state (population history, top-k, RNG state, shifting optimiser) as its ``train_state``;
  rewritten atomically after every generation and read with ``weights_only=True``;
- ``supernet.pt``: the shifted supernet (shifting mode only), loadable by ``edgenas eval``;
- ``search.json``, ``candidates.csv`` and ``candidates.png`` (see :mod:`edgenas.search.results`).

A run is resumed by calling ``run_search`` again with the same arguments and ``resume=True``:
settings that change the result must match (only ``generations`` may grow), and the run ends with
the same result as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edgenas.config import to_mapping
from edgenas.data import DataConfig, DatasetSplits
from edgenas.errors import CheckpointError
from edgenas.proxy import proxy_health
from edgenas.search.constraints import Budget, budget_sampler, check_feasible
from edgenas.search.evolution import Constraint, EvolutionConfig, SearchHook, constraint_label
from edgenas.search.results import (
    SearchResult,
    plot_candidates,
    write_candidates_csv,
    write_pareto_csv,
    write_search_json,
)
from edgenas.search.scoring import SCORERS, CachedScorer, ScoreConfig
from edgenas.search.shifting import ShiftConfig, SupernetShifting
from edgenas.search.strategies import STRATEGIES
from edgenas.search.warm_start import WarmStart, WarmStartConfig
from edgenas.space import space_to_dict
from edgenas.supernet import Supernet, load_checkpoint, save_checkpoint
from edgenas.torch_utils import resolve_device

__all__ = ["CANDIDATES_NAME", "CHECKPOINT_NAME", "PLOT_NAME", "SEARCH_NAME", "SUPERNET_NAME", "run_search"]

CHECKPOINT_NAME = "checkpoint.pt"
SUPERNET_NAME = "supernet.pt"
SEARCH_NAME = "search.json"
CANDIDATES_NAME = "candidates.csv"
PARETO_NAME = "pareto.csv"
PLOT_NAME = "candidates.png"


def _describe(constraint: Constraint) -> dict[str, Any]:
    if isinstance(constraint, Budget):
        return {"name": constraint.name, "limit": constraint.limit, "unit": constraint.unit}
    return {"name": constraint_label(constraint)}


def _settings(supernet: Supernet, data: DatasetSplits, constraints: Sequence[Constraint], evolution: EvolutionConfig,
              shift: ShiftConfig | None, scoring: ScoreConfig, channels_last: bool, strategy: str,
              scorer: str, warm: WarmStartConfig | None = None) -> dict[str, Any]:
    """What decides the result; a resume must match it (device and threads do not matter). The strategy,
    scorer and warm start appear only when they are not the defaults, so runs from before they existed resume."""
    chosen = {**({"strategy": strategy} if strategy != "evolution" else {}),
              **({"scorer": scorer} if scorer != "supernet" else {}),
              **({"warm_start": to_mapping(warm)} if warm is not None else {})}
    return {
        **chosen,
        "evolution": to_mapping(evolution),
        "shift": to_mapping(shift) if shift is not None else None,
        "scoring": to_mapping(scoring),
        "constraints": [_describe(c) for c in constraints],
        "data": data.name,
        "space": space_to_dict(supernet.space),
        "num_classes": supernet.num_classes,
        "in_channels": supernet.in_channels,
        "channels_last": channels_last,
    }


def _diff(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    changed = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key == "evolution" and isinstance(a, dict) and isinstance(b, dict):
            a, b = {**a, "generations": None}, {**b, "generations": None}
        if a != b:
            changed.append(key)
    return changed


def run_search(
    supernet: Supernet,
    data: DatasetSplits,
    out_dir: str | Path,
    constraints: Sequence[Constraint] = (),
    *,
    shift: ShiftConfig | None,
    evolution: EvolutionConfig | None = None,
    scoring: ScoreConfig | None = None,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    resume: bool = False,
    hooks: Sequence[SearchHook] = (),
    data_config: DataConfig | None = None,
    info: Mapping[str, Any] | None = None,
    strategy: str = "evolution",
    scorer: str = "supernet",
    warm_start: WarmStartConfig | None = None,
) -> SearchResult:
    """Search ``supernet``'s space on ``data`` under ``constraints``; write the run to ``out_dir``.

    ``shift`` must be chosen explicitly: a :class:`ShiftConfig` for Supernet Shifting (the CLI's
    default), which trains ``supernet`` in place, or ``None`` for plain SPOS, which never changes it.
    ``supernet`` is moved to ``device`` (and ``channels_last``) in place. ``hooks`` run after the
    shifting hook (e.g. a progress display). ``info`` (profile, source checkpoint, transfer notes,
    ...) is copied into ``search.json`` and the checkpoints' metadata, so it must be JSON-able.
    ``strategy`` and ``scorer`` are names in :data:`~edgenas.search.strategies.STRATEGIES` and
    :data:`~edgenas.search.scoring.SCORERS`; a deterministic scorer is cached when the supernet does
    not shift (each architecture scored once, re-scoring included). ``warm_start`` seeds the first
    population with the best of a random pool by a zero-cost proxy (:mod:`edgenas.search.warm_start`).
    """
    make_strategy, make_scorer = STRATEGIES.get(strategy), SCORERS.get(scorer)
    evolution = evolution or EvolutionConfig()
    scoring = scoring or ScoreConfig()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise CheckpointError(f"{ckpt_path} exists; pass --resume to continue that search or choose another directory")
    if resume and not ckpt_path.exists():
        raise CheckpointError(f"nothing to resume: {ckpt_path} does not exist")
    check_feasible(constraints)

    dev = resolve_device(device) if isinstance(device, str) else device or next(supernet.parameters()).device
    supernet.to(dev)
    if channels_last:
        supernet.to(memory_format=torch.channels_last)  # before the optimiser exists: same tensors throughout
    score = make_scorer(supernet, data, scoring, seed=evolution.seed, device=dev, channels_last=channels_last)
    if shift is None and getattr(score, "deterministic", False):
        score = CachedScorer(score)
    shifting = (SupernetShifting(supernet, data, shift, seed=evolution.seed, device=dev, channels_last=channels_last)
                if shift is not None else None)
    sampler = budget_sampler(supernet.space, constraints)
    warm = None
    if warm_start is not None:
        proxy = SCORERS.get(warm_start.proxy)(supernet, data, scoring, seed=evolution.seed, device=dev,
                                              channels_last=channels_last)
        warm = WarmStart(supernet.space, sampler or supernet.space.sample, proxy, constraints, pool=warm_start.pool,
                         count=evolution.population, seed=evolution.seed)
        sampler = warm
    search = make_strategy(supernet.space, score, constraints, evolution,
                           [*([shifting] if shifting is not None else []), *([warm] if warm is not None else []),
                            *hooks], sampler=sampler)
    settings = _settings(supernet, data, constraints, evolution, shift, scoring, channels_last, strategy, scorer,
                         warm_start)
    extra = dict(info or {})
    data_meta = to_mapping(data_config) if data_config is not None else {"name": data.name}

    if resume:
        saved, meta, train_state = load_checkpoint(ckpt_path, supernet.space)
        changed = _diff(dict(meta.get("search", {}).get("settings", {})), settings)
        if changed or train_state is None or "search" not in train_state:
            raise CheckpointError(f"{ckpt_path} was written by a search with other settings "
                                  f"({', '.join(changed) or 'no search state'}); resume needs the same ones")
        supernet.load_state_dict(saved.state_dict())
        search.load_state_dict(train_state["search"])

    def checkpoint(s: Any) -> None:
        meta = {"data": data_meta, "search": {"settings": settings, "generation": s.generation}, "info": extra}
        save_checkpoint(ckpt_path, supernet, meta, {"search": s.state_dict()})

    start = time.perf_counter()
    result = search.run(checkpoint)
    result.config = settings
    result.info = {
        **extra,
        "data": data_meta,
        "shift": None if shifting is None else {
            "steps_taken": shifting.steps_taken, "candidates_trained": shifting.candidates_trained,
            "batches_trained": shifting.batches_trained},
        "supernet": SUPERNET_NAME if shifting is not None else None,
        "seconds_this_session": time.perf_counter() - start,
        "strategy": strategy,
        "warm_start": None if warm is None else {**to_mapping(warm_start), "proxy_scores": warm.scores},
        "scorer": {"name": scorer, "evaluations_this_session": int(getattr(score, "evaluations", 0)),
                   "cache_hits_this_session": int(getattr(score, "hits", 0))},
        "proxy_health": proxy_health(
            [c.score for c in result.topk], len(data.val),  # type: ignore[arg-type]
            available=len(data.val) if data_config is None or data_config.val_limit is None else None,  # type: ignore[arg-type]
        ).to_json() if all("accuracy" in c.metrics for c in result.topk) else None,  # only accuracy has a stderr
    }
    if shifting is not None:
        save_checkpoint(out / SUPERNET_NAME, supernet,
                        {"data": data_meta, "search": {"settings": settings, "best": result.best.to_json()},
                         "info": extra})
    write_search_json(result, out / SEARCH_NAME)
    write_candidates_csv(result, out / CANDIDATES_NAME)
    if result.front_summary:
        write_pareto_csv(result, out / PARETO_NAME)
    if result.cost_key() is not None:
        budget = next((c.limit for c in constraints if isinstance(c, Budget) and c.name == result.cost_key()), None)
        plot_candidates(result, out / PLOT_NAME, budget=budget, title=f"{supernet.space.name} on {data.name}")
    return result
