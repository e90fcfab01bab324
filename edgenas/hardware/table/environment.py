"""Where a table was measured (CPU, cores, runtime versions) and the warnings when it is used elsewhere."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

from edgenas.errors import EdgenasError
from edgenas.hardware.profile import Profile
from edgenas.hardware.table.core import LatencyTable


# ----- environment ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu_name(profile: Profile) -> str | None:
    if profile.device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unavailable"


def environment_of(profile: Profile) -> dict[str, Any]:
    """What a latency depends on besides the model: recorded in the table, compared on use.

    Deliberately without a hostname: tables are shared between identical machines.
    """
    if profile.runtime == "remote":  # timed on the board behind the agent: its facts, not this machine's
        from edgenas.hardware.remote import remote_environment

        return remote_environment(profile)
    from edgenas.hardware.measure import runtime_versions

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "gpu": _gpu_name(profile),
        "device": profile.device,
        "runtime": profile.runtime,
        "runtime_versions": runtime_versions(),
        "provider": profile.provider,
        "threads": profile.threads,
        "inter_op_threads": profile.inter_op_threads,
        "batch_size": profile.batch_size,
        "precision": profile.precision,
        "graph_optimization": profile.graph_optimization,
        "os": platform.platform(terse=True),
        "machine": platform.machine(),
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


_ENV_CHECKED = (("cpu", "CPU"), ("logical_cores", "logical cores"), ("usable_cores", "usable cores"),
                ("gpu", "GPU"), ("threads", "threads"), ("inter_op_threads", "inter-op threads"),
                ("provider", "provider"), ("os", "OS"))


def environment_warnings(table: LatencyTable, profile: Profile | None = None) -> list[str]:
    """Differences between where ``table`` was measured and here (with ``profile``, default the
    table's own): CPU model, cores, GPU, threads, provider, runtime versions. Empty when they agree.

    These are warnings, not errors: a table from a sibling machine is often good enough, but the
    user must know its numbers were not measured here.
    """
    try:
        here = environment_of(profile if profile is not None else table.profile_object())
    except EdgenasError as exc:  # a remote profile's agent is unreachable: say so, do not fail a show or search
        return [f"cannot compare where the latency table was measured with its target now: {exc}"]
    there = table.environment
    out = []
    for key, label in _ENV_CHECKED:
        if key in there and there[key] != here[key]:
            out.append(f"latency table measured with {label} {there[key]!r}, here {here[key]!r}: "
                       "its latencies may not hold on this machine")
    theirs, ours = there.get("runtime_versions") or {}, here["runtime_versions"]
    for name in sorted(set(theirs) & set(ours)):  # a runtime installed (or removed) since is not a change
        if theirs.get(name) != ours.get(name):
            out.append(f"latency table measured with {name} {theirs.get(name)}, here {ours.get(name)}: "
                       "its latencies may not hold with this version")
    return out
