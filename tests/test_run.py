"""`edgenas run`: the whole pipeline on digits with a tiny space and a fast timing protocol."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgenas.cli import cli

PROFILE_YAML = """\
name: tiny-run
device: cpu
runtime: onnxruntime
provider: CPUExecutionProvider
threads: 1
input_shape: [1, 8, 8]
measure: {warmup: 2, repeats: 5, trials: 2, statistic: median}
budgets: {latency_ms: 100.0}
"""


def _args(root, **over):
    opts = {"--profile": str(root / "tiny-run.yaml"), "--data": "digits", "--width-mult": "0.25", "--epochs": "1",
            "--population": "4", "--generations": "2", "--topk": "2", "--mutations": "1", "--crossovers": "1",
            "--val-limit": "64", "--finetune-epochs": "1", "--tables-dir": str(root / "tables"), "--device": "cpu",
            "--out": str(root / "run"), **over}
    return [x for kv in opts.items() for x in kv]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    (root / "tiny-run.yaml").write_text(PROFILE_YAML)
    res = CliRunner().invoke(cli, ["run", *_args(root)])
    assert res.exit_code == 0, res.output
    return root, res


@pytest.mark.slow
def test_run_executes_every_stage_and_reports(finished):
    root, res = finished
    run = root / "run"
    log = json.loads((run / "stages.json").read_text())
    assert [k for k, v in log["stages"].items() if v["status"] == "done"] == [
        "train", "table", "search", "extract", "finetune", "export", "check"]
    assert all(v["seconds"] > 0 for v in log["stages"].values())
    bundle = run / "export" / "run"
    manifest = json.loads((bundle / "manifest.json").read_text())
    gate = manifest["int8"]  # shipped, or left out by the accuracy gate with its reason; never silently
    assert (bundle / "model.onnx").is_file() and (bundle / "model.int8.onnx").is_file() == (gate["status"] == "shipped")
    assert gate["status"] == "shipped" or gate["drop_points"] > gate["tolerance_points"]
    assert "baseline" in manifest and log["stages"]["check"]["exit_code"] in (0, 1, 3)  # 3: inconclusive
    search = json.loads((run / "search" / "search.json").read_text())
    assert manifest["arch"] == (search["measured"]["recommended"] or search["best"]["arch"])
    report = (run / "report.md").read_text()
    assert "fine-tuned: test accuracy" in report and "of 359 images" in report
    assert "![candidates](search/candidates.png)" in report and "| total |" in report
    assert "fine-tuned: test accuracy" in res.stdout and "report.md" in res.stdout


@pytest.mark.slow
def test_run_resume_skips_finished_stages_and_refuses_other_settings(finished):
    root, _ = finished
    again = CliRunner().invoke(cli, ["run", *_args(root), "--resume"])
    assert again.exit_code == 0, again.output
    assert again.stderr.count("done, skipped") == 7
    other = CliRunner().invoke(cli, ["run", *_args(root, **{"--epochs": "2"}), "--resume"])
    assert other.exit_code == 2 and "other settings (epochs)" in other.stderr
    fresh = CliRunner().invoke(cli, ["run", *_args(root)])
    assert fresh.exit_code == 2 and "pass --resume" in fresh.stderr


def test_run_refuses_a_torch_profile_and_a_missing_resume(tmp_path):
    res = CliRunner().invoke(cli, ["run", "--profile", "cpu-torch", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "times PyTorch modules, not ONNX files" in res.stderr
    res = CliRunner().invoke(cli, ["run", "--profile", "cpu-ort", "--out", str(tmp_path / "r"), "--resume"])
    assert res.exit_code == 2 and "nothing to resume" in res.stderr
    for args, message in ((["--latency-quantile", "0.2", "--latency-ms", "1"], "not both"),
                          (["--latency-quantile", "1.5"], "between 0 and 1 exclusive")):
        res = CliRunner().invoke(cli, ["run", "--profile", "cpu-ort", "--out", str(tmp_path / "q"), *args])
        assert res.exit_code == 2 and message in res.stderr
        assert not (tmp_path / "q").exists()  # refused before any stage started


# ----- one search, one bundle per budget ------------------------------------------------------------------------
def _doc(points):
    front = [{"arch": a, "score": s, "cost": c} for a, s, c in points]
    return {"front_summary": {"cost": "latency_ms", "front": front}}


def test_each_budget_gets_the_front_s_most_accurate_model_that_fits():
    from edgenas.pipeline.budgets import pick_per_budget

    doc = _doc([("c", 0.80, 3.0), ("a", 0.60, 1.0), ("b", 0.70, 2.0), ("b2", 0.70, 2.5)])
    picks = pick_per_budget(doc, [("1.5ms", 1.5), ("2.6ms", 2.6), ("9ms", 9.0), ("2.7ms", 2.7)])
    assert [(p.label, p.arch, p.predicted_ms) for p in picks] == [
        ("1.5ms", "a", 1.0), ("2.6ms", "b", 2.0), ("9ms", "c", 3.0), ("2.7ms", "b", 2.0)]  # a tie: the cheaper
    assert [p.folder for p in picks] == ["1.5ms", "2.6ms", "9ms", "2.6ms"]  # one bundle serves both 2.6 and 2.7
    with pytest.raises(Exception, match=r"no model of the search's front fits budget 0.5ms .*cheapest predicts 1 ms"):
        pick_per_budget(doc, [("0.5ms", 0.5)])
    with pytest.raises(Exception, match="over mflops, not predicted latency"):
        pick_per_budget({"front_summary": {"cost": "mflops", "front": [{"arch": "a", "score": 1, "cost": 1}]}},
                        [("1ms", 1.0)])


@pytest.mark.parametrize(("args", "message"), [
    (["--budgets", "0.1,0.2", "--budget-quantiles", "0.5"], "not both"),
    (["--budgets", "0.1", "--latency-ms", "1"], "replace --latency-ms"),
    (["--budgets", "0.1,-2"], "positive numbers"),
    (["--budgets", "0.1,x"], "numbers separated by commas"),
    (["--budgets", "0.2", "--budgets", "0.2"], "names a budget twice"),
    (["--budget-quantiles", "0.2,1.5"], "between 0 and 1 exclusive"),
    (["--budgets", "0.2", "--strategy", "annealing"], "unknown search strategy 'annealing'"),
])
def test_bad_budget_options_are_refused_before_any_stage(tmp_path, args, message):
    res = CliRunner().invoke(cli, ["run", "--profile", "cpu-ort", "--out", str(tmp_path / "q"), *args])
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def budgets_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("budgets")
    (root / "tiny-run.yaml").write_text(PROFILE_YAML)
    args = _args(root, **{"--budget-quantiles": "0.3,0.95", "--population": "6", "--generations": "2"})
    res = CliRunner().invoke(cli, ["run", *args])
    assert res.exit_code == 0, res.output
    return root, args, res


@pytest.mark.slow
def test_run_with_budgets_ships_one_checked_bundle_per_budget(budgets_run):
    root, args, res = budgets_run
    run = root / "run"
    search = json.loads((run / "search" / "search.json").read_text())
    assert search["config"]["strategy"] == "nsga2" and search["front_summary"]["front"]
    summary = json.loads((run / "budgets.json").read_text())
    rows = summary["budgets"]
    assert [r["label"] for r in rows] == ["q0.3", "q0.95"] and rows[0]["budget_ms"] < rows[1]["budget_ms"]
    front = {f["arch"]: f for f in summary["front"]}
    for r in rows:
        assert r["predicted_ms"] <= r["budget_ms"] and r["arch"] in front  # a front point that fits its budget
        best = max(f["score"] for f in front.values() if f["cost"] <= r["budget_ms"])
        assert r["score"] == best
        folder = r["shared_with"] or r["label"]
        manifest = json.loads((run / "export" / f"run-{folder}" / "manifest.json").read_text())
        assert manifest["arch"] == r["arch"] and "baseline" in manifest  # extracted, exported, checked
        assert r["check"] in ("PASS", "REGRESSION", "INCONCLUSIVE") and 0 < r["finetuned_test_accuracy"] <= 1
        assert r["measured_ms"] == manifest["latency"]["model.onnx"]["median_ms"]
    csv_lines = (run / "budgets.csv").read_text().splitlines()
    assert csv_lines[0].startswith("label,budget_ms,arch") and len(csv_lines) == 3
    assert (run / "budgets.png").read_bytes()[:4] == b"\x89PNG"
    report = (run / "report.md").read_text()
    assert "One bundle per budget" in report and "| q0.3 (" in report and "extract@q0.3" in report
    assert "q0.95" in res.stdout and "budgets.csv" in res.stdout
    log = json.loads((run / "stages.json").read_text())
    assert log["settings"]["budget_quantiles"] == [0.3, 0.95]
    done = [k for k, v in log["stages"].items() if v["status"] == "done"]
    assert {"train", "table", "search", "extract@q0.3", "check@q0.3"} <= set(done)
    again = CliRunner().invoke(cli, ["run", *args, "--resume"])  # everything done: nothing reruns
    assert again.exit_code == 0 and "done, skipped" in again.stderr and "fine-tuning" not in again.stderr
    assert json.loads((run / "budgets.json").read_text())["budgets"] == rows
