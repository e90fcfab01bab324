"""The built-in dataset loaders behind :data:`edgenas.data.DATASETS`: IDX files (MNIST, Fashion-MNIST),
torchvision's sets, sklearn's digits, ``npz:PATH`` arrays and ``imagefolder:PATH`` trees.

Split from :mod:`edgenas.data` (configs, splits, statistics, batching), which registers them on
first use. Every loader returns :class:`~edgenas.data.DatasetSplits` or raises a one-line
:class:`~edgenas.errors.DataError` that says how to get or fix the data.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from edgenas.data import (
    _IDX_IMAGES_MAGIC,
    _IDX_LABELS_MAGIC,
    DEFAULT_CACHE_DIR,
    ENV_DATA_DIR,
    FASHION_MNIST_CLASSES,
    IMAGEFOLDER_STATS_SAMPLES,
    MNIST_CLASSES,
    SYSTEM_FASHION_MNIST_DIR,
    DataConfig,
    DatasetSplits,
    _array_splits,
    _check_labels,
    _first_line,
    _holdout_split,
    _last_line,
    _limit,
    _val_split,
)
from edgenas.errors import DataError

# --------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an uncompressed or gzip IDX file, checking the magic number and that the payload size matches."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(
            f"cannot read {path}: {_first_line(e)}; the file is corrupt, delete it and re-install/re-download"
        ) from e
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file; delete it and re-install/re-download the dataset")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} has IDX magic number 0x{found:08x}, expected 0x{magic:08x}; "
            "the file is corrupt or not the right one, re-install/re-download the dataset"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} has a truncated IDX header; delete it and re-install/re-download the dataset")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header {dims} needs {expected}; "
            "the file is truncated or corrupt, re-install/re-download the dataset"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx_files(directory: Path, title: str) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (``.gz`` or plain), None if none are there; partial sets fail."""
    found: dict[str, Path] = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found[key] = candidate
                break
    if not found:
        return None
    if len(found) < len(_IDX_FILES):
        missing = ", ".join(f"{_IDX_FILES[k]}.gz" for k in _IDX_FILES if k not in found)
        raise DataError(f"{title} in {directory} is incomplete (missing {missing}); copy all four IDX files there")
    return found


def _load_idx_set(files: dict[str, Path], num_classes: int) -> tuple[torch.Tensor, ...]:
    arrays = {
        key: _read_idx(path, _IDX_IMAGES_MAGIC if key.endswith("images") else _IDX_LABELS_MAGIC)
        for key, path in files.items()
    }
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{files[f'{part}_images']} has {images.shape[0]} images but {files[f'{part}_labels']} has "
                f"{labels.shape[0]} labels; the files do not belong together, re-install/re-download the dataset"
            )
        _check_labels(torch.from_numpy(labels.astype(np.int64)), num_classes, str(files[f"{part}_labels"]))
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"train images are {arrays['train_images'].shape[1:]} but test images are "
            f"{arrays['test_images'].shape[1:]}; re-install/re-download the dataset"
        )
    return (
        torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
    )


def _env_dir() -> Path | None:
    value = os.environ.get(ENV_DATA_DIR, "").strip()
    return Path(value).expanduser() if value else None


def _download_dir(cfg: DataConfig) -> Path:
    """Where torchvision keeps (and downloads) data: the explicit root, else $EDGENAS_DATA, else the cache."""
    if cfg.root is not None:
        return Path(cfg.root).expanduser()
    return _env_dir() or DEFAULT_CACHE_DIR.expanduser()


def _how_to_get(title: str, searched: Sequence[Path], extra: str, downloaded: bool) -> str:
    where = ", ".join(str(p) for p in searched)
    online = "go online to download it" if downloaded else "go online and allow download=True"
    return f"{title} not found in {where}; {extra}set {ENV_DATA_DIR}=DIR (or root=DIR) to a copy of it, or {online}"


