"""Pipeline cost: wall time of every stage of an ``edgenas run``, and of one candidate evaluation.

The stage times are the ones ``edgenas run`` recorded in its ``stages.json`` (each stage's own wall
time, summed over resumptions). One candidate evaluation is then timed directly on the run's
supernet, the way the search does it: BN recalibration on the fixed training batches plus accuracy
on the validation images the search used, for ``--candidates`` sampled architectures (median), and
compared with the search's average wall time per evaluated candidate (which also includes the
shifting step's training batches and the bookkeeping).

    .venv/bin/python benchmarks/pipeline_cost.py runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _report import provenance, write_section

from edgenas.data import DataConfig, load_dataset
from edgenas.evaluate import prepare_scoring, score_arch
from edgenas.supernet import load_checkpoint

SECTION_KEY = "pipeline_cost"
SECTION_TITLE = "Pipeline cost: edgenas run stage by stage, and one candidate evaluation"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="A finished `edgenas run` directory.")
    p.add_argument("--candidates", type=int, default=5)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = Path(args.run_dir)
    log = json.loads((run / "stages.json").read_text())
    search = json.loads((run / "search" / "search.json").read_text())
    stages = log["stages"]
    total = sum(s["seconds"] for s in stages.values())

    supernet, _, _ = load_checkpoint(run / "supernet" / "supernet.pt")
    data = load_dataset(DataConfig(**{**search["data"], "train_limit": None}))
    scoring = search["config"]["scoring"]
    device, recal = prepare_scoring(supernet, data, recal=scoring["recal_batches"], batch_size=scoring["batch_size"],
                                    device=torch.device("cpu"), seed=search["seed"] or 0)
    archs = [c["arch"] for c in search["generations"][0]["population"]][: args.candidates]  # legal ones
    seconds = []
    for text in archs:
        arch = supernet.space.parse(text)
        start = time.perf_counter()
        score_arch(supernet, arch, data, recal, split="val", batch_size=scoring["batch_size"], device=device)
        seconds.append(time.perf_counter() - start)
    per_search = stages["search"]["seconds"] / max(1, search["evaluated"])

    lines = [*provenance(), "", "Scale: CPU (no GPU was lent).", "",
             "Run settings: " + ", ".join(f"{k} `{v}`" for k, v in log["settings"].items() if v is not None) + ".", "",
             "| stage | wall time | share |", "|---|---:|---:|"]
    for name, rec in stages.items():
        note = f" ({rec['note']})" if rec.get("note") else ""
        lines.append(f"| {name}{note} | {rec['seconds']:.0f} s | {rec['seconds'] / total:.0%} |")
    lines += [f"| total | {total:.0f} s | |", "",
              f"One candidate evaluation (BN recalibration on {scoring['recal_batches']} x {scoring['batch_size']} "
              f"training images + {len(data.val)} validation images) of the search's first {len(archs)} candidates, "
              "median: "
              f"**{np.median(seconds):.2f} s** (range {min(seconds):.2f}-{max(seconds):.2f} s). The search spent "
              f"{per_search:.2f} s per evaluated candidate ({search['evaluated']} evaluations, shifting "
              f"{(search.get('shift') or {}).get('batches_trained', 0)} training batches in all)."]
    body = "\n".join(lines)
    write_section(args.out, SECTION_KEY, SECTION_TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
