"""Deployment: ONNX Runtime fp32 and int8 vs torch eager for exported bundles, with accuracy and parity.

For each bundle the three ways to run the same network are timed on the same inputs, batch 1,
one thread: ``model.onnx`` and ``model.int8.onnx`` with the ``--ort-profile`` (interleaved with each
other), and the same architecture in torch eager with the ``--torch-profile``. The two runtimes
cannot share one timing loop, so the measurement alternates them for ``--rounds`` rounds and the
ratios are taken within each round (then the median over rounds), which cancels slow drift of a
shared machine. Accuracy (torch, ONNX fp32, int8, with image counts) and torch-vs-ONNX parity come
from the bundle's manifest, where the export measured them on the real test split.

    .venv/bin/python benchmarks/deploy.py export/fashion-mnist-cpu-ort runs/demo/export/demo
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import provenance, write_section

from edgenas.export import INT8_FILE, MODEL_FILE, read_manifest
from edgenas.hardware.measure import OrtMeasurer, TorchCpuMeasurer
from edgenas.hardware.profile import load_profile
from edgenas.space import space_from_dict

SECTION_KEY = "deployment"
SECTION_TITLE = "Deployment: ONNX Runtime fp32 / int8 vs torch eager, int8 accuracy, ONNX parity"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"


def measure_bundle(bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    manifest = read_manifest(bundle)
    _, c, h, w = manifest["input"]["shape"]
    ort_p = load_profile(args.ort_profile, input_shape=(c, h, w))
    torch_p = load_profile(args.torch_profile, input_shape=(c, h, w))
    space = space_from_dict(manifest["space"])
    subnet = space.build_subnet(space.parse(manifest["arch"]), len(manifest["output"]["classes"]), c)
    files = [bundle / MODEL_FILE, *([bundle / INT8_FILE] if (bundle / INT8_FILE).is_file() else [])]
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        ort = OrtMeasurer(ort_p).measure_onnx_many(files)
        eager = TorchCpuMeasurer(torch_p).measure_module(subnet)
        row = {"fp32": ort[0].median_ms, "torch": eager.median_ms}
        if len(ort) > 1:
            row["int8"] = ort[1].median_ms
        rounds.append(row)
        print(f"[{bundle.name}] round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.4f} ms" for k, v in row.items()),
              flush=True)

    def med(key: str) -> float:
        return float(np.median([x[key] for x in rounds])) if all(key in x for x in rounds) else float("nan")

    def ratio(a: str, b: str) -> float:
        return float(np.median([x[a] / x[b] for x in rounds])) if all(a in x for x in rounds) else float("nan")

    return {"name": bundle.name, "arch": manifest["arch"], "manifest": manifest, "fp32_ms": med("fp32"),
            "int8_ms": med("int8"), "torch_ms": med("torch"), "ort_over_torch": ratio("fp32", "torch"),
            "int8_speedup": ratio("fp32", "int8")}


def _markdown(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    lines = [*provenance(), "", "Scale: CPU (no GPU was lent).", "",
             f"Latency: medians over {args.rounds} rounds, each round timing ONNX Runtime (`{args.ort_profile}`: "
             f"fp32 and int8 interleaved) and then torch eager (`{args.torch_profile}`), batch 1, 1 thread; ratios "
             "are taken within a round. Accuracy and parity: from each bundle's manifest (measured by "
             "`edgenas export` on the whole test split).", "",
             "| bundle | MFLOPs | params | ORT fp32 ms | ORT int8 ms | torch eager ms | ORT fp32 / torch "
             "| int8 speed-up | acc torch / ONNX / int8 | int8 drop | parity max abs diff, top-1 agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["manifest"]
        acc, cost, par = m["accuracy"], m["cost"], m["parity"]
        int8 = acc.get("int8") or {}
        lines.append(
            f"| {r['name']} | {cost['mflops']:.2f} | {cost['params']:,} | {r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | "
            f"{r['torch_ms']:.3f} | {r['ort_over_torch']:.2f} | {r['int8_speedup']:.2f}x | "
            f"{acc['torch']['accuracy']:.2%} / {acc['onnx']['accuracy']:.2%} / {int8.get('accuracy', float('nan')):.2%}"
            f" of {acc['onnx']['count']} | {acc.get('int8_drop_points') or float('nan'):+.2f} pts | "
            f"{par['max_abs_diff']:.1e}, {par['top1_agreement']:.2%} of {par['count']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="+", help="Bundle directories (edgenas export).")
    p.add_argument("--ort-profile", default="cpu-ort")
    p.add_argument("--torch-profile", default="cpu-torch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 rounds: a smoke test.")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    if args.quick:
        args.rounds = 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = [measure_bundle(Path(b), args) for b in args.bundles]
    body = _markdown(args, rows)
    write_section(args.out, SECTION_KEY, SECTION_TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
