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
