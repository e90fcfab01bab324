"""Run pipeline stages from benchmark scripts, reusing finished runs.

Searches and supernet training run in this process through the Python API (:mod:`edgenas.pipeline`),
one after another. Trainings that a benchmark runs several at a time (fine-tuning, baselines) go
through ``python -m edgenas`` in subprocesses instead: torch's thread count and RNG are per process,
so parallel trainings in one process would share them. Each stage's output directory doubles as
its cache: a finished run is reused and an interrupted one resumed, which makes long benchmarks
restartable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgenas.pipeline import SearchJob, TrainJob

__all__ = ["add_evolution_options", "api_search", "api_train", "cli", "evolution_fields"]


def cli(args: Sequence[str], label: str) -> str:
    """``edgenas ARGS`` in a subprocess; stdout on success, a one-line exit on failure."""
    cmd = [sys.executable, "-m", "edgenas", *args]
    print(f"[{label}] edgenas {' '.join(args)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{label} failed (exit {proc.returncode}): {last}")
    return proc.stdout


def api_search(job: SearchJob, label: str) -> dict[str, Any]:
    """``pipeline.search(job)``, reusing a finished run in ``job.out`` (with measured finalists unless
    ``job.measure`` is off) and resuming an interrupted one; returns its search.json document."""
    from edgenas.errors import EdgenasError
    from edgenas.pipeline import search

    out = Path(job.out)
    if (out / "search.json").is_file() and not (out / "checkpoint.pt").is_file():
        raise SystemExit(f"{out} has search.json but no checkpoint: not a search run directory")
    if (out / "search.json").is_file():
        doc = json.loads((out / "search.json").read_text())
        if doc.get("measured") is not None or not job.measure:
            print(f"[{label}] reusing {out}", file=sys.stderr)
            return doc
    print(f"[{label}] pipeline.search -> {out}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        search(dataclasses.replace(job, resume=(out / "checkpoint.pt").is_file()))
    except EdgenasError as exc:
        raise SystemExit(f"{label} failed: {exc}") from None
    doc = json.loads((out / "search.json").read_text())
    doc["wall_seconds"] = time.perf_counter() - start
    return doc


def api_train(job: TrainJob, label: str) -> Path:
    """``pipeline.train(job)``; an existing run in ``job.out`` is resumed (a no-op when it is finished)."""
    from edgenas.errors import EdgenasError
    from edgenas.pipeline import train

    final = Path(job.out) / "supernet.pt"
    print(f"[{label}] pipeline.train -> {job.out}", file=sys.stderr, flush=True)
    try:
        return train(dataclasses.replace(job, resume=final.is_file())).checkpoint
    except EdgenasError as exc:
        raise SystemExit(f"{label} failed: {exc}") from None


def add_evolution_options(p: argparse.ArgumentParser) -> None:
    """The search settings every search benchmark exposes, with one CPU-scale default."""
    p.add_argument("--profile", default="cpu-ort")
    p.add_argument("--tables-dir", default="latency_tables")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--mutations", type=int, default=6)
    p.add_argument("--crossovers", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)


def evolution_fields(args: argparse.Namespace) -> dict[str, int]:
    """:class:`~edgenas.pipeline.SearchJob` fields for :func:`add_evolution_options` (tiny ones with ``--quick``)."""
    if getattr(args, "quick", False):
        return {"population": 8, "generations": 2, "topk": 3, "mutations": 3, "crossovers": 3}
    return {"population": args.population, "generations": args.generations, "topk": args.topk,
            "mutations": args.mutations, "crossovers": args.crossovers}
