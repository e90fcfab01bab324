"""Search quality after fine-tuning: search winners vs hand-designed baselines, one training recipe.

``benchmarks/search_quality.py`` compares the winners of shifting, SPOS evolution and random search
on supernet weights. What a user ships is a trained network, so this benchmark trains every winner
and the hand-designed networks a practitioner would otherwise pick, with one recipe, and times them
all on the profile:

* each search's winner **fine-tuned from its inherited weights** (``edgenas extract`` + ``edgenas
  finetune``: what ``edgenas run`` ships);
* each winner **trained from scratch** with the same recipe (``--from-scratch``): the architecture
  alone, comparable with the baselines, which have no supernet weights to inherit;
* **baselines** (``edgenas baseline``): torchvision MobileNetV3-Small and timm PP-LCNet, each scaled
  to every budget (the widest published width measured within it; all widths of a family measured
  interleaved once, on a quiet machine, before any training), plus the stock MobileNetV3-Small (width
  1.0) whatever its latency.

All trainings use the same data (the searches' splits), epochs, image count, learning-rate schedule
and seeds (``--seeds``: every from-scratch training is repeated per seed and reported as mean ± sd,
since a few short epochs leave a spread between seeds of the order of the differences compared);
they run as CLI subprocesses, ``--jobs`` at a time. Finally every network is measured end to end
on the profile, all in one interleaved run after training has finished (latency does not depend on
the weights, so fresh copies are timed). Everything is resumable: finished trainings are
reused, interrupted ones resumed, the width choice is kept in ``widths.json``.

Needs the searches of ``search_quality.py`` in ``--searches``. Run from the repository root::

    .venv/bin/python benchmarks/search_finetuned.py --budgets 0.092 0.103 0.12 --seeds 0 1 2

``--quick`` trains for one short epoch (figures not to be quoted).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import provenance, write_section
from _runs import cli

from edgenas.baselines import build_baseline, choose_width, get_family, measure_widths, profile_measure
from edgenas.errors import EdgenasError
from edgenas.hardware.flops import count_flops
from edgenas.hardware.measure import create_measurer
from edgenas.hardware.profile import load_profile
from edgenas.search.verify import deployable_arch
from edgenas.space import space_from_dict

SECTION_KEY = "search_finetuned"
SECTION_TITLE = "Search quality after fine-tuning: winners vs hand-designed baselines"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"
PLOT = REPO / "docs" / "img" / "search_finetuned.png"
METHODS = ("shift", "spos", "random")
STOCK = ("mobilenetv3-small", 1.0)


@dataclass
class Model:
    """One network of the comparison and the trainings it gets: ``scratch`` maps a seed to the output
    dir of its from-scratch training; a searched winner also has an ``inherited`` fine-tune, and the
    subnet checkpoint all its trainings start from (extracted once, under ``extract_lock``)."""

    key: str
    kind: str  # "shift" | "spos" | "random" | "baseline"
    label: str
    build: Any  # () -> nn.Module, a fresh copy for measuring
    scratch: dict[int, Path]
    budgets: set[float] = field(default_factory=set)
    arch: str | None = None
    inherited: Path | None = None
    extract_lock: threading.Lock = field(default_factory=threading.Lock)

    def outputs(self) -> list[Path]:
        return [*([self.inherited] if self.inherited else []), *self.scratch.values()]


def _recipe(args: argparse.Namespace, seed: int | None = None) -> list[str]:
    epochs, limit = (1, 2000) if args.quick else (args.epochs, args.train_limit)
    return ["--epochs", str(epochs), "--train-limit", str(limit), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--seed", str(args.seeds[0] if seed is None else seed), "--threads", "1",
            "--device", "cpu"]


def _scratch_runs(base: Path, seeds: list[int]) -> dict[int, Path]:
    """Seed 0 trains in ``base``, seed S in ``base-sS``: a run's directory always tells its seed."""
    return {s: base if s == 0 else base.with_name(f"{base.name}-s{s}") for s in seeds}