def _torchvision_arrays(
    title: str, cls_name: str, cfg: DataConfig, searched: list[Path], extra: str
) -> tuple[Any, Any]:
    """(train, test) torchvision datasets from the download dir, downloading when allowed; DataError when not."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root = _download_dir(cfg)
    searched = [*searched, root]
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except (RuntimeError, OSError) as e:  # missing with download off, or offline (URLError is an OSError)
        reason = f" (download failed: {_last_line(e)})" if cfg.download else ""
        raise DataError(_how_to_get(title, searched, extra, cfg.download) + reason) from e
    return train, test


def _load_mnist_family(
    cfg: DataConfig, *, name: str, title: str, subdir: str, cls_name: str, system_dir: Path | None, extra: str
) -> DatasetSplits:
    class_names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    if cfg.root is not None:
        roots = [Path(cfg.root).expanduser()]
    else:
        roots = [p for p in (_env_dir(), system_dir) if p is not None]
    searched: list[Path] = []
    for base in roots:
        for directory in (base, base / subdir):
            searched.append(directory)
            files = _find_idx_files(directory, title)
            if files is not None:
                return _array_splits(name, cfg, *_load_idx_set(files, len(class_names)), class_names)
    train, test = _torchvision_arrays(title, cls_name, cfg, searched, extra)
    return _array_splits(
        name,
        cfg,
        train.data.unsqueeze(1).to(torch.uint8),
        train.targets.to(torch.int64),
        test.data.unsqueeze(1).to(torch.uint8),
        test.targets.to(torch.int64),
        class_names,
    )


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def load_fashion_mnist(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
    return _load_mnist_family(
        cfg,
        name="fashion-mnist",
        title="Fashion-MNIST",
        subdir="fashion-mnist",
        cls_name="FashionMNIST",
        system_dir=SYSTEM_FASHION_MNIST_DIR,
        extra="install it with `apt-get install dataset-fashion-mnist`, ",
    )


def load_mnist(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
    return _load_mnist_family(
        cfg, name="mnist", title="MNIST", subdir="mnist", cls_name="MNIST", system_dir=None, extra=""
    )


def load_cifar10(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
    train, test = _torchvision_arrays("CIFAR-10", "CIFAR10", cfg, [], "")

    def arrays(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    class_names = tuple(train.classes)
    return _array_splits("cifar10", cfg, *arrays(train), *arrays(test), class_names)


def load_digits(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
    """sklearn's bundled 8x8 digits: always available offline, so the default for tests and demos."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = _holdout_split(images.shape[0], "digits")
    class_names = tuple(str(c) for c in bunch.target_names)
    return _array_splits(
        "digits", cfg, images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], class_names
    )


def _npz_images(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """uint8 NHW / NHWC / NCHW -> NCHW; NHWC is assumed when the last dim is a channel count and dim 1 is not."""
    if x.dtype != np.uint8:
        raise DataError(
            f"{path}: '{key}' has dtype {x.dtype}, expected uint8; scale images to 0..255 and save "
            f"{key}.astype(np.uint8)"
        )
    channel_counts = (1, 3, 4)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[3] in channel_counts and x.shape[1] not in channel_counts:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: '{key}' has shape {x.shape}; expected N x H x W, N x H x W x C or N x C x H x W")
    if x.shape[0] == 0 or 0 in x.shape[2:]:
        raise DataError(f"{path}: '{key}' has shape {x.shape}; it must hold at least one non-empty image")
    return torch.from_numpy(np.ascontiguousarray(x))


def _npz_labels(y: np.ndarray, key: str, path: Path, n: int) -> torch.Tensor:
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: '{key}' has dtype {y.dtype}, expected integers; save {key}.astype(np.int64)")
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{path}: '{key}' has shape {y.shape} but there are {n} images; need one label per image")
    return torch.from_numpy(y.astype(np.int64))


def _classes_from_labels(labels: torch.Tensor, path: Path) -> tuple[str, ...]:
    """Class names ``0..max`` when the file gives none. Labels that leave most of those classes
    empty are IDs, not class indices (a label of 1,000,000 would otherwise make a 1,000,001-way
    classifier), and are refused rather than guessed at."""
    count = max(int(labels.max()), 0) + 1 if labels.numel() else 0
    present = int(torch.unique(labels).numel())
    if labels.numel() and int(labels.min()) >= 0 and present * 2 < count:  # negatives: the label check says so
        raise DataError(
            f"{path}: labels run to {count - 1} but only {present} of the {count} classes 0..{count - 1} occur; "
            "labels must be class indices 0..K-1: remap them, or save class_names to declare the K classes"
        )
    return tuple(str(c) for c in range(count))


def load_npz(cfg: DataConfig, arg: str | None) -> DatasetSplits:
    """Arrays ``x``/``y`` (+ optional ``x_test``/``y_test``, ``class_names``) from a numpy .npz file."""
    path = Path(str(arg)).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist; save one with np.savez(path, x=images_uint8, y=labels)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"cannot read {path} as .npz: {_first_line(e)}; save it with np.savez(path, x=..., y=...)"
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path} is a single .npy array, not an .npz archive; save it with np.savez(path, x=..., y=...)"
        )
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise DataError(
                f"{path} has no array {' or '.join(repr(k) for k in missing)} (found {sorted(keys)}); "
                "save images as x=uint8 and labels as y=int"
            )
        if ("x_test" in keys) != ("y_test" in keys):
            raise DataError(f"{path} has only one of 'x_test'/'y_test'; save both or neither")
        try:
            x, y = archive["x"], archive["y"]
            x_test = archive["x_test"] if "x_test" in keys else None
            y_test = archive["y_test"] if "y_test" in keys else None
            names = archive["class_names"] if "class_names" in keys else None
        except ValueError as e:  # object arrays need pickle, which we refuse for safety
            raise DataError(
                f"{path} holds object arrays ({_first_line(e)}); save plain numeric arrays and a str array"
            ) from e
    images = _npz_images(x, "x", path)
    labels = _npz_labels(y, "y", path, images.shape[0])
    if x_test is not None and y_test is not None:
        test_images = _npz_images(x_test, "x_test", path)
        test_labels = _npz_labels(y_test, "y_test", path, test_images.shape[0])
        if test_images.shape[1:] != images.shape[1:]:
            raise DataError(
                f"{path}: x_test images are C,H,W={tuple(test_images.shape[1:])} but x images are "
                f"{tuple(images.shape[1:])}; both must have the same layout and size"
            )
        train_images, train_labels = images, labels
    else:
        train_idx, test_idx = _holdout_split(images.shape[0], str(path))
        train_images, train_labels = images[train_idx], labels[train_idx]
        test_images, test_labels = images[test_idx], labels[test_idx]
    all_labels = torch.cat([labels, test_labels])
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: 'class_names' must be a 1-D string array, got {names.dtype} {names.shape}")
        class_names = tuple(str(n) for n in names.tolist())
    else:
        class_names = _classes_from_labels(all_labels, path)
    _check_labels(all_labels, len(class_names), str(path))
    return _array_splits(cfg.name, cfg, train_images, train_labels, test_images, test_labels, class_names)


