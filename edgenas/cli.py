"""Command line: one thin command per pipeline stage.

Each command parses options, builds typed configs and calls one library function. Errors caused by
input (:class:`EdgenasError`) become ``error: <one line>`` on stderr and a non-zero exit; progress
goes to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgenas import __version__
from edgenas.errors import ConfigError, EdgenasError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Click group that reports EdgenasError as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgenasError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: the last completed checkpoint is kept; rerun with --resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgenas")
def cli() -> None:
    """edgenas: hardware-aware NAS that ends in deployable models.

    Stages, in data-flow order: data, space, profile, train, eval, search.
    """


def _load_option_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--config FILE.yaml``: the file's keys (option names, with - or _) become the command's
    defaults, so options given on the command line override the file; an unknown key is an error."""
    if value is None:
        return None
    from edgenas.config import load_yaml

    names: dict[str, str] = {}
    for param in ctx.command.params:
        if param.name in (None, "config_file"):
            continue
        names[param.name.replace("_", "-")] = param.name
        for flag in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
            names[flag.lstrip("-")] = param.name
    values: dict[str, Any] = {}
    for key, item in load_yaml(value).items():
        name = names.get(str(key).replace("_", "-"))
        if name is None:
            known = ", ".join(sorted(k for k in names if "_" not in k and not k.startswith("no-")))
            raise ConfigError(f"{value}: unknown option '{key}' for `{ctx.command_path}` (known: {known})")
        values[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


def _config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, is_eager=True,
                        expose_value=False, callback=_load_option_file,
                        help="YAML of this command's options (names as here, with - or _); options given here "
                             "override it.")(fn)


# ----- data ---------------------------------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Datasets in the registry."""


@data.command("list")
def data_list() -> None:
    """List dataset names."""
    from edgenas.data import list_datasets

    for name in list_datasets():
        click.echo(name)


@data.command("show")
@_config_option
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Data directory (else $EDGENAS_DATA).")
def data_show(name: str, root: str | None) -> None:
    """Load a dataset and print its split sizes, classes and normalisation."""
    from edgenas.data import DataConfig, load_dataset

    splits = load_dataset(DataConfig(name=name, root=root))
    click.echo(f"{splits.name}: train {len(splits.train)}  val {len(splits.val)}  test {len(splits.test)}")  # type: ignore[arg-type]
    click.echo(f"input {splits.in_channels}x{splits.input_size[0]}x{splits.input_size[1]}, "
               f"{splits.num_classes} classes: {', '.join(splits.class_names)}")
    click.echo(f"mean {tuple(round(m, 4) for m in splits.mean)}  std {tuple(round(s, 4) for s in splits.std)}")


# ----- space ----------------------------------------------------------------------------------------------
@cli.group()
def space() -> None:
    """Search spaces: list, describe, sample."""


@space.command("list")
def space_list() -> None:
    """List search space names."""
    from edgenas.space import list_spaces

    for name in list_spaces():
        click.echo(name)


@space.command("show")
@_config_option
@click.argument("name")
@click.option("--preset", default="small", show_default=True,
              help="Space preset: small (28-32 px) or imagenet (224 px).")
@click.option("--input-size", type=int, default=28, show_default=True, help="Input side in pixels, for MACs.")
def space_show(name: str, preset: str, input_size: int) -> None:
    """Print the layers, their choices and the MAC range of a space."""
    from edgenas.space import create_space

    sp = create_space(name, preset)
    hw = (input_size, input_size)
    table = sp.macs_table(hw)
    fixed = sp.fixed_macs(hw, 1, 10)
    click.echo(f"{sp.name}@v{sp.version} preset={preset} config={sp.config_hash()}  "
               f"{len(sp.layers)} layers, {sp.size:.3g} architectures")
    for layer, (c, h, w) in zip(sp.layers, sp.layer_input_shapes(hw)):
        click.echo(f"  layer {layer.index:2d} stage {layer.stage} in {c}x{h}x{w} -> {layer.out_channels} "
                   f"stride {layer.stride}: {' '.join(layer.choices)}")
    lo = fixed + sum(min(r) for r in table)
    hi = fixed + sum(max(r) for r in table)
    click.echo(f"MACs at {input_size}x{input_size} (1 multiply-add = 1 FLOP, 1 channel, 10 classes): "
               f"{lo / 1e6:.2f}M .. {hi / 1e6:.2f}M")


