"""Does architecture matter here? Spread between architectures vs seed-to-seed noise, trained alone.

A ranking benchmark (rank correlation of a supernet, "search beats random") only means something
where different architectures really reach different accuracies. This trains ``--archs``
architectures spread evenly over the space's MAC range (one per MAC bin, smallest to largest) alone
from scratch with one short recipe, each with two or more seeds, and reports:

- the **architecture spread**: standard deviation (and range) of the per-architecture mean accuracy;
- the **seed noise**: standard deviation of one training run around its architecture's mean
  (pooled over architectures);
- their ratio (the setting is usable for ranking benchmarks when it is >= 3), Kendall tau between the
  two seeds' rankings, and Kendall tau between accuracy and MACs.

Every (architecture, seed) result is cached under ``--work``, so an interrupted run resumes. Run from
the repository root, e.g.::

    .venv/bin/python benchmarks/arch_spread.py --width-mult 0.25 --train-limit 20000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from _report import provenance, publish
from scipy import stats

from edgenas.data import DataConfig, load_dataset
from edgenas.finetune import FinetuneConfig, finetune
from edgenas.io import atomic_write_json
from edgenas.proxy import spread_archs
from edgenas.space import create_space, default_preset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"


def spread_figures(acc: np.ndarray) -> dict[str, float]:
    """``acc[i, s]``: accuracy of architecture i with seed s (in %). Between-architecture spread, pooled
    seed noise (sample std of runs around their architecture's mean) and their ratio."""
    means = acc.mean(1)
    noise = float(np.sqrt(((acc - means[:, None]) ** 2).sum() / (acc.shape[0] * (acc.shape[1] - 1))))
    between = float(means.std(ddof=1))
    seed_tau = float(stats.kendalltau(acc[:, 0], acc[:, 1])[0])
    return {"between_std": between, "between_range": float(np.ptp(means)), "seed_std": noise,
            "ratio": between / noise if noise > 0 else float("inf"), "seed_tau": seed_tau,
            "max_seed_gap": float(np.abs(acc[:, 0] - acc[:, 1]).max())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--space", default="mbv3")
    p.add_argument("--width-mult", type=float, default=0.5)
    p.add_argument("--resize", type=int, default=None)
    p.add_argument("--train-limit", type=int, default=20000, help="0 = the whole training split")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--archs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--work", default="runs/bench-spread")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file to update, or - to print.")
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        raise SystemExit("--seeds needs at least two seeds to measure seed noise")
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(name=args.data, resize=args.resize))
    space = create_space(args.space, default_preset(tuple(data.input_size)), width_mult=args.width_mult)
    archs = spread_archs(space, args.archs, tuple(data.input_size), seed=0)
    limit = args.train_limit or None
    tag = f"{args.data}_w{args.width_mult:g}_r{args.resize or 'none'}_n{limit or 'all'}_e{args.epochs}"
    work = Path(args.work) / tag

    acc = np.zeros((len(archs), len(args.seeds)))
    macs = []
    for i, arch in enumerate(archs):
        macs.append(space.macs(arch, tuple(data.input_size), data.in_channels, data.num_classes))
        for j, seed in enumerate(args.seeds):
            cache = work / f"{arch.arch_id}_s{seed}.json"
            if cache.is_file():
                acc[i, j] = json.loads(cache.read_text())["test_accuracy"] * 100
                continue
            cfg = FinetuneConfig(epochs=args.epochs, from_scratch=True, patience=args.epochs, lr=args.lr,
                                 train_limit=limit, seed=seed, threads=1)
            subnet = space.build_subnet(arch, data.num_classes, data.in_channels)
            run = work / f"{arch.arch_id}_s{seed}"
            res = finetune(subnet, data, cfg, run, device=torch.device("cpu"), resume=(run / "last.pt").exists())
            atomic_write_json(cache, {"arch": arch.to_str(), "seed": seed, "macs": macs[-1],
                                      "test_accuracy": res.test_accuracy, "seconds": res.seconds})
            acc[i, j] = res.test_accuracy * 100
            print(f"[{i + 1}/{len(archs)} seed {seed}] {arch} {macs[-1] / 1e6:.2f} M MACs: "
                  f"{acc[i, j]:.2f}% ({res.seconds:.0f} s)", file=sys.stderr, flush=True)

    fig = spread_figures(acc)
    mac_tau = float(stats.kendalltau(macs, acc.mean(1))[0])
    atomic_write_json(work / "results.json", {"archs": [a.to_str() for a in archs], "macs": macs,
                                              "accuracy": acc.tolist(), "seeds": args.seeds, **fig,
                                              "mac_tau": mac_tau})
    rows = [f"| `{a.to_str()}` | {m / 1e6:.2f} | " + " | ".join(f"{x:.2f}" for x in acc[i])
            + f" | {acc[i].mean():.2f} |" for i, (a, m) in enumerate(zip(archs, macs))]
    verdict = ("usable for ranking benchmarks" if fig["ratio"] >= 3 else
               "NOT usable for ranking benchmarks: architectures train alike within seed noise")
    body = [
        *provenance(),
        "",
        f"{len(archs)} `{args.space}` architectures at width {args.width_mult:g}, one per MAC bin from the smallest "
        f"to the largest, each trained alone from scratch ({args.epochs} epochs, lr {args.lr:g} cosine, batch 128, "
        f"{limit or 'all'} {args.data} training images{f', resized to {args.resize} px' if args.resize else ''}) "
        f"with seeds {', '.join(map(str, args.seeds))}; test accuracy on {len(data.test):,} images.",
        "",
        f"- architecture spread (std of per-architecture means): **{fig['between_std']:.2f} points** "
        f"(range {fig['between_range']:.2f})",
        f"- seed noise (std of one run around its architecture's mean): **{fig['seed_std']:.2f} points** "
        f"(largest gap between two seeds of one architecture {fig['max_seed_gap']:.2f})",
        f"- ratio **{fig['ratio']:.2f}** (target >= 3): {verdict}",
        f"- Kendall tau between the seeds' rankings {fig['seed_tau']:.2f}; between accuracy and MACs {mac_tau:.2f}",
        "",
        "| architecture | M MACs | " + " | ".join(f"seed {s} %" for s in args.seeds) + " | mean % |",
        "|---|---|" + "---|" * len(args.seeds) + "---|",
        *rows,
    ]
    publish(args.out, f"arch_spread_{tag}", f"Does architecture matter? Spread vs seed noise ({tag})", "\n".join(body))


if __name__ == "__main__":
    main()
