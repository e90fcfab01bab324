"""Supernet quality: separate vs shared weights vs shared + sandwich + in-place distillation.

What a search can trust is the inherited accuracy of the subnets it scores. For each supernet
setting this trains one supernet with ``edgenas train`` (the CLI, as a user would) and scores the
same ``--archs`` uniformly sampled architectures, plus the largest and the smallest, on the whole
test split with BN recalibrated (``edgenas.evaluate.score_archs``, what ``edgenas eval`` runs).

Settings, all on the same data slice, width and seed:

- ``separate``: one weight set per (layer, choice), single path (the SPOS layout, the old default);
- ``shared``: one weight set per layer that every choice slices, single path;
- ``sandwich``: shared, largest + smallest + 2 random paths per step, in-place distillation;
- ``shared-eqtime``: shared single path trained for as long (wall clock) as ``sandwich`` took, so
  the comparison holds at equal cost as well as at equal epochs.

Each training run is its own directory under ``--work`` (resumed when interrupted), and scores are
cached beside it, so a stopped benchmark loses at most one epoch. Run from the repository root::

    .venv/bin/python benchmarks/supernet_quality.py --train-limit 20000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import provenance, publish
from _runs import api_train

from edgenas.data import DataConfig, load_dataset
from edgenas.evaluate import score_archs
from edgenas.io import atomic_write_json
from edgenas.supernet import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"

SETTINGS: dict[str, dict[str, Any]] = {
    "separate": {"weights": "separate"},
    "shared": {"weights": "shared"},
    "sandwich": {"weights": "shared", "recipe": "sandwich", "sandwich_random": 2, "distill": True},
}


def _train_seconds(run: Path) -> float:
    return float(sum(h["seconds"] for h in json.loads((run / "history.json").read_text())))


def _scores(run: Path, archs: list[Any], data: Any, recal: int) -> list[dict[str, Any]]:
    """Test accuracy of each architecture on the run's final supernet (cached per checkpoint epoch)."""
    cache = run / "scores.json"
    supernet, meta, _ = load_checkpoint(run / "supernet.pt")
    key = {"epoch": meta["epoch"], "archs": [a.to_str() for a in archs], "recal": recal}
    if cache.is_file():
        doc = json.loads(cache.read_text())
        if doc.get("key") == key:
            return doc["scores"]
    print(f"[{run.name}] scoring {len(archs)} architectures on {len(data.test)} test images", file=sys.stderr)
    scores = score_archs(supernet, archs, data, split="test", recal=recal, device=torch.device("cpu"))
    out = [{"arch": s.arch, "accuracy": s.accuracy, "count": s.count} for s in scores]
    atomic_write_json(cache, {"key": key, "scores": out})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--width-mult", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=20000, help="0 = the whole training split")
    p.add_argument("--archs", type=int, default=20, help="Uniformly sampled architectures scored.")
    p.add_argument("--recal", type=int, default=10, help="BN recalibration batches per architecture.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="+", default=[*SETTINGS, "shared-eqtime"],
                   choices=[*SETTINGS, "shared-eqtime"])
    p.add_argument("--work", default="runs/bench-supernet")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file to update, or - to print.")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tag = f"w{args.width_mult:g}_e{args.epochs}_n{args.train_limit or 'all'}_s{args.seed}"
    work = Path(args.work) / tag
    from edgenas.pipeline import TrainJob
    from edgenas.train import TrainConfig

    def job(epochs: int, setting: dict[str, Any], out: Path) -> TrainJob:
        return TrainJob(data=DataConfig(name=args.data, train_limit=args.train_limit or None),
                        train=TrainConfig(epochs=epochs, seed=args.seed, threads=1, val_archs=0, **setting),
                        space_options={"width_mult": args.width_mult}, out=str(out))

    runs: dict[str, Path] = {}
    for name in [s for s in args.settings if s in SETTINGS]:
        runs[name] = work / name
        api_train(job(args.epochs, SETTINGS[name], runs[name]), name)
    if "shared-eqtime" in args.settings:
        if "sandwich" not in runs or "shared" not in runs:
            raise SystemExit("shared-eqtime needs the sandwich and shared settings in the same run")
        ratio = _train_seconds(runs["sandwich"]) / _train_seconds(runs["shared"])
        epochs = max(args.epochs, round(args.epochs * ratio))
        runs["shared-eqtime"] = work / f"shared-eqtime-e{epochs}"
        api_train(job(epochs, SETTINGS["shared"], runs["shared-eqtime"]), "shared-eqtime")

    data = load_dataset(DataConfig(name=args.data))
    first, _, _ = load_checkpoint(next(iter(runs.values())) / "supernet.pt")
    space = first.space
    rng = np.random.default_rng([args.seed, 2024])
    archs = [space.sample(rng) for _ in range(args.archs)]
    macs = space.macs_table(tuple(data.input_size))
    largest, smallest = space.extreme_arch(macs, largest=True), space.extreme_arch(macs)

    rows, results = [], {}
    for name, run in runs.items():
        scores = _scores(run, [*archs, largest, smallest], data, args.recal)
        acc = np.array([s["accuracy"] for s in scores[: len(archs)]]) * 100
        epochs = len(json.loads((run / "history.json").read_text()))
        results[name] = {"run": str(run), "epochs": epochs, "train_seconds": _train_seconds(run),
                         "sampled": acc.tolist(), "largest": scores[-2]["accuracy"] * 100,
                         "smallest": scores[-1]["accuracy"] * 100}
        rows.append(f"| {name} | {epochs} | {_train_seconds(run):.0f} | **{acc.mean():.2f}** | {acc.min():.2f} | "
                    f"{np.median(acc):.2f} | {acc.max():.2f} | {scores[-2]['accuracy'] * 100:.2f} | "
                    f"{scores[-1]['accuracy'] * 100:.2f} |")
    atomic_write_json(work / "results.json", {"archs": [a.to_str() for a in archs], "results": results})

    n_train = args.train_limit or "all"
    body = [
        *provenance(),
        "",
        f"Supernets of `mbv3` at width {args.width_mult:g} trained on {n_train} {args.data} training images, "
        f"{args.epochs} epochs (batch 128, lr 0.1 cosine, seed {args.seed}, 1 thread). Each is scored on the same "
        f"{args.archs} uniformly sampled architectures plus the largest and the smallest (by MACs), test accuracy "
        f"on the {len(data.test):,} test images with BN recalibrated on {args.recal} training batches. "
        "`shared-eqtime` trains the shared single-path supernet for as long as the sandwich run took.",
        "",
        "| supernet | epochs | train s | mean % | min % | median % | max % | largest % | smallest % |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Per-architecture figures: `{work / 'results.json'}` (not committed). Host load during the run: "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}.",
    ]
    publish(args.out, f"supernet_quality_{tag}", f"Supernet quality: separate vs shared vs sandwich ({tag})",
            "\n".join(body))


if __name__ == "__main__":
    main()
