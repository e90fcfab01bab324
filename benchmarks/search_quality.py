"""Search quality under a latency budget: Supernet Shifting vs plain SPOS evolution vs random search.

For each budget, three searches run on the same trained supernet with the same profile, latency
table, validation split and seed, through the real CLI (``edgenas search ... --json``):

* **shift**: Supernet Shifting evolution (the default of ``edgenas search``);
* **spos**: plain SPOS evolution (``--no-shift``), same population, generations and operators;
* **random**: ``--no-shift`` with one generation of N random legal architectures, N being the number
  of distinct architectures the shifting search evaluated (equal evaluation budget).

Every winner (the search's recommendation: its best finalist measured within the budget) is then
judged the same way: test accuracy on the *original* supernet and on the *shifted* supernet (BN
recalibrated on the same fixed training batches), and latency measured end to end on the profile,
all winners interleaved in one measurement. Supernet accuracy is a proxy: stand-alone fine-tuned
accuracy of the winners is the benchmark of ``benchmarks/deploy`` (issue 6).

Runs are resumable: a finished search (``search.json``) is reused, an interrupted one is resumed.
Run from the repository root::

    .venv/bin/python benchmarks/search_quality.py --supernet runs/fmnist-mbv3/supernet.pt \\
        --profile cpu-ort --budgets 0.5

``--quick`` shrinks the searches to a smoke test (figures not to be quoted).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import provenance, write_section
from _runs import add_evolution_options, api_search, evolution_fields

from edgenas.data import DataConfig, load_dataset
from edgenas.evaluate import score_archs
from edgenas.hardware.measure import create_measurer
from edgenas.hardware.profile import load_profile
from edgenas.search.verify import deployable_arch
from edgenas.supernet import load_checkpoint

SECTION_KEY = "search_quality"
SECTION_TITLE = "Search quality under a latency budget: shifting vs SPOS evolution vs random"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"
PLOT = REPO / "docs" / "img" / "search_quality.png"
METHODS = ("shift", "spos", "random")


def _search(args: argparse.Namespace, budget: float, method: str, out: Path, **fields: Any) -> dict[str, Any]:
    from edgenas.pipeline import SearchJob

    job = SearchJob(profile=args.profile, supernet=args.supernet, tables_dir=args.tables_dir, latency_ms=budget,
                    val_limit=args.val_limit, seed=args.seed, device=args.device, out=str(out), **fields)
    return api_search(job, f"{method} @ {budget:g} ms")


def _distinct(doc: dict[str, Any]) -> int:
    return len({c["arch"] for g in doc["generations"] for c in g["population"]})


def run(args: argparse.Namespace) -> str:
    evo = evolution_fields(args)
    work = Path(args.work)
    supernet, meta, _ = load_checkpoint(args.supernet)
    data_cfg = DataConfig(**{**dict(meta.get("data") or {}), "train_limit": None})
    data = load_dataset(data_cfg)
    profile = load_profile(args.profile, input_shape=(data.in_channels, *data.input_size))
    device = torch.device(args.device if args.device != "auto" else "cpu")
    sections = []
    for budget in args.budgets:
        docs: dict[str, dict[str, Any]] = {}
        docs["shift"] = _search(args, budget, "shift", work / f"b{budget:g}" / "shift", **evo)
        docs["spos"] = _search(args, budget, "spos", work / f"b{budget:g}" / "spos", **evo, shift=False)
        n = _distinct(docs["shift"])
        docs["random"] = _search(args, budget, "random", work / f"b{budget:g}" / "random", shift=False,
                                 population=n, generations=1, topk=evo["topk"], mutations=0, crossovers=0)
        winners = {m: supernet.space.parse(deployable_arch(docs[m])) for m in METHODS}
        shifted, _, _ = load_checkpoint(work / f"b{budget:g}" / "shift" / "supernet.pt")
        archs = [winners[m] for m in METHODS]
        print(f"[{budget:g} ms] scoring winners on the test split ...", file=sys.stderr)
        on_spos = score_archs(supernet, archs, data, split="test", device=device, seed=args.seed)
        on_shift = score_archs(shifted, archs, data, split="test", device=device, seed=args.seed)
        print(f"[{budget:g} ms] measuring winners end to end ...", file=sys.stderr)
        models = [supernet.space.build_subnet(a, data.num_classes, data.in_channels) for a in archs]
        stats = create_measurer(profile).measure_many(models, [None] * len(models))
        rows = []
        for i, m in enumerate(METHODS):
            doc = docs[m]
            cand = next(c for c in doc["topk"] if c["arch"] == winners[m].to_str())
            measured = stats[i].value(profile.measure.statistic)
            rows.append({
                "method": m, "arch": winners[m].to_str(), "val": cand["score"],
                "test_spos": on_spos[i].accuracy, "test_shift": on_shift[i].accuracy, "count": on_spos[i].count,
                "predicted_ms": cand["metrics"].get("latency_ms"), "measured_ms": measured,
                "within": measured <= budget, "evaluated": _distinct(doc),
                "seconds": doc.get("seconds_this_session", float("nan")),
            })
        sections.append((budget, rows))
    _plot(sections)
    return _markdown(args, sections, profile.measure.statistic, data.name)


def _plot(sections: list[tuple[float, list[dict[str, Any]]]]) -> None:
    """Test accuracy (same SPOS weights) vs measured latency of every winner, with the budget lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"shift": "^", "spos": "o", "random": "x"}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, marker in markers.items():
        pts = [(r["measured_ms"], r["test_spos"] * 100) for _, rows in sections for r in rows if r["method"] == method]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, s=60, label=method)
    for budget, _ in sections:
        ax.axvline(budget, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("measured latency, ms (cpu-ort)")
    ax.set_ylabel("test accuracy on the SPOS supernet (%)")
    ax.set_title("Search winners per budget (dashed lines)")
    ax.legend()
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def _markdown(args: argparse.Namespace, sections: list[tuple[float, list[dict[str, Any]]]], statistic: str,
              data_name: str) -> str:
    scale = "QUICK smoke scale: not figures to quote" if args.quick else "CPU scale (no GPU was lent)"
    out = [
        *provenance(),
        "",
        f"Scale: {scale}.",
        "",
        f"Dataset {data_name}; supernet `{args.supernet}`; profile `{args.profile}`; seed {args.seed}; "
        f"candidates scored on {args.val_limit} validation images (carved from the training split); winners "
        f"scored on the whole test split with BN recalibrated. Latency: the profile's {statistic}, all three "
        "winners measured end to end in one interleaved run. *val* is the winner's score in its own search "
        "(shift's on its shifted supernet, so not comparable across rows); *test (SPOS sn)* and "
        "*test (shifted sn)* score every winner on the same weights.",
        "",
    ]
    for budget, rows in sections:
        out += [f"**Budget {budget:g} ms**", "",
                "| method | architecture | val | test (SPOS sn) | test (shifted sn) | predicted ms | measured ms "
                "| within budget | archs evaluated | search s |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['method']} | `{r['arch']}` | {r['val']:.2%} | {r['test_spos']:.2%} | "
                       f"{r['test_shift']:.2%} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | "
                       f"{'yes' if r['within'] else 'NO'} | {r['evaluated']} | {r['seconds']:.0f} |")
        best_random = next(r for r in rows if r["method"] == "random")
        shift = next(r for r in rows if r["method"] == "shift")
        out += ["", f"Shift vs random (same weights, test, {shift['count']} images): "
                f"{(shift['test_spos'] - best_random['test_spos']) * 100:+.2f} points on the SPOS supernet, "
                f"{(shift['test_shift'] - best_random['test_shift']) * 100:+.2f} points on the shifted supernet.", ""]
    out += [f"![winners: accuracy vs measured latency](img/{PLOT.name})"]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", required=True, help="Supernet checkpoint from `edgenas train`.")
    add_evolution_options(p)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5], help="Latency budgets in ms.")
    p.add_argument("--val-limit", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="runs/bench-search", help="Where the search runs go (resumable).")
    p.add_argument("--quick", action="store_true", help="Tiny searches: a smoke test of the script.")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown report to update.")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    np.random.seed(args.seed)
    body = run(args)
    write_section(args.out, SECTION_KEY, SECTION_TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
