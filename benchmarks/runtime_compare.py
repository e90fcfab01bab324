"""Runtimes compared: ONNX Runtime vs OpenVINO (fp32, int8) vs torch eager on one bundle, and latency tables
per runtime.

**Bundle latency** (always). For the bundle (default ``export/fashion-mnist-cpu-ort``, the committed reference
bundle) five runners are prepared: ``model.onnx`` and ``model.int8.onnx`` in ONNX Runtime (``--ort-profile``)
and in OpenVINO (``--openvino-profile``: the same files, read by OpenVINO's ONNX frontend), and the torch
eager network (``--torch-profile``), rebuilt from the bundle's source subnet checkpoint when it is still on
disk and of the bundle's architecture (otherwise torch is left out and the report says why). All five run
in one protocol (each trial visits every runner, in rotating order), so they share the machine's state;
every ``--rounds`` round prepares them afresh (new sessions, new compilations). Ratios are taken within a
round, then the median over rounds. The int8 files are the bundle's (already QDQ), timed as they are.

Beside the timings: top-1 accuracy of both files in both runtimes on the bundle's test split and the
agreement with ONNX Runtime fp32 (does OpenVINO's int8 path compute what ONNX Runtime's does?), and the
runtime precision of OpenVINO's compute layers for the int8 file (does it really run integer kernels?).

**Latency tables per runtime** (``--tables``). For each of ``--table-profiles`` (default cpu-ort,
cpu-ort-int8, cpu-openvino, cpu-openvino-int8) the exact CLI a user runs, in a subprocess:
``edgenas profile build --profile P --out DIR/P.json --force`` (default space, calibration and protocol)
then ``edgenas profile validate DIR/P.json --n N`` on ``N`` fresh subnets; the figures are read back from
the table file. ``--reuse`` keeps a table already validated on ``N`` subnets.

    .venv/bin/python benchmarks/runtime_compare.py --rounds 5 --tables
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import provenance, publish

from edgenas.export import INT8_FILE, MODEL_FILE, read_manifest
from edgenas.hardware.measure import OrtMeasurer, TorchCpuMeasurer
from edgenas.hardware.openvino_runtime import OpenVinoMeasurer, layer_precisions
from edgenas.hardware.profile import load_profile

SECTION_KEY = "runtime_compare"
SECTION_TITLE = "Runtimes: ONNX Runtime vs OpenVINO vs torch eager (fp32 and int8), and latency tables per runtime"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"
DEFAULT_BUNDLE = REPO / "export" / "fashion-mnist-cpu-ort"
TABLE_PROFILES = ("cpu-ort", "cpu-ort-int8", "cpu-openvino", "cpu-openvino-int8")
TARGET = {"median": 0.05, "within": 0.95, "tau": 0.85}


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def isa_note() -> str:
    """The CPU's vector and int8 dot-product extensions, read from /proc/cpuinfo: they decide int8 speed."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return "CPU flags unknown"
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return (f"CPU extensions: {', '.join(have) or 'none of avx2/avx512/vnni/amx'}; "
            f"{'with' if vnni else 'no'} VNNI (int8 dot products {'in one instruction' if vnni else 'via vpmaddubsw'})")


# ----- bundle latency ---------------------------------------------------------------------------------------------
def _torch_subnet(manifest: dict[str, Any], from_arch: bool) -> tuple[torch.nn.Module | None, str]:
    """The bundle's network in torch from its source checkpoint; else, with ``from_arch``, the manifest's
    architecture built with fresh weights (eager latency does not depend on the weights' values); else
    None. The second value says which, and why."""
    from edgenas.extract import load_subnet
    from edgenas.space import space_from_dict

    path = Path(str((manifest.get("source") or {}).get("subnet", "")))
    if not path.is_file():
        why = f"the bundle's source checkpoint {path} is not on this machine"
    else:
        subnet, _meta, _ = load_subnet(path)
        if subnet.arch.to_str() == manifest["arch"]:
            return subnet.eval(), f"torch eager: the source checkpoint {path}"
        why = f"the source checkpoint {path} now holds {subnet.arch.to_str()}, not the bundle's {manifest['arch']}"
    if not from_arch:
        return None, f"torch eager skipped: {why} (--torch-from-arch rebuilds the architecture instead)"
    space = space_from_dict(manifest["space"])
    _, c, _, _ = manifest["input"]["shape"]
    subnet = space.build_subnet(space.parse(manifest["arch"]), len(manifest["output"]["classes"]), c)
    return subnet.eval(), (f"torch eager: {manifest['arch']} rebuilt from the manifest with fresh weights "
                           f"(--torch-from-arch), because {why}; its accuracy figures are the export's")


