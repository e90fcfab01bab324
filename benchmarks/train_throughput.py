"""SPOS supernet training throughput (images/s): channels_last vs contiguous, and AMP on CUDA.

``TrainConfig.channels_last`` defaults to True; this script checks whether that pays off on the
machine at hand, with the training step of :func:`edgenas.train.train_supernet` (SGD with Nesterov
momentum, label smoothing, one uniformly sampled path per step, the same per-step loss/accuracy
read-back). Run it from the repository root as a script::

    .venv/bin/python benchmarks/train_throughput.py --space mbv3 --width-mult 0.5 --data fashion-mnist \\
        --steps 30 --batch-size 128 --repeats 3

How it keeps the comparison honest:

* every setting trains its own supernet built from the same seed, on the same batches, with the
  same sequence of sampled architectures, and the same dropout seed;
* before anything is timed each setting runs the whole slice once (priming): oneDNN (and cuDNN)
  build a kernel the first time they meet a conv shape, and SPOS keeps meeting new shapes as new
  paths are sampled, so a few warm-up steps alone would leave first-time costs in the timed steps;
  each measurement then also starts with ``--warmup`` untimed steps;
* the settings are interleaved over ``--repeats`` rounds, alternating which one goes first, so a
  noisy neighbour or a thermal drift hits all of them alike; the report gives the median of the
  rounds per setting and the ratio of medians from the same run, plus the raw samples.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import machine_info, provenance, write_section
from torch import nn

from edgenas.data import DataConfig, DatasetSplits, iterate_batches, load_dataset
from edgenas.space import Arch, SearchSpace, create_space, default_preset
from edgenas.supernet import Supernet
from edgenas.torch_utils import param_groups, to_device
from edgenas.train import TrainConfig, lr_at

SECTION_KEY = "train_throughput"
SECTION_TITLE = "Supernet training throughput"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"

# Full-size defaults and the --quick smoke-test ones; an option given on the command line wins over both.
FULL = {"steps": 30, "warmup": 3, "batch_size": 128, "repeats": 3, "width_mult": 0.5, "data": "fashion-mnist"}
QUICK = {"steps": 4, "warmup": 1, "batch_size": 32, "repeats": 2, "width_mult": 0.25, "data": "digits"}


@dataclass(frozen=True)
class Setting:
    """One configuration being compared; the label is what appears in the table."""

    device: str
    channels_last: bool
    amp: bool

    @property
    def label(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous (NCHW)"
        return f"{layout}, {'AMP' if self.amp else 'fp32'}"


@dataclass(frozen=True)
class Workload:
    """What every setting trains on: identical by construction, which is the point of the comparison."""

    space: SearchSpace
    data: DatasetSplits
    archs: tuple[Arch, ...]
    batch_size: int
    warmup: int
    steps: int
    seed: int


class StepRunner:
    """A supernet, optimiser and loss set up exactly as ``train_supernet`` does for one setting."""

    def __init__(self, setting: Setting, work: Workload) -> None:
        self.setting = setting
        self.device = torch.device(setting.device)
        self.cfg = TrainConfig(batch_size=work.batch_size, amp=setting.amp, channels_last=setting.channels_last,
                               device=setting.device, seed=work.seed)
        torch.manual_seed(work.seed)
        self.model = Supernet(work.space, work.data.num_classes, work.data.in_channels).to(self.device)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        cfg = self.cfg
        self.optimizer = torch.optim.SGD(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                         momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def step(self, x: torch.Tensor, y: torch.Tensor, arch: Arch, lr: float) -> None:
        """One SPOS step, including the per-step ``loss.item()``/accuracy read-back that
        ``train_supernet`` does (it synchronises on CUDA, so leaving it out would flatter the GPU)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = to_device(x, self.device, self.cfg.channels_last), y.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            logits = self.model(x, arch)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        loss.item()
        int((logits.argmax(1) == y).sum())

    def run_slice(self, work: Workload) -> float:
        """Warm-up steps, then ``work.steps`` timed steps over the same batches and paths; images/s."""
        self.model.train()
        torch.manual_seed(work.seed)  # same dropout masks for every setting and round
        gen = torch.Generator().manual_seed(work.seed)
        batches = iterate_batches(work.data.train, work.batch_size, shuffle=True, generator=gen, drop_last=True)
        total = work.warmup + work.steps
        t0, images = 0.0, 0
        for i, (x, y) in enumerate(batches):
            if i == total:
                break
            if i == work.warmup:
                self._sync()
                t0 = time.perf_counter()
            self.step(x, y, work.archs[i], lr_at(i, total, self.cfg))
            if i >= work.warmup:
                images += len(y)
        self._sync()
        return images / (time.perf_counter() - t0)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def settings_for(device: str) -> list[Setting]:
    """The baseline first: ratios are reported against it. AMP only exists on CUDA in train_supernet."""
    amps = (False, True) if device == "cuda" else (False,)
    return [Setting(device, cl, amp) for amp in amps for cl in (False, True)]


