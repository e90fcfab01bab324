"""The bad-input matrix: every hostile or broken input a user can hand the CLI is one ``error:`` line
and exit 2 -- no traceback, no code run from the input, and nothing outside the output location
changed. One row per case; the fixtures are a real tiny supernet, search run, subnet and bundle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgenas.cli import cli

TINY = ["--space", "mbv3", "--width-mult", "0.25", "--data", "digits", "--epochs", "1", "--batch-size", "32",
        "--steps-per-epoch", "1", "--val-archs", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def made(tmp_path_factory, digits) -> Path:
    """supernet/ (trained one step), run/ (a finished search with subnet.pt) and export/b (a bundle)."""
    from edgenas.data import DataConfig
    from edgenas.search import EvolutionConfig, run_search
    from edgenas.supernet import load_checkpoint

    root = tmp_path_factory.mktemp("made")
    runner = CliRunner()
    res = runner.invoke(cli, ["train", *TINY, "--out", str(root / "supernet")])
    assert res.exit_code == 0, res.output
    supernet, _, _ = load_checkpoint(root / "supernet" / "supernet.pt")
    run_search(supernet, digits, root / "run", (), shift=None, device="cpu", data_config=DataConfig(name="digits"),
               evolution=EvolutionConfig(population=4, generations=1, topk=2, mutations=1, crossovers=1, seed=0),
               info={"source": str(root / "supernet" / "supernet.pt")})
    res = runner.invoke(cli, ["extract", str(root / "run"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["export", str(root / "run" / "subnet.pt"), "--name", "b", "--out-dir",
                              str(root / "export"), "--no-int8", "--no-measure", "--parity-images", "64"])
    assert res.exit_code == 0, res.output
    return root


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _edit_checkpoint(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    blob = torch.load(src, map_location="cpu", weights_only=True)
    edit(blob)
    torch.save(blob, dst)
    return dst


def _copy_run(made: Path, work: Path, edit_doc: Callable[[dict], None] | None = None,
              edit_supernet: Callable[[dict], None] | None = None) -> Path:
    run = work / "run"
    shutil.copytree(made / "run", run)
    doc = json.loads((run / "search.json").read_text())
    if edit_supernet is not None:
        doc["source"] = str(_edit_checkpoint(made / "supernet" / "supernet.pt", work / "broken.pt", edit_supernet))
        doc.pop("supernet", None)
    if edit_doc is not None:
        edit_doc(doc)
    (run / "search.json").write_text(json.dumps(doc))
    return run


class _Evil:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# A typed field holding nine levels of nine-fold aliases: 2 KB of YAML that stands for 9**9 strings.
ALIAS_BOMB = "device: [&a [x,x,x,x,x,x,x,x,x], " + ", ".join(
    f"&{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]" for p, c in zip("abcdefgh", "bcdefghi")
) + "]\n"
PROFILE = "name: p\ndevice: cpu\nruntime: onnxruntime\nprovider: CPUExecutionProvider\ninput_shape: [1, 8, 8]\n"


def _meta(key, value):
    def edit(blob):
        if value is _DROP:
            blob["meta"].pop(key)
        else:
            blob["meta"][key] = value
    return edit


_DROP = object()


# Each row: (id, build(made, work) -> argv, fragment of the one error line). ``work`` is a fresh
# folder for the row's inputs; the command's outputs go under work/out.
ROWS: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    # checkpoints with broken metadata, for every command that reads one
    ("eval: supernet meta without num_classes",
     lambda m, w: ["eval", "--supernet", str(_edit_checkpoint(m / "supernet/supernet.pt", w / "s.pt",
                                                              _meta("num_classes", _DROP))), "--sample", "1"],
     "num_classes"),
    ("eval: supernet num_classes 'ten'",
     lambda m, w: ["eval", "--supernet", str(_edit_checkpoint(m / "supernet/supernet.pt", w / "s.pt",
                                                              _meta("num_classes", "ten"))), "--sample", "1"],
     "num_classes"),
    ("eval: supernet model entry is a list",
     lambda m, w: ["eval", "--supernet", str(_edit_checkpoint(m / "supernet/supernet.pt", w / "s.pt",
                                                              lambda b: b.__setitem__("model", [1, 2]))),
                   "--sample", "1"],
     "not an edgenas supernet checkpoint"),
    ("extract: the run's supernet has num_classes 'ten'",
     lambda m, w: ["extract", str(_copy_run(m, w, edit_supernet=_meta("num_classes", "ten"))),
                   "--out", str(w / "out" / "s.pt")],
     "num_classes"),
    ("extract: the run's supernet model entry is a list",
     lambda m, w: ["extract", str(_copy_run(m, w, edit_supernet=lambda b: b.__setitem__("model", [1]))),
                   "--out", str(w / "out" / "s.pt")],
     "not an edgenas supernet checkpoint"),
    ("extract: search.json without config",
     lambda m, w: ["extract", str(_copy_run(m, w, edit_doc=lambda d: d.pop("config"))),
                   "--out", str(w / "out" / "s.pt")],
     "search.json"),
    ("extract: search.json config without space",
     lambda m, w: ["extract", str(_copy_run(m, w, edit_doc=lambda d: d["config"].pop("space"))),
                   "--out", str(w / "out" / "s.pt")],
     "search.json"),
    ("export: subnet num_classes 'ten'",
     lambda m, w: ["export", str(_edit_checkpoint(m / "run/subnet.pt", w / "s.pt", _meta("num_classes", "ten"))),
                   "--name", "x", "--out-dir", str(w / "out"), "--no-measure", "--no-int8"],
     "num_classes"),
    ("finetune: subnet without num_classes",
     lambda m, w: ["finetune", str(_edit_checkpoint(m / "run/subnet.pt", w / "s.pt", _meta("num_classes", _DROP))),
                   "--epochs", "1", "--out", str(w / "out" / "f.pt")],
     "num_classes"),
    ("eval: random bytes as a checkpoint",
     lambda m, w: (w / "r.pt").write_bytes(np.random.default_rng(0).bytes(4096)) and
     ["eval", "--supernet", str(w / "r.pt"), "--sample", "1"],
     "not a torch checkpoint"),
    ("eval: a pickle that would run code",
     lambda m, w: torch.save({"model": _Evil(w / "pwned"), "meta": {}}, w / "evil.pt") or
     ["eval", "--supernet", str(w / "evil.pt"), "--sample", "1"],
     "never unpickles"),
    # outputs that cannot be written, refused before any work
    ("train: --out under a file",
     lambda m, w: (w / "f").write_text("x") and ["train", *TINY, "--out", str(w / "f" / "o")],
     "cannot write"),
    ("search: --out under a file",
     lambda m, w: (w / "f").write_text("x") and
     ["search", "--supernet", str(m / "supernet/supernet.pt"), "--profile", "cpu-ort", "--out", str(w / "f" / "o")],
     "cannot write"),
    ("extract: --out under a file",
     lambda m, w: (w / "f").write_text("x") and ["extract", str(m / "run"), "--out", str(w / "f" / "s.pt")],
     "cannot write"),
    ("finetune: --out under a file",
     lambda m, w: (w / "f").write_text("x") and
     ["finetune", str(m / "run/subnet.pt"), "--epochs", "1", "--out", str(w / "f" / "x.pt")],
     "cannot write"),
    ("export: --out-dir under a file",
     lambda m, w: (w / "f").write_text("x") and
     ["export", str(m / "run/subnet.pt"), "--name", "x", "--out-dir", str(w / "f" / "o")],
     "cannot write"),
    ("check: --junit under a file",
     lambda m, w: (w / "f").write_text("x") and
     ["check", str(m / "export/b"), "--profile", "cpu-ort", "--junit", str(w / "f" / "j.xml")],
     "cannot write"),
    ("check: a baseline with ratio_median -1",
     lambda m, w: ["check", str(_bundle_with_baseline(w, ratio_median=-1.0)), "--profile", "cpu-ort"],
     "ratio_median"),
    ("check: a baseline with non-positive ratios",
     lambda m, w: ["check", str(_bundle_with_baseline(w, ratios="zero")), "--profile", "cpu-ort"],
     "ratios"),
    # data
    ("data show: an image folder whose images do not decode",
     lambda m, w: _broken_imagefolder(w) and ["data", "show", f"imagefolder:{w / 'imgs'}"],
     "cannot decode"),
    ("train: npz labels up to 1,000,000 without class_names",
     lambda m, w: np.savez(w / "d.npz", x=np.zeros((200, 8, 8), np.uint8),
                           y=np.array([0, 1_000_000] * 100)) or
     ["train", *TINY[:2], "--data", f"npz:{w / 'd.npz'}", "--out", str(w / "out")],
     "class_names"),
    # YAML
    ("profile show: a YAML alias bomb",
     lambda m, w: (w / "p.yaml").write_text(ALIAS_BOMB) and ["profile", "show", str(w / "p.yaml")],
     "alias"),
    ("profile show: a python object tag",
     lambda m, w: (w / "p.yaml").write_text(f"device: !!python/object/apply:os.system ['touch {w / 'pwned'}']\n")
     and ["profile", "show", str(w / "p.yaml")],
     "malformed YAML"),
    ("profile show: a long wrong value is not echoed whole",
     lambda m, w: (w / "p.yaml").write_text(PROFILE + "threads: '" + "9" * 5000 + "'\n")
     and ["profile", "show", str(w / "p.yaml")],
     "threads"),
    ("search: --config with a YAML alias bomb",
     lambda m, w: (w / "c.yaml").write_text(ALIAS_BOMB.replace("device:", "population:")) and
     ["search", "--config", str(w / "c.yaml"), "--supernet", str(m / "supernet/supernet.pt"), "--profile", "cpu-ort"],
     "alias"),
    ("profile show: malformed YAML",
     lambda m, w: (w / "p.yaml").write_text(PROFILE + "threads: [1,\n") and ["profile", "show", str(w / "p.yaml")],
     "malformed YAML at line"),
    # mismatched inputs
    ("finetune: a supernet where a subnet belongs",
     lambda m, w: ["finetune", str(m / "supernet/supernet.pt"), "--epochs", "1", "--out", str(w / "out" / "f.pt")],
     "run `edgenas extract`"),
    ("check: a folder that is not a bundle",
     lambda m, w: ["check", str(m / "run"), "--profile", "cpu-ort"], "not an edgenas bundle"),
    ("search: no latency table for the supernet's space",
     lambda m, w: ["search", "--supernet", str(m / "supernet/supernet.pt"), "--profile", "cpu-ort",
                   "--tables-dir", str(w / "tables"), "--out", str(w / "out")],
     "edgenas profile build"),
    ("train: unknown dataset", lambda m, w: ["train", "--data", "nope", "--out", str(w / "out")], "unknown dataset"),
    ("train: a 5,000-character dataset name is not echoed whole",
     lambda m, w: ["train", "--data", "x" * 5000, "--out", str(w / "out")], "unknown dataset"),
    # usage
    ("space sample -n -1", lambda m, w: ["space", "sample", "mbv3", "-n", "-1"], "-n"),
    ("search: an option without its value",
     lambda m, w: ["search", "--supernet", str(m / "supernet/supernet.pt"), "--population"], "--population"),
    ("search: unknown profile",
     lambda m, w: ["search", "--supernet", str(m / "supernet/supernet.pt"), "--profile", "nope"], "nope"),
]


REFERENCE_BUNDLE = Path(__file__).resolve().parent.parent / "export" / "fashion-mnist-cpu-ort"


def _bundle_with_baseline(work: Path, **change) -> Path:
    """A copy of the committed reference bundle whose baseline has been edited by hand."""
    bundle = work / "bundle"
    shutil.copytree(REFERENCE_BUNDLE, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    baseline = manifest["baseline"]
    if change.get("ratios") == "zero":
        baseline["ratios"] = [0.0, -1.0, *baseline["ratios"][2:]]
    else:
        baseline.update(change)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _broken_imagefolder(work: Path) -> bool:
    for cls in ("a", "b"):
        (work / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            (work / "imgs" / cls / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    return True


@pytest.mark.parametrize("build,fragment", [(b, f) for _, b, f in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_row(made, tmp_path, build, fragment):
    work = tmp_path / "work"
    work.mkdir()
    argv = build(made, work)
    before_made, before_work = _tree(made), _tree(work)
    res = CliRunner().invoke(cli, argv)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    # one error line, last; progress lines printed before the failure (export's "loading ...") may precede it
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1, res.stderr
    assert len(lines) <= 2, res.stderr
    assert len(lines[-1]) < 600, lines[-1][:600]  # a short line, never an echoed value
    assert fragment in lines[-1], lines[-1]
    assert _tree(made) == before_made
    assert {k: v for k, v in _tree(work).items() if not k.startswith("out")} == before_work
    assert not (work / "out").exists() or not any((work / "out").iterdir())
    assert not (work / "pwned").exists()


def test_stale_temp_files_of_interrupted_writes_are_removed_on_the_next_write(tmp_path):
    import subprocess
    import sys
    import time

    from edgenas.io import STALE_TMP_AGE_S, atomic_write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "search.json"
    stale = tmp_path / f".search.json.{dead_pid}.abc123.tmp"  # its writer was killed
    old = tmp_path / ".search.json.k3j_x9q2.tmp"  # written before temp names carried a pid
    live = tmp_path / f".search.json.{os.getppid()}.zz.tmp"  # a writer that is still running
    young = tmp_path / ".search.json.a8b8c8d8.tmp"
    other = tmp_path / f".supernet.pt.{dead_pid}.q.tmp"  # another file's: left to that file's next write
    for p in (stale, old, live, young, other):
        p.write_text("half")
    past = time.time() - STALE_TMP_AGE_S - 60
    os.utime(old, (past, past))
    atomic_write_json(target, {"ok": 1})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert not stale.exists() and not old.exists()
    assert live.exists() and young.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted(
        p.name for p in (live, young, other))
