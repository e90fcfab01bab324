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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from edgenas.config import short
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
            raise DataError(f"dataset name must be a non-empty string, got {short(self.name)}; known: {_known_names()}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)):
            raise DataError(f"val_fraction must be a number in (0, 1), got {short(self.val_fraction)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"val_fraction must be strictly between 0 and 1, got {self.val_fraction}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"seed must be an integer, got {short(self.seed)}")
        for field in ("train_limit", "val_limit", "test_limit"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise DataError(f"{field} must be a positive integer or None, got {short(value)}")
        if self.resize is not None and (
            isinstance(self.resize, bool) or not isinstance(self.resize, int) or self.resize < 8
        ):
            raise DataError(f"resize must be an integer >= 8 (pixels per side) or None, got {short(self.resize)}")


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


def _builtin_datasets(registry: Registry[Loader]) -> None:
    from edgenas import data_loaders as loaders

    registry.register("fashion-mnist", loaders.load_fashion_mnist)
    registry.register("digits", loaders.load_digits)
    registry.register("mnist", loaders.load_mnist)
    registry.register("cifar10", loaders.load_cifar10)
    registry.register("imagefolder:PATH", loaders.load_imagefolder)
    registry.register("npz:PATH", loaders.load_npz)


DATASETS: Registry[Loader] = Registry("dataset", DataError, builtins=_builtin_datasets)
"""Name -> ``loader(config, argument)``. A name ending in ``:PATH`` takes the text after the colon as its
argument (``npz:/data/x.npz``); a loader returns :class:`DatasetSplits` or raises :class:`DataError`.
The built-ins (:mod:`edgenas.data_loaders`) are registered on first use."""


def _known_names() -> str:
    return ", ".join(DATASETS.names())


def list_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts; ``PATH`` stands for a filesystem path."""
    return DATASETS.names()


def load_dataset(cfg: DataConfig) -> DatasetSplits:
    """Load ``cfg.name`` and split it; raises :class:`DataError` with a fix for anything the user can fix."""
    prefix, sep, arg = cfg.name.partition(":")
    if sep:
        if f"{prefix}:PATH" not in DATASETS:
            raise DataError(f"unknown dataset {short(cfg.name)}; known: {_known_names()}")
        if not arg.strip():
            raise DataError(f"dataset {short(cfg.name)} needs a path after the colon, e.g. {prefix}:/data/my-set")
        return DATASETS.get(f"{prefix}:PATH")(cfg, arg)
    if cfg.name not in DATASETS:
        hint = f" (did you mean {cfg.name}:PATH?)" if f"{cfg.name}:PATH" in DATASETS else ""
        raise DataError(f"unknown dataset {short(cfg.name)}{hint}; known: {_known_names()}")
    return DATASETS.get(cfg.name)(cfg, None)


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
        raise DataError(f"batch_size must be a positive integer, got {short(batch_size)}")
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