def measure(settings: Sequence[Setting], work: Workload, repeats: int) -> dict[Setting, list[float]]:
    """Prime every setting once, then ``repeats`` interleaved rounds; returns the raw img/s samples."""
    runners = [StepRunner(s, work) for s in settings]
    for r in runners:
        t = time.perf_counter()
        r.run_slice(work)
        print(f"  primed {r.setting.device} {r.setting.label} in {time.perf_counter() - t:.1f} s", flush=True)
    samples: dict[Setting, list[float]] = {s: [] for s in settings}
    for rnd in range(repeats):
        for r in runners if rnd % 2 == 0 else runners[::-1]:
            ips = r.run_slice(work)
            samples[r.setting].append(ips)
            print(f"  round {rnd + 1}/{repeats}: {r.setting.device} {r.setting.label}: {ips:.1f} img/s", flush=True)
    return samples


def _oversubscribed(load_before: tuple[float, float, float] | None, cores: int, threads: int) -> bool:
    """Other jobs already keep the cores busy and we would add several OpenMP threads on top.

    OpenMP threads meet at a barrier after every parallel op; when one of them has been descheduled
    for another process the others wait for it, so on a busy machine more threads can be several
    times slower (and far noisier) than one.
    """
    return load_before is not None and threads > 1 and load_before[0] + threads > cores + 0.5