@space.command("sample")
@_config_option
@click.argument("name")
@click.option("-n", "count", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preset", default="small", show_default=True)
def space_sample(name: str, count: int, seed: int, preset: str) -> None:
    """Print uniformly sampled architectures (string, id, labels)."""
    import numpy as np

    from edgenas.space import create_space

    sp = create_space(name, preset)
    rng = np.random.default_rng(seed)
    for _ in range(count):
        arch = sp.sample(rng)
        click.echo(f"{arch}  {arch.arch_id}  {sp.describe(arch)}")


# ----- profile ---------------------------------------------------------------------------------------------
def _parse_shape(text: str | None) -> tuple[int, int, int] | None:
    """``C,H,W`` (or ``CxHxW``) into a tuple; anything else is a one-line error."""
    if text is None:
        return None
    parts = text.replace("x", ",").replace("X", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise ConfigError(f"--input-shape must be three positive integers C,H,W (e.g. 1,28,28), not {text!r}")
    return shape  # type: ignore[return-value]


def _protocol_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for name, text in reversed((("warmup", "untimed runs per trial"), ("repeats", "timed runs per trial"),
                                ("trials", "interleaved passes over all models; more trials average out a "
                                           "machine whose speed drifts"))):
        fn = click.option(f"--{name}", type=int, default=None, help=f"Override the profile's {text}.")(fn)
    return fn


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _console(quiet: bool = False, epochs: int = 0, generations: int = 0) -> Any:
    """The CLI's :class:`edgenas.pipeline.Progress`: stderr lines, a bar for training on a terminal;
    ``quiet`` (``--json``) keeps only warnings."""
    from edgenas.pipeline.progress import Progress

    class Console(Progress):
        def __init__(self) -> None:
            self.bar: Any = None
            self.task: Any = None
            self.seconds: list[float] = []

        def message(self, text: str) -> None:
            if not quiet:
                click.echo(text, err=True)

        def warning(self, text: str) -> None:
            click.echo(f"warning: {text}", err=True)

        def stage(self, key: str, title: str, skipped: bool) -> None:
            click.echo(f"== {title}{': done, skipped' if skipped else ''}", err=True)

        def train_step(self, epoch: int, step: int, total: int, loss: float) -> None:
            if quiet or not sys.stderr.isatty():
                return
            if self.bar is None:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                    TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                                    TimeRemainingColumn(), transient=True)
                self.bar.start()
            if self.task is None or step == 1:
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task("train", total=total, epoch=f"{epoch + 1}/{epochs}", loss=loss)
            self.bar.update(self.task, completed=step, loss=loss)
            if step == total:
                self.bar.stop()
                self.bar, self.task = None, None

        def train_epoch(self, stats: Any) -> None:
            val = f" | val acc (sampled subnets) {stats.val_mean:.2%}" if stats.val_accuracy else ""
            self.message(f"epoch {stats.epoch + 1}/{epochs} lr {stats.lr:.4f} | train loss {stats.train_loss:.4f} "
                         f"acc {stats.train_accuracy:.2%} | {stats.images_per_s:.0f} img/s{val}")

        def search_generation(self, record: Any) -> None:
            self.seconds.append(float(getattr(record, "seconds", 0.0)))
            eta = (generations - record.generation - 1) * sum(self.seconds) / len(self.seconds)
            best = record.topk[0] if record.topk else None
            text = "no legal candidate"
            if best is not None:
                text = f"best {best.score:.2%} {best.arch} ({best.metrics.get('latency_ms', float('nan')):.3f} ms)"
            self.message(f"generation {record.generation + 1}/{generations} | {text} | ETA {eta:.0f} s")

        def finetune_epoch(self, stats: Any) -> None:
            self.seconds.append(stats.seconds)
            eta = (epochs - stats.epoch - 1) * sum(self.seconds) / len(self.seconds)
            kd = f" (kd {stats.kd_loss:.4f})" if stats.kd_loss is not None else ""
            self.message(f"epoch {stats.epoch + 1}/{epochs} | loss {stats.train_loss:.4f}{kd} acc "
                         f"{stats.train_accuracy:.2%} | val acc {stats.val_accuracy:.2%}"
                         f"{' *' if stats.improved else ''} | lr {stats.lr:.4g} | {stats.images_per_s:.0f} img/s | "
                         f"ETA {eta:.0f} s")

        def rank_arch(self, index: int, total: int, entry: Any) -> None:
            self.message(f"[{index}/{total}] {entry.arch}  {entry.macs / 1e6:.2f} M MACs  inherited (val) "
                         f"{entry.inherited:.2%}  alone (test) {entry.standalone:.2%}")

    return Console()


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
        _warn(environment_warnings(table))
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
@click.option("--space", "space_name", default="mbv3", show_default=True)
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
@_protocol_options
def profile_build(profile_name: str, space_name: str, preset: str | None, width_mult: float | None,
                  input_shape: str | None, num_classes: int, calib: int, seed: int, method: str, out: str | None,
                  force: bool, warmup: int | None, repeats: int | None, trials: int | None) -> None:
    """Measure a latency lookup table for a space on a profile's target and calibrate it."""
    from edgenas.pipeline import TableJob, build_table

    result = build_table(TableJob(profile=profile_name, space=space_name, preset=preset, width_mult=width_mult,
                                  input_shape=_parse_shape(input_shape), num_classes=num_classes, calib=calib,
                                  seed=seed, method=method, out=out, force=force, warmup=warmup, repeats=repeats,
                                  trials=trials), _console())
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
    from edgenas.hardware.table import LatencyTable, environment_warnings, validate_table
    from edgenas.pipeline.table import with_protocol
    from edgenas.space import space_from_dict

    table = LatencyTable.load(table_path)
    sp = space_from_dict(table.space)
    _warn(environment_warnings(table))
    p = with_protocol(table.profile_object(), warmup, repeats, trials)
    plot_path = Path(plot) if plot else Path(table_path).with_suffix(".png")
    result = validate_table(table, sp, p, n=count, seed=seed, plot_path=plot_path, on_progress=_progress)
    table.save(table_path)
    if as_json:
        click.echo(json.dumps({k: v for k, v in dataclasses.asdict(result).items()
                               if k not in ("archs", "predicted_ms", "raw_ms", "measured_ms")}, indent=2))
        return
    click.echo(f"median relative error {result.median_rel_error:.2%}")
    click.echo(f"max relative error    {result.max_rel_error:.2%}")
    click.echo(f"within ±10%           {result.within_10pct:.0%} of {result.n}")
    click.echo(f"Kendall tau           {result.kendall_tau:.3f}")
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
    from edgenas.hardware.measure import OrtMeasurer
    from edgenas.hardware.profile import load_profile

    p = load_profile(profile_name)
    if p.runtime != "onnxruntime":
        raise ConfigError(f"profile '{p.name}' runs {p.runtime}; measuring an ONNX file needs an onnxruntime profile")
    shape = None
    if input_shape is not None:
        try:
            shape = tuple(int(d) for d in input_shape.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if len(shape) not in (3, 4) or any(d < 1 for d in shape):
            raise ConfigError(f"--input-shape must be positive C,H,W or N,C,H,W, not {input_shape!r}")
    stats = OrtMeasurer(p).measure_onnx(model, shape)
    if as_json:
        data = {k: v for k, v in stats.to_json().items() if k != "samples_ms"}
        click.echo(json.dumps({"model": model, "profile": p.name, **data}, indent=2))
        return
    m = p.measure
    click.echo(f"{model} on {p.name} ({p.runtime}, {p.provider}, {p.threads} thread(s), batch {p.batch_size}, "
               f"{p.precision}): {m.trials} trials x {m.repeats} runs after {m.warmup} warm-up")
    click.echo(f"median {stats.median_ms:.4f} ms  p10 {stats.p10_ms:.4f}  p90 {stats.p90_ms:.4f}  "
               f"IQR {stats.iqr_ms:.4f}  n={stats.n}")


# ----- train ---------------------------------------------------------------------------------------------
def _train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML with 'space', 'data' and 'train' sections; options given here override it."),
        click.option("--space", "space_name", default=None, help="Search space (mbv3, spos). [default: mbv3]"),
        click.option("--preset", default=None,
                     help="Space preset; default by input size (small < 112 px <= imagenet)."),
        click.option("--width-mult", type=float, default=None, help="Scale every width of the space."),
        click.option("--data", "data_name", default=None,
                     help="Dataset name, see `edgenas data list`. [default: fashion-mnist]"),
        click.option("--data-root", default=None, help="Data directory (else $EDGENAS_DATA, then system paths)."),
        click.option("--resize", type=int, default=None, help="Resize inputs to this square side."),
        click.option("--train-limit", type=int, default=None, help="Use only the first N training images."),
        click.option("--epochs", type=int, default=None),
        click.option("--batch-size", type=int, default=None),
        click.option("--lr", type=float, default=None),
        click.option("--momentum", type=float, default=None),
        click.option("--nesterov/--no-nesterov", default=None),
        click.option("--weight-decay", type=float, default=None),
        click.option("--schedule", type=click.Choice(["cosine", "linear"]), default=None),
        click.option("--warmup-steps", type=int, default=None),
        click.option("--label-smoothing", type=float, default=None),
        click.option("--grad-clip", type=float, default=None),
        click.option("--amp/--no-amp", default=None, help="Mixed precision (CUDA only)."),
        click.option("--channels-last/--no-channels-last", default=None),
        click.option("--sampling", type=click.Choice(["uniform", "flops"]), default=None,
                     help="Uniform single-path, or FLOPs-bin-uniform as in SPOS."),
        click.option("--weights", type=click.Choice(["auto", "separate", "shared"]), default=None,
                     help="Supernet weights: one set per choice (SPOS) or one per layer that choices slice "
                          "(OFA/BigNAS). [default: auto = shared where the space supports it]"),
        click.option("--recipe", type=click.Choice(["single", "sandwich"]), default=None,
                     help="One sampled path per step, or largest + smallest + N random paths. [default: single]"),
        click.option("--sandwich-random", type=int, default=None, help="Random paths per sandwich step. [default: 2]"),
        click.option("--distill/--no-distill", default=None,
                     help="Sandwich: the other paths learn from the largest path's predictions. [default: on]"),
        click.option("--kd-temperature", type=float, default=None, help="In-place distillation temperature."),
        click.option("--steps-per-epoch", type=int, default=None, help="Cap on steps per epoch (epoch slices)."),
        click.option("--val-archs", type=int, default=None, help="Sampled subnets validated after each epoch."),
        click.option("--seed", type=int, default=None),
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:N. [default: auto]"),
        click.option("--threads", type=int, default=None,
                     help="CPU threads for torch (1 is fastest on a busy machine). [default: all cores]"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _merge(section: dict[str, Any], **cli_values: Any) -> dict[str, Any]:
    return {**section, **{k: v for k, v in cli_values.items() if v is not None}}


@cli.command()
@_train_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/train", show_default=True,
              help="Run directory: supernet.pt, supernet.json, history.json, config.json.")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print only the final results as JSON.")
def train(config_file: str | None, space_name: str | None, preset: str | None, width_mult: float | None,
          data_name: str | None, data_root: str | None, resize: int | None, train_limit: int | None,
          out_dir: str, resume: bool, as_json: bool, **train_opts: Any) -> None:
    """Train a weight-sharing supernet (shared or separate weights; single-path or sandwich recipe)."""
    from edgenas.config import load_yaml
    from edgenas.pipeline import TrainJob
    from edgenas.pipeline import train as train_stage

    sections = load_yaml(config_file) if config_file else {}
    for key in ("data", "train", "space"):
        if not isinstance(sections.get(key) or {}, dict):
            raise ConfigError(f"{config_file}: '{key}' must be a mapping")
    data = _merge(sections.get("data") or {}, name=data_name, root=data_root, resize=resize, train_limit=train_limit)
    space_section = _merge(sections.get("space") or {}, name=space_name, preset=preset, width_mult=width_mult)
    job = TrainJob.from_sections({**sections, "data": data, "train": _merge(sections.get("train") or {}, **train_opts),
                                  "space": space_section}, where=config_file or "options", out=out_dir, resume=resume)
    result = train_stage(job, _console(quiet=as_json, epochs=job.train.epochs))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    last = result.history[-1] if result.history else None
    if last is not None:
        click.echo(f"done: {result.checkpoint} | epoch {last.epoch + 1}: val accuracy of "
                   f"{len(last.val_accuracy)} sampled subnets {last.val_mean:.2%}")


@cli.command("eval")
@_config_option
@click.option("--supernet", "ckpt", type=click.Path(dir_okay=False), required=True, help="Supernet checkpoint.")
@click.option("--arch", "arch_strs", multiple=True, help="Architecture string(s) to score.")
@click.option("--sample", type=int, default=0, help="Also score N uniformly sampled architectures.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True)
@click.option("--data", "data_name", default=None, help="Dataset (default: the one the supernet was trained on).")
@click.option("--data-root", default=None)
@click.option("--recal", type=int, default=10, show_default=True, help="Training batches for BN recalibration.")
@click.option("--rank-check", type=int, default=0,
              help="Train N architectures spread over the MAC range alone and correlate with the supernet's scores.")
@click.option("--rank-epochs", type=int, default=3, show_default=True, help="Rank check: stand-alone epochs.")
@click.option("--rank-train-limit", type=int, default=None,
              help="Rank check: stand-alone training images [default: the supernet's training slice].")
@click.option("--rank-out", type=click.Path(file_okay=False), default=None,
              help="Rank check: cache of trained architectures (resumable) [default: SUPERNET_DIR/rank_check].")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(ckpt: str, arch_strs: tuple[str, ...], sample: int, seed: int, split: str, data_name: str | None,
             data_root: str | None, recal: int, rank_check: int, rank_epochs: int, rank_train_limit: int | None,
             rank_out: str | None, threads: int | None, device: str, as_json: bool) -> None:
    """Score architectures of a trained supernet (BN recalibrated) on the test or val split.

    With --rank-check N: the one command to know whether to trust a supernet. N architectures
    spread over the space's MAC range are trained alone with a short recipe; Kendall tau and
    Spearman rho between their inherited validation accuracy and stand-alone test accuracy are
    printed with 95% bootstrap intervals.
    """
    import numpy as np

    from edgenas.data import load_dataset
    from edgenas.evaluate import score_archs
    from edgenas.pipeline.search import checkpoint_data_config
    from edgenas.proxy import accuracy_stderr
    from edgenas.supernet import load_checkpoint
    from edgenas.torch_utils import resolve_device

    if rank_check < 0 or rank_check in (1, 2):
        raise EdgenasError(f"--rank-check needs at least 3 architectures, not {rank_check}")
    from edgenas.torch_utils import torch_threads

    click.get_current_context().with_resource(torch_threads(threads))  # restored when the command ends
    supernet, meta, _ = load_checkpoint(ckpt)
    splits = load_dataset(checkpoint_data_config(meta, ckpt, data_name, data_root))
    if rank_check:
        _rank_check(supernet, meta, splits, ckpt, rank_check, rank_epochs, rank_train_limit, rank_out, recal,
                    seed, threads, resolve_device(device), as_json)
        return
    space = supernet.space
    archs = [space.parse(s) for s in arch_strs]
    rng = np.random.default_rng(seed)
    archs += [space.sample(rng) for _ in range(sample)]
    if not archs:
        raise EdgenasError("nothing to score: give --arch STR, --sample N or --rank-check N")
    scores = score_archs(supernet, archs, splits, split=split, recal=recal,  # type: ignore[arg-type]
                         device=resolve_device(device))
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in scores], indent=2))
        return
    for s in scores:
        click.echo(f"{s.arch}  {split} accuracy {s.accuracy:.2%} ±{accuracy_stderr(s.accuracy, s.count):.2%} "
                   f"on {s.count} images  loss {s.loss:.4f}")
    accs = [s.accuracy for s in scores]
    if len(accs) > 1:
        click.echo(f"mean {np.mean(accs):.2%}  min {min(accs):.2%}  max {max(accs):.2%}  "
                   f"(chance {1 / splits.num_classes:.0%})")


