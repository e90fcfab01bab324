"""`edgenas profile`: hardware profiles, latency tables (build, validate) and timing any ONNX file."""

from __future__ import annotations

import dataclasses
import json

import click

from edgenas.cli._app import (
    SPACE_NAME,
    _config_option,
    _console,
    _parse_shape,
    _protocol_options,
    cli,
)
from edgenas.errors import ConfigError, EdgenasError


@cli.group()
def profile() -> None:
    """Hardware profiles, latency lookup tables and latency measurement."""


@profile.command("list")
def profile_list() -> None:
    """List the hardware profiles found (name, device, runtime, precision, input shape, file)."""
    from edgenas.hardware.profile import list_profiles, load_profile

    found = list_profiles()
    if not found:
        click.echo("no hardware profiles found (add NAME.yaml to ./hardware_profiles or $EDGENAS_PROFILES)")
    for name, path in found.items():
        try:
            p = load_profile(path)
            shape = "x".join(str(d) for d in p.input_shape)
            click.echo(f"{name:<16} {p.device:<5} {p.runtime:<12} {p.precision:<5} {shape:<10} {path}")
        except EdgenasError as exc:
            click.echo(f"{name:<16} invalid: {exc}")


@profile.command("show")
@_config_option
@click.argument("name")
@click.option("--input-shape", default=None, help="Override the input shape, C,H,W.")
def profile_show(name: str, input_shape: str | None) -> None:
    """Print a profile's settings and latency hash, or (for a .json file) a latency table's summary."""
    import yaml

    from edgenas.hardware.profile import load_profile

    if name.endswith(".json"):
        from edgenas.hardware.table import LatencyTable, environment_warnings

        table = LatencyTable.load(name)
        for line in environment_warnings(table):
            _console().warning(line)
        env, cal = table.environment, table.calibration
        click.echo(table.summary())
        click.echo(f"space {table.space['name']} config {table.space_hash}; profile {table.profile_name} "
                   f"({table.profile_hash}); method {table.method}; statistic {table.statistic}")
        click.echo(f"measured {env.get('date')} on {env.get('cpu')} ({env.get('usable_cores')} usable cores), "
                   f"{env.get('runtime')} {(env.get('runtime_versions') or {}).get(env.get('runtime'), '')}, "
                   f"{env.get('threads')} thread(s)")
        click.echo(f"calibration: measured = {cal.scale:.4f} x raw {cal.offset_ms:+.4f} ms on {cal.n} subnets; "
                   f"built in {table.build_seconds:.1f} s, {table.query_us or float('nan'):.2f} us per prediction")
        return
    p = load_profile(name, _parse_shape(input_shape))
    click.echo(yaml.safe_dump(p.to_json(), sort_keys=False).rstrip())
    click.echo(f"latency_hash: {p.latency_hash()}")


@profile.command("build")
@_config_option
@click.option("--profile", "profile_name", required=True,
              help="Profile name (see `edgenas profile list`) or YAML path.")
@click.option("--space", "space_name", type=SPACE_NAME, default="mbv3", show_default=True)
@click.option("--preset", default=None, help="Space preset; default by input size (small < 112 px <= imagenet).")
@click.option("--width-mult", type=float, default=None, help="Scale every width of the space.")
@click.option("--input-shape", default=None, help="Network input C,H,W (default: the profile's).")
@click.option("--num-classes", type=int, default=10, show_default=True)
@click.option("--calib", type=int, default=30, show_default=True,
              help="Uniformly sampled subnets measured end to end for the calibration (plus all-min, all-max).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--method", type=click.Choice(["context", "isolated", "network"]), default=None,
              help="How entries are timed: each block behind a context prefix, alone, or as a one-layer change "
                   "of a whole subnet. [default: network for int8 profiles, context otherwise]")
@click.option("--out", default=None,
              help="Table file. [default: latency_tables/<profile>_<space>_<preset>_<H>x<W>.json]")
@click.option("--force", is_flag=True, help="Overwrite an existing table file.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time a speed reference beside every model and keep figures in its units, so the table "
                   "stays true when the host slows down or speeds up; --no-reference: plain milliseconds.")
