from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgenas.errors import SpaceError
from edgenas.space import Arch, create_space, list_spaces, space_from_dict, space_to_dict


def test_registry_lists_and_rejects_unknown():
    assert list_spaces() == ["mbv3", "spos"]
    with pytest.raises(SpaceError, match="unknown search space 'nope'; known: mbv3, spos"):
        create_space("nope")
    with pytest.raises(SpaceError, match="unknown mbv3 preset"):
        create_space("mbv3", "huge")
    with pytest.raises(SpaceError, match="bad config for space 'mbv3'"):
        create_space("mbv3", width=3)


@pytest.mark.parametrize("name", ["mbv3", "spos"])
def test_arch_round_trips_through_string_and_json(name):
    space = create_space(name)
    rng = np.random.default_rng(1)
    for _ in range(20):
        arch = space.sample(rng)
        assert space.parse(arch.to_str()) == arch
        assert Arch.from_json(json.loads(json.dumps(arch.to_json()))) == arch
        assert len(arch.arch_id) == 12 and arch.arch_id == Arch.from_str(str(arch)).arch_id


def test_arch_string_errors_are_one_line():
    space = create_space("mbv3")
    with pytest.raises(SpaceError, match="cannot parse architecture"):
        space.parse("mbv3:1-x-3")
    with pytest.raises(SpaceError, match="belongs to space 'spos@v1', not 'mbv3@v1'"):
        space.parse("spos@v1:" + "-".join(["0"] * 11))
    with pytest.raises(SpaceError, match="has 3 layers; space mbv3 has 11"):
        space.parse("mbv3@v1:0-0-0")
    bad = ["0"] * 11
    bad[0] = "9"  # first layer of a stage has no skip: 9 choices, indices 0..8
    with pytest.raises(SpaceError, match="layer 0 has 9 choices, got index 9"):
        space.parse("mbv3@v1:" + "-".join(bad))


def test_mbv3_choice_structure():
    space = create_space("mbv3")
    first_layers = [s for s in space.layers if s.index == 0 or s.stage != space.layers[s.index - 1].stage]
    assert all("skip" not in spec.choices and len(spec.choices) == 9 for spec in first_layers)
    others = [spec for spec in space.layers if spec not in first_layers]
    assert all(spec.choices[-1] == "skip" and len(spec.choices) == 10 for spec in others)
    assert space.layers[0].choices[:3] == ("k3e3", "k3e4", "k3e6")
    spos = create_space("spos")
    assert {spec.choices for spec in spos.layers} == {("shuffle3", "shuffle5", "shuffle7", "xception")}
    assert [spec.stride for spec in spos.layers if spec.stride == 2] == [2, 2, 2, 2]


@pytest.mark.parametrize("name", ["mbv3", "spos"])
def test_mutation_and_crossover_stay_in_space(name):
    space = create_space(name)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(200):
        a, b = space.sample(rng), space.sample(rng)
        m = space.mutate(a, rng, prob=0.3)
        c = space.crossover(a, b, rng)
        space.validate(m)
        space.validate(c)
        assert all(x in (p, q) for x, p, q in zip(c.choices, a.choices, b.choices))
        changed += sum(x != y for x, y in zip(m.choices, a.choices))
    # each layer mutates with probability 0.3 and a mutated layer always changes
    expected = 200 * len(space.layers) * 0.3
    assert 0.85 * expected < changed < 1.15 * expected
    a = space.sample(rng)
    assert space.mutate(a, rng, prob=0.0) == a


def test_sampling_is_deterministic_for_a_seed():
    space = create_space("mbv3")
    first = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    again = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    assert first == again
    assert space.sample(np.random.default_rng(8)) != first[0]


def _hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of convolutions and linear layers counted from real output shapes during a forward."""
    total = 0

    def conv_hook(mod, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    def linear_hook(mod, inp, out):
        nonlocal total
        total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name,preset,size", [("mbv3", "small", 28), ("spos", "small", 32), ("mbv3", "imagenet", 224)])
def test_closed_form_macs_match_counted_macs(name, preset, size):
    space = create_space(name, preset, width_mult=0.5)
    rng = np.random.default_rng(3)
    for _ in range(3):
        arch = space.sample(rng)
        net = space.build_subnet(arch, 10, 3)
        assert space.macs(arch, (size, size), 3, 10) == _hook_macs(net, torch.zeros(1, 3, size, size))


def test_flops_bin_sampling_covers_the_range():
    space = create_space("mbv3")
    hw = (28, 28)
    table = space.macs_table(hw)
    lo, hi = sum(min(r) for r in table), sum(max(r) for r in table)
    rng = np.random.default_rng(0)
    costs = [sum(row[c] for row, c in zip(table, space.sample_flops_uniform(rng, hw, bins=5).choices))
             for _ in range(100)]
    bins = np.histogram(costs, bins=5, range=(lo, hi))[0]
    assert bins.min() >= 8, bins  # every bin hit, roughly uniformly (20 expected each)
    uniform = [sum(row[c] for row, c in zip(table, space.sample(rng).choices)) for _ in range(100)]
    assert np.histogram(uniform, bins=5, range=(lo, hi))[0][0] < bins[0]  # uniform rarely reaches the cheapest bin


def test_space_dict_round_trip_and_hash_mismatch():
    space = create_space("spos", "small", width_mult=0.5)
    d = space_to_dict(space)
    assert space_from_dict(json.loads(json.dumps(d))).config_hash() == space.config_hash()
    d["hash"] = "0" * 16
    with pytest.raises(SpaceError, match="config hash mismatch"):
        space_from_dict(d)


@pytest.mark.parametrize("name", ["mbv3", "spos"])
@pytest.mark.parametrize("preset,size", [("small", 28), ("imagenet", 224)])
def test_every_choice_runs_forward_and_backward(name, preset, size):
    """Paths that together use every choice of every layer, at 28x28 and 224x224."""
    from edgenas.supernet import Supernet

    space = create_space(name, preset, width_mult=0.25, head_channels=32)
    net = Supernet(space, num_classes=10, in_channels=1, weights="separate")
    x = torch.randn(2 if size < 100 else 1, 1, size, size)
    for c in range(max(space.num_choices)):
        arch = space.arch([min(c, n - 1) for n in space.num_choices])
        net.zero_grad()
        out = net(x, arch)
        assert out.shape == (len(x), 10)
        out.sum().backward()
        for layer, choice in zip(net.layers, arch.choices):
            grads = [p.grad for p in layer[choice].parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