def _load_note(load_before: tuple[float, float, float] | None, cores: int, threads: int) -> str:
    if load_before is None:
        return ""
    busy = load_before[0] >= 0.5 * cores
    text = (f"1-minute load average {load_before[0]:.2f} on {cores} usable cores when the run started"
            + (" (the machine was shared with other jobs)" if busy else ""))
    if busy:
        text += ("; the settings were interleaved so that load hit all of them alike: the ratio is the figure "
                 "to use, the absolute img/s are lower than on an idle machine")
    if _oversubscribed(load_before, cores, threads):
        text += (f". {threads} intra-op threads on top of that load oversubscribe the cores: OpenMP threads then "
                 "wait for each other at every op, which slows and blurs every setting; `--threads 1` measures "
                 "such a machine better")
    return text + "."


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def format_report(samples: dict[Setting, list[float]], work: Workload, args: argparse.Namespace,
                  info: dict[str, Any], load_before: tuple[float, float, float] | None) -> str:
    """The markdown body of the section: provenance first, then the table, the ratios and raw samples."""
    hw = tuple(work.data.input_size)
    lines = [
        *provenance(info),
        f"- {_load_note(load_before, int(info['usable_cores'] or 1), int(info['torch_threads']))}"
        if load_before else "",
        "",
        f"Workload: SPOS supernet `{work.space.name}` (preset `{args.preset}`, width_mult {args.width_mult}, "
        f"{len(work.space.layers)} searchable layers), `{work.data.name}` at {hw[0]}x{hw[1]}, batch {work.batch_size}. "
        f"Each measurement is {_n(work.warmup, 'untimed warm-up step')} then {_n(work.steps, 'timed step')} "
        f"({work.steps * work.batch_size} images, batch preparation and the per-step loss read-back included, "
        "as in `train_supernet`), one uniformly sampled path per step; every setting uses the same seed, batches "
        "and architecture sequence, runs the whole slice once untimed first (so oneDNN/cuDNN have built a kernel "
        f"for every conv shape), and the settings are interleaved over {_n(args.repeats, 'round')}, alternating which "
        "goes first.",
        "",
        "| device | setting | median img/s | min | max | repeats |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s, v in samples.items():
        med = statistics.median(v)
        lines.append(f"| {s.device} | {s.label} | {med:.1f} | {min(v):.1f} | {max(v):.1f} | {len(v)} |")
    lines.append("")
    for device in dict.fromkeys(s.device for s in samples):
        group = [s for s in samples if s.device == device]
        base = statistics.median(samples[group[0]])
        for s in group[1:]:
            ratio = statistics.median(samples[s]) / base
            a, b = samples[group[0]], samples[s]
            overlap = max(min(a), min(b)) <= min(max(a), max(b))
            lines.append(f"- {device}: **{s.label}** vs {group[0].label}: **{ratio:.2f}x** "
                         "(ratio of medians, same run; >1 means faster)"
                         + ("; the per-round ranges overlap, so this run does not resolve a difference" if overlap
                            else ""))
    lines.append("")
    lines.append("Raw img/s per round: " + "; ".join(
        f"{s.device} {s.label}: {', '.join(f'{x:.1f}' for x in v)}" for s, v in samples.items()))
    if not any(s.device == "cuda" for s in samples):
        lines += ["", "_CPU-only run: no CUDA device was available, so neither GPU throughput nor AMP was measured._"]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"tiny smoke-test run {QUICK}; prints the section instead of writing it unless --out is given")
    p.add_argument("--steps", type=int, help=f"timed steps per measurement (default {FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps before each measurement (default {FULL['warmup']})")
    p.add_argument("--batch-size", type=int, help=f"default {FULL['batch_size']}")
    p.add_argument("--repeats", type=int, help=f"interleaved rounds per setting (default {FULL['repeats']})")
    p.add_argument("--width-mult", type=float, help=f"default {FULL['width_mult']}")
    p.add_argument("--data", choices=("fashion-mnist", "digits"), help=f"default {FULL['data']}")
    p.add_argument("--space", default="mbv3", help="search space name")
    p.add_argument("--preset", help="space preset (default: the one train picks for the input size)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the CPU, plus CUDA when a device is available")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="free text appended to the report section")
    p.add_argument("--out", help=f"markdown file to update, '-' to only print (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out is None:
        args.out = "-" if args.quick else str(DEFAULT_OUT)
    for name in ("steps", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--warmup must be >= 0 and --threads >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_dataset(DataConfig(name=args.data, resize=None, download=False))
    hw = tuple(data.input_size)
    args.preset = args.preset or default_preset(hw)
    space = create_space(args.space, args.preset, width_mult=args.width_mult)
    rng = np.random.default_rng([args.seed, 0])  # train_supernet's epoch-0 sampler
    total = args.warmup + args.steps
    available = len(data.train) // args.batch_size
    if available < total:
        raise SystemExit(f"{args.data} has {available} batches of {args.batch_size}; need warmup+steps = {total}")
    work = Workload(space, data, tuple(space.sample(rng) for _ in range(total)), args.batch_size, args.warmup,
                    args.steps, args.seed)
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else [args.device]
    devices = ["cpu" if d == "auto" else d for d in devices]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if _oversubscribed(load_before, cores, torch.get_num_threads()):
        print(f"warning: load average {load_before[0]:.1f} on {cores} cores and {torch.get_num_threads()} threads: "
              "the cores are oversubscribed, expect slow and noisy figures (try --threads 1)", file=sys.stderr)
    print(f"{args.space}/{args.preset} x{args.width_mult} on {args.data} {hw}, batch {args.batch_size}, "
          f"{args.warmup}+{args.steps} steps, {args.repeats} rounds, {torch.get_num_threads()} threads", flush=True)
    samples: dict[Setting, list[float]] = {}
    for device in devices:
        samples.update(measure(settings_for(device), work, args.repeats))
    body = format_report(samples, work, args, machine_info(), load_before)
    if args.out == "-":
        print(f"\n## {SECTION_TITLE}\n\n{body}")
    else:
        print(f"wrote section '{SECTION_KEY}' of {write_section(args.out, SECTION_KEY, SECTION_TITLE, body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
