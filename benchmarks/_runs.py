"""Run pipeline stages through the real CLI from benchmark scripts, reusing finished runs.

Benchmarks drive ``python -m edgenas ...`` exactly as a user would, so their figures cover the CLI's
own defaults and file handling. Each stage's output directory doubles as its cache: a finished run
is reused and an interrupted one resumed, which makes long benchmarks restartable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_evolution_options", "cli", "cli_search", "cli_train", "evolution_args"]


def cli(args: Sequence[str], label: str) -> str:
    """``edgenas ARGS`` in a subprocess; stdout on success, a one-line exit on failure."""
    cmd = [sys.executable, "-m", "edgenas", *args]
    print(f"[{label}] edgenas {' '.join(args)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{label} failed (exit {proc.returncode}): {last}")
    return proc.stdout


def cli_search(args: Sequence[str], out: Path, label: str) -> dict[str, Any]:
    """``edgenas search ARGS --out OUT --json``, reusing a finished run (with measured finalists unless
    ``--no-measure`` is among ARGS)."""
    if (out / "search.json").is_file() and not (out / "checkpoint.pt").is_file():
        raise SystemExit(f"{out} has search.json but no checkpoint: not a search run directory")
    if (out / "search.json").is_file():
        doc = json.loads((out / "search.json").read_text())
        if doc.get("measured") is not None or "--no-measure" in args:
            print(f"[{label}] reusing {out}", file=sys.stderr)
            return doc
    resume = ["--resume"] if (out / "checkpoint.pt").is_file() else []
    start = time.perf_counter()
    doc = json.loads(cli(["search", *args, "--out", str(out), "--json", *resume], label))
    doc["wall_seconds"] = time.perf_counter() - start
    return doc


def cli_train(args: Sequence[str], out: Path, label: str) -> Path:
    """``edgenas train ARGS --out OUT``; an existing run is resumed (a no-op when it is finished)."""
    final = out / "supernet.pt"
    resume = ["--resume"] if final.is_file() else []
    cli(["train", *args, "--out", str(out), *resume], label)
    return final


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


def evolution_args(args: argparse.Namespace) -> list[str]:
    """``edgenas search`` options for :func:`add_evolution_options` (tiny ones with ``--quick``)."""
    if getattr(args, "quick", False):
        return ["--population", "8", "--generations", "2", "--topk", "3", "--mutations", "3", "--crossovers", "3"]
    return ["--population", str(args.population), "--generations", str(args.generations), "--topk", str(args.topk),
            "--mutations", str(args.mutations), "--crossovers", str(args.crossovers)]
