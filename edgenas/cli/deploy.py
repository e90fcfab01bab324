"""`edgenas finetune`, `baseline`, `export` and `check`: from a subnet to a guarded bundle."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgenas.cli._app import (
    BASELINE_NAME,
    _config_option,
    _console,
    cli,
)


# ----- finetune ---------------------------------------------------------------------------------------------
def _recipe_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The training recipe of `finetune` and `baseline` (one recipe, so their results compare)."""
    for option in reversed([
        click.option("--epochs", type=int, default=None, help="[default: 5]"),
        click.option("--lr", type=float, default=None, help="Peak learning rate. [default: 0.05]"),
        click.option("--batch-size", type=int, default=None, help="[default: 128]"),
        click.option("--label-smoothing", type=float, default=None, help="[default: 0.1]"),
        click.option("--weight-decay", type=float, default=None, help="On conv/linear weights only. [default: 4e-5]"),
        click.option("--warmup-steps", type=int, default=None,
                     help="Linear warm-up steps before the cosine. [default: 0]"),
        click.option("--grad-clip", type=float, default=None, help="Clip the gradient norm to this value."),
        click.option("--patience", type=int, default=None,
                     help="Stop after N epochs without val improvement. [default: 3]"),
        click.option("--train-limit", type=int, default=None, help="Use only the first N training images."),
        click.option("--seed", type=int, default=None, help="[default: 0]"),
        click.option("--threads", type=int, default=None, help="CPU threads for torch. [default: all cores]"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
        click.option("--json", "as_json", is_flag=True, help="Print only the result as JSON."),
    ]):
        fn = option(fn)
    return fn


@cli.command()
@_config_option
@click.argument("ckpt", metavar="SUBNET_CKPT", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output directory: last.pt, best.pt, subnet.pt, finetune.json.")
@_recipe_options
@click.option("--distill/--no-distill", default=None,
              help="Distil from the subnet as loaded (the supernet's weights), frozen. [default: no]")
@click.option("--kd-alpha", type=float, default=None, help="Weight of the distillation term. [default: 0.5]")
@click.option("--kd-temperature", type=float, default=None, help="[default: 4.0]")
@click.option("--from-scratch", is_flag=True, default=None,
              help="Re-initialise the weights (seeded) instead of starting from the inherited ones.")
@click.option("--data-root", default=None, help="Data directory, if not where the checkpoint's data was found.")
def finetune(ckpt: str, out_dir: str, data_root: str | None, device: str, resume: bool, as_json: bool,
             **options: Any) -> None:
    """Fine-tune an extracted subnet (optionally distilling from its inherited weights); report test accuracy."""
    from edgenas.finetune import FinetuneConfig
    from edgenas.pipeline import FinetuneJob
    from edgenas.pipeline import finetune as finetune_stage

    config = FinetuneConfig(**{k: v for k, v in options.items() if v is not None})
    outcome = finetune_stage(FinetuneJob(subnet=ckpt, out=out_dir, config=config, data_root=data_root, device=device,
                                         resume=resume), _console(quiet=as_json, epochs=config.epochs))
    result = outcome.result
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
        return
    how = "from scratch" if result.from_scratch else "from inherited weights"
    how += ", distilled from the inherited subnet" if result.distill else ""
    stop = " (stopped early)" if result.stopped_early else ""
    click.echo(f"fine-tuned {outcome.arch} {how}: {result.epochs_run} epoch(s){stop}, best epoch "
               f"{result.best_epoch + 1}, val accuracy {result.val_accuracy:.2%}")
    gain = 100 * (result.test_accuracy - result.before_test_accuracy)
    click.echo(f"test accuracy {result.test_accuracy:.2%} on {result.test_count} {outcome.data} test images; "
               f"before fine-tuning {result.before_test_accuracy:.2%} on {result.before_test_count} "
               f"({gain:+.2f} points)")
    click.echo(f"wrote {result.checkpoint} (also best.pt, last.pt, finetune.json in {out_dir}) in "
               f"{result.seconds:.1f} s")


@cli.command()
@_config_option
@click.option("--family", type=BASELINE_NAME, required=True,
              help="Hand-designed network family: mobilenetv3-small (torchvision), lcnet or mobilenetv4-small (timm); "
                   "randomly initialised.")
@click.option("--data", "data_name", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None, help="Data directory.")
@click.option("--val-limit", type=int, default=None,
              help="Validate on the first N validation images (as a search's --val-limit) [default: all].")
@click.option("--profile", "profile_name", default="cpu-ort", show_default=True,
              help="Profile whose measurer scales the width to the budget.")
@click.option("--latency-ms", type=float, default=None,
              help="Take the widest member measured within this budget [default: the profile's].")
@click.option("--width", type=float, default=None, help="Train this width instead of scaling to a budget.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output directory: baseline.json, last.pt, best.pt, subnet.pt, finetune.json.")
@_recipe_options
def baseline(family: str, data_name: str, data_root: str | None, val_limit: int | None, profile_name: str,
             latency_ms: float | None,
             width: float | None, out_dir: str, device: str, resume: bool, as_json: bool, **options: Any) -> None:
    """Train a hand-designed baseline scaled to the latency budget, with the fine-tuning recipe."""
    from edgenas.finetune import FinetuneConfig
    from edgenas.pipeline.baseline import BaselineJob
    from edgenas.pipeline.baseline import baseline as train_baseline

    config = FinetuneConfig(**{k: v for k, v in options.items() if v is not None})
    outcome = train_baseline(BaselineJob(family=family, out=out_dir, config=config, data=data_name, data_root=data_root,
                                         val_limit=val_limit, profile=profile_name, latency_ms=latency_ms, width=width,
                                         device=device, resume=resume), _console(quiet=as_json, epochs=config.epochs))
    result, choice = outcome.result, outcome.choice
    if as_json:
        click.echo(json.dumps({**result.report, "baseline": choice}, indent=2))
        return
    if choice["latency_ms"] is not None:
        click.echo(f"{choice['label']}: measured {choice['latency_ms']:.3f} ms on {profile_name}, the widest of "
                   f"{len(choice['tried'])} widths within {choice['budget_ms']:g} ms")
    stop = " (stopped early)" if result.stopped_early else ""
    click.echo(f"trained {choice['label']} ({choice['description']}): {result.epochs_run} epoch(s){stop}, best "
               f"epoch {result.best_epoch + 1}, val accuracy {result.val_accuracy:.2%}")
    click.echo(f"test accuracy {result.test_accuracy:.2%} on {result.test_count} {outcome.data} test images")
    click.echo(f"wrote {result.checkpoint} (also baseline.json, finetune.json in {out_dir}) in {result.seconds:.1f} s")


# ----- export -----------------------------------------------------------------------------------------------
@cli.command("export")
@_config_option
@click.argument("subnet_ckpt", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Bundle name: the folder written under --out-dir.")
@click.option("--out-dir", type=click.Path(file_okay=False), default="export", show_default=True)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-20).")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="Also write model.int8.onnx (static QDQ, calibrated on training images) if it keeps its "
                   "accuracy (--int8-tolerance).")
@click.option("--int8-tolerance", type=float, default=1.0, show_default=True,
              help="Largest top-1 accuracy drop of int8 below fp32 ONNX, in points on the test images, that still "
                   "ships model.int8.onnx; above it the file is left out (exit 0) and the manifest says why.")
@click.option("--require-int8", is_flag=True,
              help="Fail (exit 1, nothing written) instead of leaving out an int8 model over the tolerance.")
@click.option("--format", "formats", multiple=True, metavar="NAME",
              help="Also ship this deployment format (repeatable; e.g. openvino), converted from the same network "
                   "and parity-checked against ONNX Runtime on the test images.")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxsim (pip install onnxsim).")
@click.option("--calib-images", type=int, default=512, show_default=True, help="Training images for int8 calibration.")
@click.option("--parity-images", type=int, default=None, help="Test images for parity/accuracy [default: all].")
@click.option("--profile", "profile_name", default="cpu-ort", show_default=True,
              help="fp32 onnxruntime profile (name or YAML path) the latency is measured on.")
@click.option("--no-measure", is_flag=True, help="Skip the latency measurement.")
@click.option("--force", is_flag=True, help="Replace an existing bundle of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(subnet_ckpt: str, name: str, out_dir: str, opset: int, int8: bool, int8_tolerance: float,
               require_int8: bool, formats: tuple[str, ...], simplify: bool, calib_images: int,
               parity_images: int | None, profile_name: str,
               no_measure: bool, force: bool, as_json: bool) -> None:
    """A subnet checkpoint as a checked ONNX bundle: model.onnx, model.int8.onnx, manifest.json.

    int8 is a quality gate: an int8 model losing more than --int8-tolerance points of test accuracy is
    left out of the bundle (the manifest and the summary say why) and the export still succeeds with
    the fp32 model, unless --require-int8 (then exit 1).
    """
    from edgenas.export import ExportConfig
    from edgenas.pipeline import ExportJob
    from edgenas.pipeline import export as export_stage

    config = ExportConfig(name=name, out_dir=out_dir, opset=opset, int8=int8, simplify=simplify,
                          calib_images=calib_images, parity_images=parity_images, profile=profile_name,
                          measure=not no_measure, int8_tolerance=int8_tolerance, require_int8=require_int8,
                          formats=formats)
    result = export_stage(ExportJob(subnet=subnet_ckpt, config=config, overwrite=force), _console())
    m = result.manifest
    if as_json:
        click.echo(json.dumps({"bundle_dir": str(result.bundle_dir), **m}, indent=2))
        return
    files = ", ".join(f"{f} ({info['bytes'] / 1024:.1f} KiB)" for f, info in m["files"].items())
    click.echo(f"bundle {result.bundle_dir}: {files}, manifest.json")
    cost, par, acc = m["cost"], m["parity"], m["accuracy"]
    click.echo(f"{m['arch']} ({m['arch_id']}) on {m['data']['name']}: {cost['mflops']:.3f} MFLOPs, "
               f"{cost['params'] / 1e6:.4f} M params; graph {cost['onnx_macs'] / 1e6:.3f} M MACs, opset {m['opset']}")
    click.echo(f"parity torch vs onnxruntime on {par['count']} test images: max |diff| {par['max_abs_diff']:.2g} "
               f"(tolerance {par['tolerance']:g}), top-1 agreement {par['top1_agreement']:.2%}")
    line = (f"test accuracy: torch {acc['torch']['accuracy']:.2%} ({acc['torch']['count']} images), "
            f"onnx fp32 {acc['onnx']['accuracy']:.2%} ({acc['onnx']['count']})")
    if acc["int8"] is not None:
        i8 = acc["int8"]
        line += (f", int8 {i8['accuracy']:.2%} ({i8['count']}; drop {acc['int8_drop_points']:.2f} points, "
                 f"agreement with fp32 {i8['top1_agreement_with_fp32']:.2%})")
    click.echo(line)
    gate = m.get("int8")
    if gate is not None and gate["status"] != "shipped":
        click.echo(f"{gate['reason']} (--int8-tolerance); the bundle ships fp32 only")
    if m["latency"] is not None:
        lat = m["latency"]
        parts = [f"{f} median {s['median_ms']:.4f} ms (p10 {s['p10_ms']:.4f}, p90 {s['p90_ms']:.4f})"
                 for f, s in lat.items() if f != "int8_speedup"]
        speedup = f"; int8 speed-up {lat['int8_speedup']:.2f}x" if lat.get("int8_speedup") else ""
        click.echo(f"latency on {m['profile']['name']}: {'; '.join(parts)}{speedup}")
    for name, record in (m.get("formats") or {}).items():
        click.echo(f"{name}: {record.get('summary', ', '.join(record.get('files', [])))}")


# ----- check ------------------------------------------------------------------------------------------------
@cli.command("check")
@_config_option
@click.argument("bundle")
@click.option("--profile", "profile_name", required=True, help="An onnxruntime profile name or YAML path.")
@click.option("--tolerance", default="10%", show_default=True,
              help="Relative latency change to tolerate: 10% or 0.1 (between 0 and 1).")
@click.option("--trials", type=int, default=None,
              help="Interleaved trials of 10 runs per model in the first round [default: the profile's trials x "
                   "repeats / 10].")
@click.option("--max-trials", type=int, default=None,
              help="While the verdict is inconclusive, measure more rounds up to this many trials in all "
                   "[default: 8x the first round]; equal to --trials for a fixed protocol.")
@click.option("--max-seconds", type=float, default=60.0, show_default=True,
              help="Start no further round after this many seconds of measuring.")
@click.option("--reference", type=click.Choice(["twin", "mbconv"]), default="twin", show_default=True,
              help="With --update: the reference workload to record; twin = the bundle's own graph with seeded "
                   "weights, mbconv = the fixed ref-mbconv/1 network sized to the bundle.")
@click.option("--update", is_flag=True, help="(Re)write the baseline into the bundle's manifest instead of checking.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (with --update: the baseline) as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the result as JUnit XML (testcases latency, flops, params) to this file.")
@click.pass_context
def check(ctx: click.Context, bundle: str, profile_name: str, tolerance: str, trials: int | None,
          max_trials: int | None, max_seconds: float, reference: str, update: bool, as_json: bool,
          junit_path: str | None) -> None:
    """Fail CI when an exported bundle got slower, or its FLOPs or params changed.

    Times BUNDLE's model and a reference workload interleaved in the same run, so a runner's drift
    hits both and cancels, and compares their latency ratio with the baseline stored in the
    bundle's manifest (record it once with --update). The reference is the bundle's own graph as it
    was at --update, with seeded weights (ref-twin/1), so load moves both alike.

    \b
    Rule: rounds of interleaved trials of 10 runs each (first round T: the
    profile's trials x repeats / 10; while INCONCLUSIVE, rounds doubling the
    trials up to --max-trials, none started after --max-seconds);
    per-trial ratio r_t = bundle median / reference median; d = median(r) /
    baseline ratio; 95% bootstrap CI of d (2000 seeded resamples of both these
    trials and the baseline's stored ones);
    REGRESSION iff CI low > 1 + tolerance (confidently slower than the tolerance),
    PASS iff CI high <= 1 + tolerance (IMPROVED iff CI high < 1 - tolerance),
    else INCONCLUSIVE (the CI straddles 1 + tolerance: neither pass nor regression).
    FLOPs (MACs) and params must equal the baseline exactly; changed file
    checksums are only reported. JUnit: a failure per regression, an error
    (LatencyInconclusive) on the latency testcase when inconclusive.

    \b
    Exit codes: 0 pass, 1 regression, 2 usage or input error (or a crash of the
    check itself: never 1), 3 inconclusive.
    """
    from edgenas.check import CheckConfig, format_baseline, parse_tolerance
    from edgenas.errors import ConfigError
    from edgenas.pipeline import CheckJob
    from edgenas.pipeline import check as check_stage

    if reference != "twin" and not update:
        raise ConfigError("--reference chooses the workload --update records; a check uses the baseline's")
    # a crash of the check is one error line with exit 2 (the group's handler), never 1, "the bundle regressed"
    job = CheckJob(bundle=bundle, profile=profile_name, update=update, junit=junit_path,
                   config=CheckConfig(tolerance=parse_tolerance(tolerance), trials=trials, max_trials=max_trials,
                                      max_seconds=max_seconds, reference=reference))  # type: ignore[arg-type]
    outcome = check_stage(job, _console())
    if outcome.baseline is not None:
        text, code = (json.dumps(outcome.baseline.to_json(), indent=2) if as_json
                      else format_baseline(outcome.baseline, Path(bundle) / "manifest.json")), 0
    else:
        report = outcome.report
        text = json.dumps(report.to_json(), indent=2) if as_json else report.render(use_rich=sys.stdout.isatty())
        code = report.exit_code
    click.echo(text)
    ctx.exit(code)
