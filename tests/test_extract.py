"""Extraction: the standalone subnet computes exactly what the supernet's path computed when scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgenas.cli import cli
from edgenas.data import DataConfig, iterate_batches, load_dataset
from edgenas.errors import CheckpointError, EdgenasError
from edgenas.extract import SUBNET_FORMAT, data_facts, extract_subnet, load_subnet, resolve_run, save_subnet
from edgenas.supernet import Supernet, recalibrated, save_checkpoint
from edgenas.torch_utils import recal_batches


def _trained_like(supernet: Supernet) -> Supernet:
    """Random but non-trivial BN statistics and weights, so equality tests mean something."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in supernet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return supernet


@pytest.mark.parametrize("weights", ["separate", "shared"])
def test_extracted_subnet_equals_the_supernet_path_it_was_scored_as(digits, tiny_mbv3, weights):
    supernet = _trained_like(Supernet(tiny_mbv3, digits.num_classes, digits.in_channels, weights))
    arch = tiny_mbv3.sample(np.random.default_rng(1))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    subnet = extract_subnet(supernet, arch, digits, recal=3, batch_size=64, seed=5, device=torch.device("cpu"))
    x, _ = next(iterate_batches(digits.test, 50, shuffle=False))
    batches = recal_batches(digits, 3, 64, 5, torch.device("cpu"), True)
    supernet.to(memory_format=torch.channels_last)  # as the scorer runs it
    with recalibrated(supernet, arch, batches):
        supernet.eval()
        expected = supernet(x.contiguous(memory_format=torch.channels_last), arch)
    got = subnet(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # no unused choices: one block per layer, and the supernet is untouched
    assert len(subnet.layers) == len(tiny_mbv3.layers)
    # (a shared supernet holds one largest block per layer, so a subnet is a smaller share of it)
    share = 1 / 3 if weights == "separate" else 1
    assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in supernet.parameters()) * share
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())


def test_subnet_checkpoint_round_trip_and_errors(tmp_path, digits, tiny_spos):
    supernet = Supernet(tiny_spos, digits.num_classes, digits.in_channels)
    arch = tiny_spos.sample(np.random.default_rng(0))
    subnet = extract_subnet(supernet, arch, digits, recal=1, batch_size=32)
    path = save_subnet(tmp_path / "s.pt", subnet, {"data": data_facts(digits, DataConfig(name="digits"))})
    loaded, meta, state = load_subnet(path)
    assert meta["format"] == SUBNET_FORMAT and meta["arch"] == arch.to_str() and state is None
    assert meta["data"]["class_names"] == list(digits.class_names)
    assert json.loads(path.with_suffix(".json").read_text())["arch_id"] == arch.arch_id
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), subnet.eval()(x))
    # a supernet checkpoint is refused with a hint; a corrupt file with one line
    save_checkpoint(tmp_path / "super.pt", supernet, {})
    with pytest.raises(CheckpointError, match="edgenas extract"):
        load_subnet(tmp_path / "super.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_subnet(tmp_path / "bad.pt")


def test_resolve_run_errors(tmp_path):
    with pytest.raises(EdgenasError, match="does not exist"):
        resolve_run(tmp_path / "missing")
    with pytest.raises(EdgenasError, match=r"no search\.json"):
        resolve_run(tmp_path)


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, digits):
    """A real (tiny) plain-SPOS search on digits, written the way `edgenas search` writes it."""
    from edgenas.search import EvolutionConfig, run_search
    from edgenas.space import create_space

    root = tmp_path_factory.mktemp("extract_run")
    space = create_space("mbv3", "small", width_mult=0.25, head_channels=32)
    supernet = _trained_like(Supernet(space, digits.num_classes, digits.in_channels))
    save_checkpoint(root / "supernet.pt", supernet, {"data": {"name": "digits"}})
    run_search(supernet, digits, root / "run", (), shift=None, device="cpu", data_config=DataConfig(name="digits"),
               evolution=EvolutionConfig(population=4, generations=1, topk=2, mutations=1, crossovers=1, seed=0),
               info={"source": str(root / "supernet.pt")})
    return root