def _test_split(manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from edgenas.config import from_mapping
    from edgenas.data import DataConfig, load_dataset
    from edgenas.export import _preprocess

    data = load_dataset(from_mapping(DataConfig, manifest["data"]["config"], where="manifest data"))
    return _preprocess(data.test.images.numpy(), manifest), data.test.labels.numpy()


def accuracy_rows(bundle: Path, manifest: dict[str, Any], threads: int) -> tuple[dict[str, dict[str, float]], Any]:
    """Top-1 accuracy of each file in each runtime on the test split, and agreement with ONNX Runtime fp32;
    also OpenVINO's compute-layer precisions for each file."""
    import onnxruntime as ort
    import openvino as ov

    from edgenas.hardware.openvino_runtime import compile_model, read_model

    x, y = _test_split(manifest)
    core = ov.Core()
    preds: dict[str, np.ndarray] = {}
    precisions = {}
    for name in (MODEL_FILE, INT8_FILE):
        if not (bundle / name).is_file():
            continue
        data = (bundle / name).read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sess = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        compiled = compile_model(core, read_model(core, data, label=name), threads, label=name)
        request = compiled.create_infer_request()
        o, v = [], []
        for i in range(0, len(y), 256):
            o.append(sess.run(None, {"input": x[i:i + 256]})[0].argmax(1))
            v.append(np.array(request.infer({0: x[i:i + 256]})[0]).argmax(1))
        tag = "fp32" if name == MODEL_FILE else "int8"
        preds[f"ORT {tag}"], preds[f"OpenVINO {tag}"] = np.concatenate(o), np.concatenate(v)
        precisions[tag] = layer_precisions(compiled)
    ref = preds["ORT fp32"]
    rows = {k: {"accuracy": float((p == y).mean()), "agreement": float((p == ref).mean()), "count": len(y)}
            for k, p in preds.items()}
    if "ORT int8" in preds:
        rows["OpenVINO int8"]["agreement_with_ort_int8"] = float((preds["OpenVINO int8"] == preds["ORT int8"]).mean())
    return rows, precisions


_KINDS = {"Convolution": "convolutions", "GroupConvolution": "convolutions", "FullyConnected": "convolutions",
          "Reorder": "reorders", "Subgraph": "fused eltwise/quantize", "FakeQuantize": "fused eltwise/quantize"}


def openvino_time_shares(bundle: Path, manifest: dict[str, Any], threads: int) -> dict[str, dict[str, Any]]:
    """Where OpenVINO spends a run of each file: shares of its per-layer profile (``PERF_COUNT``) by kind, the
    convolution kernels it chose, and the profiled total (profiling slows layers down, so only shares and
    the ratio between files are read from it)."""
    import openvino as ov

    from edgenas.hardware.openvino_runtime import DEVICE, compile_properties

    _, c, h, w = manifest["input"]["shape"]
    core = ov.Core()
    out = {}
    for name, tag in ((MODEL_FILE, "fp32"), (INT8_FILE, "int8")):
        if not (bundle / name).is_file():
            continue
        model = core.read_model((bundle / name).read_bytes())
        model.reshape({model.inputs[0].get_any_name(): [1, c, h, w]})
        request = core.compile_model(model, DEVICE, {**compile_properties(threads), "PERF_COUNT": True}
                                     ).create_infer_request()
        request.set_input_tensor(ov.Tensor(np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)))
        for _ in range(200):
            request.infer()
        times: dict[str, float] = {}
        kernels: set[str] = set()
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            kind = _KINDS.get(info.node_type, "other")
            times[kind] = times.get(kind, 0.0) + info.real_time.total_seconds() * 1e6
            if kind == "convolutions":
                kernels.add(info.exec_type)
        total = sum(times.values())
        out[tag] = {"total_us": total, "shares": {k: v / total for k, v in sorted(times.items())},
                    "kernels": sorted(kernels)}
    return out