def _rank_check(supernet: Any, meta: dict[str, Any], splits: Any, ckpt: str, count: int, epochs: int,
                train_limit: int | None, out: str | None, recal: int, seed: int, threads: int | None,
                device: Any, as_json: bool) -> None:
    from edgenas.config import to_mapping
    from edgenas.finetune import FinetuneConfig, finetune
    from edgenas.proxy import rank_check, spread_archs

    limit = train_limit if train_limit is not None else (meta.get("data") or {}).get("train_limit")
    config = FinetuneConfig(epochs=epochs, from_scratch=True, patience=epochs, lr=0.1, train_limit=limit,
                            seed=seed, threads=threads)
    recipe = {**{k: v for k, v in to_mapping(config).items() if k != "threads"}, "data": splits.name}
    archs = spread_archs(supernet.space, count, tuple(splits.input_size), seed)

    def train_alone(arch: Any, where: Path) -> float:
        subnet = supernet.space.build_subnet(arch, splits.num_classes, splits.in_channels)
        return finetune(subnet, splits, config, where, device=device, resume=(where / "last.pt").exists()).test_accuracy

    def progress(i: int, n: int, entry: Any) -> None:
        if not as_json:
            click.echo(f"[{i}/{n}] {entry.arch}  {entry.macs / 1e6:.2f} M MACs  inherited (val) "
                       f"{entry.inherited:.2%}  alone (test) {entry.standalone:.2%}", err=True)

    where = Path(out) if out else Path(ckpt).resolve().parent / "rank_check"
    if not as_json:
        click.echo(f"rank check: {len(archs)} architectures trained alone ({epochs} epochs, "
                   f"{limit or 'all'} training images), cached in {where}", err=True)
    check = rank_check(supernet, splits, archs, where, train=train_alone, recipe=recipe, recal=recal, device=device,
                       on_arch=progress)
    if as_json:
        click.echo(json.dumps(check.to_json(), indent=2))
        return
    k, r = check.kendall, check.spearman
    click.echo(f"Kendall tau {k[0]:.3f} (95% CI {k[1]:.3f} .. {k[2]:.3f})  Spearman rho {r[0]:.3f} "
               f"(95% CI {r[1]:.3f} .. {r[2]:.3f})  over {len(check.entries)} architectures")
    for note in check.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(check.verdict())