@_protocol_options
def profile_build(profile_name: str, space_name: str, preset: str | None, width_mult: float | None,
                  input_shape: str | None, num_classes: int, calib: int, seed: int, method: str, out: str | None,
                  force: bool, reference: bool, warmup: int | None, repeats: int | None, trials: int | None) -> None:
    """Measure a latency lookup table for a space on a profile's target and calibrate it."""
    from edgenas.pipeline import TableJob, build_table

    result = build_table(TableJob(profile=profile_name, space=space_name, preset=preset, width_mult=width_mult,
                                  input_shape=_parse_shape(input_shape), num_classes=num_classes, calib=calib,
                                  seed=seed, method=method, out=out, force=force, warmup=warmup, repeats=repeats,
                                  trials=trials, reference=reference), _console())
    click.echo(f"wrote {result.path}: {result.layers} layers, built in {result.table.build_seconds:.1f} s, "
               f"{result.table.query_us:.2f} us per prediction")
    click.echo(f"next: edgenas profile validate {result.path}")


@profile.command("validate")
@_config_option
@click.argument("table_path", metavar="TABLE")
@click.option("--n", "count", type=int, default=50, show_default=True, help="Fresh subnets measured end to end.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--plot", default=None, help="Scatter plot PNG. [default: TABLE with .png]")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_protocol_options
def profile_validate(table_path: str, count: int, seed: int, plot: str | None, as_json: bool, warmup: int | None,
                     repeats: int | None, trials: int | None) -> None:
    """Measure fresh subnets end to end, compare with the table, store the figures in it."""
    from edgenas.pipeline.table import ValidateJob, validate_table

    result, table = validate_table(ValidateJob(table=table_path, count=count, seed=seed, plot=plot, warmup=warmup,
                                               repeats=repeats, trials=trials), _console())
    if as_json:
        click.echo(json.dumps({k: v for k, v in dataclasses.asdict(result).items()
                               if k not in ("archs", "predicted_ms", "raw_ms", "measured_ms")}, indent=2))
        return
    click.echo(f"median relative error {result.median_rel_error:.2%}")
    click.echo(f"max relative error    {result.max_rel_error:.2%}")
    click.echo(f"within ±10%           {result.within_10pct:.0%} of {result.n}")
    retest = (f" (a re-measurement ranks them at {result.retest_kendall_tau:.3f})"
              if result.retest_kendall_tau is not None else "")
    click.echo(f"Kendall tau           {result.kendall_tau:.3f}{retest}")
    click.echo(f"mean signed error     {result.mean_signed_rel_error:+.2%} (bias)")
    click.echo(f"measurement noise     {result.noise_rel:.1%} (relative std of trial medians)")
    click.echo(f"end to end: {result.seconds_per_candidate:.2f} s per candidate; table: "
               f"{table.query_us or float('nan'):.2f} us per prediction")
    click.echo(f"plot {result.plot}; figures stored in {table_path}")


@profile.command("measure")
@_config_option
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--profile", "profile_name", required=True, help="An onnxruntime profile name or YAML path.")
@click.option("--input-shape", default=None, help="Input C,H,W (or N,C,H,W); default: read from the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON (raw samples left out).")
def profile_measure(model: str, profile_name: str, input_shape: str | None, as_json: bool) -> None:
    """Time any ONNX model on a profile's target with the profile's protocol."""
    from edgenas.hardware.measure import onnx_measurer
    from edgenas.hardware.profile import load_profile

    p = load_profile(profile_name)
    shape = None
    if input_shape is not None:
        try:
            shape = tuple(int(d) for d in input_shape.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if len(shape) not in (3, 4) or any(d < 1 for d in shape):
            raise ConfigError(f"--input-shape must be positive C,H,W or N,C,H,W, not {input_shape!r}")
    stats = onnx_measurer(p).measure_onnx_many([model], [shape])[0]
    if as_json:
        data = {k: v for k, v in stats.to_json().items() if k != "samples_ms"}
        click.echo(json.dumps({"model": model, "profile": p.name, **data}, indent=2))
        return
    m = p.measure
    runtime = f"{p.runtime}, {p.provider}" if p.provider else p.runtime
    click.echo(f"{model} on {p.name} ({runtime}, {p.threads} thread(s), batch {p.batch_size}, "
               f"{p.precision}): {m.trials} trials x {m.repeats} runs after {m.warmup} warm-up")
    click.echo(f"median {stats.median_ms:.4f} ms  p10 {stats.p10_ms:.4f}  p90 {stats.p90_ms:.4f}  "
               f"IQR {stats.iqr_ms:.4f}  n={stats.n}")
