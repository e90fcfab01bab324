"""The race: edgenas evolution, edgenas NSGA-II, random search, Optuna TPE and Optuna's NSGA-II sampler
on the same supernet scorer, the same budget and the same number of scored architectures.

A user who doubts NAS will reach for a general optimiser they already know. This puts each method on
one trained supernet (plain SPOS scoring, no shifting, so every method sees the same scorer), one
latency table and one latency budget (the loosest of ``--quantiles``), for ``--seeds`` seeds each, and
counts only *scored* architectures: each method gets ``population x generations`` of them; a proposal
over the budget is rejected before scoring by every method (Optuna's trials are pruned) and is not
counted. Reported per method, mean and spread over seeds: the hypervolume of the (accuracy, predicted
latency) front against (accuracy 0, the loose budget), and the best accuracy under each budget.

Scores are cached on disk across methods and seeds (the scorer is deterministic), so an interrupted
race resumes and a later method pays nothing for architectures an earlier one scored. Optuna is used
only here (``pip install optuna``).

    python benchmarks/search_race.py --supernet runs/demo/supernet/supernet.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import command_line, machine_info, machine_markdown, publish

from edgenas.data import load_dataset
from edgenas.hardware.profile import load_profile
from edgenas.hardware.table import LatencyTable, quantile_budget
from edgenas.io import atomic_write_json
from edgenas.pipeline.search import checkpoint_data_config
from edgenas.search import EvolutionConfig, make_budget_constraints
from edgenas.search.constraints import budget_sampler, latency_cost
from edgenas.search.nsga2 import front_hypervolume
from edgenas.search.results import pareto_mask
from edgenas.search.scoring import ScoreConfig, SupernetScorer
from edgenas.search.strategies import STRATEGIES
from edgenas.space import Arch
from edgenas.supernet import load_checkpoint

METHODS = ("evolution", "nsga2", "random", "optuna-tpe", "optuna-nsga2")


class DiskCache:
    """arch string -> score, shared by every method and seed, saved every ``every`` new scores."""

    def __init__(self, path: Path, scorer: Callable[[Arch], Any], every: int = 20) -> None:
        self.path, self.scorer, self.every = path, scorer, every
        self.scores: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.new = 0

    def __call__(self, arch: Arch) -> tuple[float, dict[str, float]]:
        key = arch.to_str()
        if key not in self.scores:
            score = self.scorer(arch)
            self.scores[key] = float(score[0] if isinstance(score, tuple) else score)
            self.new += 1
            if self.new % self.every == 0:
                self.save()
        value = self.scores[key]
        return value, {"accuracy": value}

    def save(self) -> None:
        atomic_write_json(self.path, self.scores)


def run_edgenas(method: str, space: Any, score: DiskCache, constraints: list[Any], config: EvolutionConfig
                ) -> list[tuple[str, float, float]]:
    """(arch, accuracy, latency) of every architecture the strategy scored, first evaluation each."""
    search = STRATEGIES.get(method)(space, score, constraints, config, [], sampler=budget_sampler(space, constraints))
    result = search.run()
    seen: dict[str, tuple[str, float, float]] = {}
    for c in result.candidates:
        if c.origin != "rescore" and c.arch.to_str() not in seen:
            seen[c.arch.to_str()] = (c.arch.to_str(), float(c.score), float(c.metrics["latency_ms"]))
    return list(seen.values())


def run_optuna(method: str, space: Any, score: DiskCache, latency: Callable[[Arch], float], budget: float,
               evaluations: int, seed: int, population: int) -> list[tuple[str, float, float]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    multi = method == "optuna-nsga2"
    sampler = (optuna.samplers.NSGAIISampler(seed=seed, population_size=population) if multi
               else optuna.samplers.TPESampler(seed=seed))
    study = optuna.create_study(directions=["maximize", "minimize"] if multi else ["maximize"], sampler=sampler)
    scored: dict[str, tuple[str, float, float]] = {}

    def objective(trial: Any) -> Any:
        choices = [trial.suggest_int(f"l{i}", 0, len(layer.choices) - 1) for i, layer in enumerate(space.layers)]
        arch = space.arch(choices)
        ms = float(latency(arch))
        if ms > budget:
            raise optuna.TrialPruned()  # rejected before scoring, as the edgenas strategies do
        acc = score(arch)[0]
        scored.setdefault(arch.to_str(), (arch.to_str(), acc, ms))
        return (acc, ms) if multi else acc

    trials = 0
    while len(scored) < evaluations and trials < evaluations * 50:
        study.optimize(objective, n_trials=1)
        trials += 1
    return list(scored.values())[:evaluations]


def figures(points: Sequence[tuple[str, float, float]], budgets: Sequence[float]) -> dict[str, Any]:
    scores, costs = [p[1] for p in points], [p[2] for p in points]
    front = [(s, c) for s, c, m in zip(scores, costs, pareto_mask(costs, scores)) if m]
    best = [max([s for s, c in zip(scores, costs) if c <= b], default=float("nan")) for b in budgets]
    return {"evaluated": len(points), "hypervolume": front_hypervolume(front, (0.0, max(budgets))), "best": best}


def run(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    supernet, meta, _ = load_checkpoint(args.supernet)
    space = supernet.space
    data_cfg = checkpoint_data_config(meta, str(args.supernet), None, None, val_limit=args.val_limit)
    data = load_dataset(data_cfg)
    profile = load_profile(args.profile)
    table = LatencyTable.load(args.table, space, profile, data.num_classes)
    budgets = [quantile_budget(table, space, q) for q in args.quantiles]
    latency = latency_cost(table, space)
    constraints = make_budget_constraints(space, input_hw=data.input_size, in_channels=data.in_channels,
                                          num_classes=data.num_classes, latency_ms=max(budgets), latency=latency)
    score = DiskCache(work / "scores.json", SupernetScorer(supernet, data, ScoreConfig(), seed=0))
    evaluations = args.population * args.generations
    results: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        for seed in args.seeds:
            path = work / f"{method}_s{seed}.json"
            if path.is_file():
                results[f"{method}/{seed}"] = json.loads(path.read_text())
                continue
            start = time.perf_counter()
            config = EvolutionConfig(population=args.population, generations=args.generations,
                                     topk=max(1, args.population // 5), mutations=args.population // 2,
                                     crossovers=args.population // 2, seed=seed, rescore=False)
            if method.startswith("optuna"):
                points = run_optuna(method, space, score, latency, max(budgets), evaluations, seed, args.population)
            else:
                points = run_edgenas(method, space, score, constraints, config)
            score.save()
            doc = {"method": method, "seed": seed, "points": points, **figures(points, budgets),
                   "seconds": time.perf_counter() - start}
            atomic_write_json(path, doc)
            results[f"{method}/{seed}"] = doc
            print(f"{method} seed {seed}: {doc['evaluated']} scored, hypervolume {doc['hypervolume']:.4g}, best "
                  + ", ".join(f"{b:.2%}" for b in doc["best"]), flush=True)
    publish(args.out, "search_race", "The race: edgenas search against random search and Optuna",
            report(results, args, budgets, table, len(score.scores)))
    return 0


def _cell(values: Sequence[float], pct: bool) -> str:
    a = np.array([v for v in values if np.isfinite(v)])
    if not a.size:
        return "-"
    scale = 100 if pct else 1
    return f"{a.mean() * scale:.2f} ± {a.std(ddof=1) * scale:.2f}" if a.size > 1 else f"{a[0] * scale:.2f}"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, budgets: Sequence[float],
           table: LatencyTable, cached: int) -> str:
    header = " | ".join(f"best ≤ {b:.3f} ms (q{q:g})" for b, q in zip(budgets, args.quantiles))
    lines = [f"Command: `{command_line()}`", "", machine_markdown(machine_info()), "",
             f"Supernet `{args.supernet}` scored plainly (SPOS, BN recalibrated, {args.val_limit} validation "
             f"images), latency predicted by `{args.table}`; {args.population} x {args.generations} = "
             f"{args.population * args.generations} scored architectures per run, seeds {args.seeds}; "
             f"{cached} distinct architectures scored in all. Hypervolume of (accuracy, latency) against "
             f"(0, {max(budgets):.3f} ms), in accuracy x ms; best accuracy in %. Mean ± standard deviation over seeds.",
             "", f"| method | hypervolume | {header} |", "|---|---:|" + "---:|" * len(budgets)]
    for method in args.methods:
        runs = [r for k, r in results.items() if k.startswith(method + "/")]
        if not runs:
            continue
        best = [_cell([r["best"][i] for r in runs], True) for i in range(len(budgets))]
        lines.append(f"| {method} | {_cell([r['hypervolume'] for r in runs], False)} | {' | '.join(best)} |")
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--supernet", required=True)
    p.add_argument("--table", required=True, help="latency table of the supernet's space on --profile")
    p.add_argument("--profile", default="cpu-ort")
    p.add_argument("--quantiles", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--val-limit", type=int, default=1000)
    p.add_argument("--work", default="runs/bench/search_race")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"))
    p.add_argument("--note", default="")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
