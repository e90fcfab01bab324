"""Bookkeeping and the final report of ``edgenas run``: which stages are done, and what they found.

``stages.json`` in the run directory records every stage's status, wall time and outputs, written
atomically after each stage, so an interrupted pipeline resumes at the first unfinished stage
(stages that can resume internally, training, search and fine-tuning, continue where they stopped).
``report.md`` is rebuilt from the stages' own result files (``search.json``, ``finetune.json``, the
bundle's ``manifest.json``), so it never disagrees with them.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.errors import EdgenasError
from edgenas.io import atomic_write_json, atomic_write_text, read_json
from edgenas.search.verify import deployable_arch

__all__ = ["STAGES", "StageLog", "pipeline_summary", "render_report"]

#: The pipeline's stages, in order.
STAGES = ("train", "table", "search", "extract", "finetune", "export", "check")
LOG_FORMAT = "edgenas-run/1"


@dataclass
class StageLog:
    """The run directory's ``stages.json``: settings of the run and one record per stage."""

    path: Path
    settings: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: Path, settings: dict[str, Any], resume: bool) -> StageLog:
        """Start a new log, or (``resume``) continue one written with the same settings."""
        path = run_dir / "stages.json"
        if not path.exists():
            if resume:
                raise EdgenasError(f"nothing to resume: {path} does not exist")
            log = cls(path, settings)
            log.save()
            return log
        if not resume:
            raise EdgenasError(f"{run_dir} already holds a pipeline run; pass --resume to continue it "
                               "or choose another --out")
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("format") != LOG_FORMAT:
            raise EdgenasError(f"{path} is not an edgenas run log")
        changed = sorted(k for k in set(doc.get("settings", {})) | set(settings)
                         if doc.get("settings", {}).get(k) != settings.get(k))
        if changed:
            raise EdgenasError(f"{run_dir} was started with other settings ({', '.join(changed)}); "
                               "resume needs the same ones")
        return cls(path, settings, dict(doc.get("stages") or {}))

    def done(self, stage: str) -> bool:
        return self.stages.get(stage, {}).get("status") == "done"

    def started(self, stage: str) -> bool:
        return stage in self.stages

    def begin(self, stage: str) -> float:
        record = self.stages.setdefault(stage, {"seconds": 0.0})
        record["status"] = "running"
        self.save()
        return time.perf_counter()

    def finish(self, stage: str, start: float, **outputs: Any) -> None:
        record = self.stages[stage]
        record["seconds"] = float(record.get("seconds", 0.0)) + time.perf_counter() - start
        record["status"] = "done"
        record["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record.update(outputs)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, {"format": LOG_FORMAT, "settings": self.settings, "stages": self.stages})


def _pct(x: Any) -> str:
    return f"{x:.2%}" if isinstance(x, (int, float)) else "-"


def _ms(x: Any) -> str:
    return f"{x:.3f} ms" if isinstance(x, (int, float)) else "-"


def pipeline_summary(run_dir: Path, log: StageLog) -> list[tuple[str, str]]:
    """(what, value) rows gathered from the stages' result files."""
    rows: list[tuple[str, str]] = []
    search_doc = _maybe(log.stages.get("search", {}).get("search_json"))
    if search_doc:
        measured = search_doc.get("measured") or {}
        best = search_doc["best"]
        rows += [("architecture", f"`{deployable_arch(search_doc)}`"),
                 ("search: val accuracy (supernet)", _pct(best.get("score"))),
                 ("search: predicted latency", _ms(best.get("metrics", {}).get("latency_ms"))),
                 ("search: candidates evaluated", str(search_doc.get("evaluated", "-")))]
        if search_doc.get("proxy_health"):
            from edgenas.proxy import ProxyHealth

            rows.append(("search: proxy health", ProxyHealth.from_json(search_doc["proxy_health"]).short()))
        finalists = measured.get("finalists") or []
        if finalists:
            rows.append(("search: measured latency of the best", _ms(finalists[0].get("measured_ms"))))
    ft = _maybe(log.stages.get("finetune", {}).get("finetune_json"))
    if ft:
        test = ft.get("test") or {}
        before = ft.get("before") or {}
        rows += [("inherited weights: test accuracy", f"{_pct(before.get('accuracy'))} of {before.get('count', '-')}"),
                 ("fine-tuned: test accuracy", f"{_pct(test.get('accuracy'))} of {test.get('count', '-')} images")]
    manifest = _maybe(log.stages.get("export", {}).get("manifest"))
    if manifest:
        acc = manifest.get("accuracy") or {}
        lat = manifest.get("latency") or {}
        cost = manifest.get("cost") or {}
        gate = manifest.get("int8") or {}
        int8_acc = (_pct((acc.get("int8") or {}).get("accuracy")) if gate.get("status") != "left_out" else
                    f"left out: a drop of {gate.get('drop_points', float('nan')):.2f} points > "
                    f"{gate.get('tolerance_points', float('nan')):g} tolerated")
        rows += [("ONNX fp32: test accuracy", _pct((acc.get("onnx") or {}).get("accuracy"))),
                 ("ONNX int8: test accuracy", int8_acc),
                 ("ONNX fp32: measured latency", _ms((lat.get("model.onnx") or {}).get("median_ms"))),
                 ("ONNX int8: measured latency", _ms((lat.get("model.int8.onnx") or {}).get("median_ms"))),
                 ("FLOPs / params", f"{cost.get('mflops', float('nan')):.2f} MFLOPs / {cost.get('params', '-')}")]
    check = log.stages.get("check", {})
    if "verdict" in check:
        rows.append(("latency check", str(check["verdict"])))
    return rows


def render_report(run_dir: Path, log: StageLog) -> Path:
    """Write ``report.md``: settings, the summary table, stage times and the Pareto plot."""
    lines = [f"# edgenas run: {run_dir.name}", "",
             "Settings: " + ", ".join(f"{k} `{v}`" for k, v in log.settings.items() if v is not None), "",
             "| result | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in pipeline_summary(run_dir, log)]
    budgets = _maybe(run_dir / "budgets.json")
    if budgets:
        lines += ["", "One bundle per budget (predicted latency and budgets in the latency table's units; measured: "
                  "the bundle's fp32 model timed on this host):", "",
                  "| budget | architecture | predicted | supernet score | fine-tuned test | int8 test | measured | "
                  "check | bundle |", "|---|---|---|---|---|---|---|---|---|"]
        for r in budgets.get("budgets") or []:
            int8 = _pct(r.get("int8_test_accuracy")) if r.get("int8_status") == "shipped" else (
                r.get("int8_status") or "-").replace("_", " ")
            shared = f" (= {r['shared_with']})" if r.get("shared_with") else ""
            lines.append(f"| {r['label']} ({r['budget_ms']:.4g} ms) | `{r.get('arch_id') or r['arch']}` | "
                         f"{_ms(r.get('predicted_ms'))} | {_pct(r.get('score'))} | "
                         f"{_pct(r.get('finetuned_test_accuracy'))} | {int8} | {_ms(r.get('measured_ms'))} | "
                         f"{r.get('check') or '-'} | {r.get('bundle') or '-'}{shared} |")
        if (run_dir / "budgets.png").is_file():
            lines += ["", "![budgets](budgets.png)"]
    lines += ["", "| stage | status | wall time |", "|---|---|---|"]
    total = 0.0
    extra = [k for k in log.stages if k not in STAGES]  # per-budget stages (extract@q0.4, ...)
    for stage in (*STAGES, *extra):
        rec = log.stages.get(stage)
        if rec is None:
            if not any(k.startswith(stage + "@") for k in extra):  # a multi-budget run has per-budget ones
                lines.append(f"| {stage} | not run | - |")
            continue
        total += float(rec.get("seconds", 0.0))
        lines.append(f"| {stage} | {rec.get('status')}{' (' + rec['note'] + ')' if rec.get('note') else ''} "
                     f"| {float(rec.get('seconds', 0.0)):.0f} s |")
    lines += [f"| total | | {total:.0f} s |", ""]
    plot = log.stages.get("search", {}).get("plot")
    if plot and Path(plot).is_file():
        lines += ["Evaluated candidates (accuracy vs predicted latency, Pareto front highlighted, budget line):", "",
                  f"![candidates]({Path(plot).resolve().relative_to(run_dir.resolve())})", ""]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))


def _maybe(path: Any) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    doc = read_json(path)
    return doc if isinstance(doc, dict) else None
