"""Datasets for search, training and evaluation, loaded offline first and split reproducibly.

Every dataset comes back as a :class:`DatasetSplits` with train/val/test parts. The validation part is
always carved from the *training* set with a seeded permutation, so the test set is never looked at
while searching. Small sets live in memory as ``uint8`` NCHW tensors (:class:`ArrayDataset`) and are
converted to float, normalised and resized per batch: a float copy of 60k images at 224x224 would not
fit in memory, and the uint8 copy is 4x smaller than float32 at native size.

Where the data comes from
-------------------------
``DataConfig.root`` is an *explicit* choice: when it is set, only that directory is searched (and a
download, if allowed, goes there), so a missing or broken dataset there fails loudly instead of
silently falling back to another copy. When it is not set, ``$EDGENAS_DATA`` is searched first, then
the system location (``/usr/share/datasets/fashion-mnist`` from the Debian package
``dataset-fashion-mnist``), then torchvision's layout in ``$EDGENAS_DATA`` or ``~/.cache/edgenas/data``,
downloading there when ``download`` is true and the machine is online.

Normalisation
-------------
``mean``/``std`` are per channel, over pixels scaled to [0, 1], computed exactly from a 256-bin histogram
of the training split (after the validation carve-out, before ``train_limit``, so limiting a run for a
quick test does not change how images are normalised). ``imagefolder`` sets estimate them from up to 500
training images instead, because decoding every image just for statistics is too slow. The ``mean`` and
``std`` reported in :class:`DatasetSplits` are the ones actually applied (zeros and ones when
``normalize`` is false), so an exported model can reproduce the preprocessing.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from edgenas.errors import DataError
from edgenas.registry import Registry

__all__ = ["DATASETS", "ArrayDataset", "DataConfig", "DatasetSplits", "iterate_batches", "list_datasets",
           "load_dataset"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = tuple(str(d) for d in range(10))
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CACHE_DIR = Path("~/.cache/edgenas/data")
ENV_DATA_DIR = "EDGENAS_DATA"
HOLDOUT_SEED = 0  # fixed seed of the 80/20 train/test split for sets that ship without a test split
HOLDOUT_FRACTION = 0.2
IMAGEFOLDER_STATS_SAMPLES = 500
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_STATS_CHUNK_ELEMENTS = 1 << 22  # 4M pixels per chunk: 32 MiB as int64 while counting


@dataclass(frozen=True)
class DataConfig:
    """What to load and how to split it; validated on construction so bad values fail before any I/O."""

    name: str = "fashion-mnist"
    root: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    resize: int | None = None
    normalize: bool = True
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    download: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise DataError(f"dataset name must be a non-empty string, got {self.name!r}; known: {_known_names()}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)):
            raise DataError(f"val_fraction must be a number in (0, 1), got {self.val_fraction!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"val_fraction must be strictly between 0 and 1, got {self.val_fraction}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"seed must be an integer, got {self.seed!r}")
        for field in ("train_limit", "val_limit", "test_limit"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise DataError(f"{field} must be a positive integer or None, got {value!r}")
        if self.resize is not None and (
            isinstance(self.resize, bool) or not isinstance(self.resize, int) or self.resize < 8
        ):
            raise DataError(f"resize must be an integer >= 8 (pixels per side) or None, got {self.resize!r}")


class ArrayDataset(Dataset):
    """In-memory images kept as uint8 NCHW; normalisation/resizing applied per batch.

    Keeping uint8 and converting per batch is what lets 60k images be trained at 224x224 without a
    multi-GiB float copy; :meth:`batch` does it vectorised for a whole index tensor at once.
    """

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool
    resize: int | None

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        normalize: bool = True,
        resize: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be a uint8 N x C x H x W tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"labels must be a 1-D tensor with one label per image ({images.shape[0]}), "
                f"got shape {tuple(labels.shape)}"
            )
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"mean/std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise DataError(f"std values must be positive, got {tuple(std)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.normalize = bool(normalize)
        self.resize = resize
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([int(i)], dtype=torch.int64))
        return x[0], int(y[0])

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the tensors :meth:`batch` returns."""
        if self.resize is not None:
            return (self.resize, self.resize)
        return (int(self.images.shape[2]), int(self.images.shape[3]))

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather, scale to [0, 1], normalise and resize a batch in a few tensor ops."""
        index = torch.as_tensor(index, dtype=torch.int64)
        x = self.images[index].to(torch.float32).div_(255.0)
        if self.normalize:
            # Normalising before resizing is equivalent (bilinear weights sum to 1) and cheaper when upsampling.
            x = x.sub_(self._mean_t).div_(self._std_t)
        if self.resize is not None and (x.shape[2], x.shape[3]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        return x, self.labels[index]

    def subset(self, index: torch.Tensor) -> ArrayDataset:
        """A new dataset over the given rows with the same preprocessing (copies the selected images)."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return ArrayDataset(
            self.images[index], self.labels[index], self.mean, self.std, normalize=self.normalize, resize=self.resize
        )


