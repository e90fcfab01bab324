"""Transfer: a supernet trained on one dataset, shifted onto another, vs a supernet trained on the target.

Four searches on the target dataset, same space, profile, latency table, budget and seed:

* **target**: a supernet trained on the target itself (``edgenas train`` with the same space), then a
  Supernet Shifting search on it: the reference the issue asks transfer to come within 1 point of;
* **transfer**: ``edgenas search --transfer-from SOURCE --data TARGET``: the source supernet with a
  fresh classifier, trained by the shifting search on the target (the paper's transferability);
* **transfer, frozen backbone**: the same with ``--freeze-backbone`` (only the classifier learns);
* **no transfer training** is not run: with ``--no-shift`` the new classifier would never be trained
  (the CLI refuses it).

Each winner's accuracy is reported on the target's test split, scored on the supernet its search
ended with (the "accuracy of a search run"), plus, for a like-for-like view of the architectures
themselves, every winner scored on the target-trained supernet.

Run from the repository root::

    .venv/bin/python benchmarks/transfer.py --source runs/fmnist-mbv3/supernet.pt --target digits \\
        --resize 28 --budget 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from _report import provenance, write_section
from _runs import add_evolution_options, api_search, api_train, evolution_fields

from edgenas.data import DataConfig, load_dataset
from edgenas.evaluate import score_archs
from edgenas.search.verify import deployable_arch
from edgenas.supernet import load_checkpoint

SECTION_KEY = "transfer"
SECTION_TITLE = "Transfer: shifting a Fashion-MNIST supernet onto another dataset"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"


def run(args: argparse.Namespace) -> str:
    work = Path(args.work)
    source, source_meta, _ = load_checkpoint(args.source)
    space = source.space
    from edgenas.pipeline import SearchJob, TrainJob
    from edgenas.train import TrainConfig

    common = SearchJob(profile=args.profile, tables_dir=args.tables_dir, latency_ms=args.budget, seed=args.seed,
                       device="cpu", shift_batches=args.shift_batches, shift_update=args.shift_update,
                       shift_lr=args.shift_lr or None, **evolution_fields(args))
    width = space.config_dict().get("width_mult", 1.0)
    train_job = TrainJob(data=DataConfig(name=args.target, resize=args.resize or None),
                         train=TrainConfig(epochs=2 if args.quick else args.target_epochs,
                                           batch_size=args.target_batch_size, seed=args.seed, threads=1, device="cpu"),
                         space=space.name, space_options={"width_mult": width}, out=str(work / "target-supernet"))
    target_ckpt = api_train(train_job, "train on target")
    target_sn, target_meta, _ = load_checkpoint(target_ckpt)
    if target_sn.space.config_hash() != space.config_hash():
        raise SystemExit(f"the target supernet's space differs from the source's ({target_sn.space.config_dict()})")
    transfer = dataclasses.replace(common, transfer_from=args.source, data=args.target, resize=args.resize or None)
    plans = {"target": dataclasses.replace(common, supernet=str(target_ckpt)), "transfer": transfer,
             "transfer-frozen": dataclasses.replace(transfer, freeze_backbone=True)}
    dirs = {name: work / f"search-{name}" for name in plans}
    runs = {name: api_search(dataclasses.replace(job, out=str(dirs[name])), name) for name, job in plans.items()}
    data_cfg = DataConfig(**{**dict(target_meta.get("data") or {}), "train_limit": None})
    data = load_dataset(data_cfg)
    rows = []
    for name, doc in runs.items():
        arch = space.parse(deployable_arch(doc))
        final, _, _ = load_checkpoint(dirs[name] / "supernet.pt")
        own = score_archs(final, [arch], data, split="test", seed=args.seed)[0]
        ref = score_archs(target_sn, [arch], data, split="test", seed=args.seed)[0]
        cand = next(c for c in doc["topk"] if c["arch"] == arch.to_str())
        rows.append({"name": name, "arch": arch.to_str(), "val": cand["score"], "own": own.accuracy,
                     "ref": ref.accuracy, "count": own.count, "ms": cand["metrics"].get("latency_ms"),
                     "seconds": doc.get("seconds_this_session", float("nan")), "shift": doc.get("shift") or {}})
    return _markdown(args, rows, source_meta, target_meta, data.name)


def _markdown(args: argparse.Namespace, rows: list[dict[str, Any]], source_meta: dict[str, Any],
              target_meta: dict[str, Any], target: str) -> str:
    scale = "QUICK smoke scale: not figures to quote" if args.quick else "CPU scale (no GPU was lent)"
    src_train = source_meta.get("train", {})
    tgt_train = target_meta.get("train", {})
    ref = next(r for r in rows if r["name"] == "target")
    out = [
        *provenance(), "", f"Scale: {scale}.", "",
        f"Source supernet `{args.source}` ({source_meta.get('data', {}).get('name')}, "
        f"{src_train.get('epochs')} epochs); target {target} resized to {args.resize or 'native'} px, "
        f"target supernet trained {tgt_train.get('epochs')} epochs (batch {tgt_train.get('batch_size')}) from "
        "scratch with the same space. "
        f"Budget {args.budget:g} ms on `{args.profile}`; every search: {' '.join(args.evo_text)}, "
        f"{args.shift_batches} shifting batch(es) per candidate, shifting update per {args.shift_update}, "
        f"shifting lr {args.shift_lr or 'default'}, seed {args.seed}.", "",
        "| search | architecture | val | test, own final supernet | test, target-trained supernet "
        "| gap to target (own) | predicted ms | shift steps / batches | search s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = (r["own"] - ref["own"]) * 100
        shift = r["shift"]
        out.append(f"| {r['name']} | `{r['arch']}` | {r['val']:.2%} | {r['own']:.2%} | {r['ref']:.2%} | "
                   f"{gap:+.2f} pts | {r['ms']:.3f} | {shift.get('steps_taken', '-')} / "
                   f"{shift.get('batches_trained', '-')} | {r['seconds']:.0f} |")
    out += ["", f"Test accuracy on {ref['count']} {target} test images."]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="Supernet trained on the source dataset.")
    p.add_argument("--target", default="digits")
    p.add_argument("--resize", type=int, default=28, help="Resize target images (0: native size).")
    p.add_argument("--target-epochs", type=int, default=30)
    add_evolution_options(p)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--shift-batches", type=int, default=2)
    p.add_argument("--shift-update", choices=["generation", "candidate"], default="generation")
    p.add_argument("--shift-lr", type=float, default=None)
    p.add_argument("--target-batch-size", type=int, default=128)
    p.add_argument("--work", default="runs/bench-transfer")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    args.evo_text = [f"population {args.population}", f"{args.generations} generations", f"top-{args.topk}"]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    body = run(args)
    write_section(args.out, SECTION_KEY, SECTION_TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