# ----- search ---------------------------------------------------------------------------------------------
@cli.command()
@_config_option
@click.option("--profile", "profile_name", required=True, help="Hardware profile (edgenas profile list).")
@click.option("--supernet", "ckpt", type=click.Path(dir_okay=False), default=None, help="Supernet checkpoint.")
@click.option("--transfer-from", type=click.Path(dir_okay=False), default=None,
              help="Supernet trained on another dataset: its classifier is replaced for --data.")
@click.option("--freeze-backbone", is_flag=True, help="With --transfer-from: shift only the classifier.")
@click.option("--table", "table_path", type=click.Path(dir_okay=False), default=None,
              help="Latency table [default: the one in --tables-dir matching the space and profile].")
@click.option("--tables-dir", default="latency_tables", show_default=True)
@click.option("--latency-ms", type=float, default=None, help="Latency budget (overrides the profile's).")
@click.option("--latency-quantile", type=float, default=None,
              help="Latency budget as a quantile of the space's predicted latency on this target (e.g. 0.25: "
                   "the fastest quarter), the same on every machine; instead of --latency-ms.")
@click.option("--mflops", type=float, default=None, help="FLOPs budget, 1 multiply-add = 1 FLOP.")
@click.option("--params-m", type=float, default=None, help="Parameter budget in millions.")
@click.option("--data", "data_name", default=None, help="Dataset [default: the supernet's].")
@click.option("--data-root", default=None)
@click.option("--resize", type=int, default=None,
              help="Resize --data's images to this square side (the size the supernet and table were made for).")
