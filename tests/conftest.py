"""Shared fixtures: tiny spaces and the offline digits dataset, so the suite runs in minutes on 2 cores."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: on a 2-core machine that also runs other work, OpenMP spinning with 2 threads made
# the suite 5-10x slower; on an idle machine the difference is small.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from edgenas.data import DataConfig, load_dataset

    return load_dataset(DataConfig(name="digits", seed=0))


@pytest.fixture
def tiny_mbv3():
    from edgenas.space import create_space

    return create_space("mbv3", "small", width_mult=0.25, head_channels=64)


@pytest.fixture
def tiny_spos():
    from edgenas.space import create_space

    return create_space("spos", "small", width_mult=0.25, depths=(2, 2, 2, 1), head_channels=64)


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.fixture
def randomise_bn():
    """Give every batch norm non-trivial statistics and affine weights, so equality tests cannot pass by accident."""
    return _randomise_bn