def _finished(out: Path) -> dict[str, Any] | None:
    report = out / "finetune.json"
    return json.loads(report.read_text()) if report.is_file() else None


def _resume(out: Path) -> list[str]:
    return ["--resume"] if (out / "last.pt").is_file() else []


def _winner_jobs(model: Model, run_dir: Path, args: argparse.Namespace, scheduled: set[Path]) -> list[Any]:
    """Extract and fine-tune from inherited weights (first seed); train the same architecture from
    scratch with every seed (once per architecture: several searches may find the same one)."""
    jobs = []
    inherited = model.inherited
    assert inherited is not None
    if _finished(inherited) is None:
        jobs.append(_train_winner(model, run_dir, inherited, [*_recipe(args), *_resume(inherited)], "inherited"))
    for seed, out in model.scratch.items():
        if _finished(out) is None and out not in scheduled:
            scheduled.add(out)
            options = ["--from-scratch", *_recipe(args, seed), *_resume(out)]
            jobs.append(_train_winner(model, run_dir, out, options, f"scratch, seed {seed}"))
    return jobs


def _train_winner(model: Model, run_dir: Path, out: Path, options: list[str], how: str) -> Any:
    """One job: extract the winner from its own search run (once for all its trainings: jobs running at
    the same time wait for the first to write it), then ``edgenas finetune`` it."""
    arch, inherited = model.arch, model.inherited
    assert arch is not None and inherited is not None
    ckpt = inherited.parent / f"{inherited.name}.subnet.pt"

    def job() -> None:
        with model.extract_lock:
            if not ckpt.is_file():
                cli(["extract", str(run_dir), "--arch", arch, "--out", str(ckpt), "--device", "cpu"], model.label)
        cli(["finetune", str(ckpt), "--out", str(out), *options], f"{model.label} {how}")

    return job


def _baseline_jobs(model: Model, family: str, width: float, val_limit: int | None, args: argparse.Namespace
                   ) -> list[Any]:
    val = ["--val-limit", str(val_limit)] if val_limit is not None else []

    def train(out: Path, recipe: list[str], label: str) -> None:
        cli(["baseline", "--family", family, "--width", f"{width:g}", "--out", str(out), *val, *recipe,
             *_resume(out)], label)

    return [functools.partial(train, out, _recipe(args, seed), f"{model.label} seed {seed}")
            for seed, out in model.scratch.items() if _finished(out) is None]


def _widths(args: argparse.Namespace, profile: Any, data_shape: tuple[int, int, int], num_classes: int,
            work: Path) -> dict[str, list[list[float]]]:
    """Every width of every baseline family, measured interleaved per family, once (kept in widths.json,
    with the profile's latency hash and the input shape: another target or shape measures again, and a
    family added later is measured alone)."""
    path = work / "widths.json"
    key = {"profile_hash": profile.latency_hash(), "input": list(data_shape)}
    cached = json.loads(path.read_text()) if path.is_file() else {}
    known: dict[str, list[list[float]]] = dict(cached.get("families", {})) if cached.get("key") == key else {}
    missing = [f for f in args.baselines if f not in known]
    if missing:
        measure = profile_measure(profile)
        for family in missing:
            print(f"[widths] measuring every width of {family} ...", file=sys.stderr)
            tried = measure_widths(family, measure, num_classes=num_classes, in_channels=data_shape[0],
                                   input_size=data_shape[1:])
            known[family] = [list(t) for t in tried]
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "families": known}, indent=2))
    return {f: known[f] for f in args.baselines}