@click.option("--val-limit", type=int, default=None, help="Score candidates on the first N validation images.")
@click.option("--population", type=int, default=None)
@click.option("--generations", type=int, default=None)
@click.option("--topk", type=int, default=None)
@click.option("--mutations", type=int, default=None)
@click.option("--mutation-prob", type=float, default=None)
@click.option("--crossovers", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--strategy", default="evolution", show_default=True,
              help="Search strategy: evolution, random (random search, same evaluations) or a registered one.")
@click.option("--scorer", default="supernet", show_default=True,
              help="Candidate score: supernet (validation accuracy), params (parameter count) or a registered one.")
@click.option("--shift/--no-shift", default=True, show_default=True,
              help="Supernet Shifting (default) or plain SPOS evolution.")
@click.option("--shift-update", type=click.Choice(["generation", "candidate"]), default="generation",
              show_default=True, help="One optimiser step per generation (paper) or per candidate (released code).")
@click.option("--shift-batches", type=int, default=None, help="Training batches per candidate.")
@click.option("--shift-lr", type=float, default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/search", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the interrupted search in --out.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Time the final top-k end to end on the profile and recommend the best that fits the budget.")
@click.option("--json", "as_json", is_flag=True, help="Print only the results as JSON.")
def search(profile_name: str, ckpt: str | None, transfer_from: str | None, freeze_backbone: bool,
           table_path: str | None, tables_dir: str, latency_ms: float | None, latency_quantile: float | None,
           mflops: float | None, params_m: float | None, data_name: str | None, data_root: str | None,
           resize: int | None, val_limit: int | None, population: int | None, generations: int | None, topk: int | None,
           mutations: int | None, mutation_prob: float | None, crossovers: int | None, seed: int | None,
           strategy: str, scorer: str, shift: bool, shift_update: str, shift_batches: int | None,
           shift_lr: float | None, device: str, out_dir: str, resume: bool, measure: bool, as_json: bool) -> None:
    """Evolutionary search under the profile's budgets, with Supernet Shifting by default."""
    from edgenas.pipeline import SearchJob
    from edgenas.pipeline import search as search_stage
    from edgenas.search import EvolutionConfig
    from edgenas.search.results import result_to_json

    job = SearchJob(profile=profile_name, supernet=ckpt, transfer_from=transfer_from, freeze_backbone=freeze_backbone,
                    table=table_path, tables_dir=tables_dir, latency_ms=latency_ms, latency_quantile=latency_quantile,
                    mflops=mflops, params_m=params_m, data=data_name, data_root=data_root, resize=resize,
                    val_limit=val_limit, population=population, generations=generations, topk=topk,
                    mutations=mutations, mutation_prob=mutation_prob, crossovers=crossovers, seed=seed,
                    strategy=strategy, scorer=scorer, shift=shift, shift_update=shift_update,  # type: ignore[arg-type]
                    shift_batches=shift_batches, shift_lr=shift_lr,
                    device=device, out=out_dir, resume=resume, measure=measure)
    planned = generations if generations is not None else EvolutionConfig().generations
    outcome = search_stage(job, _console(quiet=as_json, generations=planned))
    result, measured, table = outcome.result, outcome.measured, outcome.table
    if as_json:
        click.echo(json.dumps(result_to_json(result), indent=2))
        return
    best = result.best
    m = best.metrics
    score = f"val accuracy {best.score:.2%}" if "accuracy" in best.metrics else f"{scorer} score {best.score:.6g}"
    click.echo(f"best: {best.arch}  {score}  predicted latency "
               f"{m.get('latency_ms', float('nan')):.3f} ms  {m.get('mflops', float('nan')):.2f} MFLOPs"
               f"  {m.get('params_m', float('nan')):.3f} M params")
    if table.validation is not None:
        click.echo(f"latency table trust: {table.validation.summary()}")
    if result.info.get("proxy_health"):
        from edgenas.proxy import ProxyHealth

        health = ProxyHealth.from_json(result.info["proxy_health"])
        prefix = "proxy health" if health.separable else "warning: proxy health"
        click.echo(f"{prefix}: {health.summary()}", err=not health.separable)
    if measured is not None:
        top = measured.finalists[0]
        budget_text = "" if measured.budget_ms is None else f" (budget {measured.budget_ms:g} ms)"
        click.echo(f"measured {measured.statistic} latency of the best: {top.measured_ms:.3f} ms{budget_text}")
        rec = measured.recommended
        if rec is None:
            click.echo("warning: no top-k architecture is within the budget when measured; loosen the budget or "
                       "rebuild the latency table on a quiet machine", err=True)
        elif rec.arch != top.arch:
            click.echo(f"warning: the best is over budget when measured; recommended instead: {rec.arch} "
                       f"(val accuracy {rec.score:.2%}, measured {rec.measured_ms:.3f} ms)", err=True)
    click.echo(f"results: {out_dir}/search.json, candidates.csv, candidates.png")


