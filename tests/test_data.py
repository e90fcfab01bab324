"""Behaviour of edgenas.data: splits, preprocessing, batching, file formats and the errors users see."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.data import (
    ArrayDataset,
    DataConfig,
    DatasetSplits,
    iterate_batches,
    list_datasets,
    load_dataset,
)
from edgenas.errors import DataError, EdgenasError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def id_images(n: int, c: int = 1, h: int = 4, w: int = 4) -> np.ndarray:
    """NCHW uint8 images whose first two pixels encode their own index, so splits can be traced."""
    x = np.random.default_rng(1).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) // 256
    x[:, 0, 0, 1] = np.arange(n) % 256
    return x


def ids_of(ds: ArrayDataset) -> list[int]:
    first = ds.images[:, 0, 0, :2].to(torch.int64)
    return (first[:, 0] * 256 + first[:, 1]).tolist()


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> None:
    """Write a gzip IDX file (unsigned bytes); ``magic`` overrides the header to simulate corruption."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion(directory: Path, n_train: int = 50, n_test: int = 20) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(directory / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(directory / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    write_idx(directory / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))


def array_ds(n: int) -> ArrayDataset:
    """Labels equal indices, so batching coverage can be read off the labels."""
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(n), (0.0,), (1.0,))


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset(DataConfig(name="digits"))