@dataclass(frozen=True)
class DatasetSplits:
    """The three splits plus the facts a model builder and an exporter need about the inputs."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


Loader = Callable[[DataConfig, str | None], DatasetSplits]


DATASETS: Registry[Loader] = Registry("dataset", DataError)
"""Name -> ``loader(config, argument)``. A name ending in ``:PATH`` takes the text after the colon as its
argument (``npz:/data/x.npz``); a loader returns :class:`DatasetSplits` or raises :class:`DataError`.
The built-ins are registered at the end of this module."""


def _known_names() -> str:
    return ", ".join(DATASETS.names())


def list_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts; ``PATH`` stands for a filesystem path."""
    return DATASETS.names()


def load_dataset(cfg: DataConfig) -> DatasetSplits:
    """Load ``cfg.name`` and split it; raises :class:`DataError` with a fix for anything the user can fix."""
    registry = {name: DATASETS.get(name) for name in DATASETS}
    prefix, sep, arg = cfg.name.partition(":")
    if sep:
        loader = registry.get(f"{prefix}:PATH")
        if loader is None:
            raise DataError(f"unknown dataset {cfg.name!r}; known: {_known_names()}")
        if not arg.strip():
            raise DataError(f"dataset {cfg.name!r} needs a path after the colon, e.g. {prefix}:/data/my-set")
        return loader(cfg, arg)
    loader = registry.get(cfg.name)
    if loader is None:
        hint = f" (did you mean {cfg.name}:PATH?)" if f"{cfg.name}:PATH" in registry else ""
        raise DataError(f"unknown dataset {cfg.name!r}{hint}; known: {_known_names()}")
    return loader(cfg, None)


