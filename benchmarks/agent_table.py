"""A latency table built through the device agent against one built locally, on the same machine.

Starts ``edgenas/agent/server.py`` on loopback (a subprocess, its own random token), then builds the
same table twice -- locally with ``cpu-ort`` and through the agent with a ``remote`` profile that has
cpu-ort's settings -- and validates both on the same fresh subnets (same seed, so the same
architectures), each in its own table's reference units. Reported: each table's validation error, the
agreement of the two tables (median relative difference of their block entries and of their
predictions), the cross errors (one table's predictions against the other's measurements), and what
the agent adds to a build's wall time (export, transfer, sessions built over there). The two must
agree within the tables' own error for the agent to be a faithful stand-in for local timing.

    python benchmarks/agent_table.py             # resumable: a rerun skips finished steps
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import load_average
from _report import command_line, machine_info, machine_markdown, publish

from edgenas.hardware.profile import RemoteSettings, load_profile
from edgenas.hardware.table import LatencyTable, build_table, default_method, validate_table
from edgenas.io import atomic_write_json
from edgenas.space import create_space

SERVER = Path(__file__).resolve().parents[1] / "edgenas" / "agent" / "server.py"
KINDS = ("local", "agent")


def _say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def _start_agent(token_env: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), "serve", "--port", "0", "--token-env", token_env],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if not line.startswith("edgenas agent listening on "):
        proc.kill()
        raise SystemExit(f"the agent did not start: {line!r}")
    return proc, line.split()[4]


def _rel(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.abs(x - y) / ((np.abs(x) + np.abs(y)) / 2)


def _cross(table: LatencyTable, space: Any, other: LatencyTable) -> float:
    """``table``'s predictions against ``other``'s end-to-end measurements of the same subnets."""
    v = other.validation
    assert v is not None
    predicted = np.array([table.predict(space.parse(a)) for a in v.archs])
    measured = np.array(v.measured_ms)
    return float(np.median(np.abs(predicted - measured) / measured))


def run(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {"steps": {}}
    space = create_space(args.space, args.preset, width_mult=args.width_mult)
    local = load_profile(args.profile)
    token_env = "EDGENAS_BENCH_AGENT_TOKEN"
    os.environ[token_env] = secrets.token_urlsafe(24)  # this process and the agent it starts, nobody else
    agent, url = _start_agent(token_env)
    _say(f"agent at {url}")
    remote = dataclasses.replace(local, name=f"{local.name}-agent", runtime="remote", provider=None,
                                 remote=RemoteSettings(url=url, token_env=token_env, provider=local.provider
                                                       or "CPUExecutionProvider"))
    profiles = {"local": local, "agent": remote}
    method = default_method(local)

    def step(key: str, fn: Any) -> dict[str, Any]:
        if key not in state["steps"]:
            _say(f"{key} ...")
            state["steps"][key] = {**fn(), "at": time.time(), "load_average": load_average()}
            atomic_write_json(state_path, state)
        return state["steps"][key]

    try:
        for kind in KINDS:
            def build(kind: str = kind) -> dict[str, Any]:
                table = build_table(space, profiles[kind], calib_samples=args.calib, seed=args.seed, method=method,
                                    on_progress=_say)
                table.save(work / f"{kind}.json")
                return {"seconds": table.build_seconds}
            step(f"build {kind}", build)
        for kind in reversed(KINDS):  # agent first: the later validation is not always the same one
            def validate(kind: str = kind) -> dict[str, Any]:
                path = work / f"{kind}.json"
                table = LatencyTable.load(path)
                table_profile = dataclasses.replace(table.profile_object(), remote=profiles[kind].remote)
                v = validate_table(table, space, table_profile, n=args.validate, seed=args.seed + 1)
                table.save(path)
                return {"median_rel_error": v.median_rel_error, "within_10pct": v.within_10pct,
                        "kendall_tau": v.kendall_tau, "noise_rel": v.noise_rel, "seconds": v.seconds_measuring}
            step(f"validate {kind}", validate)
    finally:
        agent.kill()
        agent.wait()
    publish(args.out, "agent_table", "A latency table through the device agent vs built locally",
            report(state, work, space, args))
    return 0


def report(state: dict[str, Any], work: Path, space: Any, args: argparse.Namespace) -> str:
    steps = state["steps"]
    tables = {kind: LatencyTable.load(work / f"{kind}.json") for kind in KINDS}
    rows_l, rows_a = tables["local"].cost_rows(), tables["agent"].cost_rows()
    pairs = [(a, b) for rl, ra in zip(rows_l, rows_a) for a, b in zip(rl, ra) if a != 0 or b != 0]
    entries = _rel([p[0] for p in pairs], [p[1] for p in pairs])
    archs = [space.parse(a) for a in tables["local"].validation.archs]  # type: ignore[union-attr]
    rng = np.random.default_rng(args.seed + 7)
    sampled = [space.sample(rng) for _ in range(1000)]
    pred_val = _rel([tables["local"].predict(a) for a in archs], [tables["agent"].predict(a) for a in archs])
    pred_many = _rel([tables["local"].predict(a) for a in sampled], [tables["agent"].predict(a) for a in sampled])
    measured = _rel(tables["local"].validation.measured_ms, tables["agent"].validation.measured_ms)  # type: ignore[union-attr]
    units = {k: t.reference.median_ms if t.reference else float("nan") for k, t in tables.items()}
    env = tables["agent"].environment
    lines = [
        f"Command: `{command_line()}`.",
        "",
        machine_markdown(machine_info()),
        "",
        f"Space {args.space} {args.preset} width {args.width_mult}, profile `{args.profile}` (local) and the same "
        f"settings as `runtime: remote` through `edgenas/agent/server.py` on loopback (the agent reported "
        f"{env.get('cpu')}, onnxruntime {(env.get('runtime_versions') or {}).get('onnxruntime')}), {args.calib} "
        f"calibration subnets, the same {args.validate} fresh validation subnets for both, each table in its own "
        "speed-reference units. The agent and the client share this machine's cores: measured on a busy 2-core "
        "host (other jobs running), so absolute times carry that noise; both tables were built and validated "
        "within the same run.",
        "",
        "| table | built in | median error | within ±10% | Kendall tau | noise | validation time | reference median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        b, v = steps[f"build {kind}"], steps[f"validate {kind}"]
        lines.append(f"| {kind} | {b['seconds']:.0f} s | {v['median_rel_error']:.1%} | {v['within_10pct']:.0%} | "
                     f"{v['kendall_tau']:.3f} | {v['noise_rel']:.1%} | {v['seconds']:.0f} s | {units[kind]:.4f} ms |")
    own = max(steps["validate local"]["median_rel_error"], steps["validate agent"]["median_rel_error"])
    cross_local, cross_agent = _cross(tables["local"], space, tables["agent"]), _cross(tables["agent"], space,
                                                                                         tables["local"])
    lines += [
        "",
        "| agreement of the two tables | median | p90 |",
        "|---|---:|---:|",
        f"| block entries (ms, {len(entries)} non-skip) | {np.median(entries):.1%} | "
        f"{np.percentile(entries, 90):.1%} |",
        f"| predictions, the {len(archs)} validation subnets | {np.median(pred_val):.1%} | "
        f"{np.percentile(pred_val, 90):.1%} |",
        f"| predictions, 1000 random subnets | {np.median(pred_many):.1%} | {np.percentile(pred_many, 90):.1%} |",
        f"| end-to-end measurements of the validation subnets | {np.median(measured):.1%} | "
        f"{np.percentile(measured, 90):.1%} |",
        "",
        f"Cross errors: the local table against the agent's measurements {cross_local:.1%}, "
        f"the agent's table against the local measurements {cross_agent:.1%} "
        f"(each table's own error: {steps['validate local']['median_rel_error']:.1%} local, "
        f"{steps['validate agent']['median_rel_error']:.1%} agent). The tables agree within their own error when the "
        f"median prediction difference ({np.median(pred_many):.1%}) is below the larger own error ({own:.1%}): "
        f"{'yes' if np.median(pred_many) <= own else 'no'}. Build time through the agent: "
        f"{steps['build agent']['seconds'] / steps['build local']['seconds']:.2f}x the local build's.",
    ]
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
    p.add_argument("--work", default="runs/bench/agent_table", help="tables and the resumable state file")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"))
    p.add_argument("--note", default="")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
