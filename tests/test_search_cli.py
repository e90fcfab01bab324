"""`edgenas search` end to end on digits: train a tiny supernet, build its latency table, search."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgenas.cli import cli

SPACE_YAML = """\
space: {name: mbv3, width_mult: 0.25, head_channels: 32, kernels: [3, 5], expansions: [3]}
data: {name: digits}
train: {epochs: 1, batch_size: 32, steps_per_epoch: 3, val_archs: 0, device: cpu}
"""
PROFILE_YAML = """\
name: tiny-ort
device: cpu
runtime: onnxruntime
provider: CPUExecutionProvider
threads: 1
input_shape: [1, 8, 8]
measure: {warmup: 2, repeats: 5, trials: 1, statistic: median}
budgets: {latency_ms: 100.0}
"""
SEARCH = ["--population", "6", "--generations", "2", "--topk", "3", "--mutations", "2", "--crossovers", "2",
          "--val-limit", "64", "--shift-batches", "1", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_cli")
    runner = CliRunner()
    (root / "train.yaml").write_text(SPACE_YAML)
    profile = root / "tiny-ort.yaml"
    profile.write_text(PROFILE_YAML)
    res = runner.invoke(cli, ["train", "--config", str(root / "train.yaml"), "--out", str(root / "sn")])
    assert res.exit_code == 0, res.output
    return root, profile, runner


def test_search_needs_a_matching_table_and_says_how_to_build_it(setup):
    root, profile, runner = setup
    res = runner.invoke(cli, ["search", "--profile", str(profile), "--supernet", str(root / "sn" / "supernet.pt"),
                              "--tables-dir", str(root / "none"), "--out", str(root / "s0"), *SEARCH])
    assert res.exit_code == 2
    assert "no latency table" in res.stderr and "edgenas profile build --profile tiny-ort" in res.stderr


def test_search_writes_results_and_respects_the_budget(setup):
    root, profile, runner = setup
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import build_table
    from edgenas.supernet import load_checkpoint

    supernet, _, _ = load_checkpoint(root / "sn" / "supernet.pt")
    table = build_table(supernet.space, load_profile(str(profile)), calib_samples=4, seed=0)
    table.save(root / "tables" / "tiny.json")
    floor = table.predict(table.min_latency_arch(supernet.space))
    budget = floor * 1.3
    res = runner.invoke(cli, ["search", "--profile", str(profile), "--supernet", str(root / "sn" / "supernet.pt"),
                              "--tables-dir", str(root / "tables"), "--latency-ms", f"{budget:.6f}",
                              "--out", str(root / "s1"), "--json", *SEARCH])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (root / "s1" / "search.json").is_file() and (root / "s1" / "candidates.csv").is_file()
    rows = (root / "s1" / "candidates.csv").read_text().splitlines()
    assert "is_pareto" in rows[0] and len(rows) > 1
    latencies = [c["metrics"]["latency_ms"] for g in out["generations"] for c in g["population"]]
    assert latencies and max(latencies) <= budget + 1e-9
    # the finalists were timed end to end; the recommendation fits the budget as measured
    measured = out["measured"]
    assert [f["arch"] for f in measured["finalists"]] == [c["arch"] for c in out["topk"]]
    assert all(f["measured_ms"] > 0 and f["stats"]["n"] == 5 for f in measured["finalists"])
    fits = [f["arch"] for f in measured["finalists"] if f["measured_ms"] <= budget]
    assert measured["recommended"] == (fits[0] if fits else None)
    assert json.loads((root / "s1" / "search.json").read_text())["measured"] == measured
    too_tight = runner.invoke(cli, ["search", "--profile", str(profile), "--supernet",
                                    str(root / "sn" / "supernet.pt"), "--tables-dir", str(root / "tables"),
                                    "--latency-ms", f"{floor * 0.5:.6f}", "--out", str(root / "s2"), *SEARCH])
    assert too_tight.exit_code == 2 and "no architecture can meet the budget: latency_ms<=" in too_tight.stderr
    assert f"ms: the smallest is {floor:.4g} (mbv3@v1:" in too_tight.stderr
    assert len(too_tight.stderr.strip().splitlines()) == 1
    assert not (root / "s2" / "checkpoint.pt").exists()  # refused before any search started



def test_a_quantile_budget_is_resolved_on_the_table_and_recorded(setup):
    root, profile, runner = setup
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import LatencyTable, build_table, quantile_budget
    from edgenas.supernet import load_checkpoint

    supernet, _, _ = load_checkpoint(root / "sn" / "supernet.pt")
    path = root / "qtables" / "tiny.json"
    build_table(supernet.space, load_profile(str(profile)), calib_samples=4, seed=0).save(path)
    table = LatencyTable.load(path)
    base = ["search", "--profile", str(profile), "--supernet", str(root / "sn" / "supernet.pt"),
            "--tables-dir", str(root / "qtables"), "--no-measure", *SEARCH]
    res = runner.invoke(cli, [*base, "--latency-quantile", "0.3", "--out", str(root / "q1")])
    assert res.exit_code == 0, res.output
    budget = quantile_budget(table, supernet.space, 0.3)
    assert f"latency budget {budget:.4g} ms: the 0.3 quantile of predicted latency" in res.stderr
    doc = json.loads((root / "q1" / "search.json").read_text())
    assert doc["budgets"]["latency_ms"] == pytest.approx(budget) and doc["budgets"]["latency_quantile"] == 0.3
    latencies = [c["metrics"]["latency_ms"] for g in doc["generations"] for c in g["population"]]
    assert latencies and max(latencies) <= budget + 1e-9
    assert quantile_budget(table, supernet.space, 0.1) < budget < quantile_budget(table, supernet.space, 0.9)
    # proxy health: the noise of a score on the 64 validation images, and whether the top-k can be told apart
    health = doc["proxy_health"]
    assert health["images"] == 64 and health["topk_scores"] == [c["score"] for c in doc["topk"]]
    assert health["stderr"] == pytest.approx((max(doc["topk"][0]["score"] * (1 - doc["topk"][0]["score"]),
                                                  0.25 / 64) / 64) ** 0.5)
    if health["separable"]:
        assert "proxy health: score standard error" in res.stdout
    else:
        assert "warning: proxy health" in res.stderr and "--val-limit" in res.stderr
    both = runner.invoke(cli, [*base, "--latency-quantile", "0.3", "--latency-ms", "1", "--out", str(root / "q2")])
    assert both.exit_code == 2 and "--latency-ms or --latency-quantile, not both" in both.stderr
    bad = runner.invoke(cli, [*base, "--latency-quantile", "25", "--out", str(root / "q3")])
    assert bad.exit_code == 2 and "between 0 and 1 exclusive (e.g. 0.25), not 25" in bad.stderr
    assert "Traceback" not in bad.output and not (root / "q3" / "checkpoint.pt").exists()

def test_search_option_errors(setup):
    root, profile, runner = setup
    both = runner.invoke(cli, ["search", "--profile", str(profile), "--supernet", "a.pt", "--transfer-from", "b.pt"])
    assert both.exit_code == 2 and "exactly one of --supernet" in both.stderr
    nodata = runner.invoke(cli, ["search", "--profile", str(profile), "--transfer-from",
                                 str(root / "sn" / "supernet.pt")])
    assert nodata.exit_code == 2 and "needs --data" in nodata.stderr


def test_search_resize_sets_the_input_size_the_table_must_match(setup):
    root, profile, runner = setup
    res = runner.invoke(cli, ["search", "--profile", str(profile), "--transfer-from", str(root / "sn" / "supernet.pt"),
                              "--data", "digits", "--resize", "12", "--tables-dir", str(root / "none"),
                              "--out", str(root / "s3"), *SEARCH])
    assert res.exit_code == 2 and "at 1x12x12" in res.stderr and "--input-shape 1,12,12" in res.stderr


def test_strategy_scorer_and_warm_start_reach_the_search_from_the_cli(setup):
    root, profile, runner = setup
    from edgenas.hardware.profile import load_profile
    from edgenas.hardware.table import build_table
    from edgenas.supernet import load_checkpoint

    supernet, _, _ = load_checkpoint(root / "sn" / "supernet.pt")
    build_table(supernet.space, load_profile(str(profile)), calib_samples=2, seed=0).save(root / "wtables" / "t.json")
    res = runner.invoke(cli, ["search", "--profile", str(profile), "--supernet", str(root / "sn" / "supernet.pt"),
                              "--tables-dir", str(root / "wtables"), "--no-measure", "--strategy", "random",
                              "--scorer", "params", "--warm-start", "30", "--warm-proxy", "params",
                              "--out", str(root / "w1"), *SEARCH])
    assert res.exit_code == 0, res.output
    doc = json.loads((root / "w1" / "search.json").read_text())
    assert doc["strategy"] == "random" and doc["scorer"]["name"] == "params"
    assert all(c["origin"] in ("random", "rescore") for g in doc["generations"] for c in g["population"])
    warm = doc["warm_start"]
    assert warm["pool"] == 30 and warm["proxy"] == "params" and len(warm["proxy_scores"]) == 6
    first = sorted((c["score"] for c in doc["generations"][0]["population"]), reverse=True)
    assert first == pytest.approx(warm["proxy_scores"])  # generation 0 is the pool's best by the proxy
    bad = runner.invoke(cli, ["search", "--profile", str(profile), "--supernet", str(root / "sn" / "supernet.pt"),
                              "--tables-dir", str(root / "wtables"), "--warm-start", "3", "--out",
                              str(root / "w2"), *SEARCH])
    assert bad.exit_code == 2 and "must hold at least the population (6)" in bad.stderr