# ----- extract ----------------------------------------------------------------------------------------------
@cli.command()
@_config_option
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--arch", "arch_str", default=None, help="Architecture string to extract [default: the search's best].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Subnet checkpoint to write [default: RUN_DIR/subnet.pt].")
@click.option("--recal", type=int, default=None, help="Training batches for BN recalibration [default: the search's].")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print only the subnet's metadata as JSON.")
def extract(run_dir: str, arch_str: str | None, out_path: str | None, recal: int | None, device: str,
            as_json: bool) -> None:
    """The search's winner (or --arch) as a standalone network with the supernet's weights."""
    from edgenas.pipeline import ExtractJob
    from edgenas.pipeline import extract as extract_stage

    result = extract_stage(ExtractJob(run_dir=run_dir, arch=arch_str, out=out_path, recal=recal, device=device))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"extracted {result.arch} ({result.params / 1e6:.3f} M params) from {result.supernet_path}")
    click.echo(f"inherited weights, BN recalibrated: test accuracy {result.test_accuracy:.2%} "
               f"on {result.test_count} {result.data} test images")
    click.echo(f"wrote {result.path}")


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
@click.option("--family", required=True,
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
    from edgenas.baselines import get_family, profile_measure, train_baseline
    from edgenas.data import DataConfig, load_dataset
    from edgenas.extract import data_facts
    from edgenas.finetune import FinetuneConfig
    from edgenas.hardware.profile import load_profile
    from edgenas.train import resolve_device

    get_family(family)  # an unknown name fails before the data is loaded
    config = FinetuneConfig(**{k: v for k, v in options.items() if v is not None})
    data_cfg = DataConfig(name=data_name, val_limit=val_limit,
                          **({"root": data_root} if data_root is not None else {}))
    data = load_dataset(data_cfg)
    budget = None
    measure = None
    if width is None and not resume:
        prof = load_profile(profile_name, input_shape=(data.in_channels, *data.input_size))
        budget = latency_ms if latency_ms is not None else prof.budgets.latency_ms
        if budget is None:
            raise ConfigError(f"profile {prof.name} has no latency budget: give --latency-ms or --width")
        timed = profile_measure(prof)

        def measure(models: list[Any]) -> list[float]:
            _progress(f"measuring {len(models)} widths of {family} on {prof.name} ...")
            return timed(models)

    run = train_baseline(family, data, config, out_dir, width=width, budget_ms=budget, measure=measure,
                         resume=resume, device=resolve_device(device),
                         on_epoch=_console(quiet=as_json, epochs=config.epochs).finetune_epoch,
                         meta={"data": data_facts(data, data_cfg)})
    result, choice = run.result, run.choice
    if as_json:
        click.echo(json.dumps({**result.report, "baseline": choice}, indent=2))
        return
    if choice["latency_ms"] is not None:
        click.echo(f"{choice['label']}: measured {choice['latency_ms']:.3f} ms on {profile_name}, the widest of "
                   f"{len(choice['tried'])} widths within {choice['budget_ms']:g} ms")
    stop = " (stopped early)" if result.stopped_early else ""
    click.echo(f"trained {choice['label']} ({choice['description']}): {result.epochs_run} epoch(s){stop}, best "
               f"epoch {result.best_epoch + 1}, val accuracy {result.val_accuracy:.2%}")
    click.echo(f"test accuracy {result.test_accuracy:.2%} on {result.test_count} {data.name} test images")
    click.echo(f"wrote {result.checkpoint} (also baseline.json, finetune.json in {out_dir}) in {result.seconds:.1f} s")


# ----- export -----------------------------------------------------------------------------------------------
@cli.command("export")
@_config_option
@click.argument("subnet_ckpt", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Bundle name: the folder written under --out-dir.")
@click.option("--out-dir", type=click.Path(file_okay=False), default="export", show_default=True)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-20).")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="Also write model.int8.onnx (static QDQ, calibrated on training images).")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxsim (pip install onnxsim).")
@click.option("--calib-images", type=int, default=512, show_default=True, help="Training images for int8 calibration.")
@click.option("--parity-images", type=int, default=None, help="Test images for parity/accuracy [default: all].")
@click.option("--profile", "profile_name", default="cpu-ort", show_default=True,
              help="fp32 onnxruntime profile (name or YAML path) the latency is measured on.")