def _check_archs(models: dict[str, Any]) -> None:
    """A finished fine-tune in a winner's directory must be of that winner: after the searches are run
    again, a directory keyed by method and budget may hold another architecture's result."""
    for m in models.values():
        for out in m.outputs():
            report = _finished(out)
            if m.arch is not None and report is not None and report.get("arch") != m.arch:
                raise SystemExit(f"{out} holds a fine-tune of {report.get('arch')}, but the search now recommends "
                                 f"{m.arch}: move the old result away (or use another --work)")


def run(args: argparse.Namespace) -> str:
    searches, work = Path(args.searches), Path(args.work + ("-quick" if args.quick else ""))
    docs = {}
    for budget in args.budgets:
        for method in METHODS:
            path = searches / f"b{budget:g}" / method / "search.json"
            if not path.is_file():
                raise SystemExit(f"{path} not found: run benchmarks/search_quality.py --budgets "
                                 f"{' '.join(f'{b:g}' for b in args.budgets)} first")
            docs[budget, method] = json.loads(path.read_text())
    first = docs[args.budgets[0], "shift"]
    space = space_from_dict(first["config"]["space"])
    num_classes, in_channels = int(first["config"]["num_classes"]), int(first["config"]["in_channels"])
    data_cfg = first["data"]
    from edgenas.data import DataConfig, load_dataset

    data = load_dataset(DataConfig(**{**data_cfg, "train_limit": None}))
    shape = (data.in_channels, *data.input_size)
    profile = load_profile(args.profile, input_shape=shape)
    widths = _widths(args, profile, shape, num_classes, work)
    recipe = _recipe(args)

    models: dict[str, Model] = {}
    jobs: list[Any] = []
    scheduled: set[Path] = set()
    sized = dict(num_classes=num_classes, in_channels=in_channels, input_size=tuple(data.input_size))
    for budget in args.budgets:
        for method in METHODS:
            arch = deployable_arch(docs[budget, method])
            parsed = space.parse(arch)
            key = f"{method}-b{budget:g}"
            model = Model(key, method, f"{method} @ {budget:g} ms",
                          lambda a=parsed: space.build_subnet(a, num_classes, in_channels),
                          _scratch_runs(work / "scratch" / parsed.arch_id, args.seeds), {budget}, arch,
                          inherited=work / "inherited" / key)
            models[key] = model
            jobs += _winner_jobs(model, searches / f"b{budget:g}" / method, args, scheduled)
        for family in args.baselines:
            try:
                pick = choose_width(family, [tuple(t) for t in widths[family]], budget)
            except EdgenasError as err:
                print(f"[{budget:g} ms] {err}", file=sys.stderr)
                continue
            _add_baseline(models, jobs, work, family, pick.width, budget, data_cfg, args, sized)
    _add_baseline(models, jobs, work, *STOCK, None, data_cfg, args, sized)
    _check_archs(models)
    if jobs:
        print(f"training {len(jobs)} network(s), {args.jobs} at a time ...", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for f in [pool.submit(j) for j in jobs]:
                f.result()

    unique = list(models.values())
    timed = _measure(unique, profile, args.trials)
    rows = []
    for m in unique:
        ms, spread, cost = timed[m.arch or m.key]
        scratch = {seed: _finished(out) for seed, out in m.scratch.items()}
        rows.append({"key": m.key, "kind": m.kind, "label": m.label, "arch": m.arch,
                     "budgets": sorted(m.budgets), "ms": ms, "trial_ms": spread,
                     "mmacs": cost.flops / 1e6, "params_k": cost.params / 1e3,
                     "inherited": _finished(m.inherited) if m.inherited else None, "scratch": scratch[args.seeds[0]],
                     "scratch_seeds": {seed: _acc(res) for seed, res in scratch.items() if res is not None}})
    (work / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    _plot(rows, args.budgets)
    return _markdown(args, rows, widths, profile.measure.statistic, data.name, recipe)


def _measure(models: list[Model], profile: Any, trials: int) -> dict[str, tuple[float, tuple[float, float], Any]]:
    """Latency (the profile's statistic), the range of per-trial medians and the cost of every distinct
    network, all timed in one interleaved run with ``trials`` trials.

    Two searches that found the same architecture share one measurement: timing it twice would only
    show the machine's noise as a difference between them.
    """
    distinct: dict[str, Model] = {}
    for m in models:
        distinct.setdefault(m.arch or m.key, m)
    protocol = dataclasses.replace(profile.measure, trials=trials)
    measurer = create_measurer(dataclasses.replace(profile, measure=protocol))
    print(f"measuring {len(distinct)} distinct networks end to end, interleaved, {trials} trials ...",
          file=sys.stderr)
    nets = [m.build() for m in distinct.values()]
    stats = measurer.measure_many(nets, [None] * len(nets))
    shape = (1, *profile.input_shape)
    return {key: (st.value(protocol.statistic), (min(st.trial_medians_ms), max(st.trial_medians_ms)),
                  count_flops(net.eval(), shape))
            for key, net, st in zip(distinct, nets, stats, strict=True)}


def _add_baseline(models: dict[str, Model], jobs: list[Any], work: Path, family: str, width: float,
                  budget: float | None, data_cfg: dict[str, Any], args: argparse.Namespace,
                  sized: dict[str, Any]) -> None:
    fam = get_family(family)
    key = fam.label(width)
    if key not in models:
        models[key] = Model(key, "baseline", key, lambda: build_baseline(fam, width, **sized),
                            _scratch_runs(work / "baselines" / key, args.seeds))
        jobs += _baseline_jobs(models[key], family, width, data_cfg.get("val_limit"), args)
    if budget is not None:
        models[key].budgets.add(budget)


def _acc(result: dict[str, Any] | None) -> float | None:
    return None if result is None else float(result["test"]["accuracy"])


def _plot(rows: list[dict[str, Any]], budgets: list[float]) -> None:
    """Test accuracy vs measured latency: every network trained with the recipe from scratch (filled:
    mean over the seeds, bars one sd), and the winners fine-tuned from their inherited weights (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"shift": ("^", "C0"), "spos": ("o", "C1"), "random": ("x", "C2"), "baseline": ("s", "C3")}
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for kind, (marker, color) in style.items():
        pts = [(r["ms"], *_mean_sd(r["scratch_seeds"])) for r in rows if r["kind"] == kind and r["scratch_seeds"]]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="none", ecolor=color,
                    elinewidth=1, capsize=2)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, s=55,
                   label=f"{kind} (from scratch)" if kind != "baseline" else "hand-designed baselines")
        inh = [(r["ms"], _acc(r["inherited"]) * 100) for r in rows if r["kind"] == kind and _acc(r["inherited"])]
        if inh and marker != "x":
            ax.scatter([p[0] for p in inh], [p[1] for p in inh], marker=marker, facecolors="none",
                       edgecolors=color, s=55, label=f"{kind} (inherited + fine-tuned)")
    for r in rows:
        if r["kind"] == "baseline":
            ax.annotate(r["label"], (r["ms"], _mean_sd(r["scratch_seeds"])[0]), fontsize=7, xytext=(3, -9),
                        textcoords="offset points")
    for b in budgets:
        ax.axvline(b, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("measured latency, ms (cpu-ort, batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("One training recipe for all (mean ± sd over seeds); budgets dashed", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def _fmt(acc: float | None) -> str:
    return "-" if acc is None else f"{acc:.2%}"


def _mean_sd(by_seed: dict[int, float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one seed) of the accuracies, in percent."""
    values = np.array(list(by_seed.values())) * 100
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _seeds_fmt(by_seed: dict[int, float]) -> str:
    """One seed: its accuracy; several: mean ± sample sd (min-max, n seeds)."""
    if not by_seed:
        return "-"
    values = np.array(list(by_seed.values())) * 100
    if len(values) == 1:
        return f"{values[0]:.2f}%"
    return (f"{values.mean():.2f}% ± {values.std(ddof=1):.2f} ({values.min():.2f}-{values.max():.2f}, "
            f"{len(values)} seeds)")


def _markdown(args: argparse.Namespace, rows: list[dict[str, Any]], widths: dict[str, Any], statistic: str,
              data_name: str, recipe: list[str]) -> str:
    scale = "QUICK smoke scale: not figures to quote" if args.quick else (
        "CPU scale (no GPU was lent): short training on a slice of the training split")
    counts = {r["scratch"]["test"]["count"] for r in rows if r["scratch"]}
    out = [
        *provenance(),
        "",
        f"Scale: {scale}. Recipe for every network (`edgenas finetune`/`edgenas baseline` options): "
        f"`{' '.join(recipe)}` (from scratch: seeds {', '.join(map(str, args.seeds))}), SGD with Nesterov "
        "momentum, cosine schedule, label smoothing 0.1, best "
        f"validation epoch kept. Dataset {data_name}, test accuracy on {'/'.join(map(str, counts))} test images. "
        f"Latency: the `{args.profile}` profile's {statistic} over {args.trials} interleaved trials, every distinct "
        "network measured in one run after training (winners that share an architecture share a measurement); "
        "*trial medians* is the range of the per-trial medians, the noise of that figure. Searches: `"
        + args.searches + "` (see the search-quality section).",
        "",
        "Baseline widths, every published width of each family measured interleaved once (ms): "
        + "; ".join(f"{fam}: " + ", ".join(f"{w:g} -> {ms:.3f}" for w, ms in tried)
                    for fam, tried in widths.items()) + ".",
        "",
    ]
    for budget in args.budgets:
        here = [r for r in rows if budget in r["budgets"]]
        out += [f"**Budget {budget:g} ms**", "",
                "| network | measured ms | trial medians ms | within | MMACs | params (k) "
                "| test, inherited + fine-tuned | test, same recipe from scratch |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sorted(here, key=lambda r: (r["kind"] == "baseline", r["label"])):
            name = f"{r['kind']} winner `{r['arch']}`" if r["arch"] else r["label"]
            lo, hi = r["trial_ms"]
            out.append(f"| {name} | {r['ms']:.3f} | {lo:.3f}-{hi:.3f} | {'yes' if r['ms'] <= budget else 'NO'} | "
                       f"{r['mmacs']:.2f} | "
                       f"{r['params_k']:.0f} | {_fmt(_acc(r['inherited']))} | {_seeds_fmt(r['scratch_seeds'])} |")
        out.append("")
    stock = next(r for r in rows if r["key"] == get_family(STOCK[0]).label(STOCK[1]))
    out += [f"Stock MobileNetV3-Small (width 1.0, stride-1 stem, 1 input channel): {stock['ms']:.3f} ms, "
            f"{stock['mmacs']:.2f} MMACs, {_seeds_fmt(stock['scratch_seeds'])} with the same recipe.", "",
            f"![accuracy vs measured latency, one recipe](img/{PLOT.name})"]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--searches", default="runs/bench-search", help="The search runs of search_quality.py.")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.8])
    p.add_argument("--profile", default="cpu-ort")
    p.add_argument("--baselines", nargs="+", default=["mobilenetv3-small", "lcnet"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="Training seeds of every from-scratch run (the first also for fine-tuning inherited weights).")
    p.add_argument("--jobs", type=int, default=2, help="Trainings at a time (one CPU thread each).")
    p.add_argument("--trials", type=int, default=10,
                   help="Interleaved trials of the final latency measurement (the profile's protocol otherwise).")
    p.add_argument("--work", default="runs/bench-finetuned", help="Where the trainings go (resumable).")
    p.add_argument("--quick", action="store_true", help="One short epoch: a smoke test of the script.")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown report to update.")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    body = run(args)
    write_section(args.out, SECTION_KEY, SECTION_TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