def measure_round(bundle: Path, manifest: dict[str, Any], subnet: torch.nn.Module | None,
                  args: argparse.Namespace, pte: bytes | None = None) -> dict[str, float]:
    """One interleaved protocol over every runner, prepared afresh; medians in ms by label."""
    _, c, h, w = manifest["input"]["shape"]
    ort_p = load_profile(args.ort_profile, input_shape=(c, h, w))
    ov_p = load_profile(args.openvino_profile, input_shape=(c, h, w))
    torch_p = load_profile(args.torch_profile, input_shape=(c, h, w))
    shape = (ort_p.batch_size, c, h, w)
    ort_m, ov_m = OrtMeasurer(ort_p), OpenVinoMeasurer(ov_p)
    runners: dict[str, Any] = {}
    for name, tag in ((MODEL_FILE, "fp32"), (INT8_FILE, "int8")):
        if (bundle / name).is_file():
            data = (bundle / name).read_bytes()
            runners[f"ORT {tag}"] = ort_m._onnx_runner(data, shape)
            runners[f"OpenVINO {tag}"] = ov_m._onnx_runner(data, shape)
    torch_m = TorchCpuMeasurer(torch_p)
    if subnet is not None:
        runners["torch eager"] = torch_m._prepare(subnet, shape)
    if pte is not None:  # the same network lowered once to ExecuTorch + XNNPACK (the mobile runtime)
        from edgenas.hardware.executorch_runtime import ExecuTorchMeasurer

        et_p = load_profile(args.executorch_profile, input_shape=(c, h, w))
        runners["ExecuTorch XNNPACK"] = ExecuTorchMeasurer(et_p).pte_runner(pte, label="model.pte")
    with torch_m._scope():  # torch's thread count for the eager runner; the other runtimes set their own
        stats = ort_m._measure_runners(list(runners.values()))
    return {label: s.median_ms for label, s in zip(runners, stats)}


