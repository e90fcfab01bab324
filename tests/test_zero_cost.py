"""Zero-cost proxies: the formulas on networks small enough to work by hand, determinism, and the scorer contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgenas.errors import ConfigError
from edgenas.search.scoring import SCORERS
from edgenas.search.zero_cost import ZeroCostScorer, naswot_score, synflow_score
from edgenas.space import create_space
from edgenas.supernet import Supernet


def _linear(weight, bias=None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def test_naswot_is_log_det_of_the_agreement_kernel_by_hand():
    # one ReLU over 3 units; its input is x itself, so the codes are the signs of the images
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    x = torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
    codes = (x > 0).double()
    k = codes @ codes.T + (1 - codes) @ (1 - codes).T  # agreements: diag 3, off-diagonal 1, 1, 0... by hand:
    assert k.tolist() == [[3, 1, 1], [1, 3, 1], [1, 1, 3]]
    expected = math.log(np.linalg.det(np.array(k.tolist()) + 1e-3 * np.eye(3)))
    assert naswot_score(model, x) == pytest.approx(expected, rel=1e-9)


def test_naswot_prefers_a_network_that_separates_its_inputs():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    separating = nn.Sequential(_linear(np.eye(4)), nn.ReLU())
    collapsing = nn.Sequential(_linear(np.zeros((4, 4)), np.ones(4)), nn.ReLU())  # every image: all units on
    assert naswot_score(separating, x) > naswot_score(collapsing, x) + 10
    with pytest.raises(ConfigError, match="at least 2 images"):
        naswot_score(separating, x[:1])


def test_synflow_of_a_linear_chain_is_twice_its_output():
    # R = 1^T |W2| |W1| 1 and, by synaptic-flow conservation, each layer's sum |theta dR/dtheta| equals R
    w1 = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]])
    w2 = np.array([[2.0, -1.0, 0.5]])
    model = nn.Sequential(nn.Flatten(), _linear(w1), _linear(w2))
    r = float(np.ones(1) @ np.abs(w2) @ np.abs(w1) @ np.ones(2))
    assert synflow_score(model, (1, 1, 2)) == pytest.approx(math.log10(2 * r), rel=1e-12)


@pytest.fixture(scope="module")
def supernet():
    space = create_space("mbv3", "small", width_mult=0.25, head_channels=32, kernels=(3, 5), expansions=(3,))
    return Supernet(space, 10, 1, "shared")


@pytest.mark.parametrize("proxy", ["naswot", "synflow"])
def test_zero_cost_scorers_are_deterministic_and_leave_the_supernet_alone(proxy, supernet, digits):
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    torch.manual_seed(123)
    rng_state = torch.random.get_rng_state()
    scorer = SCORERS.get(proxy)(supernet, digits, None, seed=0)
    archs = [supernet.space.sample(np.random.default_rng(s)) for s in range(4)]
    scores = [scorer(a) for a in archs]
    assert all(math.isfinite(s) and m == {proxy: s} for s, m in scores)
    assert len({s for s, _ in scores}) == 4  # different architectures, different scores
    assert [scorer(a) for a in archs] == scores and scorer.evaluations == 8
    again = SCORERS.get(proxy)(supernet, digits, None, seed=0)
    assert again(archs[0]) == scores[0]
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's RNG is untouched
    assert all(torch.equal(v, before[k]) for k, v in supernet.state_dict().items())


def test_zero_cost_scorer_errors(supernet, digits):
    with pytest.raises(ConfigError, match="unknown zero-cost proxy 'nope'"):
        ZeroCostScorer(supernet, digits, "nope")
    with pytest.raises(ConfigError, match="batch size must be >= 2"):
        ZeroCostScorer(supernet, digits, "naswot", batch_size=1)


def test_flatness_is_the_loss_increase_under_perturbation_and_restores_the_weights(supernet, digits):
    from edgenas.search.flatness import FlatnessScorer
    from edgenas.search.scoring import ScoreConfig

    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    scorer = FlatnessScorer(supernet, digits, ScoreConfig(recal_batches=1, batch_size=128), seed=0, sigma=0.05)
    arch = supernet.space.sample(np.random.default_rng(0))
    score, metrics = scorer(arch)
    assert math.isfinite(score) and score == pytest.approx(-(metrics["perturbed_loss"] - metrics["loss"]))
    assert all(torch.equal(v, before[k]) for k, v in supernet.state_dict().items())  # restored exactly
    assert scorer(arch) == (score, metrics)  # the same perturbations every time
    stronger = FlatnessScorer(supernet, digits, ScoreConfig(recal_batches=1, batch_size=128), seed=0, sigma=0.5)
    assert stronger(arch)[1]["perturbed_loss"] != metrics["perturbed_loss"]
    assert "flatness" in SCORERS.names()
    with pytest.raises(ConfigError, match="sigma"):
        FlatnessScorer(supernet, digits, sigma=0)