@click.option("--no-measure", is_flag=True, help="Skip the latency measurement.")
@click.option("--force", is_flag=True, help="Replace an existing bundle of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(subnet_ckpt: str, name: str, out_dir: str, opset: int, int8: bool, simplify: bool, calib_images: int,
               parity_images: int | None, profile_name: str, no_measure: bool, force: bool, as_json: bool) -> None:
    """A subnet checkpoint as a checked ONNX bundle: model.onnx, model.int8.onnx, manifest.json."""
    from edgenas.export import ExportConfig
    from edgenas.pipeline import ExportJob
    from edgenas.pipeline import export as export_stage

    config = ExportConfig(name=name, out_dir=out_dir, opset=opset, int8=int8, simplify=simplify,
                          calib_images=calib_images, parity_images=parity_images, profile=profile_name,
                          measure=not no_measure)
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
    if m["latency"] is not None:
        lat = m["latency"]
        parts = [f"{f} median {s['median_ms']:.4f} ms (p10 {s['p10_ms']:.4f}, p90 {s['p90_ms']:.4f})"
                 for f, s in lat.items() if f != "int8_speedup"]
        speedup = f"; int8 speed-up {lat['int8_speedup']:.2f}x" if lat.get("int8_speedup") else ""
        click.echo(f"latency on {m['profile']['name']}: {'; '.join(parts)}{speedup}")


# ----- check ------------------------------------------------------------------------------------------------
@cli.command("check")
@_config_option
@click.argument("bundle")
@click.option("--profile", "profile_name", required=True, help="An onnxruntime profile name or YAML path.")
@click.option("--tolerance", default="10%", show_default=True,
              help="Relative latency change to tolerate: 10% or 0.1 (between 0 and 1).")
@click.option("--trials", type=int, default=None,
              help="Interleaved trials of 10 runs per model [default: the profile's trials x repeats / 10]; "
                   "more trials narrow the CI.")
@click.option("--update", is_flag=True, help="(Re)write the baseline into the bundle's manifest instead of checking.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (with --update: the baseline) as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the result as JUnit XML (testcases latency, flops, params) to this file.")
@click.pass_context
def check(ctx: click.Context, bundle: str, profile_name: str, tolerance: str, trials: int | None, update: bool,
          as_json: bool, junit_path: str | None) -> None:
    """Fail CI when an exported bundle got slower, or its FLOPs or params changed.

    Times BUNDLE's model and a fixed reference workload interleaved in the same run, so a runner's
    drift hits both and cancels, and compares their latency ratio with the baseline stored in the
    bundle's manifest (record it once with --update, on a quiet machine).

    \b
    Rule: T interleaved trials of 10 runs each (default T: the profile's
    trials x repeats / 10), per-trial ratio r_t = bundle median / reference median;
    d = median(r) / baseline ratio; 95% bootstrap CI of d (2000 seeded resamples
    of both these trials and the baseline's stored ones);
    REGRESSION iff CI low > 1 + tolerance (confidently slower than the tolerance),
    IMPROVED iff CI high < 1 - tolerance (passes), else PASS.
    FLOPs (MACs) and params must equal the baseline exactly; changed file
    checksums are only reported.

    Exit codes: 0 pass, 1 regression, 2 usage or input error.
    """
    from edgenas.check import CheckConfig, format_baseline, parse_tolerance
    from edgenas.pipeline import CheckJob
    from edgenas.pipeline import check as check_stage

    job = CheckJob(bundle=bundle, profile=profile_name, update=update, junit=junit_path,
                   config=CheckConfig(tolerance=parse_tolerance(tolerance), trials=trials))
    outcome = check_stage(job, _console())
    if outcome.baseline is not None:
        click.echo(json.dumps(outcome.baseline.to_json(), indent=2) if as_json
                   else format_baseline(outcome.baseline, Path(bundle) / "manifest.json"))
        return
    report = outcome.report
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.render(use_rich=sys.stdout.isatty()))
    ctx.exit(report.exit_code)