def bundle_section(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    bundle = Path(args.bundle)
    manifest = read_manifest(bundle)
    subnet, torch_note = _torch_subnet(manifest, args.torch_from_arch)
    _say(torch_note)
    pte = None
    if args.executorch and subnet is not None:
        from edgenas.hardware.executorch_runtime import lower_module

        _, c, h, w = manifest["input"]["shape"]
        _say("lowering the torch subnet to ExecuTorch + XNNPACK (once)")
        pte = lower_module(subnet, (1, c, h, w)).pte
    rounds = []
    for r in range(args.rounds):
        row = measure_round(bundle, manifest, subnet, args, pte)
        rounds.append(row)
        _say(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.4f} ms" for k, v in row.items()))
    labels = list(rounds[0])
    med = {k: float(np.median([r[k] for r in rounds])) for k in labels}
    vs_ort = {k: float(np.median([r[k] / r["ORT fp32"] for r in rounds])) for k in labels}
    speedup = {rt: float(np.median([r[f"{rt} fp32"] / r[f"{rt} int8"] for r in rounds]))
               for rt in ("ORT", "OpenVINO") if f"{rt} int8" in med}
    _say("accuracy of each file in each runtime on the test split")
    acc, precisions = accuracy_rows(bundle, manifest, max(1, torch.get_num_threads()))
    shares = openvino_time_shares(bundle, manifest, 1)
    m = load_profile(args.ort_profile).measure
    lines = [
        f"**Bundle latency**: `{bundle.relative_to(REPO) if bundle.is_relative_to(REPO) else bundle}` "
        f"(`{manifest['arch']}`, {manifest['cost']['mflops']:.2f} MFLOPs). Profiles `{args.ort_profile}`, "
        f"`{args.openvino_profile}`, `{args.torch_profile}`: batch 1, 1 thread, {m.trials} trials x ({m.warmup} "
        f"warm-up + {m.repeats} timed runs) per round, all runners interleaved in each trial; {args.rounds} rounds, "
        "each preparing every runner afresh; medians over rounds, ratios taken within a round.",
        f"{torch_note}.", "",
        "| runtime | file | median ms | / ORT fp32 | test accuracy | top-1 agreement with ORT fp32 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for k in labels:
        file = ("the torch subnet" if k == "torch eager" else "`model.pte` (the torch subnet, lowered)"
                if k.startswith("ExecuTorch") else f"`{MODEL_FILE if k.endswith('fp32') else INT8_FILE}`")
        a = acc.get(k)
        if k.startswith("ExecuTorch"):  # lowered from the torch subnet: its accuracy is the export's format check
            acc_text = "see `export --format executorch` | -"
        elif a is None:  # torch: the export's figures, on the same test split
            t, par = manifest["accuracy"]["torch"], manifest["parity"]
            acc_text = f"{t['accuracy']:.2%} (manifest) | {par['top1_agreement']:.2%} of {par['count']} (manifest)"
        else:
            acc_text = f"{a['accuracy']:.2%} | {a['agreement']:.2%} of {a['count']}"
        lines.append(f"| {k} | {file} | {med[k]:.4f} | {vs_ort[k]:.2f} | {acc_text} |")
    lines += ["", "int8 speed-up (fp32 median / int8 median, within a round): "
              + "; ".join(f"{rt} {s:.2f}x" for rt, s in speedup.items()) + f". {isa_note()}.", ""]
    for tag, p in precisions.items():
        text = ", ".join(f"{kind} {'/'.join(f'{n} {prec}' for prec, n in c.items())}" for kind, c in p.items())
        file = MODEL_FILE if tag == "fp32" else INT8_FILE
        lines.append(f"- OpenVINO's runtime precisions of the compute layers of `{file}`: {text}")
    if "agreement_with_ort_int8" in acc.get("OpenVINO int8", {}):
        lines.append(f"- `{INT8_FILE}`: OpenVINO's top-1 predictions agree with ONNX Runtime's on "
                     f"{acc['OpenVINO int8']['agreement_with_ort_int8']:.2%} of the test images")
    for tag, sh in shares.items():
        parts = ", ".join(f"{k} {v:.0%}" for k, v in sorted(sh["shares"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- OpenVINO per-layer profile of one run of the {tag} file (PERF_COUNT, 1 thread): {parts}; "
                     f"convolution kernels {', '.join(sh['kernels'])}")
    if len(shares) == 2:
        lines.append(f"- profiled total int8 / fp32: {shares['int8']['total_us'] / shares['fp32']['total_us']:.2f}")
    return lines, {"rounds": rounds, "median_ms": med, "vs_ort_fp32": vs_ort, "int8_speedup": speedup,
                   "accuracy": acc, "precisions": precisions, "openvino_time_shares": shares, "torch": torch_note}


# ----- latency tables per runtime ----------------------------------------------------------------------------------
def _cli(args: list[str]) -> float:
    """``edgenas ARGS`` in a subprocess; its wall time in seconds; a failure stops the benchmark with its last line."""
    _say("edgenas " + " ".join(args))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgenas", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"edgenas {' '.join(args)} failed (exit {proc.returncode}): {last}")
    return time.perf_counter() - start


def table_rows(args: argparse.Namespace) -> tuple[list[str], list[dict[str, Any]]]:
    tables = Path(args.tables_dir)
    tables.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.table_profiles:
        path = tables / f"{name}.json"
        doc = json.loads(path.read_text()) if path.is_file() else {}
        timing = doc.get("benchmark_seconds") or {}
        if not (args.reuse and (doc.get("validation") or {}).get("n") == args.validate):
            load_before = os.getloadavg()[0]
            build_s = _cli(["profile", "build", "--profile", name, "--out", str(path), "--force",
                            "--calib", str(args.calib), *args.protocol])
            validate_s = _cli(["profile", "validate", str(path), "--n", str(args.validate), "--json",
                               *args.protocol])
            doc = json.loads(path.read_text())
            timing = {"build": build_s, "validate": validate_s, "load": [load_before, os.getloadavg()[0]]}
            (tables / f"{name}.seconds.json").write_text(json.dumps(timing))
        elif (tables / f"{name}.seconds.json").is_file():
            timing = json.loads((tables / f"{name}.seconds.json").read_text())
        v = doc["validation"]
        rows.append({"profile": name, "runtime": doc["profile"]["runtime"], "precision": doc["profile"]["precision"],
                     "method": doc.get("method"), "build_s": timing.get("build"), "validate_s": timing.get("validate"),
                     "load": timing.get("load") or [float("nan")] * 2,
                     **{k: v.get(k) for k in ("n", "median_rel_error", "max_rel_error", "within_10pct",
                                                             "kendall_tau", "retest_kendall_tau",
                                                             "mean_signed_rel_error", "noise_rel",
                                                             "seconds_per_candidate")}})
    extra = " " + " ".join(args.protocol) if args.protocol else ""
    lines = [
        f"**Latency-table accuracy per runtime** (mbv3/small at 28x28, the CLI's defaults: {args.calib} calibration "
        f"subnets plus all-min and all-max, each profile's protocol, speed reference on), each validated on "
        f"{args.validate} fresh subnets; commands per profile: `edgenas profile build --profile P --out "
        f"{args.tables_dir}/P.json --force --calib {args.calib}{extra}` and `edgenas profile validate "
        f"{args.tables_dir}/P.json --n {args.validate}{extra}`, "
        "run one after another in this run. Target: median error <= 5%, >= 95% within ±10%, Kendall tau >= 0.85.", "",
        "| profile | method | build | validate | load before / after | median error | max error | within ±10% "
        "| Kendall tau (re-measured) | bias | noise | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        met = (r["median_rel_error"] <= TARGET["median"] and r["within_10pct"] >= TARGET["within"]
               and r["kendall_tau"] >= TARGET["tau"])
        retest = f" ({r['retest_kendall_tau']:.3f})" if r["retest_kendall_tau"] is not None else ""
        lines.append(
            f"| `{r['profile']}` | {r['method']} | {r['build_s'] or float('nan'):.0f} s | "
            f"{r['validate_s'] or float('nan'):.0f} s | {r['load'][0]:.1f} / {r['load'][1]:.1f} | "
            f"{r['median_rel_error']:.2%} | {r['max_rel_error']:.2%} | "
            f"{r['within_10pct']:.0%} | {r['kendall_tau']:.3f}{retest} | {r['mean_signed_rel_error']:+.2%} | "
            f"{r['noise_rel']:.1%} | {'met' if met else 'missed'} |")
    lines += ["", "_noise_: median relative std of the validation subnets' per-trial medians (how much "
              "re-measuring moves a subnet); _re-measured_: Kendall tau between two halves of the same "
              "validation measurement (even against odd trials), the scale a table's tau is read on (each half has "
              "fewer trials, so a good table can score above it). Build and validate: wall time "
              "of each CLI command, including Python start-up; load: the 1-minute load average before the build and "
              "after the validation."]
    return lines, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE), help="bundle directory (edgenas export)")
    p.add_argument("--ort-profile", default="cpu-ort")
    p.add_argument("--openvino-profile", default="cpu-openvino")
    p.add_argument("--torch-profile", default="cpu-torch")
    p.add_argument("--torch-from-arch", action="store_true",
                   help="time torch eager on the manifest's architecture with fresh weights when the source "
                        "checkpoint is gone or holds another architecture (default: leave torch out)")
    p.add_argument("--executorch", action="store_true",
                   help="also time the torch subnet lowered to ExecuTorch + XNNPACK (needs the executorch extra and "
                        "the torch subnet: its checkpoint or --torch-from-arch)")
    p.add_argument("--executorch-profile", default="cpu-executorch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tables", action="store_true", help="also build and validate a latency table per profile")
    p.add_argument("--table-profiles", nargs="+", default=list(TABLE_PROFILES))
    p.add_argument("--validate", type=int, default=100, help="fresh subnets per table validation")
    p.add_argument("--calib", type=int, default=30, help="calibration subnets per table (the CLI's default)")
    p.add_argument("--tables-dir", default="runs/bench/runtime_compare")
    p.add_argument("--reuse", action="store_true", help="keep tables already validated on --validate subnets")
    p.add_argument("--quick", action="store_true", help="2 rounds, 10 validation and 6 calibration subnets: a "
                                                        "smoke test, not figures to quote")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="markdown file whose section is rewritten ('-': print)")
    p.add_argument("--note", default="", help="free text appended to the section")
    args = p.parse_args()
    args.protocol = []
    if args.quick:
        args.rounds, args.validate, args.calib = 2, 10, 6
        args.protocol = ["--warmup", "3", "--repeats", "10", "--trials", "1"]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import openvino

    lines, figures = bundle_section(args)
    if args.tables:
        table_lines, figures["tables"] = table_rows(args)
        lines += ["", *table_lines]
    from importlib import metadata

    import onnxruntime

    versions = (f"onnxruntime {onnxruntime.__version__}, OpenVINO {metadata.version('openvino')} "
                f"({openvino.get_version()}), torch {torch.__version__}")
    body = [*provenance(), f"- {versions}", f"- {isa_note()}", "",
            "Scale: CPU, a shared 2-core virtual machine with other jobs running (see the load average); "
            "figures compared within this run only.", "", *lines]
    if args.note:
        body += ["", args.note]
    out_json = Path(args.tables_dir) / "runtime_compare.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(figures, indent=1, default=str))
    publish(args.out, SECTION_KEY, SECTION_TITLE, "\n".join(body))


if __name__ == "__main__":
    main()
