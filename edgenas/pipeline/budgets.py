"""Many bundles from one search: ``edgenas run --budgets``, one verified bundle per latency budget.

A product ships the same network family to a fast and a slow device, or keeps a fallback. Searching
once per budget would train the same supernet's subnets against each budget separately; one NSGA-II
search under the loosest budget returns a whole accuracy-latency front instead, and every tighter
budget's model is the front's most accurate point under it. Each pick then goes through the same
stages as a single-budget run (extract, fine-tune, export, check) in its own folder, and the run ends
with one summary table (``budgets.csv``/``budgets.json``) and one plot (``budgets.png``: the front as
the search scored it, the shipped models as fine-tuned and measured, a line per budget).

Budgets are latency budgets in the table's units, like ``--latency-ms`` (milliseconds at the table's
reference speed, see :mod:`edgenas.hardware.table.reference`), or quantiles of the space's predicted
latency on the target (``--budget-quantiles``), which mean the same on a fast and a slow machine.
Two budgets whose best front point is the same architecture share one bundle; the table says so.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.errors import ConfigError, EdgenasError
from edgenas.pipeline.extract import front_points

__all__ = ["BudgetPick", "budget_label", "check_budget_options", "pick_per_budget",
           "resolve_budgets", "summary_rows", "write_budget_summary"]


@dataclass(frozen=True)
class BudgetPick:
    """The model one budget ships: the front's most accurate architecture whose predicted latency fits."""

    label: str
    budget_ms: float
    arch: str
    score: float
    predicted_ms: float
    folder: str  # the budget whose folder holds the bundle (itself, or an earlier budget with the same arch)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "budget_ms": self.budget_ms, "arch": self.arch, "score": self.score,
                "predicted_ms": self.predicted_ms, "folder": self.folder}


def check_budget_options(budgets: Sequence[float] | None, quantiles: Sequence[float] | None,
                         latency_ms: float | None, latency_quantile: float | None) -> None:
    """At most one way of giving budgets, each positive (quantiles in (0, 1)), none twice: refused before work."""
    if budgets is None and quantiles is None:
        return
    if budgets is not None and quantiles is not None:
        raise ConfigError("give --budgets or --budget-quantiles, not both")
    if latency_ms is not None or latency_quantile is not None:
        raise ConfigError("--budgets/--budget-quantiles replace --latency-ms/--latency-quantile; give one of them")
    values = list(budgets if budgets is not None else quantiles or [])
    option = "--budgets" if budgets is not None else "--budget-quantiles"
    if not values:
        raise ConfigError(f"{option} needs at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{option} values must be positive numbers, not {v!r}")
        if quantiles is not None and not v < 1:
            raise ConfigError(f"--budget-quantiles values must be between 0 and 1 exclusive, not {v!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{option} names a budget twice: {values}")


def budget_label(value: float, quantile: bool) -> str:
    """A folder-safe name for a budget: ``0.25ms`` or ``q0.4``."""
    return f"q{value:g}" if quantile else f"{value:g}ms"


def resolve_budgets(table: Any, space: Any, budgets: Sequence[float] | None, quantiles: Sequence[float] | None
                    ) -> list[tuple[str, float]]:
    """(label, budget in the table's milliseconds), tightest first; a budget below the space's fastest
    architecture is a one-line error naming the smallest reachable value."""
    from edgenas.hardware.table import quantile_budget

    if quantiles is not None:
        resolved = [(budget_label(q, True), quantile_budget(table, space, q)) for q in quantiles]
    else:
        resolved = [(budget_label(b, False), float(b)) for b in budgets or []]
    fastest = float(table.predict(table.min_latency_arch(space)))
    for label, ms in resolved:
        if ms < fastest:
            raise ConfigError(f"budget {label} ({ms:.4g} ms) is below the fastest architecture of {space.name} on "
                              f"this target: the smallest reachable latency is {fastest:.4g} ms")
    return sorted(resolved, key=lambda item: item[1])