def _image_transform(size: tuple[int, int], mean: Sequence[float] | None, std: Sequence[float] | None) -> Any:
    from torchvision import transforms

    steps: list[Any] = [transforms.Resize(size), transforms.ToTensor()]
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)


def _decode_image(path: str) -> Any:
    """torchvision's loader, but a file that is not an image is one line naming it, wherever in the
    folder it sits (a module-level function, so data-loader workers can pickle it)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as e:  # PIL raises several types for truncated or foreign files
        raise DataError(f"cannot decode image {path} ({_first_line(e)[:100]}); remove or replace the file") from None


def load_imagefolder(cfg: DataConfig, arg: str | None) -> DatasetSplits:
    """torchvision ImageFolder layout, decoded lazily; images are RGB and all resized to one size.

    Uses ``PATH/train`` with ``PATH/test`` (or ``PATH/val``) when present, else a fixed 80/20 split of
    ``PATH``. Without ``resize``, every image is resized to the size of the first training image so
    batches stack. Mean/std are estimated from up to 500 training images (the first ones of the seeded
    order), which is within ~1% of the full-set value for natural images and avoids a full decode pass.
    """
    from torchvision.datasets import ImageFolder

    path = Path(str(arg)).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; point imagefolder: at a directory of class subfolders")
    test_dir = next((path / d for d in ("test", "val") if (path / "train").is_dir() and (path / d).is_dir()), None)

    def folder(directory: Path) -> ImageFolder:
        try:
            return ImageFolder(str(directory), loader=_decode_image)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(
                f"no images found in {directory} ({_first_line(e)}); expected "
                "one subfolder per class holding .png/.jpg files"
            ) from e

    if test_dir is not None:
        train_folder, test_folder = folder(path / "train"), folder(test_dir)
        if train_folder.classes != test_folder.classes:
            raise DataError(
                f"class folders differ between {path / 'train'} {train_folder.classes} and {test_dir} "
                f"{test_folder.classes}; use the same class subfolders in both"
            )
        train_pool, test_idx = torch.arange(len(train_folder)), torch.arange(len(test_folder))
    else:
        train_folder = test_folder = folder(path)
        train_pool, test_idx = _holdout_split(len(train_folder), str(path))
    train_pos, val_pos = _val_split(len(train_pool), cfg)
    train_idx, val_idx = train_pool[train_pos], train_pool[val_pos]

    if cfg.resize is not None:
        size = (cfg.resize, cfg.resize)
    else:
        first = _decode_image(train_folder.samples[int(train_idx[0])][0])
        size = (first.height, first.width)
    if cfg.normalize:
        to_tensor = _image_transform(size, None, None)
        sample = torch.stack(
            [to_tensor(_decode_image(train_folder.samples[int(i)][0])) for i in train_idx[:IMAGEFOLDER_STATS_SAMPLES]]
        )
        mean_t = sample.mean(dim=(0, 2, 3))
        std_t = sample.std(dim=(0, 2, 3), unbiased=False)
        std_t = torch.where(std_t > 1e-8, std_t, torch.ones_like(std_t))
        mean, std = tuple(mean_t.tolist()), tuple(std_t.tolist())
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    transform = _image_transform(size, mean, std)
    train_folder.transform = transform  # our own fresh objects: set once, never changed afterwards
    test_folder.transform = transform
    return DatasetSplits(
        name=cfg.name,
        train=Subset(train_folder, _limit(train_idx, cfg.train_limit).tolist()),
        val=Subset(train_folder, _limit(val_idx, cfg.val_limit).tolist()),
        test=Subset(test_folder, _limit(test_idx, cfg.test_limit).tolist()),
        num_classes=len(train_folder.classes),
        in_channels=3,
        input_size=size,
        class_names=tuple(train_folder.classes),
        mean=mean,
        std=std,
    )