def test_extract_cli_writes_a_subnet_that_scores_like_the_search(search_run, tiny_spos):
    run = search_run / "run"
    res = CliRunner().invoke(cli, ["extract", str(run), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    best = json.loads((run / "search.json").read_text())["best"]
    assert doc["arch"] == best["arch"] and doc["path"] == str(run / "subnet.pt")
    assert doc["inherited"]["test"]["count"] > 300  # the whole digits test split
    subnet, meta, _ = load_subnet(run / "subnet.pt")
    assert subnet.arch.to_str() == best["arch"] and meta["source"]["supernet"].endswith("supernet.pt")
    # an architecture of another space is refused with one line
    other = tiny_spos.sample(np.random.default_rng(0)).to_str()
    res = CliRunner().invoke(cli, ["extract", str(run), "--arch", other, "--out", str(search_run / "x.pt")])
    assert res.exit_code == 2 and "does not belong to the searched space" in res.stderr
    res = CliRunner().invoke(cli, ["extract", str(search_run / "nope")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "does not exist" in res.stderr


def test_extract_pareto_spreads_models_along_the_front(search_run, tmp_path):
    from edgenas.pipeline.extract import spread_along_front

    run = search_run / "run"
    doc = json.loads((run / "search.json").read_text())
    front = [{"arch": f"a{i}", "score": 0.5 + i / 10, "cost": float(i)} for i in range(5)]
    picks = spread_along_front({"front_summary": {"cost": "latency_ms", "front": front[::-1]}}, 3)
    assert [p["arch"] for p in picks] == ["a0", "a2", "a4"] and picks[0]["cost_key"] == "latency_ms"
    assert len(spread_along_front({"front_summary": {"cost": "x", "front": front}}, 9)) == 5
    with pytest.raises(EdgenasError, match="no cost"):
        spread_along_front({"pareto": {"cost": None, "front": []}}, 2)
    with pytest.raises(EdgenasError, match="no cost"):  # the fixture's search had no budget
        spread_along_front(doc, 2)
    # a search under a FLOPs budget records its front
    from edgenas.search import EvolutionConfig, make_budget_constraints, run_search
    from edgenas.supernet import load_checkpoint

    supernet, _, _ = load_checkpoint(search_run / "supernet.pt")
    data = load_dataset(DataConfig(name="digits", seed=0))
    budget = make_budget_constraints(supernet.space, input_hw=(8, 8), in_channels=1, num_classes=10, mflops=1.0)
    run = tmp_path / "run"
    run_search(supernet, data, run, budget, shift=None, device="cpu", data_config=DataConfig(name="digits"),
               evolution=EvolutionConfig(population=6, generations=1, topk=2, mutations=1, crossovers=1, seed=0),
               info={"source": str(search_run / "supernet.pt")})
    doc = json.loads((run / "search.json").read_text())
    res = CliRunner().invoke(cli, ["extract", str(run), "--pareto", "2", "--out", str(tmp_path / "p"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    listing = json.loads((tmp_path / "p" / "pareto.json").read_text())
    key = doc["pareto"]["cost"]
    expected = sorted(doc["pareto"]["front"], key=lambda c: (c["metrics"][key], -c["score"]))
    assert listing["cost"] == key and listing["models"][0]["arch"] == expected[0]["arch"]
    assert len(listing["models"]) == min(2, len(expected))
    for model in listing["models"]:
        subnet, meta, _ = load_subnet(model["path"])
        assert subnet.arch.to_str() == model["arch"] and meta["front"]["cost"] == model["cost"]
    both = CliRunner().invoke(cli, ["extract", str(run), "--pareto", "2", "--arch", expected[0]["arch"]])
    assert both.exit_code == 2 and "--arch or --pareto" in both.stderr