def pick_per_budget(search_doc: dict[str, Any], budgets: Sequence[tuple[str, float]]) -> list[BudgetPick]:
    """For each (label, ms) budget, the most accurate front point whose predicted latency fits (ties: the
    cheaper); a budget with no front point under it is a one-line error naming the cheapest point."""
    key, front = front_points(search_doc)
    if key != "latency_ms":
        raise EdgenasError(f"the search's front is over {key}, not predicted latency; budgets need a latency table")
    picks: list[BudgetPick] = []
    folders: dict[str, str] = {}
    for label, ms in budgets:
        fitting = [f for f in front if float(f["cost"]) <= ms]
        if not fitting:
            raise EdgenasError(f"no model of the search's front fits budget {label} ({ms:.4g} ms): its cheapest "
                               f"predicts {float(front[0]['cost']):.4g} ms; loosen the budget or search longer")
        best = max(fitting, key=lambda f: (float(f["score"]), -float(f["cost"])))
        arch = str(best["arch"])
        folder = folders.setdefault(arch, label)
        picks.append(BudgetPick(label=label, budget_ms=float(ms), arch=arch, score=float(best["score"]),
                                predicted_ms=float(best["cost"]), folder=folder))
    return picks


def summary_rows(picks: Sequence[BudgetPick], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per budget: the pick, and what its bundle measured (``results[folder]``: the finetune.json,
    manifest and check verdict of the folder that holds its bundle)."""
    rows = []
    for p in picks:
        r = results.get(p.folder) or {}
        manifest, tuned = r.get("manifest") or {}, r.get("finetune") or {}
        acc, lat, gate = manifest.get("accuracy") or {}, manifest.get("latency") or {}, manifest.get("int8") or {}
        int8 = (acc.get("int8") or {}).get("accuracy") if gate.get("status") == "shipped" else None
        rows.append({
            **p.to_json(),
            "shared_with": p.folder if p.folder != p.label else None,
            "arch_id": manifest.get("arch_id"),
            "inherited_test_accuracy": (tuned.get("before") or {}).get("accuracy"),
            "finetuned_test_accuracy": (tuned.get("test") or {}).get("accuracy"),
            "onnx_test_accuracy": (acc.get("onnx") or {}).get("accuracy"),
            "int8_test_accuracy": int8,
            "int8_status": gate.get("status"),
            "measured_ms": (lat.get("model.onnx") or {}).get("median_ms"),
            "measured_int8_ms": (lat.get("model.int8.onnx") or {}).get("median_ms"),
            "mflops": (manifest.get("cost") or {}).get("mflops"),
            "params": (manifest.get("cost") or {}).get("params"),
            "check": r.get("verdict"),
            "bundle": r.get("bundle"),
        })
    return rows


_CSV_COLUMNS = ("label", "budget_ms", "arch", "arch_id", "predicted_ms", "score", "inherited_test_accuracy",
                "finetuned_test_accuracy", "onnx_test_accuracy", "int8_test_accuracy", "int8_status", "measured_ms",
                "measured_int8_ms", "mflops", "params", "check", "shared_with", "bundle")


def write_budget_summary(out: Path, rows: Sequence[dict[str, Any]], search_doc: dict[str, Any],
                         profile: str) -> dict[str, Path]:
    """``budgets.json``, ``budgets.csv`` and ``budgets.png`` in ``out``, written atomically."""
    from edgenas.io import atomic_write_json, atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in _CSV_COLUMNS})
    _, front = front_points(search_doc)
    paths = {"json": out / "budgets.json", "csv": out / "budgets.csv", "png": out / "budgets.png"}
    atomic_write_json(paths["json"], {"profile": profile, "units": "predicted_ms and budget_ms: the latency table's "
                                      "units; measured_ms: the bundle timed on this host",
                                      "front": front, "budgets": list(rows)})
    atomic_write_text(paths["csv"], buf.getvalue())
    _plot(paths["png"], rows, front, profile)
    return paths


def _plot(path: Path, rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], profile: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    from edgenas.io import atomic_write_bytes

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.step([float(f["cost"]) for f in front], [100 * float(f["score"]) for f in front], where="post", color="0.55",
            label="search front (supernet val accuracy)")
    ax.scatter([float(f["cost"]) for f in front], [100 * float(f["score"]) for f in front], s=12, color="0.55")
    shipped = [r for r in rows if r.get("finetuned_test_accuracy") is not None and r.get("shared_with") is None]
    ax.scatter([r["predicted_ms"] for r in shipped], [100 * r["finetuned_test_accuracy"] for r in shipped], s=60,
               marker="*", color="tab:blue", zorder=3, label="shipped (fine-tuned test accuracy)")
    for r in rows:
        ax.axvline(r["budget_ms"], color="tab:red", linestyle="--", linewidth=0.8)
        ax.annotate(r["label"], (r["budget_ms"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    ha="right", va="top", fontsize=8, color="tab:red")
    ax.set_xlabel(f"predicted latency on {profile} (table ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("One search, one bundle per budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
