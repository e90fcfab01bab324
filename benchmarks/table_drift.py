"""Does a latency table stay true on a noisy, drifting host? Plain milliseconds against the speed reference.

Builds the same table twice -- in plain milliseconds (``reference=False``) and in units of the speed
reference timed beside every model (the default) -- once on the host as it is ("quiet") and once
under a noisy neighbour (a competing process switching CPU load on and off, ``benchmarks/_load.py``),
and validates each on fresh subnets at once, quiet and loaded. Run it again at least ``--after``
seconds later (the state file keeps what was done, so a stop loses one step at most) and it
validates the same tables again, quiet and loaded: the staleness test. Every validation also gives
the Kendall tau of the subnets' MAC counts against the same measurements: what a table must beat.

    python benchmarks/table_drift.py               # builds and validates now
    python benchmarks/table_drift.py               # again an hour later: re-validates, writes the report
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import NoisyNeighbour, load_average
from _report import command_line, machine_info, machine_markdown, publish

from edgenas.hardware.calibration import kendall_tau
from edgenas.hardware.profile import load_profile
from edgenas.hardware.table import LatencyTable, build_table, default_method, validate_table
from edgenas.io import atomic_write_json
from edgenas.space import create_space

KINDS = ("referenced", "plain")
LOADS = ("quiet", "loaded")


def _say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def _neighbour(args: argparse.Namespace) -> NoisyNeighbour:
    return NoisyNeighbour(duty=args.duty, workers=args.workers, kind="matmul", seconds=900, seed=args.seed)


def _step(state: dict[str, Any], key: str, path: Path, fn: Any) -> Any:
    """Run ``fn`` once: its result is kept in the state file, so a rerun skips it."""
    if key not in state["steps"]:
        _say(f"{key} ...")
        state["steps"][key] = {**fn(), "at": time.time(), "load_average": load_average()}
        atomic_write_json(path, state)
    return state["steps"][key]


def _validate(table_path: Path, space: Any, profile: Any, args: argparse.Namespace, loaded: bool) -> dict[str, Any]:
    table = LatencyTable.load(table_path)
    if loaded:
        with _neighbour(args):
            v = validate_table(table, space, profile, n=args.validate, seed=args.seed + 1)
    else:
        v = validate_table(table, space, profile, n=args.validate, seed=args.seed + 1)
    hw = tuple(profile.input_shape[1:])
    macs = [space.macs(space.parse(a), hw, profile.input_shape[0], table.num_classes) for a in v.archs]
    return {"median_rel_error": v.median_rel_error, "within_10pct": v.within_10pct, "kendall_tau": v.kendall_tau,
            "bias": v.mean_signed_rel_error, "noise_rel": v.noise_rel, "speed": v.speed,
            "raw_median_rel_error": v.raw_median_rel_error, "macs_tau": kendall_tau(macs, v.measured_ms),
            "retest_tau": v.retest_kendall_tau, "seconds": v.seconds_measuring}


def run(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {"steps": {}}
    space = create_space(args.space, args.preset, width_mult=args.width_mult)
    profile = load_profile(args.profile)
    method = default_method(profile)

    for load in LOADS:
        for kind in KINDS:
            path = work / f"{load}-{kind}.json"

            def build(kind: str = kind, load: str = load, path: Path = path) -> dict[str, Any]:
                def go() -> LatencyTable:
                    return build_table(space, profile, calib_samples=args.calib, seed=args.seed, method=method,
                                       reference=kind == "referenced", on_progress=_say)
                if load == "loaded":
                    with _neighbour(args):
                        table = go()
                else:
                    table = go()
                table.save(path)
                return {"seconds": table.build_seconds,
                        "reference_noise": table.reference.noise_rel if table.reference else None}
            _step(state, f"build {load} {kind}", state_path, build)
            for vload in LOADS:
                _step(state, f"validate {load}-built {kind} at once, {vload}", state_path,
                      lambda path=path, vload=vload: _validate(path, space, profile, args, vload == "loaded"))

    built = min(s["at"] for k, s in state["steps"].items() if k.startswith("build"))
    wait = built + args.after - time.time()
    if wait > 0:
        _say(f"built; run again in {wait / 60:.0f} min (after {dt.datetime.fromtimestamp(built + args.after):%H:%M}) "
             "to validate the same tables later; writing the report of what is done so far")
    else:
        for when in ("later", *([args.again] if args.again else [])):
            for load in LOADS:
                for kind in KINDS if when == "later" else args.again_kinds:
                    for vload in LOADS if when == "later" else args.again_loads:
                        path = work / f"{load}-{kind}.json"
                        _step(state, f"validate {load}-built {kind} {when}, {vload}", state_path,
                              lambda path=path, vload=vload: _validate(path, space, profile, args, vload == "loaded"))
    publish(args.out, "table_drift", "Latency table on a noisy, drifting host", report(state, args, built))
    return 0


def report(state: dict[str, Any], args: argparse.Namespace, built: float) -> str:
    steps = state["steps"]
    lines = [
        f"Command: `{command_line()}` (run twice: now, and at least {args.after / 60:.0f} min later).",
        "",
        machine_markdown(machine_info()),
        "",
        f"Space {args.space} {args.preset} width {args.width_mult}, profile `{args.profile}`, {args.calib} "
        f"calibration subnets, {args.validate} fresh validation subnets. Noisy neighbour: "
        f"{_neighbour(args).describe()}. 'plain': milliseconds as timed; 'referenced': in units of the speed "
        "reference timed beside every model (the default since this benchmark). Errors are of the "
        "table's prediction against the end-to-end measurement; MACs tau ranks the same subnets by MAC count; "
        "noise: how much re-measuring a validation subnet moves it (median relative spread of its trials); "
        "host speed: the reference's time at validation over its time at build; plain-ms error: the "
        "referenced table's error against the timings before conversion; retest tau: how well one half of "
        "the validation's trials ranks the subnets against the other half (the scale the taus are read on); "
        "load average: the host's 1-minute load when the step ended ('quiet' means no neighbour of ours, "
        "not an idle host: other jobs share it).",
        "",
        "| table built | kind | validated | when | median error | within ±10% | Kendall tau | MACs tau | retest tau "
        "| bias | noise | host speed | plain-ms error | load average |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    validations = [(m.groups(), s) for k, s in steps.items()
                   if (m := re.fullmatch(r"validate (\w+)-built (\w+) (.+), (\w+)", k))]
    order = {"at once": 0, "later": 1}
    validations.sort(key=lambda v: (LOADS.index(v[0][0]), KINDS.index(v[0][1]), order.get(v[0][2], 2), v[1]["at"]))
    for (load, kind, _when, vload), s in validations:
        after = (s["at"] - built) / 60
        speed = f"{s['speed']:.2f}x" if s.get("speed") else "-"
        raw = f"{s['raw_median_rel_error']:.1%}" if s.get("raw_median_rel_error") is not None else "-"
        retest = f"{s['retest_tau']:.3f}" if s.get("retest_tau") is not None else "-"
        lines.append(
            f"| {load} | {kind} | {vload} | {after:.0f} min after | {s['median_rel_error']:.1%} | "
            f"{s['within_10pct']:.0%} | {s['kendall_tau']:.3f} | {s['macs_tau']:.3f} | {retest} | "
            f"{s['bias']:+.1%} | {s['noise_rel']:.1%} | {speed} | {raw} | {s['load_average'][0]:.1f} |")
    lines += ["", "Builds: " + "; ".join(
        f"{k.removeprefix('build ')} {s['seconds']:.0f} s"
        + (f" (reference spread {s['reference_noise']:.1%})" if s.get("reference_noise") is not None else "")
        + f", load average {s['load_average'][0]:.2f}" for k, s in steps.items() if k.startswith("build")) + "."]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default="cpu-ort")
    p.add_argument("--space", default="mbv3")
    p.add_argument("--preset", default="small")
    p.add_argument("--width-mult", type=float, default=0.5)
    p.add_argument("--calib", type=int, default=30)
    p.add_argument("--validate", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duty", type=float, default=0.5, help="the neighbour's busy fraction")
    p.add_argument("--workers", type=int, default=1, help="neighbour processes")
    p.add_argument("--after", type=float, default=3600.0, help="seconds between the build and the later validation")
    p.add_argument("--again", default=None, metavar="LABEL",
                   help="after the later validations, validate the tables once more under this label (e.g. 3h)")
    p.add_argument("--again-kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--again-loads", nargs="+", choices=LOADS, default=list(LOADS))
    p.add_argument("--work", default="runs/bench/table_drift", help="tables and the resumable state file")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"))
    p.add_argument("--note", default="")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
