"""Two-process DDP training on the CPU (gloo) ends with identical weights on both ranks.

This is the property SPOS under torchrun relies on: every rank draws the same architecture and
DDP averages the gradients, so the replicas never drift apart. A real torchrun launch is used
(not a mocked process group) because the rank/world-size plumbing from the environment is part of
what is being tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
WORLD_SIZE = 2
TIMEOUT_S = 300  # far above the ~20-40 s it takes; only there so a hung rendezvous cannot block the suite


def _launch(tmp_path: Path, *extra: str) -> tuple[Path, Path, Path]:
    out, work, cwd = tmp_path / "out", tmp_path / "work", tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD_SIZE),
           str(WORKER), "--out", str(out), "--work", str(work), *extra]
    # An empty cwd makes any write to a relative path show up as an unexpected file below.
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
                    f"--- stderr ---\n{proc.stderr[-8000:]}")
    return out, work, cwd


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("weights,recipe", [("separate", "single"), ("shared", "sandwich")])
def test_two_rank_ddp_training_keeps_replicas_identical(tmp_path: Path, weights: str, recipe: str) -> None:
    out, work, cwd = _launch(tmp_path, "--weights", weights, "--recipe", recipe)

    # Only rank 0 writes the checkpoint and history; nothing lands anywhere else (no per-rank
    # copies, no leftover temp files, nothing relative to the working directory).
    assert _files(out) == {"supernet.pt", "supernet.json", "history.json"}
    assert _files(work) == {"init.pt", "rank0.pt", "rank1.pt"}
    assert _files(cwd) == set()

    init = torch.load(work / "init.pt", weights_only=True)
    ranks = [torch.load(work / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    assert ranks[0].keys() == ranks[1].keys() == init.keys()
    differing = [name for name in init if not torch.equal(ranks[0][name], ranks[1][name])]
    assert not differing, f"parameters differ between ranks: {differing[:5]} ({len(differing)} in all)"

    changed = {name for name in init if not torch.equal(init[name], ranks[0][name])}
    # The stem and the head are on every path, so every step must have moved all of them ...
    always_used = [name for name in init if name.startswith(("stem.", "head."))]
    assert always_used and not [n for n in always_used if n not in changed], "stem/head did not train"
    # ... while choice blocks that no sampled path used keep their initial values exactly, which
    # also shows init.pt really is the starting point (otherwise everything would look "changed").
    if weights == "shared":  # the sandwich's largest path uses every shared weight
        assert changed == set(init), "a shared weight did not train"
        return
    assert len(changed) < len(init), "every parameter changed: init.pt is not the starting point"
