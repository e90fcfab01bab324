"""Evolutionary search, budgets, Supernet Shifting, transfer and the run directory.

Loop mechanics use a duck-typed toy space (no torch) and dummy scorers; the supernet tests use a
tiny mbv3 space on the 8x8 digits set, a few candidates and one training batch each.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from edgenas.data import ArrayDataset, DatasetSplits
from edgenas.errors import CheckpointError, ConfigError
from edgenas.hardware.flops import count_flops
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
    SupernetShifting,
    budget_sampler,
    check_feasible,
    flops_cost,
    latency_cost,
    make_budget_constraints,
    params_cost,
    pareto_mask,
    run_search,
    transfer_supernet,
)
from edgenas.space import Arch, create_space
from edgenas.supernet import Supernet, load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions: one thread is faster, and immune to a busy shared machine's contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- a toy space: only the four capabilities evolution needs ---------------------------------------------


class ToySpace:
    """6 layers x 4 choices; not a SearchSpace subclass, to prove the loop needs only capabilities."""

    layers, choices = 6, 4

    def arch(self, choices: list[int]) -> Arch:
        return Arch("toy", 1, tuple(int(c) for c in choices))

    def sample(self, rng: np.random.Generator) -> Arch:
        return self.arch(rng.integers(self.choices, size=self.layers).tolist())

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float) -> Arch:
        out = [int(rng.integers(self.choices)) if rng.random() < prob else c for c in arch.choices]
        return self.arch(out)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        return self.arch([x if rng.random() < 0.5 else y for x, y in zip(a.choices, b.choices)])

    def validate(self, arch: Arch) -> Arch:
        assert arch.space == "toy" and len(arch.choices) == self.layers
        return arch


TARGET = (3, 1, 2, 0, 3, 2)


def toy_score(arch: Arch) -> float:
    return -float(sum((c - t) ** 2 for c, t in zip(arch.choices, TARGET)))


def toy_cost(arch: Arch) -> float:
    return float(sum(arch.choices))


SMALL = EvolutionConfig(population=12, generations=5, topk=4, mutations=4, crossovers=4, mutation_prob=0.3, seed=3)


def _view(result):
    """The reproducible part of a result (wall times excluded)."""
    return ([(c.arch, c.score, c.generation, c.index, c.origin, dict(c.metrics)) for c in result.candidates],
            [c.arch for c in result.topk], result.best.arch)


class Interrupt(Exception):
    pass


def test_population_composition_and_dedup():
    result = EvolutionarySearch(ToySpace(), toy_score, [], SMALL).run()
    assert len(result.history) == SMALL.generations
    prev_topk: set[Arch] = set()
    for record in result.history:
        archs = [c.arch for c in record.population]
        assert len(archs) == SMALL.population
        assert len(set(archs)) == len(archs)  # never evaluated twice in one generation
        assert not set(archs) & prev_topk  # nor a current top-k member
        origins = Counter(c.origin for c in record.population)
        if record.generation == 0:
            assert origins == {"random": SMALL.population}
        elif record.generation == 1:  # diverse parents: every child slot is filled
            assert origins["mutation"] == SMALL.mutations and origins["crossover"] == SMALL.crossovers
            assert origins["random"] == SMALL.population - SMALL.mutations - SMALL.crossovers
        else:  # converged parents may breed only known children; random fill-up makes up the rest
            assert origins["mutation"] <= SMALL.mutations and origins["crossover"] <= SMALL.crossovers
        prev_topk = {c.arch for c in record.topk}


def test_topk_is_best_of_everything_seen():
    result = EvolutionarySearch(ToySpace(), toy_score, [], dataclasses.replace(SMALL, rescore=False)).run()
    pool: dict[Arch, float] = {}
    for record in result.history:
        pool.update({c.arch: c.score for c in record.population})
        best = sorted(pool.values(), reverse=True)[: SMALL.topk]
        assert [c.score for c in record.topk] == best
    assert result.best.score == max(pool.values())
    assert len(result.candidates) == SMALL.population * SMALL.generations


def test_final_rescoring_uses_the_final_scorer_state():
    calls = {"n": 0}

    def drifting(arch: Arch) -> float:  # a scorer whose "weights" change over time
        calls["n"] += 1
        return toy_score(arch) + 1e-3 * calls["n"]

    result = EvolutionarySearch(ToySpace(), drifting, [], SMALL).run()
    rescored = [c for c in result.candidates if c.origin == "rescore"]
    assert len(rescored) == SMALL.topk and result.topk == sorted(rescored, key=lambda c: c.rank_key)
    assert all(c.generation == SMALL.generations for c in rescored)
    assert calls["n"] == SMALL.population * SMALL.generations + SMALL.topk


def test_budget_rejection_before_any_compute():
    limit = 8.0
    seen: list[Arch] = []

    def scorer(arch: Arch) -> float:
        assert toy_cost(arch) <= limit, f"illegal {arch} was scored"
        seen.append(arch)
        return toy_score(arch)

    class Watch(SearchHook):
        def on_candidate(self, candidate: Candidate) -> None:
            assert toy_cost(candidate.arch) <= limit

    budget = Budget("cost", toy_cost, limit)
    result = EvolutionarySearch(ToySpace(), scorer, [budget], SMALL, [Watch()]).run()
    assert sum(r.rejected.get("cost", 0) for r in result.history) > 0
    assert all(c.metrics["cost"] <= limit for c in result.candidates)
    assert len(seen) == len(result.candidates)


def test_deterministic_for_a_fixed_seed():
    a = EvolutionarySearch(ToySpace(), toy_score, [Budget("cost", toy_cost, 10.0)], SMALL).run()
    b = EvolutionarySearch(ToySpace(), toy_score, [Budget("cost", toy_cost, 10.0)], SMALL).run()
    c = EvolutionarySearch(ToySpace(), toy_score, [Budget("cost", toy_cost, 10.0)],
                           dataclasses.replace(SMALL, seed=4)).run()
    assert _view(a) == _view(b)
    assert _view(a) != _view(c)


class Counting(SearchHook):
    """A stateful hook, to check that hook state survives a resume."""

    state_key = "counting"

    def __init__(self) -> None:
        self.seen = 0

    def on_candidate(self, candidate: Candidate) -> None:
        self.seen += 1

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state) -> None:
        self.seen = int(state["seen"])


@pytest.mark.parametrize("stop_after", [0, 2])
def test_resume_equals_uninterrupted(stop_after):
    budgets = [Budget("cost", toy_cost, 10.0)]
    full_hook = Counting()
    full = EvolutionarySearch(ToySpace(), toy_score, budgets, SMALL, [full_hook]).run()

    saved: list[str] = []

    def checkpoint(search: EvolutionarySearch) -> None:
        saved.append(json.dumps(search.state_dict()))  # the loop's state is plain JSON
        if search.generation == stop_after + 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        EvolutionarySearch(ToySpace(), toy_score, budgets, SMALL, [Counting()]).run(checkpoint)
    hook = Counting()
    resumed = EvolutionarySearch(ToySpace(), toy_score, budgets, SMALL, [hook])
    resumed.load_state_dict(json.loads(saved[-1]))
    assert resumed.generation == stop_after + 1
    result = resumed.run()
    assert _view(result) == _view(full)
    assert hook.seen == full_hook.seen


def test_resume_refuses_other_settings():
    search = EvolutionarySearch(ToySpace(), toy_score, [], SMALL)
    search.run()
    state = search.state_dict()
    with pytest.raises(CheckpointError, match="topk"):
        EvolutionarySearch(ToySpace(), toy_score, [], dataclasses.replace(SMALL, topk=3)).load_state_dict(state)
    with pytest.raises(CheckpointError, match="hook state"):
        EvolutionarySearch(ToySpace(), toy_score, [], SMALL, [Counting()]).load_state_dict(state)
    longer = EvolutionarySearch(ToySpace(), toy_score, [], dataclasses.replace(SMALL, generations=7))
    longer.load_state_dict(state)  # extending a finished run is allowed
    assert len(longer.run().history) == 7


def test_infeasible_budget_errors():
    impossible = Budget("cost", toy_cost, 0.5)
    with pytest.raises(SearchError, match=r"cost<=0.5 rejected \d+, smallest seen \d"):
        EvolutionarySearch(ToySpace(), toy_score, [impossible], SMALL).run()
    floored = Budget("mflops", toy_cost, 0.5, floor=1.0, floor_arch=ToySpace().arch([0, 0, 0, 0, 0, 1]))
    with pytest.raises(SearchError, match=r"mflops<=0.5: the smallest is 1 \(toy@v1:0-0-0-0-0-1\)"):
        check_feasible([floored])
    additive = AdditiveCost(0.5, ((0.0, 1.0), (0.25, 2.0)))  # no floor given: computed from the table sum
    with pytest.raises(SearchError, match=r"sum<=0.6: the smallest is 0.75 \(choices 0-0\)"):
        check_feasible([Budget("sum", additive, 0.6)])


def test_capabilities_and_config_are_checked_up_front():
    class NoCrossover:
        def sample(self, rng): ...
        def mutate(self, arch, rng, prob): ...
        def validate(self, arch): ...

    with pytest.raises(SearchError, match="has no crossover"):
        EvolutionarySearch(NoCrossover(), toy_score)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mutations \\+ crossovers"):
        EvolutionConfig(population=10, mutations=6, crossovers=6)
    with pytest.raises(ConfigError, match="topk"):
        EvolutionConfig(population=5, topk=6, mutations=1, crossovers=1)


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        costs = rng.integers(0, 6, n).astype(float).tolist()  # many ties on purpose
        scores = rng.integers(0, 6, n).astype(float).tolist()
        brute = [not any(costs[j] <= costs[i] and scores[j] >= scores[i]
                         and (costs[j] < costs[i] or scores[j] > scores[i]) for j in range(n)) for i in range(n)]
        assert pareto_mask(costs, scores) == brute
    assert pareto_mask([1.0, 2.0], [math.nan, 0.5]) == [False, True]


# ----- cost models -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def space():
    return create_space("mbv3", "small", width_mult=0.25, head_channels=32, kernels=(3, 5), expansions=(3,))


@pytest.fixture(scope="module")
def budgets(space):
    # ~70th percentile of the tiny space's FLOPs at 8x8: tight enough to reject some candidates
    return make_budget_constraints(space, input_hw=(8, 8), in_channels=1, num_classes=10, mflops=0.105)


def test_additive_flops_and_params_equal_whole_subnet_counts(space, budgets):
    flops = flops_cost(space, (8, 8), 1, 10)
    params = params_cost(space, 1, 10)
    rng = np.random.default_rng(1)
    for arch in [space.sample(rng), space.sample(rng)]:
        subnet = space.build_subnet(arch, 10, 1)
        assert flops(arch) == pytest.approx(count_flops(subnet, (1, 1, 8, 8)).flops / 1e6, rel=1e-12)
        assert params(arch) == pytest.approx(sum(p.numel() for p in subnet.parameters()) / 1e6, rel=1e-12)
    low, choices = flops.minimum()
    assert low == pytest.approx(flops(space.arch(choices)))
    assert [b.name for b in budgets] == ["mflops", "params_m"]
    with pytest.raises(ConfigError, match="latency predictor"):
        make_budget_constraints(space, input_hw=(8, 8), in_channels=1, num_classes=10, latency_ms=1.0)


def test_budget_sampler_reaches_a_tight_budget(space, budgets):
    flops = budgets[0].cost  # the additive FLOPs model
    low, choices = flops.minimum()
    tight = Budget("mflops", flops, 0.065, low, space.arch(choices))
    check_feasible([tight])  # feasible: the floor is ~0.051, but under 0.5% of uniform samples fit
    cfg = EvolutionConfig(population=8, generations=2, topk=2, mutations=2, crossovers=2, max_tries=10)
    with pytest.raises(SearchError, match="budget_sampler"):
        EvolutionarySearch(space, flops, [tight], cfg).run()
    steered = EvolutionarySearch(space, flops, [tight], cfg, sampler=budget_sampler(space, [tight])).run()
    assert len(steered.history[0].population) == cfg.population
    assert all(c.metrics["mflops"] <= 0.065 for c in steered.candidates)
    assert budget_sampler(space, [dataclasses.replace(tight, limit=None)]) is None


class FakeTable:
    """The public surface of a calibrated latency table, over an additive model."""

    def __init__(self, rows, fixed, scale, offset, bend=0.0):
        self.rows, self.fixed, self.bend = rows, fixed, bend
        self.calibration = type("Cal", (), {"scale": scale, "offset_ms": offset})()

    def cost_rows(self):
        return [list(r) for r in self.rows]

    def predict_raw(self, arch):
        return self.fixed + sum(r[c] for r, c in zip(self.rows, arch.choices))

    def predict(self, arch):
        raw = self.predict_raw(arch)
        return self.calibration.scale * raw + self.calibration.offset_ms + self.bend * raw**2


def test_latency_table_as_additive_cost(space):
    rows = [[0.1 * (i + 1) + 0.05 * c for c in range(n)] for i, n in enumerate(space.num_choices)]
    table = FakeTable(rows, 0.7, 1.3, 0.2)
    cost = latency_cost(table, space)
    arch = space.sample(np.random.default_rng(5))
    assert cost(arch) == pytest.approx(table.predict(arch))
    [latency, *_] = make_budget_constraints(space, input_hw=(8, 8), in_channels=1, num_classes=10,
                                            latency_ms=100.0, latency=cost)
    assert latency.name == "latency_ms" and latency.floor == pytest.approx(table.predict(latency.floor_arch))
    assert latency.floor_arch == space.arch([0] * len(space.layers))
    with pytest.raises(ConfigError, match="not additive"):
        latency_cost(FakeTable(rows, 0.7, 1.3, 0.2, bend=0.01), space)


def test_impossible_budget_fails_before_any_compute(space, digits, tmp_path):
    budgets = make_budget_constraints(space, input_hw=(8, 8), in_channels=1, num_classes=10, mflops=0.02,
                                      params_m=0.001)
    with pytest.raises(SearchError, match=r"mflops<=0.02 MFLOPs: the smallest is 0.05144 \(mbv3@v1:.*params_m<=0.001"):
        run_search(_supernet(space), digits, tmp_path, budgets, evolution=EVO, shift=SHIFT, scoring=SCORE)
    assert not any(tmp_path.iterdir())


# ----- supernet pipeline ----------------------------------------------------------------------------------------

EVO = EvolutionConfig(population=4, generations=3, topk=2, mutations=1, crossovers=1, seed=0)
SCORE = ScoreConfig(recal_batches=1, batch_size=72)
SHIFT = ShiftConfig(batches_per_candidate=1, batch_size=32, lr=0.01)


def _supernet(space, seed: int = 0, weights: str = "separate") -> Supernet:
    torch.manual_seed(seed)
    return Supernet(space, 10, 1, weights)


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def shift_run(space, budgets, digits, tmp_path_factory):
    supernet = _supernet(space)
    before = _tensors(supernet)
    out = tmp_path_factory.mktemp("shift")
    result = run_search(supernet, digits, out, budgets, evolution=EVO, shift=SHIFT, scoring=SCORE)
    return result, before, _tensors(supernet), out


def test_shifting_changes_weights_steps_once_per_generation(shift_run):
    result, before, after, _ = shift_run
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.endswith("weight") for k in changed)
    assert result.info["shift"]["steps_taken"] == EVO.generations
    evaluated = sum(len(r.population) for r in result.history)
    assert result.info["shift"]["candidates_trained"] == evaluated


def test_budget_holds_for_every_evaluated_candidate(shift_run, budgets):
    result = shift_run[0]
    limit = budgets[0].limit
    assert all(c.metrics["mflops"] <= limit for c in result.candidates)
    assert sum(r.rejected.get("mflops", 0) for r in result.history) > 0


def test_no_shift_leaves_every_tensor_identical(space, budgets, digits, tmp_path):
    supernet = _supernet(space)
    before = _tensors(supernet)
    result = run_search(supernet, digits, tmp_path, budgets, evolution=EVO, shift=None, scoring=SCORE)
    after = _tensors(supernet)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert result.info["shift"] is None and not (tmp_path / "supernet.pt").exists()


def test_candidate_update_steps_after_every_candidate(space, budgets, digits, tmp_path):
    evo = dataclasses.replace(EVO, generations=2)
    result = run_search(_supernet(space), digits, tmp_path, budgets, evolution=evo,
                        shift=dataclasses.replace(SHIFT, update="candidate"), scoring=SCORE)
    evaluated = sum(len(r.population) for r in result.history)
    assert evaluated > evo.generations
    assert result.info["shift"]["steps_taken"] == evaluated == result.info["shift"]["candidates_trained"]


def test_resumed_search_ends_like_the_uninterrupted_one(space, budgets, digits, shift_run, tmp_path):
    full, _, full_weights, full_dir = shift_run

    class StopAt(SearchHook):
        def on_generation_end(self, record) -> None:
            if record.generation == 1:  # dies mid-way: generation 1 done but not checkpointed
                raise Interrupt

    with pytest.raises(Interrupt):
        run_search(_supernet(space), digits, tmp_path, budgets, evolution=EVO, shift=SHIFT, scoring=SCORE,
                   hooks=[StopAt()])
    with pytest.raises(CheckpointError, match="--resume"):
        run_search(_supernet(space), digits, tmp_path, budgets, evolution=EVO, shift=SHIFT, scoring=SCORE)
    with pytest.raises(CheckpointError, match="other settings"):
        run_search(_supernet(space), digits, tmp_path, budgets, evolution=EVO, shift=None, scoring=SCORE, resume=True)
    fresh = _supernet(space, seed=123)  # resume must not depend on the weights it is handed
    resumed = run_search(fresh, digits, tmp_path, budgets, evolution=EVO, shift=SHIFT, scoring=SCORE, resume=True)
    assert _view(resumed) == _view(full)
    assert resumed.info["shift"] == full.info["shift"]
    weights = _tensors(fresh)
    assert all(torch.equal(weights[k], full_weights[k]) for k in full_weights)

    def stable(path):
        doc = json.loads(path.read_text())
        for gen in doc["generations"]:
            gen.pop("seconds")
        doc.pop("seconds_this_session")
        doc["scorer"] = {k: v for k, v in doc["scorer"].items() if not k.endswith("_this_session")}
        return doc

    assert stable(tmp_path / "search.json") == stable(full_dir / "search.json")


def test_outputs(shift_run):
    result, _, _, out = shift_run
    doc = json.loads((out / "search.json").read_text())
    assert {"config", "seed", "generations", "topk", "best", "pareto", "shift", "evaluated"} <= doc.keys()
    assert doc["best"]["arch"] == result.best.arch.to_str() == doc["topk"][0]["arch"]
    assert {"mflops", "params_m", "accuracy", "loss"} <= doc["generations"][0]["population"][0]["metrics"].keys()
    assert doc["pareto"]["cost"] == "mflops"

    rows = list(csv.DictReader((out / "candidates.csv").open()))
    assert len(rows) == len(result.candidates) == doc["evaluated"]
    latest = [r for r in rows if r["is_latest"] == "1"]
    assert len(latest) == len({r["arch"] for r in rows})
    points = [(float(r["mflops"]), float(r["score"])) for r in latest]
    for r, (cost, score) in zip(latest, points):
        dominated = any(c <= cost and s >= score and (c < cost or s > score) for c, s in points)
        assert (r["is_pareto"] == "1") == (not dominated)
    assert all(r["is_pareto"] == "0" for r in rows if r["is_latest"] == "0")
    assert {r["arch"] for r in rows if r["is_pareto"] == "1"} == {c["arch"] for c in doc["pareto"]["front"]}
    assert (out / "candidates.png").stat().st_size > 1000
    assert (out / "supernet.pt").exists() and (out / "checkpoint.pt").exists()


def test_freeze_backbone_trains_only_the_classifier(space, digits):
    supernet = _supernet(space)
    before = _tensors(supernet)
    hook = SupernetShifting(supernet, digits, dataclasses.replace(SHIFT, freeze_backbone=True))
    arch = space.sample(np.random.default_rng(0))
    hook.train_candidate(arch, 0, 0)
    assert hook.step()
    after = _tensors(supernet)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.classifier.weight", "head.classifier.bias"}
    assert all(p.requires_grad for p in supernet.parameters())  # the freeze was undone


def _rgb_five_classes(digits: DatasetSplits) -> DatasetSplits:
    """Digits as 3-channel images with labels mod 5: another input layout and label set."""

    def convert(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(ds.images.repeat(1, 3, 1, 1), ds.labels % 5, ds.mean * 3, ds.std * 3)

    return dataclasses.replace(digits, name="digits-rgb5", train=convert(digits.train), val=convert(digits.val),
                               test=convert(digits.test), num_classes=5, in_channels=3,
                               class_names=tuple("01234"), mean=digits.mean * 3, std=digits.std * 3)


def test_transfer_replaces_head_and_adapts_stem(space, digits, tmp_path):
    source = _supernet(space)
    save_checkpoint(tmp_path / "src.pt", source, {"data": {"name": "digits"}})
    target = _rgb_five_classes(digits)
    moved = transfer_supernet(tmp_path / "src.pt", target, seed=0)
    supernet = moved.supernet
    assert supernet.head.classifier.out_features == 5 and supernet.num_classes == 5
    assert supernet.in_channels == 3 and "1 to 3 input channels" in moved.notes[0]
    assert "10 classes of digits -> 5" in moved.notes[1]
    # backbone weights carried over; the adapted stem answers a grey RGB image like the old one a grey image
    old, new = source.state_dict(), supernet.state_dict()
    assert all(torch.equal(v, new[k]) for k, v in old.items() if k.startswith("layers."))
    source.eval()
    supernet.eval()
    grey = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(supernet.stem(grey.repeat(1, 3, 1, 1)), source.stem(grey), rtol=1e-5, atol=1e-5)
    again = transfer_supernet(tmp_path / "src.pt", target, seed=0).supernet
    assert torch.equal(again.head.classifier.weight, supernet.head.classifier.weight)  # seeded
    # the shifting search trains the new head on the new data
    head = supernet.head.classifier.weight.detach().clone()
    result = run_search(supernet, target, tmp_path / "run", [], evolution=dataclasses.replace(EVO, generations=1),
                        shift=SHIFT, scoring=SCORE)
    assert not torch.equal(head, supernet.head.classifier.weight.detach())
    assert result.best.metrics["accuracy"] >= 0
    reloaded, meta, _ = load_checkpoint(tmp_path / "run" / "supernet.pt")  # a 3-channel, 5-class supernet
    assert (reloaded.in_channels, reloaded.num_classes, meta["data"]["name"]) == (3, 5, "digits-rgb5")
    reloaded.eval()
    supernet.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(reloaded(x, result.best.arch), supernet(x, result.best.arch))


def test_supernet_scoring_is_read_only_and_repeatable(space, digits):
    from edgenas.search import SupernetScorer

    supernet = _supernet(space)
    before = _tensors(supernet)
    scorer = SupernetScorer(supernet, digits, SCORE)
    arch = space.sample(np.random.default_rng(2))
    first = scorer(arch)
    assert scorer(arch) == first and scorer.evaluations == 2
    after = _tensors(supernet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert copy.deepcopy(first[1])["error"] == pytest.approx(1 - first[0])


def test_shift_budget_is_the_released_fraction_of_supernet_training():
    from edgenas.search.shifting import RELEASED_SHIFT, scaled_shift

    # the released setting itself: ~2% of SPOS's 120k x 1024 images over 1,000 candidates
    released = scaled_shift(120_000 * 1024, 0.5, 1024, 1000)
    assert released["fraction"] == pytest.approx(0.02, abs=0.005)
    # per-image learning rate relative to the supernet's peak is the released one (1e-4/150 vs 0.5/1024)
    ratio = (RELEASED_SHIFT["lr"] / 150) / (0.5 / 1024)
    assert released["lr"] / released["batch_size"] == pytest.approx(0.5 / 1024 * ratio, rel=0.01)
    demo = scaled_shift(60_000, 0.1, 128, 36)
    assert demo["batches_per_candidate"] == 1 and demo["batch_size"] == 33
    assert demo["fraction"] == pytest.approx(0.02, rel=0.05)
    floor = scaled_shift(10_000, 0.1, 128, 1000)  # tiny training, long search: one batch of 32 is the floor
    assert floor["batch_size"] == 32 and floor["fraction"] > 0.02
    with pytest.raises(ConfigError, match="positive"):
        scaled_shift(0, 0.1, 128, 10)


@pytest.mark.parametrize("update", ["generation", "candidate"])
def test_shifting_on_a_shared_supernet_trains_and_resumes_exactly(space, budgets, digits, tmp_path, update):
    evo = EVO
    shift = dataclasses.replace(SHIFT, update=update)
    supernet = _supernet(space, weights="shared")
    before = _tensors(supernet)
    full = run_search(supernet, digits, tmp_path / "full", budgets, evolution=evo, shift=shift, scoring=SCORE)
    after = _tensors(supernet)
    # the per-layer weights every choice slices moved (the stem and head too)
    assert not torch.equal(before["layers.0.block.expand.0.weight"], after["layers.0.block.expand.0.weight"])
    evaluated = sum(len(r.population) for r in full.history)
    assert full.info["shift"]["steps_taken"] == (evaluated if update == "candidate" else evo.generations)
    reloaded, _, _ = load_checkpoint(tmp_path / "full" / "supernet.pt")
    assert reloaded.weights == "shared"

    class StopAt(SearchHook):
        def on_generation_end(self, record) -> None:
            if record.generation == 1:  # generation 0 is checkpointed, generation 1 is lost
                raise Interrupt

    with pytest.raises(Interrupt):
        run_search(_supernet(space, weights="shared"), digits, tmp_path / "cut", budgets, evolution=evo, shift=shift,
                   scoring=SCORE, hooks=[StopAt()])
    fresh = _supernet(space, seed=7, weights="shared")
    resumed = run_search(fresh, digits, tmp_path / "cut", budgets, evolution=evo, shift=shift, scoring=SCORE,
                         resume=True)
    assert _view(resumed) == _view(full)
    weights = _tensors(fresh)
    assert all(torch.equal(weights[k], after[k]) for k in after)


def test_warm_start_serves_the_pool_best_first_and_resumes_exactly():
    from edgenas.search import WarmStart

    budgets = [Budget("cost", toy_cost, 10.0)]
    space = ToySpace()

    def make() -> WarmStart:
        return WarmStart(space, space.sample, toy_score, budgets, pool=40, count=SMALL.population, seed=5)

    warm = make()
    full = EvolutionarySearch(space, toy_score, budgets, SMALL, [warm], sampler=warm).run()
    first = [c for c in full.candidates if c.generation == 0]
    # generation 0 is the pool's best by the proxy (here the score itself), every one feasible
    assert sorted((c.score for c in first), reverse=True) == warm.scores and len(warm.scores) == 12
    assert all(toy_cost(c.arch) <= 10.0 for c in first) and warm.served == 12
    cold = EvolutionarySearch(space, toy_score, budgets, SMALL).run()
    cold_first = [c.score for c in cold.candidates if c.generation == 0]
    assert np.mean([c.score for c in first]) > np.mean(cold_first) + 1  # the best 12 of 40 beat 12 random ones

    saved: list[str] = []

    def checkpoint(search: EvolutionarySearch) -> None:
        saved.append(json.dumps(search.state_dict()))
        if search.generation == 2:
            raise Interrupt

    warm2 = make()
    with pytest.raises(Interrupt):
        EvolutionarySearch(space, toy_score, budgets, SMALL, [warm2], sampler=warm2).run(checkpoint)
    warm3 = make()
    resumed = EvolutionarySearch(space, toy_score, budgets, SMALL, [warm3], sampler=warm3)
    resumed.load_state_dict(json.loads(saved[-1]))
    assert warm3.queue == warm.queue and warm3.served == 12  # restored, not ranked again
    assert _view(resumed.run()) == _view(full)
    with pytest.raises(ConfigError, match="must hold at least the population"):
        WarmStart(space, space.sample, toy_score, budgets, pool=4, count=12)