# ----- run --------------------------------------------------------------------------------------------------
@cli.command("run")
@_config_option
@click.option("--profile", "profile_name", required=True, help="Hardware profile (edgenas profile list).")
@click.option("--data", "data_name", default="fashion-mnist", show_default=True)
@click.option("--data-root", default=None)
@click.option("--latency-ms", type=float, default=None, help="Latency budget [default: the profile's].")
@click.option("--latency-quantile", type=float, default=None,
              help="Latency budget as a quantile of the space's predicted latency on this target (see search).")
@click.option("--mflops", type=float, default=None, help="FLOPs budget, 1 multiply-add = 1 FLOP.")
@click.option("--params-m", type=float, default=None, help="Parameter budget in millions.")
@click.option("--space", "space_name", default="mbv3", show_default=True)
@click.option("--width-mult", type=float, default=0.5, show_default=True)
@click.option("--epochs", type=int, default=3, show_default=True, help="Supernet training epochs.")
@click.option("--weights", type=click.Choice(["auto", "separate", "shared"]), default="auto", show_default=True,
              help="Supernet weights (auto = shared where the space supports it).")
@click.option("--recipe", type=click.Choice(["single", "sandwich"]), default="single", show_default=True,
              help="Supernet training recipe.")
@click.option("--train-limit", type=int, default=None, help="Train the supernet and fine-tune on N images.")
@click.option("--population", type=int, default=16, show_default=True)
@click.option("--generations", type=int, default=4, show_default=True)
@click.option("--topk", type=int, default=5, show_default=True)
@click.option("--mutations", type=int, default=6, show_default=True)
@click.option("--crossovers", type=int, default=6, show_default=True)
@click.option("--val-limit", type=int, default=1000, show_default=True,
              help="Score search candidates on the first N validation images.")
@click.option("--shift/--no-shift", default=True, show_default=True)
@click.option("--finetune-epochs", type=int, default=2, show_default=True)
@click.option("--int8/--no-int8", default=True, show_default=True)
@click.option("--name", default=None, help="Bundle name [default: the run directory's name].")
@click.option("--export-dir", type=click.Path(file_okay=False), default=None,
              help="Where the bundle folder goes [default: OUT/export].")
@click.option("--tables-dir", default="latency_tables", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for training.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/run", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run at its first unfinished stage.")
def run_cmd(profile_name: str, data_name: str, data_root: str | None, latency_ms: float | None,
            latency_quantile: float | None, mflops: float | None, params_m: float | None, space_name: str,
            width_mult: float, epochs: int, weights: str, recipe: str, train_limit: int | None, population: int,
            generations: int, topk: int, mutations: int, crossovers: int, val_limit: int, shift: bool,
            finetune_epochs: int, int8: bool,
            name: str | None, export_dir: str | None, tables_dir: str, seed: int, threads: int, device: str,
            out_dir: str, resume: bool) -> None:
    """The whole pipeline in one run directory: train, latency table, search, extract, fine-tune, export, check.

    Each stage is the command of the same name with its files under --out; `stages.json` records
    what is done, so --resume continues at the first unfinished stage (training, search and
    fine-tuning also resume inside the stage). Ends with a summary table and report.md.
    """
    from edgenas.pipeline import RunJob
    from edgenas.pipeline import run as run_pipeline

    job = RunJob(profile=profile_name, data=data_name, data_root=data_root, latency_ms=latency_ms,
                 latency_quantile=latency_quantile, mflops=mflops, params_m=params_m, space=space_name,
                 width_mult=width_mult, epochs=epochs, weights=weights, recipe=recipe,  # type: ignore[arg-type]
                 train_limit=train_limit, population=population, generations=generations, topk=topk,
                 mutations=mutations, crossovers=crossovers, val_limit=val_limit, shift=shift,
                 finetune_epochs=finetune_epochs, int8=int8, name=name, export_dir=export_dir, tables_dir=tables_dir,
                 seed=seed, threads=threads, device=device, out=out_dir, resume=resume)
    outcome = run_pipeline(job, _console(epochs=epochs, generations=generations))
    click.echo("")
    width = max((len(k) for k, _ in outcome.summary), default=10)
    for key, value in outcome.summary:
        click.echo(f"{key:<{width}}  {value.replace('`', '')}")
    click.echo(f"\nbundle {outcome.bundle}; report {outcome.report}; {outcome.seconds:.0f} s in all")


def main() -> None:
    cli(prog_name="edgenas")


if __name__ == "__main__":
    main()
