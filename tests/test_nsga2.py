"""NSGA-II (pymoo) as a search strategy: the exact front of a toy space, seeding, resume, budgets,
the hypervolume's reference point, and the supernet pipeline (registry, scorers, Supernet Shifting).

The loop mechanics use duck-typed toy spaces and cheap scorers (no torch); the pipeline tests use the
tiny mbv3 space on the 8x8 digits set with a few candidates, as tests/test_search.py does.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch

from edgenas.errors import CheckpointError
from edgenas.search import (
    AdditiveCost,
    Budget,
    Candidate,
    EvolutionarySearch,
    EvolutionConfig,
    ScoreConfig,
    SearchError,
    SearchHook,
    ShiftConfig,
    make_budget_constraints,
    pareto_mask,
    run_search,
)
from edgenas.search.nsga2 import NSGA2Search, front_hypervolume
from edgenas.search.scoring import SCORERS
from edgenas.search.strategies import STRATEGIES, random_search
from edgenas.space import Arch, create_space
from edgenas.supernet import Supernet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- a toy space whose front is known exactly -------------------------------------------------------------


class TradeSpace:
    """6 layers x 3 choices (729 architectures); only the capabilities a strategy needs, plus ``num_choices``."""

    layers, choices = 6, 3
    num_choices = (3,) * 6

    def arch(self, choices) -> Arch:
        return Arch("trade", 1, tuple(int(c) for c in choices))

    def sample(self, rng: np.random.Generator) -> Arch:
        return self.arch(rng.integers(self.choices, size=self.layers))

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float) -> Arch:
        return self.arch([int(rng.integers(self.choices)) if rng.random() < prob else c for c in arch.choices])

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        return self.arch([x if rng.random() < 0.5 else y for x, y in zip(a.choices, b.choices)])

    def validate(self, arch: Arch) -> Arch:
        assert arch.space == "trade" and len(arch.choices) == self.layers and max(arch.choices) < self.choices
        return arch


def trade_score(arch: Arch) -> float:
    return float(sum(arch.choices))  # bigger choices are "more accurate" ...


def trade_cost(arch: Arch) -> float:
    return float(sum(c * c for c in arch.choices))  # ... and cost quadratically more: a spread-out front


def exact_front(limit: float = math.inf) -> set[tuple[float, float]]:
    """(cost, score) of the non-dominated architectures within ``limit``, by brute force over the space."""
    space = TradeSpace()
    archs = [space.arch(c) for c in itertools.product(range(space.choices), repeat=space.layers)]
    archs = [a for a in archs if trade_cost(a) <= limit]
    costs, scores = [trade_cost(a) for a in archs], [trade_score(a) for a in archs]
    return {(c, s) for c, s, m in zip(costs, scores, pareto_mask(costs, scores)) if m}


def front_points(result) -> set[tuple[float, float]]:
    return {(f["cost"], f["score"]) for f in result.front_summary["front"]}


TOY = EvolutionConfig(population=20, generations=15, topk=4, mutations=0, crossovers=0, mutation_prob=0.2, seed=0)


def _view(result):
    """The reproducible part of a result (wall times excluded)."""
    return ([(c.arch, c.score, c.generation, c.index, c.origin, dict(c.metrics)) for c in result.candidates],
            [c.arch for c in result.topk], result.best.arch, result.front_summary)


class Interrupt(Exception):
    pass


def test_finds_the_exact_front_of_a_toy_space_better_than_random_search():
    truth = exact_front()
    assert len(truth) == 13  # one point per total 0..12: the choices spread as evenly as possible
    found_nsga = found_random = 0
    for seed in range(3):
        cfg = dataclasses.replace(TOY, seed=seed)
        result = NSGA2Search(TradeSpace(), trade_score, [Budget("mflops", trade_cost)], cfg).run()
        points = front_points(result)
        assert points <= truth  # every point it reports is on the exact front ...
        assert len(points) >= len(truth) - 1  # ... and it misses at most one of 13, seeing 300 of 729 archs
        assert len(result.candidates) - sum(c.origin == "rescore" for c in result.candidates) == 20 * 15
        assert {c.origin for c in result.candidates} == {"random", "offspring", "rescore"}
        baseline = random_search(TradeSpace(), trade_score, [Budget("mflops", trade_cost)], cfg).run()
        found_nsga += len(points)
        found_random += len({(c.metrics["mflops"], c.score) for c in baseline.pareto_front("mflops")} & truth)
    assert found_nsga > found_random  # the same evaluations, spent better


def _staircase_area(points, ref_score, ref_cost):
    """Hypervolume of (score up, cost down) points by hand: the union of their rectangles to the reference."""
    area, best = 0.0, ref_score
    for cost, score in sorted(points):  # cheapest first; each point adds the strip above the best so far
        if score > best and cost < ref_cost:
            area += (ref_cost - cost) * (score - best)
            best = score
    return area


def test_hypervolume_is_pymoos_against_the_stated_reference_point():
    assert front_hypervolume([(0.9, 5.0), (0.5, 2.0)], (0.0, 10.0)) == pytest.approx(8 * 0.5 + 5 * 0.4)
    assert front_hypervolume([(-1.0, 1.0), (0.5, 12.0)], (0.0, 10.0)) == 0.0  # beyond the reference: nothing
    assert front_hypervolume([], (0.0, 10.0)) == 0.0
    # reference cost: the budget when the cost is budgeted ...
    budgeted = NSGA2Search(TradeSpace(), trade_score, [Budget("mflops", trade_cost, 20.0)], TOY).run()
    summary = budgeted.front_summary
    assert summary["reference"] == {"score": 0.0, "cost": 20.0, "cost_from": "budget"}
    assert summary["objectives"] == ["-score", "mflops"] and summary["cost"] == "mflops"
    assert summary["size"] == len(summary["front"]) > 0
    assert summary["hypervolume"] == pytest.approx(_staircase_area(front_points(budgeted), 0.0, 20.0))
    # ... else the space's largest cost (an additive cost model) ...
    table = AdditiveCost(0.0, ((0.0, 1.0, 4.0),) * 6)
    assert table.maximum()[0] == 24.0
    additive = NSGA2Search(TradeSpace(), trade_score, [Budget("mflops", table)], TOY).run()
    assert additive.front_summary["reference"] == {"score": 0.0, "cost": 24.0, "cost_from": "space maximum"}
    # ... else the largest cost evaluated
    plain = NSGA2Search(TradeSpace(), trade_score, [Budget("mflops", trade_cost)], TOY).run()
    largest = max(c.metrics["mflops"] for c in plain.candidates)
    assert plain.front_summary["reference"] == {"score": 0.0, "cost": largest, "cost_from": "largest evaluated"}
    assert plain.front_summary["hypervolume"] == pytest.approx(_staircase_area(front_points(plain), 0.0, largest))


def test_same_seed_same_front_other_seed_differs():
    def run(seed):
        cfg = dataclasses.replace(TOY, generations=6, seed=seed)
        return NSGA2Search(TradeSpace(), trade_score, [Budget("mflops", trade_cost, 20.0)], cfg).run()

    np.random.seed(1)  # numpy's global RNG must play no part: pymoo gets the search's own Generator
    a = run(5)
    np.random.seed(2)
    b, c = run(5), run(6)
    assert _view(a) == _view(b)
    assert [c.arch for c in a.candidates] != [c.arch for c in c.candidates]


class Counting(SearchHook):
    """A stateful hook: its state must survive a resume as well."""

    state_key = "counting"

    def __init__(self) -> None:
        self.seen = 0

    def on_candidate(self, candidate: Candidate) -> None:
        self.seen += 1

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state) -> None:
        self.seen = int(state["seen"])


@pytest.mark.parametrize("stop_after", [0, 1, 4])
def test_resume_equals_uninterrupted(stop_after):
    budgets = [Budget("mflops", trade_cost, 20.0)]
    cfg = dataclasses.replace(TOY, generations=7)
    full_hook = Counting()
    full = NSGA2Search(TradeSpace(), trade_score, budgets, cfg, [full_hook]).run()

    saved: list[str] = []

    def checkpoint(search) -> None:
        saved.append(json.dumps(search.state_dict(), allow_nan=False))  # plain JSON: no pickled pymoo objects
        if search.generation == stop_after + 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        NSGA2Search(TradeSpace(), trade_score, budgets, cfg, [Counting()]).run(checkpoint)
    hook = Counting()
    resumed = NSGA2Search(TradeSpace(), trade_score, budgets, cfg, [hook])
    resumed.load_state_dict(json.loads(saved[-1]))
    assert resumed.generation == stop_after + 1
    assert _view(resumed.run()) == _view(full)
    assert hook.seen == full_hook.seen


def test_resume_refuses_other_states_and_settings():
    budgets = [Budget("mflops", trade_cost, 20.0), Budget("params_m", trade_score)]
    search = NSGA2Search(TradeSpace(), trade_score, budgets, dataclasses.replace(TOY, generations=2))
    search.run()
    state = search.state_dict()
    with pytest.raises(CheckpointError, match="not an NSGA-II search state"):
        NSGA2Search(TradeSpace(), trade_score, budgets, TOY).load_state_dict(
            EvolutionarySearch(TradeSpace(), trade_score, budgets, TOY).state_dict())
    with pytest.raises(CheckpointError, match="not an evolution state"):
        EvolutionarySearch(TradeSpace(), trade_score, budgets, TOY).load_state_dict(state)
    with pytest.raises(CheckpointError, match="minimised mflops, this one params_m"):
        NSGA2Search(TradeSpace(), trade_score, budgets, TOY, cost_key="params_m").load_state_dict(state)
    with pytest.raises(CheckpointError, match="mutation_prob"):
        NSGA2Search(TradeSpace(), trade_score, budgets, dataclasses.replace(TOY, mutation_prob=0.5)).load_state_dict(
            state)
    longer = NSGA2Search(TradeSpace(), trade_score, budgets, dataclasses.replace(TOY, generations=4))
    longer.load_state_dict(state)  # extending a finished run is allowed
    assert len(longer.run().history) == 4


def test_no_over_budget_candidate_is_scored():
    limit = 8.0
    scored: list[Arch] = []

    def score(arch: Arch) -> float:
        scored.append(arch)
        return trade_score(arch)

    result = NSGA2Search(TradeSpace(), score, [Budget("mflops", trade_cost, limit)], TOY).run()
    assert scored and all(trade_cost(a) <= limit for a in scored)
    assert all(c.metrics["mflops"] <= limit for c in result.candidates)
    assert sum(r.rejected.get("mflops", 0) for r in result.history) > 0
    assert front_points(result) <= exact_front(limit)
    assert result.best.score == max(c.score for c in result.topk)
    with pytest.raises(SearchError, match=r"mflops<=0 rejected \d+, smallest seen 1"):
        NSGA2Search(TradeSpace(), score, [Budget("mflops", lambda a: trade_cost(a) + 1.0, 0.0)], TOY).run()


def test_the_cost_objective_is_latency_else_flops_else_params_or_named():
    def named(*names):
        return [Budget(n, trade_cost) for n in names]

    assert NSGA2Search(TradeSpace(), trade_score, named("params_m", "mflops", "latency_ms")).cost_key == "latency_ms"
    assert NSGA2Search(TradeSpace(), trade_score, named("params_m", "mflops")).cost_key == "mflops"
    assert NSGA2Search(TradeSpace(), trade_score, named("params_m")).cost_key == "params_m"
    assert NSGA2Search(TradeSpace(), trade_score, named("energy"), cost_key="energy").cost_key == "energy"
    with pytest.raises(SearchError, match=r"nsga2 needs a cost objective.*the constraints are energy"):
        NSGA2Search(TradeSpace(), trade_score, named("energy"))
    with pytest.raises(SearchError, match="named 'joules'"):
        NSGA2Search(TradeSpace(), trade_score, named("energy"), cost_key="joules")


# ----- the supernet pipeline -----------------------------------------------------------------------------------

EVO = EvolutionConfig(population=4, generations=2, topk=2, mutations=1, crossovers=1, seed=0)
SCORE = ScoreConfig(recal_batches=1, batch_size=72)
SHIFT = ShiftConfig(batches_per_candidate=1, batch_size=32, lr=0.01)


@pytest.fixture(scope="module")
def space():
    return create_space("mbv3", "small", width_mult=0.25, head_channels=32, kernels=(3, 5), expansions=(3,))


@pytest.fixture(scope="module")
def budgets(space):
    return make_budget_constraints(space, input_hw=(8, 8), in_channels=1, num_classes=10, mflops=0.105)


def _supernet(space, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    return Supernet(space, 10, 1, "separate")


def test_registered_and_built_by_the_registry(space, budgets):
    assert "nsga2" in STRATEGIES.names()
    search = STRATEGIES.get("nsga2")(space, lambda a: 0.0, budgets, EVO, [], sampler=None)
    assert isinstance(search, NSGA2Search) and search.cost_key == "mflops" and search.generation == 0


@pytest.mark.parametrize("scorer", SCORERS.names())
def test_run_search_with_every_scorer_writes_the_front(scorer, space, budgets, digits, tmp_path):
    result = run_search(_supernet(space), digits, tmp_path, budgets, evolution=EVO, shift=None, scoring=SCORE,
                        strategy="nsga2", scorer=scorer)
    assert all(c.metrics["mflops"] <= 0.105 for c in result.candidates)
    assert result.best.score == max(c.score for c in result.topk)
    doc = json.loads((tmp_path / "search.json").read_text())
    assert doc["strategy"] == "nsga2" and doc["config"]["strategy"] == "nsga2"
    summary = doc["front_summary"]
    assert summary["cost"] == "mflops" and summary["reference"]["cost"] == 0.105
    assert summary["reference"]["cost_from"] == "budget" and summary["hypervolume"] > 0
    # the summary's front is the same set of points as search.json's own Pareto front of that cost
    assert doc["pareto"]["cost"] == "mflops"
    assert [f["arch"] for f in summary["front"]] == [c["arch"] for c in doc["pareto"]["front"]]
    rows = (tmp_path / "pareto.csv").read_text().splitlines()
    assert rows[0] == "arch,arch_id,score,cost_key,cost" and len(rows) == len(summary["front"]) + 1
    assert [r.split(",")[0] for r in rows[1:]] == [f["arch"] for f in summary["front"]]


def test_supernet_shifting_trains_the_candidates_nsga2_proposes(space, budgets, digits, tmp_path):
    trained: list[Arch] = []

    class Spy(SearchHook):  # runs after the shifting hook, on the same candidates
        def on_candidate(self, candidate: Candidate) -> None:
            trained.append(candidate.arch)

    supernet = _supernet(space)
    before = {k: v.detach().clone() for k, v in supernet.state_dict().items()}
    result = run_search(supernet, digits, tmp_path, budgets, evolution=EVO, shift=SHIFT, scoring=SCORE,
                        strategy="nsga2", hooks=[Spy()])
    evaluated = [c for r in result.history for c in r.population]
    assert trained == [c.arch for c in evaluated] and {c.origin for c in evaluated} <= {"random", "offspring"}
    assert "offspring" in {c.origin for c in evaluated}
    assert result.info["shift"]["steps_taken"] == EVO.generations
    assert result.info["shift"]["candidates_trained"] == len(evaluated)
    assert any(not torch.equal(before[k], v) for k, v in supernet.state_dict().items())
    assert (tmp_path / "supernet.pt").is_file() and json.loads((tmp_path / "search.json").read_text())["front_summary"]


def test_run_search_resumes_a_shifting_nsga2_search_exactly(space, budgets, digits, tmp_path):
    evo = dataclasses.replace(EVO, generations=3)
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = run_search(_supernet(space), digits, full_dir, budgets, evolution=evo, shift=SHIFT, scoring=SCORE,
                      strategy="nsga2")

    class StopAt(SearchHook):
        def on_generation_end(self, record) -> None:
            if record.generation == 2:  # dies after generation 1's checkpoint, before generation 2's
                raise Interrupt

    with pytest.raises(Interrupt):
        run_search(_supernet(space), digits, cut_dir, budgets, evolution=evo, shift=SHIFT, scoring=SCORE,
                   strategy="nsga2", hooks=[StopAt()])
    with pytest.raises(CheckpointError, match="other settings"):
        run_search(_supernet(space), digits, cut_dir, budgets, evolution=evo, shift=SHIFT, scoring=SCORE,
                   resume=True)  # an evolution search cannot take over an NSGA-II checkpoint
    resumed = run_search(_supernet(space, seed=123), digits, cut_dir, budgets, evolution=evo, shift=SHIFT,
                         scoring=SCORE, strategy="nsga2", resume=True)  # loaded with weights_only=True
    assert _view(resumed) == _view(full)
    assert resumed.info["shift"] == full.info["shift"]


# ----- the command line ---------------------------------------------------------------------------------------

TRAIN_YAML = """\
space: {name: mbv3, width_mult: 0.25, head_channels: 32, kernels: [3, 5], expansions: [3]}
data: {name: digits}
train: {epochs: 1, batch_size: 32, steps_per_epoch: 2, val_archs: 0, device: cpu}
"""
PROFILE_YAML = """\
name: tiny-ort
device: cpu
runtime: onnxruntime
provider: CPUExecutionProvider
threads: 1
input_shape: [1, 8, 8]
measure: {warmup: 1, repeats: 3, trials: 1, statistic: median}
budgets: {latency_ms: 100.0}
"""


@pytest.mark.slow
def test_cli_search_with_nsga2_end_to_end_and_resume(tmp_path):
    from click.testing import CliRunner

    from edgenas.cli import cli
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import build_table
    from edgenas.supernet import load_checkpoint

    runner = CliRunner()
    (tmp_path / "train.yaml").write_text(TRAIN_YAML)
    profile = tmp_path / "tiny-ort.yaml"
    profile.write_text(PROFILE_YAML)
    res = runner.invoke(cli, ["train", "--config", str(tmp_path / "train.yaml"), "--out", str(tmp_path / "sn")])
    assert res.exit_code == 0, res.output
    supernet, _, _ = load_checkpoint(tmp_path / "sn" / "supernet.pt")
    table = build_table(supernet.space, load_profile(str(profile)), calib_samples=4, seed=0)
    table.save(tmp_path / "tables" / "t.json")
    args = ["search", "--profile", str(profile), "--supernet", str(tmp_path / "sn" / "supernet.pt"),
            "--tables-dir", str(tmp_path / "tables"), "--latency-quantile", "0.6", "--strategy", "nsga2",
            "--population", "4", "--mutations", "1", "--crossovers", "1", "--topk", "2", "--val-limit", "64",
            "--shift-batches", "1", "--device", "cpu", "--seed", "0", "--no-measure", "--json"]
    full = runner.invoke(cli, [*args, "--generations", "3", "--out", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    doc = json.loads(full.stdout)
    assert doc["strategy"] == "nsga2" and doc["shift"]["steps_taken"] == 3
    summary = doc["front_summary"]
    assert summary["cost"] == "latency_ms" and summary["reference"]["cost_from"] == "budget"
    budget = summary["reference"]["cost"]
    assert summary["hypervolume"] > 0 and all(f["cost"] <= budget for f in summary["front"])
    assert all(c["metrics"]["latency_ms"] <= budget for g in doc["generations"] for c in g["population"])
    # stopped after 2 generations, then extended to 3 with --resume: the same search as the one in one go
    part = runner.invoke(cli, [*args, "--generations", "2", "--out", str(tmp_path / "part")])
    assert part.exit_code == 0, part.output
    resumed = runner.invoke(cli, [*args, "--generations", "3", "--out", str(tmp_path / "part"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(resumed.stdout)
    assert again["front_summary"] == summary and again["topk"] == doc["topk"]
