"""Order preserving: does the supernet rank architectures like stand-alone training does?

The paper's central claim is that Supernet Shifting improves *local* order preserving: among the
good architectures near the budget, a shifted supernet ranks them more like their true accuracy
than the plain SPOS supernet does. This benchmark measures it:

1. sample ``--archs`` legal architectures under the latency budget (the region a search explores),
   with the search's own sampler and the profile's latency table;
2. ground truth: train each one stand-alone from scratch with one fixed short recipe
   (``edgenas.finetune`` with ``from_scratch``) and take its test accuracy;
3. proxies: each architecture's validation accuracy on (a) the SPOS supernet and (b) the supernet
   after a Supernet Shifting search with the same budget, for each of ``--seeds``;
4. Kendall tau and Spearman rho between ground truth and each proxy, over all architectures
   (global) and over the top quartile by ground truth (local), plus precision@5 (how many of the
   proxy's top 5 are in the true top 5).

Everything is cached under ``--work`` (one JSON per trained architecture, one run per search), so
an interrupted run resumes. Run from the repository root::

    .venv/bin/python benchmarks/order_preserving.py --supernet runs/fmnist-mbv3/supernet.pt \\
        --profile cpu-ort --budget 0.5 --archs 30 --seeds 0 1 2
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
from _report import provenance, write_section
from _runs import api_search
from scipy import stats

from edgenas.data import DataConfig, load_dataset
from edgenas.evaluate import score_archs
from edgenas.finetune import FinetuneConfig, finetune
from edgenas.hardware.profile import load_profile
from edgenas.hardware.table import LatencyTable
from edgenas.io import atomic_write_json
from edgenas.search import budget_sampler, latency_cost, make_budget_constraints
from edgenas.supernet import load_checkpoint

SECTION_KEY = "order_preserving"
SECTION_TITLE = "Order preserving: supernet ranking vs stand-alone training (SPOS vs shifted)"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"
PLOT = REPO / "docs" / "img" / "order_preserving.png"


def _table(tables_dir: Path, space: Any, profile: Any) -> LatencyTable:
    for path in sorted(tables_dir.glob("*.json")):
        head = json.loads(path.read_text())
        if (head.get("space") or {}).get("hash") == space.config_hash() and \
                (head.get("profile") or {}).get("latency_hash") == profile.latency_hash():
            return LatencyTable.load(path, space, profile)
    raise SystemExit(f"no latency table in {tables_dir} for this space and profile (edgenas profile build)")


def sample_archs(space: Any, table: LatencyTable, data: Any, budget: float, n: int, seed: int) -> list[Any]:
    constraints = make_budget_constraints(space, input_hw=tuple(data.input_size), in_channels=data.in_channels,
                                          num_classes=data.num_classes, latency_ms=budget,
                                          latency=latency_cost(table, space))
    sampler = budget_sampler(space, constraints)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    while len(out) < n:
        arch = sampler(rng) if sampler is not None else space.sample(rng)
        if all(c(arch)[0] for c in constraints):
            out.setdefault(arch.to_str(), arch)
    return list(out.values())


def ground_truth(arch: Any, space: Any, data: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cache = work / "gt" / f"{arch.arch_id}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    subnet = space.build_subnet(arch, data.num_classes, data.in_channels)
    cfg = FinetuneConfig(epochs=args.gt_epochs, from_scratch=True, patience=args.gt_epochs, seed=0, threads=1,
                         train_limit=args.gt_train_limit, lr=0.1, batch_size=args.gt_batch_size)
    res = finetune(subnet, data, cfg, work / "gt" / arch.arch_id, device=torch.device("cpu"))
    doc = {"arch": arch.to_str(), "test_accuracy": res.test_accuracy, "test_count": res.test_count,
           "val_accuracy": res.val_accuracy, "seconds": res.seconds}
    atomic_write_json(cache, doc)
    print(f"[gt] {arch} test {res.test_accuracy:.2%} ({res.seconds:.0f} s)", file=sys.stderr, flush=True)
    return doc


def rank_figures(truth: np.ndarray, proxy: np.ndarray, top: int = 5) -> dict[str, float]:
    """Global and top-quartile Kendall tau / Spearman rho, and precision@top."""
    order = np.argsort(-truth)
    local = order[: max(4, len(truth) // 4)]
    true_top, proxy_top = set(order[:top].tolist()), set(np.argsort(-proxy)[:top].tolist())
    return {
        "tau": float(stats.kendalltau(truth, proxy).statistic),
        "rho": float(stats.spearmanr(truth, proxy).statistic),
        "tau_top25": float(stats.kendalltau(truth[local], proxy[local]).statistic),
        "rho_top25": float(stats.spearmanr(truth[local], proxy[local]).statistic),
        "p_at_5": len(true_top & proxy_top) / top,
    }


def run(args: argparse.Namespace) -> str:
    work = Path(args.work)
    supernet, meta, _ = load_checkpoint(args.supernet)
    space = supernet.space
    data_cfg = DataConfig(**{**dict(meta.get("data") or {}), "train_limit": None, "val_limit": args.val_limit,
                             "test_limit": args.test_limit})
    data = load_dataset(data_cfg)
    profile = load_profile(args.profile, input_shape=(data.in_channels, *data.input_size))
    table = _table(Path(args.tables_dir), space, profile)
    archs = sample_archs(space, table, data, args.budget, args.archs, args.seed)
    truth = np.array([ground_truth(a, space, data, args, work)["test_accuracy"] for a in archs])
    proxies: dict[str, np.ndarray] = {}
    print("[proxy] scoring on the SPOS supernet", file=sys.stderr, flush=True)
    proxies["spos"] = np.array([s.accuracy for s in score_archs(supernet, archs, data, split="val", seed=0)])
    from edgenas.pipeline import SearchJob

    for seed in args.seeds:
        out = work / f"shift-s{seed}"
        api_search(SearchJob(profile=args.profile, supernet=args.supernet, tables_dir=args.tables_dir,
                             latency_ms=args.budget, val_limit=args.val_limit, seed=seed, device="cpu", measure=False,
                             population=args.population, generations=args.generations, topk=5,
                             mutations=args.population // 3, crossovers=args.population // 3, out=str(out)),
                   f"shift seed {seed}")
        shifted, _, _ = load_checkpoint(out / "supernet.pt")
        print(f"[proxy] scoring on the shifted supernet (seed {seed})", file=sys.stderr, flush=True)
        proxies[f"shift-s{seed}"] = np.array([s.accuracy for s in score_archs(shifted, archs, data, split="val",
                                                                                seed=0)])
    figures = {k: rank_figures(truth, v) for k, v in proxies.items()}
    atomic_write_json(work / "order_preserving.json", {
        "archs": [a.to_str() for a in archs], "truth": truth.tolist(),
        "proxies": {k: v.tolist() for k, v in proxies.items()}, "figures": figures})
    _plot(truth, proxies)
    return _markdown(args, figures, truth, len(archs), data)


def _plot(truth: np.ndarray, proxies: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(truth * 100, proxies["spos"] * 100, label="SPOS supernet", marker="o")
    shift = [k for k in proxies if k.startswith("shift")]
    if shift:
        ax.scatter(truth * 100, proxies[shift[0]] * 100, label=f"shifted supernet ({shift[0]})", marker="^")
    ax.set_xlabel("stand-alone test accuracy (%)")
    ax.set_ylabel("supernet validation accuracy (%)")
    ax.set_title("Ranking of the same architectures")
    ax.legend()
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def _markdown(args: argparse.Namespace, figures: dict[str, dict[str, float]], truth: np.ndarray, n: int,
              data: Any) -> str:
    scale = "QUICK smoke scale: not figures to quote" if args.quick else "reduced CPU scale (no GPU was lent)"
    keys = ("tau", "rho", "tau_top25", "rho_top25", "p_at_5")
    shift_keys = [k for k in figures if k.startswith("shift")]
    lines = [*provenance(), "", f"Scale: {scale}.", "",
             f"{n} legal architectures under {args.budget:g} ms (`{args.profile}` table) sampled with the search's "
             f"sampler (seed {args.seed}). Ground truth: each trained from scratch for {args.gt_epochs} epoch(s) on "
             f"{args.gt_train_limit} {data.name} training images (SGD lr 0.1, batch {args.gt_batch_size}, cosine, "
             "label smoothing 0.1), "
             f"test accuracy on {data.test.__len__()} test images: {truth.min():.2%} to {truth.max():.2%}. "
             f"Proxies: validation accuracy on {args.val_limit} images with BN recalibrated, on the SPOS supernet "
             f"and on the supernet after a shifting search (population {args.population}, {args.generations} "
             "generations, same budget) per seed. Local = the top quartile of architectures by ground truth.", "",
             "| supernet | Kendall tau | Spearman rho | tau, top 25% | rho, top 25% | precision@5 |",
             "|---|---|---|---|---|---|"]
    for name, fig in figures.items():
        lines.append(f"| {name} | " + " | ".join(f"{fig[k]:.3f}" for k in keys) + " |")
    if shift_keys:
        mean = {k: np.mean([figures[s][k] for s in shift_keys]) for k in keys}
        std = {k: np.std([figures[s][k] for s in shift_keys]) for k in keys}
        lines.append(f"| shifted, mean ± std over {len(shift_keys)} seeds | "
                     + " | ".join(f"{mean[k]:.3f} ± {std[k]:.3f}" for k in keys) + " |")
        delta = mean["tau_top25"] - figures["spos"]["tau_top25"]
        clear = abs(delta) > 2 * std["tau_top25"]
        verdict = ("shifting better" if delta > 0 else "shifting worse") if clear else "no difference beyond the noise"
        lines += ["", f"Local order preserving (Kendall tau over the top quartile, {max(4, n // 4)} architectures): "
                  f"shifted minus SPOS = {delta:+.3f}, seed spread ±{std['tau_top25']:.3f}: {verdict}."]
    lines += ["", f"![order preserving](img/{PLOT.name})"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--profile", default="cpu-ort")
    p.add_argument("--tables-dir", default="latency_tables")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--archs", type=int, default=30)
    p.add_argument("--gt-epochs", type=int, default=1)
    p.add_argument("--gt-train-limit", type=int, default=10000)
    p.add_argument("--gt-batch-size", type=int, default=64)
    p.add_argument("--val-limit", type=int, default=2000)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0, help="Seed of the architecture sample.")
    p.add_argument("--work", default="runs/bench-order")
    p.add_argument("--quick", action="store_true", help="4 archs, 1 seed, tiny searches: a smoke test.")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    if args.quick:
        args.archs, args.seeds, args.population, args.generations = 6, args.seeds[:1], 6, 1
        args.gt_train_limit, args.val_limit = 1000, 500
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    body = run(args)
    write_section(args.out, SECTION_KEY, SECTION_TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
