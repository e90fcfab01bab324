"""Do inherited supernet weights help? Fine-tuned from the supernet vs trained from scratch, same recipe.

For each search run given (any ``edgenas search`` output, e.g. ``runs/demo/search``), its recommended
architecture is extracted once (``edgenas extract``) and then, for every ``--seeds`` seed, trained
with one recipe twice: starting from the inherited weights (``edgenas finetune``, what ``edgenas
run`` ships) and from a fresh initialisation (``edgenas finetune --from-scratch``). Test accuracy
on the whole test split, mean ± sd over seeds, and the paired difference per seed.

Trainings run as CLI subprocesses under ``--work`` (finished ones reused, interrupted ones resumed).
Run from the repository root::

    .venv/bin/python benchmarks/inherit_vs_scratch.py runs/demo/search --seeds 0 1 2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _report import provenance, publish
from _runs import cli

from edgenas.search.verify import deployable_arch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"


def _train(subnet: Path, out: Path, recipe: list[str], label: str) -> float:
    report = out / "finetune.json"
    if not report.is_file():
        resume = ["--resume"] if (out / "last.pt").is_file() else []
        cli(["finetune", str(subnet), "--out", str(out), *recipe, *resume], label)
    return float(json.loads(report.read_text())["test"]["accuracy"]) * 100


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="Search run directories.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=20000)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--patience", type=int, default=None,
                   help="Early-stopping patience of both trainings [default: finetune's, 3 epochs].")
    p.add_argument("--jobs", type=int, default=2, help="Trainings at a time (one CPU thread each).")
    p.add_argument("--work", default="runs/bench-inherit")
    p.add_argument("--key", default="inherit_vs_scratch", help="Section key in the report.")
    p.add_argument("--title", default="Inherited weights vs training from scratch", help="Section title.")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file to update, or - to print.")
    args = p.parse_args(argv)
    work = Path(args.work)
    rows = []
    for run in map(Path, args.runs):
        doc = json.loads((run / "search.json").read_text())
        arch = deployable_arch(doc)
        base = work / f"{run.parent.name}_{run.name}"
        subnet = base / "subnet.pt"
        if not subnet.is_file():
            cli(["extract", str(run), "--arch", arch, "--out", str(subnet), "--device", "cpu"], "extract")
        jobs = {}
        with ThreadPoolExecutor(args.jobs) as pool:
            for seed in args.seeds:
                recipe = ["--epochs", str(args.epochs), "--train-limit", str(args.train_limit), "--lr", str(args.lr),
                          "--seed", str(seed), "--threads", "1", "--device", "cpu",
                          *(["--patience", str(args.patience)] if args.patience is not None else [])]
                jobs[("inherited", seed)] = pool.submit(_train, subnet, base / f"inherited-s{seed}", recipe,
                                                        f"inherited s{seed}")
                jobs[("scratch", seed)] = pool.submit(_train, subnet, base / f"scratch-s{seed}",
                                                      [*recipe, "--from-scratch"], f"scratch s{seed}")
        inh = np.array([jobs[("inherited", s)].result() for s in args.seeds])
        scr = np.array([jobs[("scratch", s)].result() for s in args.seeds])
        diff = inh - scr
        before = json.loads((base / f"inherited-s{args.seeds[0]}" / "finetune.json").read_text())["before"]
        budget = doc.get("budgets") or {}
        where = (f"{budget['latency_ms']:.3g} ms" if budget.get("latency_ms") is not None else "none") + (
            f" (q {budget['latency_quantile']:g})" if budget.get("latency_quantile") is not None else "")
        rows.append(f"| `{run}` | {where} | `{arch}` | {before['accuracy'] * 100:.2f} "
                    f"| {inh.mean():.2f} ± {inh.std(ddof=1):.2f} "
                    f"| {scr.mean():.2f} ± {scr.std(ddof=1):.2f} | {diff.mean():+.2f} "
                    f"({', '.join(f'{d:+.2f}' for d in diff)}) |")
    body = [
        *provenance(),
        "",
        f"Each search's recommended architecture, trained {args.epochs} epochs on {args.train_limit} training "
        f"images (lr {args.lr:g} cosine, batch 128, 1 thread"
        + (f", early-stopping patience {args.patience}" if args.patience is not None else "")
        + f") from its inherited supernet weights and from "
        f"scratch, seeds {', '.join(map(str, args.seeds))}; test accuracy on the whole test split.",
        "",
        "| search run | latency budget | architecture | inherited, before fine-tuning % | inherited + fine-tuned % "
        "| from scratch % | difference (per seed) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    publish(args.out, args.key, args.title, "\n".join(body))


if __name__ == "__main__":
    main()