def iterate_batches(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x float32, y int64)`` batches, one pass over ``ds`` (or over this rank's shard of it).

    The order is ``torch.randperm(len(ds), generator=generator)`` when shuffling. For distributed
    training every rank must pass a generator seeded the same way so the permutation agrees; rank
    ``r`` then takes ``perm[r::world_size]``, cut to ``len(ds) // world_size`` samples so all ranks
    run the same number of steps. :class:`ArrayDataset` is batched directly (``num_workers`` is
    ignored); other datasets go through a ``DataLoader`` over a ``Subset`` in the same order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size and world_size >= 1, got rank={rank}, world_size={world_size}")
    if num_workers < 0:
        raise DataError(f"num_workers must be >= 0, got {num_workers}")
    n = len(ds)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        order = order[rank::world_size][: n // world_size]
    if isinstance(ds, ArrayDataset):
        return _iterate_array(ds, order, batch_size, drop_last)
    loader = DataLoader(
        Subset(ds, order.tolist()), batch_size=batch_size, shuffle=False, drop_last=drop_last, num_workers=num_workers
    )
    return _iterate_loader(loader)


def _iterate_array(
    ds: ArrayDataset, order: torch.Tensor, batch_size: int, drop_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield ds.batch(order[start : min(start + batch_size, stop)])


def _iterate_loader(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in loader:
        yield x.to(torch.float32), torch.as_tensor(y, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# Splitting and statistics shared by all in-memory sets
# --------------------------------------------------------------------------------------------------


def _seeded_perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _holdout_split(n: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed 80/20 (train, test) indices for sets without a test split; independent of ``cfg.seed``."""
    perm = _seeded_perm(n, HOLDOUT_SEED)
    n_test = round(HOLDOUT_FRACTION * n)
    if n_test < 1 or n - n_test < 2:
        raise DataError(f"{name} has only {n} samples; need at least 3 to make train, val and test splits")
    return perm[n_test:], perm[:n_test]


def _val_split(n: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) positions: the first ``round(val_fraction * n)`` of a seeded permutation go to val."""
    perm = _seeded_perm(n, cfg.seed)
    n_val = round(cfg.val_fraction * n)
    if n_val < 1 or n_val >= n:
        raise DataError(
            f"val_fraction={cfg.val_fraction} of {n} training samples leaves an empty train or val split; "
            "use a fraction between 1/n and 1 - 1/n or a larger dataset"
        )
    return perm[n_val:], perm[:n_val]


def _channel_stats(images: torch.Tensor, index: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of ``images[index]`` (uint8 NCHW, scaled to [0, 1]) via 256-bin histograms.

    Gathering in chunks avoids both a float copy of the whole set and a uint8 copy of the split; counting
    values avoids the cancellation of a sum-of-squares formula.
    """
    channels = images.shape[1]
    chunk = max(1, _STATS_CHUNK_ELEMENTS // max(1, images[0, 0].numel()))
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, index.numel(), chunk):
        block = images[index[start : start + chunk]]
        for c in range(channels):
            counts[c] += torch.bincount(block[:, c].reshape(-1).to(torch.int64), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / total
    var = (counts * (values.unsqueeze(0) - mean.unsqueeze(1)) ** 2).sum(dim=1) / total
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channel: leave it unscaled
    return tuple(mean.tolist()), tuple(std.tolist())


def _limit(index: torch.Tensor, limit: int | None) -> torch.Tensor:
    return index if limit is None else index[:limit]


def _array_splits(
    name: str,
    cfg: DataConfig,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    class_names: tuple[str, ...],
) -> DatasetSplits:
    """Carve val from train, compute stats on the carved train split, apply limits, wrap in ArrayDatasets."""
    train_idx, val_idx = _val_split(train_images.shape[0], cfg)
    channels = int(train_images.shape[1])
    if cfg.normalize:
        mean, std = _channel_stats(train_images, train_idx)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    train_labels, test_labels = train_labels.to(torch.int64), test_labels.to(torch.int64)

    def make(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(images[index], labels[index], mean, std, normalize=cfg.normalize, resize=cfg.resize)

    train = make(train_images, train_labels, _limit(train_idx, cfg.train_limit))
    val = make(train_images, train_labels, _limit(val_idx, cfg.val_limit))
    test = make(test_images, test_labels, _limit(torch.arange(test_images.shape[0]), cfg.test_limit))
    return DatasetSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        in_channels=channels,
        input_size=train.input_size,
        class_names=class_names,
        mean=mean,
        std=std,
    )


def _first_line(e: BaseException) -> str:
    """Library messages can span lines; DataError messages must not."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _last_line(e: BaseException) -> str:
    """torchvision puts the network error that explains a failed download on the last line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def _check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{where} has labels in [{int(labels.min())}, {int(labels.max())}] but {num_classes} classes; "
            f"labels must be integers in 0..{num_classes - 1}"
        )


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


def _load_fashion_mnist(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
    return _load_mnist_family(
        cfg,
        name="fashion-mnist",
        title="Fashion-MNIST",
        subdir="fashion-mnist",
        cls_name="FashionMNIST",
        system_dir=SYSTEM_FASHION_MNIST_DIR,
        extra="install it with `apt-get install dataset-fashion-mnist`, ",
    )


def _load_mnist(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
    return _load_mnist_family(
        cfg, name="mnist", title="MNIST", subdir="mnist", cls_name="MNIST", system_dir=None, extra=""
    )


def _load_cifar10(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
    train, test = _torchvision_arrays("CIFAR-10", "CIFAR10", cfg, [], "")

    def arrays(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    class_names = tuple(train.classes)
    return _array_splits("cifar10", cfg, *arrays(train), *arrays(test), class_names)


def _load_digits(cfg: DataConfig, _arg: str | None) -> DatasetSplits:
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


def _load_npz(cfg: DataConfig, arg: str | None) -> DatasetSplits:
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
        class_names = tuple(str(c) for c in range(int(all_labels.max()) + 1))
    _check_labels(all_labels, len(class_names), str(path))
    return _array_splits(cfg.name, cfg, train_images, train_labels, test_images, test_labels, class_names)


def _image_transform(size: tuple[int, int], mean: Sequence[float] | None, std: Sequence[float] | None) -> Any:
    from torchvision import transforms

    steps: list[Any] = [transforms.Resize(size), transforms.ToTensor()]
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)


def _load_imagefolder(cfg: DataConfig, arg: str | None) -> DatasetSplits:
    """torchvision ImageFolder layout, decoded lazily; images are RGB and all resized to one size.

    Uses ``PATH/train`` with ``PATH/test`` (or ``PATH/val``) when present, else a fixed 80/20 split of
    ``PATH``. Without ``resize``, every image is resized to the size of the first training image so
    batches stack. Mean/std are estimated from up to 500 training images (the first ones of the seeded
    order), which is within ~1% of the full-set value for natural images and avoids a full decode pass.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import default_loader

    path = Path(str(arg)).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; point imagefolder: at a directory of class subfolders")
    test_dir = next((path / d for d in ("test", "val") if (path / "train").is_dir() and (path / d).is_dir()), None)

    def folder(directory: Path) -> ImageFolder:
        try:
            return ImageFolder(str(directory))
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
        first = default_loader(train_folder.samples[int(train_idx[0])][0])
        size = (first.height, first.width)
    if cfg.normalize:
        to_tensor = _image_transform(size, None, None)
        sample = torch.stack(
            [to_tensor(default_loader(train_folder.samples[int(i)][0])) for i in train_idx[:IMAGEFOLDER_STATS_SAMPLES]]
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


DATASETS.register("fashion-mnist", _load_fashion_mnist)
DATASETS.register("digits", _load_digits)
DATASETS.register("mnist", _load_mnist)
DATASETS.register("cifar10", _load_cifar10)
DATASETS.register("imagefolder:PATH", _load_imagefolder)
DATASETS.register("npz:PATH", _load_npz)
