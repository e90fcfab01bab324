from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgenas.cli import cli

TINY = ["--space", "mbv3", "--width-mult", "0.25", "--data", "digits", "--epochs", "1", "--batch-size", "32",
        "--steps-per-epoch", "2", "--val-archs", "1", "--device", "cpu"]


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_stages(runner):
    out = runner.invoke(cli, ["--help"]).output
    for stage in ("data", "space", "train"):
        assert stage in out


def test_space_and_data_listing(runner):
    assert runner.invoke(cli, ["space", "list"]).output.split() == ["mbv3", "spos"]
    assert "digits" in runner.invoke(cli, ["data", "list"]).output
    shown = runner.invoke(cli, ["space", "show", "spos"])
    assert shown.exit_code == 0 and "20 layers" in shown.output and "MACs at 28x28" in shown.output
    sampled = runner.invoke(cli, ["space", "sample", "mbv3", "-n", "3", "--seed", "1"]).output.splitlines()
    assert len(sampled) == 3 and all(line.startswith("mbv3@v1:") for line in sampled)
    assert sampled == runner.invoke(cli, ["space", "sample", "mbv3", "-n", "3", "--seed", "1"]).output.splitlines()


def test_train_json_and_resume(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(cli, ["train", *TINY, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["data"] == "digits" and len(summary["epochs"]) == 1
    assert (out / "supernet.pt").is_file() and (out / "config.json").is_file()
    again = runner.invoke(cli, ["train", *TINY, "--out", str(out)])
    assert again.exit_code == 2 and "exists; pass --resume" in again.stderr
    longer = [("2" if prev == "--epochs" else a) for prev, a in zip(["", *TINY], TINY)]
    resumed = runner.invoke(cli, ["train", *longer, "--out", str(out), "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert [e["epoch"] for e in json.loads(resumed.stdout)["epochs"]] == [0, 1]


def test_train_weights_and_recipe_options(runner, tmp_path):
    res = runner.invoke(cli, ["train", *TINY, "--weights", "shared", "--recipe", "sandwich", "--sandwich-random", "1",
                              "--no-distill", "--out", str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "sw" / "supernet.json").read_text())
    assert meta["weights"] == "shared"
    assert meta["train"]["recipe"] == "sandwich" and meta["train"]["distill"] is False
    assert json.loads((tmp_path / "sw" / "config.json").read_text())["train"]["sandwich_random"] == 1
    spos = runner.invoke(cli, ["train", *TINY[2:], "--space", "spos", "--weights", "shared",
                               "--out", str(tmp_path / "sp")])
    assert spos.exit_code == 2 and "separate weights only" in spos.stderr and "Traceback" not in spos.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--data", "nope"], "unknown dataset 'nope'"),
        (["train", "--space", "nope", "--data", "digits"], "unknown search space 'nope'"),
        (["train", "--data", "npz:/does/not/exist.npz"], "exist.npz"),
        (["train", "--data", "digits", "--epochs", "0"], "epochs must be >= 1"),
        (["space", "show", "mbv3", "--preset", "huge"], "unknown mbv3 preset 'huge'"),
    ],
)
def test_bad_input_is_one_line_error(runner, tmp_path, args, message):
    res = runner.invoke(cli, [*args, *(["--out", str(tmp_path / "o")] if args[0] == "train" else [])])
    assert res.exit_code == 2
    assert message in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


def test_config_file_errors(runner, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train: {epochs: 1}\nsearch: {}\n")
    res = runner.invoke(cli, ["train", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown section 'search'" in res.stderr
    bad.write_text("train: {epoch: 1}\n")
    res = runner.invoke(cli, ["train", "--config", str(bad), "--data", "digits", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown key 'epoch'" in res.stderr
    bad.write_text("train: {epochs: 1\n")
    res = runner.invoke(cli, ["train", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "malformed YAML at line" in res.stderr


def test_corrupt_checkpoint_on_resume(runner, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "supernet.pt").write_bytes(b"not a checkpoint")
    res = runner.invoke(cli, ["train", *TINY, "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "corrupt or not an edgenas checkpoint" in res.stderr


def test_eval_scores_sampled_and_given_archs(runner, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(cli, ["train", *TINY, "--out", str(out)]).exit_code == 0
    ckpt = str(out / "supernet.pt")
    res = runner.invoke(cli, ["eval", "--supernet", ckpt, "--sample", "2", "--split", "test", "--device", "cpu",
                              "--json"])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout)
    assert len(scores) == 2 and all(s["count"] == 359 and 0 <= s["accuracy"] <= 1 for s in scores)
    arch = scores[0]["arch"]
    again = runner.invoke(cli, ["eval", "--supernet", ckpt, "--arch", arch, "--split", "test", "--device", "cpu",
                                "--json"])
    assert json.loads(again.stdout)[0] == scores[0]  # scoring is deterministic and leaves no trace
    wrong = runner.invoke(cli, ["eval", "--supernet", ckpt, "--arch", "spos@v1:0-0", "--device", "cpu"])
    assert wrong.exit_code == 2 and "belongs to space 'spos@v1'" in wrong.stderr
    none = runner.invoke(cli, ["eval", "--supernet", ckpt])
    assert none.exit_code == 2 and "nothing to score" in none.stderr