@pytest.fixture(scope="module")
def traced_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 id-encoded images without a test split, so loading exercises the fixed holdout too."""
    path = tmp_path_factory.mktemp("npz") / "traced.npz"
    x = id_images(300)
    np.savez(path, x=x[:, 0], y=np.arange(300) % 3)
    return path


# ------------------------------------------------------------------------------------------------
# registry and config
# ------------------------------------------------------------------------------------------------


def test_list_datasets_names_every_loader() -> None:
    assert list_datasets() == ["fashion-mnist", "digits", "mnist", "cifar10", "imagefolder:PATH", "npz:PATH"]


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet'.*known: .*fashion-mnist.*digits.*npz:PATH"):
        load_dataset(DataConfig(name="imagenet"))


def test_prefixed_name_without_path_is_explained() -> None:
    with pytest.raises(DataError, match="needs a path"):
        load_dataset(DataConfig(name="npz:"))
    with pytest.raises(DataError, match="did you mean npz:PATH"):
        load_dataset(DataConfig(name="npz"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("val_fraction", 0.0, "val_fraction"),
        ("val_fraction", 1.0, "val_fraction"),
        ("train_limit", 0, "train_limit"),
        ("test_limit", -3, "test_limit"),
        ("val_limit", True, "val_limit"),
        ("resize", 4, "resize must be an integer >= 8"),
        ("name", "", "non-empty"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        DataConfig(**{field: value})


def test_data_error_is_an_edgenas_error_with_one_line() -> None:
    with pytest.raises(EdgenasError) as info:
        load_dataset(DataConfig(name="nope"))
    assert "\n" not in str(info.value)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DataConfig().seed = 3  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# digits: shapes, splits, determinism, normalisation, resize
# ------------------------------------------------------------------------------------------------


def test_digits_shapes_and_dtypes(digits: DatasetSplits) -> None:
    assert (digits.num_classes, digits.in_channels, digits.input_size) == (10, 1, (8, 8))
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert isinstance(digits.train, ArrayDataset)
    assert digits.train.images.dtype == torch.uint8
    x, y = digits.train.batch(torch.arange(5))
    assert x.dtype == torch.float32 and x.shape == (5, 1, 8, 8)
    assert y.dtype == torch.int64 and y.shape == (5,)
    item, label = digits.val[0]
    assert item.shape == (1, 8, 8) and isinstance(label, int)


def test_digits_split_sizes_add_up(digits: DatasetSplits) -> None:
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.test) == round(0.2 * 1797)
    assert len(digits.val) == round(0.1 * (1797 - len(digits.test)))


def test_splits_are_disjoint_and_cover_the_data(traced_npz: Path) -> None:
    splits = load_dataset(DataConfig(name=f"npz:{traced_npz}", val_fraction=0.25))
    train, val, test = (set(ids_of(ds)) for ds in (splits.train, splits.val, splits.test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(300))
    assert (len(test), len(val)) == (60, 60)


def test_val_split_depends_only_on_seed(traced_npz: Path) -> None:
    name = f"npz:{traced_npz}"
    a, b = load_dataset(DataConfig(name=name, seed=7)), load_dataset(DataConfig(name=name, seed=7))
    other = load_dataset(DataConfig(name=name, seed=8))
    assert ids_of(a.val) == ids_of(b.val) and ids_of(a.train) == ids_of(b.train)
    assert set(ids_of(a.val)) != set(ids_of(other.val))
    assert ids_of(a.test) == ids_of(other.test)  # the test holdout never moves with the seed


def test_limits_take_the_first_samples_of_each_split(traced_npz: Path) -> None:
    name = f"npz:{traced_npz}"
    full = load_dataset(DataConfig(name=name))
    cut = load_dataset(DataConfig(name=name, train_limit=10, val_limit=5, test_limit=3))
    assert ids_of(cut.train) == ids_of(full.train)[:10]
    assert ids_of(cut.val) == ids_of(full.val)[:5]
    assert ids_of(cut.test) == ids_of(full.test)[:3]
    assert cut.mean == full.mean  # stats come from the whole train split, not the limited one


def test_normalisation_standardises_the_train_split(digits: DatasetSplits) -> None:
    x, _ = digits.train.batch(torch.arange(len(digits.train)))
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std(unbiased=False)) - 1.0) < 1e-4
    raw = load_dataset(DataConfig(name="digits", normalize=False))
    xr, _ = raw.train.batch(torch.arange(len(raw.train)))
    assert float(xr.min()) == 0.0 and float(xr.max()) == 1.0
    assert (raw.mean, raw.std) == ((0.0,), (1.0,))
    assert abs(float(xr.mean()) - digits.mean[0]) < 1e-5 and abs(float(xr.std()) - digits.std[0]) < 1e-3


def test_resize_changes_batch_spatial_size() -> None:
    splits = load_dataset(DataConfig(name="digits", resize=16, train_limit=8))
    assert splits.input_size == (16, 16)
    x, _ = splits.train.batch(torch.arange(4))
    assert x.shape == (4, 1, 16, 16)
    assert splits.test[0][0].shape == (1, 16, 16)
    assert splits.train.images.shape[2:] == (8, 8)  # stored at native size


def test_subset_keeps_preprocessing(digits: DatasetSplits) -> None:
    sub = digits.train.subset(torch.tensor([3, 1]))
    assert isinstance(sub, ArrayDataset) and len(sub) == 2
    assert torch.equal(sub.batch(torch.arange(2))[0], digits.train.batch(torch.tensor([3, 1]))[0])


# ------------------------------------------------------------------------------------------------
# iterate_batches
# ------------------------------------------------------------------------------------------------


def test_shuffled_epoch_covers_every_index_once() -> None:
    ds = array_ds(23)
    batches = list(iterate_batches(ds, 5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert seen.tolist() != list(range(23))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)


def test_same_generator_seed_gives_same_order() -> None:
    ds = array_ds(17)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(ds, 4, shuffle=True, generator=gen)]).tolist()

    assert order(3) == order(3) and order(3) != order(4)


def test_drop_last_drops_only_the_partial_batch() -> None:
    ds = array_ds(10)
    assert [len(y) for _, y in iterate_batches(ds, 3, shuffle=False, drop_last=True)] == [3, 3, 3]
    assert [len(y) for _, y in iterate_batches(ds, 3, shuffle=False)] == [3, 3, 3, 1]
    assert torch.cat([y for _, y in iterate_batches(ds, 3, shuffle=False)]).tolist() == list(range(10))


def test_distributed_shards_are_disjoint_and_equal() -> None:
    ds, world = array_ds(11), 3
    shards = [
        torch.cat(
            [
                y
                for _, y in iterate_batches(
                    ds, 2, shuffle=True, generator=torch.Generator().manual_seed(5), rank=r, world_size=world
                )
            ]
        ).tolist()
        for r in range(world)
    ]
    assert [len(s) for s in shards] == [3, 3, 3]
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(5))
    assert shards[1] == perm[1::3][:3].tolist()


def test_generic_dataset_uses_the_same_order_as_the_fast_path() -> None:
    fast = array_ds(9)
    slow = torch.utils.data.TensorDataset(torch.zeros(9, 1, 2, 2), torch.arange(9))
    kw = {"shuffle": True, "rank": 0, "world_size": 2}
    a = [y for _, y in iterate_batches(fast, 2, generator=torch.Generator().manual_seed(1), **kw)]
    b = [y for _, y in iterate_batches(slow, 2, generator=torch.Generator().manual_seed(1), **kw)]
    assert torch.cat(a).tolist() == torch.cat(b).tolist()
    assert all(y.dtype == torch.int64 for y in b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_size": 0}, "batch_size"), ({"rank": 2, "world_size": 2}, "rank"), ({"num_workers": -1}, "num_workers")],
)
def test_iterate_batches_rejects_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    args = {"batch_size": 2, **kwargs}
    with pytest.raises(DataError, match=message):
        iterate_batches(array_ds(4), args.pop("batch_size"), shuffle=False, **args)


# ------------------------------------------------------------------------------------------------
# npz
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "layout"),
    [(1, "NHW"), (3, "NHWC"), (1, "NHWC"), (3, "NCHW"), (4, "NCHW")],
)
def test_npz_round_trip_layouts(tmp_path: Path, channels: int, layout: str) -> None:
    canonical = id_images(30, c=channels, h=6, w=5)
    test_canonical = id_images(7, c=channels, h=6, w=5)
    convert = {
        "NHW": lambda a: a[:, 0],
        "NHWC": lambda a: a.transpose(0, 2, 3, 1),
        "NCHW": lambda a: a,
    }[layout]
    path = tmp_path / "set.npz"
    np.savez(
        path,
        x=convert(canonical),
        y=np.arange(30) % 4,
        x_test=convert(test_canonical),
        y_test=np.arange(7) % 4,
        class_names=np.array(["a", "b", "c", "d"]),
    )
    splits = load_dataset(DataConfig(name=f"npz:{path}", normalize=False))
    assert (splits.in_channels, splits.input_size, splits.num_classes) == (channels, (6, 5), 4)
    assert splits.class_names == ("a", "b", "c", "d")
    assert torch.equal(splits.test.images, torch.from_numpy(test_canonical))
    assert sorted(ids_of(splits.train) + ids_of(splits.val)) == list(range(30))
    assert splits.train.batch(torch.arange(2))[0].shape == (2, channels, 6, 5)


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; save one with np\.savez"):
        load_dataset(DataConfig(name=f"npz:{tmp_path / 'absent.npz'}"))


def test_npz_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "nolabels.npz"
    np.savez(path, x=np.zeros((5, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"has no array 'y' \(found \['x'\]\)"):
        load_dataset(DataConfig(name=f"npz:{path}"))


def test_npz_wrong_image_dtype(tmp_path: Path) -> None:
    path = tmp_path / "float.npz"
    np.savez(path, x=np.zeros((5, 4, 4), np.float32), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"'x' has dtype float32, expected uint8"):
        load_dataset(DataConfig(name=f"npz:{path}"))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((5, 4, 4), np.uint8), "y": np.zeros(4, np.int64)}, "one label per image"),
        ({"x": np.zeros((5, 4, 4), np.uint8), "y": np.zeros(5, np.float32)}, "'y' has dtype float32"),
        ({"x": np.zeros((5, 4), np.uint8), "y": np.zeros(5, np.int64)}, "'x' has shape"),
        ({"x": np.zeros((5, 4, 4), np.uint8), "y": np.full(5, -1)}, "labels must be integers"),
        (
            {"x": np.zeros((5, 4, 4), np.uint8), "y": np.arange(5), "class_names": np.array(["a", "b"])},
            "2 classes",
        ),
        (
            {"x": np.zeros((5, 4, 4), np.uint8), "y": np.arange(5), "x_test": np.zeros((2, 4, 4), np.uint8)},
            "only one of 'x_test'/'y_test'",
        ),
        (
            {
                "x": np.zeros((5, 4, 4), np.uint8),
                "y": np.zeros(5, np.int64),
                "x_test": np.zeros((2, 3, 3), np.uint8),
                "y_test": np.zeros(2, np.int64),
            },
            "same layout and size",
        ),
    ],
)
def test_npz_bad_contents(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(name=f"npz:{path}"))


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"cannot read .* as \.npz"):
        load_dataset(DataConfig(name=f"npz:{path}"))


# ------------------------------------------------------------------------------------------------
# IDX / Fashion-MNIST
# ------------------------------------------------------------------------------------------------


def test_fashion_mnist_from_explicit_root_with_synthetic_idx(tmp_path: Path) -> None:
    write_fake_fashion(tmp_path)
    splits = load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path), download=False))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45, 5, 20)
    assert (splits.in_channels, splits.input_size, splits.num_classes) == (1, (28, 28), 10)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[-1] == "Ankle boot"


def test_fashion_mnist_found_in_env_dir_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_fashion(tmp_path / "fashion-mnist", n_train=30, n_test=10)
    monkeypatch.setenv("EDGENAS_DATA", str(tmp_path))
    splits = load_dataset(DataConfig(name="fashion-mnist", download=False))
    assert len(splits.train) + len(splits.val) == 30 and len(splits.test) == 10


def test_fashion_mnist_missing_under_explicit_root_does_not_fall_back(tmp_path: Path) -> None:
    # An explicit root is the only place searched, so this fails even where the Debian package is installed.
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path), download=False))
    message = str(info.value)
    assert message.startswith(f"Fashion-MNIST not found in {tmp_path}")
    assert "apt-get install dataset-fashion-mnist" in message and "EDGENAS_DATA" in message
    assert "/usr/share" not in message and "\n" not in message


def test_mnist_missing_offline_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"MNIST not found in .*go online and allow download=True"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ("magic", "magic number 0x00000802, expected 0x00000803"),
        ("truncated", "data bytes but its header"),
        ("not-gzip", "cannot read"),
        ("count", "1 labels"),
        ("partial", "incomplete"),
    ],
)
def test_corrupt_idx_files_are_reported(tmp_path: Path, corrupt: str, message: str) -> None:
    write_fake_fashion(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    if corrupt == "magic":
        write_idx(images, np.zeros((50, 28, 28)), magic=0x00000802)
    elif corrupt == "truncated":
        with gzip.open(images, "rb") as f:
            data = f.read()
        with gzip.open(images, "wb") as f:
            f.write(data[:-100])
    elif corrupt == "not-gzip":
        images.write_bytes(b"\x00\x00\x08\x03garbage")
    elif corrupt == "count":
        write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(1))
    else:
        (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path), download=False))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGENAS_DATA", raising=False)
    splits = load_dataset(DataConfig(name="fashion-mnist", download=False, train_limit=256, test_limit=128))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (256, 6000, 128)
    assert splits.input_size == (28, 28) and splits.num_classes == 10
    # Published Fashion-MNIST statistics (~0.286 / ~0.353), here from the 54k-image train split.
    assert abs(splits.mean[0] - 0.286) < 0.005 and abs(splits.std[0] - 0.353) < 0.005
    _, y = splits.test.batch(torch.arange(128))
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) > 5


# ------------------------------------------------------------------------------------------------
# imagefolder
# ------------------------------------------------------------------------------------------------


def write_png_folder(root: Path, classes: tuple[str, ...], per_class: int, *, gray: bool = False) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = 10 + i, 12  # varying sizes must still batch
            pixels = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_imagefolder_single_folder_split(tmp_path: Path) -> None:
    write_png_folder(tmp_path, ("cat", "dog"), per_class=10, gray=True)
    splits = load_dataset(DataConfig(name=f"imagefolder:{tmp_path}", resize=16, val_fraction=0.25))
    assert splits.class_names == ("cat", "dog") and splits.num_classes == 2
    assert (splits.in_channels, splits.input_size) == (3, (16, 16))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    assert not isinstance(splits.train, ArrayDataset)
    train_x = torch.cat([x for x, _ in iterate_batches(splits.train, 5, shuffle=False)])
    assert train_x.shape == (12, 3, 16, 16) and train_x.dtype == torch.float32
    # Stats come from (all of, here) the train images, so the train split is standardised.
    assert torch.allclose(train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(train_x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    batches = list(iterate_batches(splits.val, 3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [3, 1] and batches[0][1].dtype == torch.int64


def test_imagefolder_train_test_layout_native_size(tmp_path: Path) -> None:
    write_png_folder(tmp_path / "train", ("a", "b", "c"), per_class=4)
    write_png_folder(tmp_path / "val", ("a", "b", "c"), per_class=2)
    splits = load_dataset(DataConfig(name=f"imagefolder:{tmp_path}", test_limit=5))
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (12, 5)
    # Without resize every image is brought to the size of the first training image (heights vary 10..13).
    assert splits.input_size in {(h, 12) for h in range(10, 14)}
    x, y = next(iterate_batches(splits.test, 5, shuffle=False))
    assert x.shape == (5, 3, *splits.input_size) and y.tolist() == [0, 0, 1, 1, 2]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'missing'}"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'empty'}"))
    write_png_folder(tmp_path / "mix" / "train", ("a", "b"), per_class=3)
    write_png_folder(tmp_path / "mix" / "test", ("a", "z"), per_class=1)
    with pytest.raises(DataError, match="class folders differ"):
        load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'mix'}"))
