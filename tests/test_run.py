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
    assert res.exit_code == 2 and "choose an onnxruntime profile" in res.stderr
    res = CliRunner().invoke(cli, ["run", "--profile", "cpu-ort", "--out", str(tmp_path / "r"), "--resume"])
    assert res.exit_code == 2 and "nothing to resume" in res.stderr
    for args, message in ((["--latency-quantile", "0.2", "--latency-ms", "1"], "not both"),
                          (["--latency-quantile", "1.5"], "between 0 and 1 exclusive")):
        res = CliRunner().invoke(cli, ["run", "--profile", "cpu-ort", "--out", str(tmp_path / "q"), *args])
        assert res.exit_code == 2 and message in res.stderr
        assert not (tmp_path / "q").exists()  # refused before any stage started
