"""Proxy health (score noise, top-k separability) and the rank check (`edgenas eval --rank-check`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from edgenas.cli import cli
from edgenas.errors import ConfigError
from edgenas.proxy import accuracy_stderr, bootstrap_rank_correlation, proxy_health, rank_check, spread_archs


def test_standard_error_of_an_accuracy():
    assert accuracy_stderr(0.9, 1000) == pytest.approx(math.sqrt(0.09 / 1000))
    assert accuracy_stderr(1.0, 100) > 0  # a perfect score on few images is still uncertain
    assert math.isnan(accuracy_stderr(0.5, 0))


def test_top_k_within_the_noise_is_not_separable_and_says_what_to_change():
    health = proxy_health([0.90, 0.899, 0.85], images=1000)
    assert not health.separable and health.tied_with_best == 2
    # images to separate a 0.1-point gap at 90%: 2 * 1.96^2 * 0.09 / 0.001^2
    assert health.images_needed == math.ceil(2 * 1.96**2 * 0.9 * 0.1 / 0.001**2)
    assert "--val-limit" in health.advice and "train the supernet longer" in health.advice
    assert "2 are within the noise of the best" in health.summary()
    clear = proxy_health([0.90, 0.85, 0.80], images=10000)
    assert clear.separable and clear.advice is None and clear.tied_with_best == 1
    whole = proxy_health([0.90, 0.899], images=6000, available=6000)
    assert "whole validation split is in use" in whole.advice


def test_bootstrap_rank_correlation():
    x = np.arange(10.0)
    same = bootstrap_rank_correlation(x, x * 2 + 1)
    assert same["kendall"] == pytest.approx((1.0, 1.0, 1.0)) and same["spearman"][0] == pytest.approx(1.0)
    rev = bootstrap_rank_correlation(x, -x)
    assert rev["kendall"][0] == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    noisy = bootstrap_rank_correlation(x, x + rng.normal(0, 3, 10))
    tau, low, high = noisy["kendall"]
    assert low < tau < high
    with pytest.raises(ConfigError, match="at least 3 pairs"):
        bootstrap_rank_correlation([1, 2], [1, 2])


def test_spread_archs_cover_the_mac_range(tiny_mbv3):
    archs = spread_archs(tiny_mbv3, 6, (28, 28), seed=0)
    assert len(archs) == 6 and len(set(archs)) == 6
    macs = [tiny_mbv3.macs(a, (28, 28), 1, 10) for a in archs]
    table = tiny_mbv3.macs_table((28, 28))
    lo, hi = sum(min(r) for r in table), sum(max(r) for r in table)
    fixed = tiny_mbv3.fixed_macs((28, 28), 1, 10)
    assert macs == sorted(macs)  # one per MAC bin, in order
    assert macs[0] - fixed < lo + (hi - lo) / 6 and macs[-1] - fixed >= lo + 5 * (hi - lo) / 6


def test_rank_check_caches_each_trained_architecture(tmp_path, tiny_mbv3, digits):
    from edgenas.supernet import Supernet

    supernet = Supernet(tiny_mbv3, digits.num_classes, digits.in_channels)
    archs = spread_archs(tiny_mbv3, 4, tuple(digits.input_size))
    calls = []

    def train(arch, where):
        calls.append(arch)
        return tiny_mbv3.macs(arch, (8, 8), 1, 10) / 1e6  # a stand-in "accuracy" that grows with size

    check = rank_check(supernet, digits, archs, tmp_path, train=train, recipe={"epochs": 1}, recal=1)
    assert len(calls) == 4 and [e.standalone for e in check.entries] == sorted(e.standalone for e in check.entries)
    assert -1 <= check.kendall[0] <= 1 and (tmp_path / "rank_check.json").is_file()
    rank_check(supernet, digits, archs, tmp_path, train=train, recipe={"epochs": 1}, recal=1)
    assert len(calls) == 4  # all cached
    rank_check(supernet, digits, archs, tmp_path, train=train, recipe={"epochs": 2}, recal=1)
    assert len(calls) == 8  # another recipe is retrained, never mixed


@pytest.mark.slow
def test_eval_rank_check_end_to_end(tmp_path):
    runner = CliRunner()
    (tmp_path / "t.yaml").write_text(
        "space: {name: mbv3, width_mult: 0.25, head_channels: 32, kernels: [3, 5], expansions: [3]}\n"
        "data: {name: digits}\ntrain: {epochs: 1, batch_size: 32, steps_per_epoch: 5, val_archs: 0, device: cpu}\n")
    trained = runner.invoke(cli, ["train", "--config", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "sn")])
    assert trained.exit_code == 0, trained.output
    args = ["eval", "--supernet", str(tmp_path / "sn" / "supernet.pt"), "--rank-check", "3", "--rank-epochs", "1",
            "--rank-train-limit", "256", "--recal", "2", "--rank-out", str(tmp_path / "rc")]
    res = runner.invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["entries"]) == 3 and set(doc["kendall_tau"]) == {"value", "ci_low", "ci_high"}
    assert all(0 <= e["standalone"] <= 1 and 0 <= e["inherited"] <= 1 for e in doc["entries"])
    assert doc["recipe"]["train_limit"] == 256 and doc["verdict"]
    again = runner.invoke(cli, args)  # cached: nothing retrained, same figures
    assert again.exit_code == 0 and f"Kendall tau {doc['kendall_tau']['value']:.3f}" in again.stdout
    bad = runner.invoke(cli, [*args[:4], "2"])
    assert bad.exit_code == 2 and "at least 3 architectures" in bad.stderr
    (tmp_path / "file").write_text("x")
    unwritable = runner.invoke(cli, [*args[:-1], str(tmp_path / "file" / "rc")])
    assert unwritable.exit_code == 2 and "cannot write the rank-check cache" in unwritable.stderr
