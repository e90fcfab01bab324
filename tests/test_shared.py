"""Shared (weight-entangled) supernet: slicing parity, extraction parity, BN slicing, layout in checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgenas.errors import CheckpointError, ConfigError, SpaceError
from edgenas.space.blocks import InvertedResidual
from edgenas.space.elastic import ElasticInvertedResidual, SlicedBatchNorm2d, slice_like
from edgenas.supernet import Supernet, inherit_subnet, load_checkpoint, save_checkpoint, subnet_state_dict


def test_slice_like_takes_leading_channels_and_kernel_centre():
    w = torch.arange(4 * 3 * 5 * 5, dtype=torch.float32).reshape(4, 3, 5, 5)
    part = slice_like(w, (2, 3, 3, 3))
    assert torch.equal(part, w[:2, :, 1:4, 1:4])
    assert torch.equal(slice_like(torch.arange(6.0), (4,)), torch.arange(4.0))
    with pytest.raises(ValueError, match="cannot take"):
        slice_like(w, (5, 3, 3, 3))


@pytest.mark.parametrize("se", [False, True])
@pytest.mark.parametrize("train_mode", [False, True])
def test_every_choice_equals_a_plain_block_holding_its_slices(se, train_mode, randomise_bn):
    torch.manual_seed(0)
    choices = [(k, e) for k in (3, 5, 7) for e in (3, 4, 6)] + [None]
    layer = ElasticInvertedResidual(16, 16, 1, se, "hswish", choices)
    randomise_bn(layer)
    x = torch.randn(3, 16, 9, 9)
    for c, spec in enumerate(choices):
        if spec is None:
            assert layer.is_skip(c) and torch.equal(layer(x, c), x)
            continue
        plain = InvertedResidual(16, 16, *spec, 1, se, "hswish")
        source = layer.state_dict()
        plain.load_state_dict({k: slice_like(source[f"block.{k}"], v.shape) for k, v in plain.state_dict().items()})
        layer.train(train_mode)
        plain.train(train_mode)
        with torch.no_grad():
            torch.testing.assert_close(layer(x, c), plain(x), rtol=1e-5, atol=1e-6)


def test_a_narrow_path_updates_only_its_slice_of_the_batch_norm():
    bn = SlicedBatchNorm2d(8)
    bn.train()
    before = bn.running_mean.clone()
    bn(torch.randn(4, 5, 3, 3) + 2.0)
    assert not torch.equal(bn.running_mean[:5], before[:5])
    assert torch.equal(bn.running_mean[5:], before[5:])
    with pytest.raises(ValueError, match="9 channels"):
        bn(torch.randn(1, 9, 2, 2))


def test_shared_is_the_mbv3_default_and_separate_stays_selectable(tiny_mbv3, tiny_spos):
    assert Supernet(tiny_mbv3, 10, 1).weights == "shared"
    assert Supernet(tiny_mbv3, 10, 1, "separate").weights == "separate"
    assert Supernet(tiny_spos, 10, 1).weights == "separate"
    with pytest.raises(SpaceError, match="separate weights only"):
        Supernet(tiny_spos, 10, 1, "shared")
    with pytest.raises(ConfigError, match="unknown supernet weights"):
        Supernet(tiny_mbv3, 10, 1, "tied")
    shared = sum(p.numel() for p in Supernet(tiny_mbv3, 10, 1).parameters())
    separate = sum(p.numel() for p in Supernet(tiny_mbv3, 10, 1, "separate").parameters())
    assert shared < separate / 3  # one block per layer instead of ten


def test_extracted_subnet_equals_the_shared_supernet_path(tiny_mbv3, randomise_bn):
    torch.manual_seed(0)
    supernet = Supernet(tiny_mbv3, 7, 3, "shared")
    randomise_bn(supernet)
    supernet.eval()
    x = torch.randn(4, 3, 28, 28)
    rng = np.random.default_rng(0)
    archs = [tiny_mbv3.sample(rng) for _ in range(4)]
    archs.append(tiny_mbv3.extreme_arch(tiny_mbv3.macs_table((28, 28))))  # skips wherever it can
    for arch in archs:
        subnet = inherit_subnet(supernet, arch).eval()
        assert set(subnet.state_dict()) == set(subnet_state_dict(supernet, arch))
        with torch.no_grad():
            torch.testing.assert_close(subnet(x), supernet(x, arch), rtol=1e-5, atol=1e-6)


def test_paths_share_weights_so_training_one_moves_another(tiny_mbv3):
    torch.manual_seed(0)
    supernet = Supernet(tiny_mbv3, 10, 1, "shared")
    n = len(tiny_mbv3.layers)
    small, large = tiny_mbv3.arch([0] * n), tiny_mbv3.arch([8] * n)  # k3e3 and k7e6 everywhere
    x = torch.randn(2, 1, 28, 28)
    supernet(x, small).sum().backward()
    grad = supernet.layers[0].block.expand[0].weight.grad
    mid = grad.abs().sum((1, 2, 3)) > 0
    assert mid.any() and not mid.all()  # the leading channels only
    supernet.zero_grad()
    supernet.eval()
    with torch.no_grad():
        before = supernet(x, large).clone()
        supernet.layers[0].block.expand[0].weight[:4] += 0.5  # a slice the small path also uses
        assert not torch.allclose(supernet(x, large), before)


def test_checkpoint_keeps_the_layout_and_old_files_load_as_separate(tmp_path, tiny_mbv3):
    net = Supernet(tiny_mbv3, 10, 1, "shared")
    path = save_checkpoint(tmp_path / "s.pt", net, {"epoch": 0})
    loaded, meta, _ = load_checkpoint(path)
    assert loaded.weights == "shared" and meta["weights"] == "shared"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    # a file written before the layout was recorded is a separate-weights supernet
    old = Supernet(tiny_mbv3, 10, 1, "separate")
    blob = {"model": old.state_dict(), "meta": {**meta, "weights": None}}
    blob["meta"].pop("weights")
    torch.save(blob, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[0].weights == "separate"
    # a shared file whose metadata claims separate weights does not load silently
    torch.save({"model": net.state_dict(), "meta": {**meta, "weights": "separate"}}, tmp_path / "lie.pt")
    with pytest.raises(CheckpointError, match="does not match its space"):
        load_checkpoint(tmp_path / "lie.pt")
    torch.save({"model": net.state_dict(), "meta": {**meta, "weights": "tied"}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unknown supernet weight layout 'tied'"):
        load_checkpoint(tmp_path / "bad.pt")
