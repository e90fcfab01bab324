"""`edgenas data` and `edgenas space`: what datasets and search spaces there are."""

from __future__ import annotations

import click

from edgenas.cli._app import (
    SPACE_NAME,
    _config_option,
    cli,
)


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
@click.argument("name", type=SPACE_NAME)
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
@click.argument("name", type=SPACE_NAME)
@click.option("-n", "count", type=click.IntRange(min=1), default=5, show_default=True)
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
