"""A noisy neighbour for latency benchmarks: a competing process that switches CPU load on and off.

Shared CI hosts are rarely idle and rarely busy all the time: another job compiles, trains or
tests for a while and then waits. :class:`NoisyNeighbour` imitates that with one child process
(per ``workers``) that alternates ON phases (single-threaded numpy matmuls, which compete for the
core's vector units, caches and memory bandwidth the way a training job does; or a pure-Python
spin, which competes for the core only) and OFF phases (sleep). Phase lengths are drawn from a
seeded log-uniform distribution between ``min_phase_s`` and ``max_phase_s``, so bursts come at every
time scale from one check trial (milliseconds) to a whole check (a second or more)::

    with NoisyNeighbour(duty=0.5, seconds=600):
        ...  # measure under load

It is bounded in time three ways: the child exits by itself after ``seconds``, it exits when its
parent dies (it polls ``os.getppid``), and leaving the ``with`` block terminates it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = ["CpuMeter", "NoisyNeighbour", "load_average"]

# The child's program; its parameters come on the command line. No edgenas import: it starts fast.
_CHILD = r"""
import math, os, sys, time
import numpy as np
kind, duty, lo, hi, seconds, seed, parent = sys.argv[1:]
duty, lo, hi, seconds = float(duty), float(lo), float(hi), float(seconds)
parent = int(parent)
rng = np.random.default_rng(int(seed))
a = rng.standard_normal((192, 192)).astype(np.float32)
b = rng.standard_normal((192, 192)).astype(np.float32)
end = time.monotonic() + seconds
def phase():
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))
on = rng.random() < duty
while time.monotonic() < end and os.getppid() == parent:
    length = phase()
    # ON and OFF phases drawn alike, then weighted so that ON time / total time = duty on average.
    length *= 2 * duty if on else 2 * (1 - duty)
    stop = min(time.monotonic() + length, end)
    if on:
        while time.monotonic() < stop:
            if kind == "matmul":
                a = (a @ b) * 1e-3 + 1.0
            else:
                x = 0
                for i in range(20000):
                    x += i
    else:
        time.sleep(max(0.0, stop - time.monotonic()))
    on = not on
"""


def load_average() -> tuple[float, float, float] | None:
    """The 1/5/15-minute load averages, or None where the OS has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


class CpuMeter:
    """How busy the machine was meanwhile, and how much of that was not this process or its children.

    Reads ``/proc/stat`` (Linux; elsewhere ``other_cores`` is None) and ``os.times``. "Other" is the
    machine's busy CPU time minus this process's and its finished children's (a noisy neighbour
    counts once stopped), over the wall time: the average number of cores that other jobs kept busy.
    """

    def __init__(self) -> None:
        self._start = (time.monotonic(), _busy_seconds(), _own_seconds())

    def other_cores(self) -> float | None:
        wall0, busy0, own0 = self._start
        busy1 = _busy_seconds()
        if busy0 is None or busy1 is None:
            return None
        wall = time.monotonic() - wall0
        return max(0.0, (busy1 - busy0) - (_own_seconds() - own0)) / wall if wall > 0 else None


def _busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields] + [0] * 8
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]  # user nice system irq softirq (guest is in user)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class NoisyNeighbour:
    """``workers`` competing processes, each busy a ``duty`` fraction of the time in on/off bursts.

    ``duty=1`` is a constantly busy neighbour, ``duty=0`` an idle one. ``seconds`` bounds the
    load's life even if the parent is killed without leaving the ``with`` block.
    """

    duty: float = 0.5
    workers: int = 1
    kind: Literal["matmul", "spin"] = "matmul"
    min_phase_s: float = 0.005
    max_phase_s: float = 2.0
    seconds: float = 900.0
    seed: int = 0
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.duty <= 1.0:
            raise ValueError(f"duty must be in [0, 1], not {self.duty}")
        if self.workers < 1 or self.seconds <= 0 or not 0 < self.min_phase_s <= self.max_phase_s:
            raise ValueError("workers >= 1, seconds > 0 and 0 < min_phase_s <= max_phase_s are required")
        if self.kind not in ("matmul", "spin"):
            raise ValueError(f"kind must be matmul or spin, not {self.kind!r}")

    def describe(self) -> str:
        """One line for a report."""
        what = "numpy 192x192 matmuls" if self.kind == "matmul" else "a pure-Python spin"
        procs = f"{self.workers} single-threaded process{'es' if self.workers > 1 else ''} running {what}"
        if self.duty >= 1.0:
            return f"{procs} all the time"
        return (f"{procs} {self.duty:.0%} of the time in on/off bursts of {self.min_phase_s * 1e3:g} ms to "
                f"{self.max_phase_s:g} s (log-uniform, seed {self.seed})")

    def start(self) -> NoisyNeighbour:
        if self._procs:
            raise RuntimeError("the noisy neighbour is already running")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for k in range(self.workers):
            args = [sys.executable, "-c", _CHILD, self.kind, str(self.duty), str(self.min_phase_s),
                    str(self.max_phase_s), str(self.seconds), str(self.seed + k), str(os.getpid())]
            self._procs.append(subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL))
        time.sleep(0.3)  # let numpy import before the first measurement
        return self

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self._procs)

    def __enter__(self) -> NoisyNeighbour:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
