"""Data sets: on-disk formats, train/val/test splits, and batch pipelines.

Small data sets (digits, CIFAR-10/100, Tiny-ImageNet) live on the training device as one uint8
tensor; per-sample random crop, flip and normalisation are one gather and one fused affine per batch
(after airbench). ImageNet goes through a DataLoader with workers, pinned memory and the release's
transforms. Both shard the data by rank (equal, disjoint shards reshuffled each epoch).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from alignmixup.config import TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_CACHE = "alignmixup-uint8-v1.npz"


class DataError(RuntimeError):
    """The data directory is missing or not laid out as expected; the message says which and how."""


@dataclass(frozen=True)
class Arrays:
    """A data set held in memory: uint8 images (N, H, W, C) and int64 labels, train and test."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of the input normalisation, x = (pixel - mean) / std with pixels in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need one value per channel and std > 0, got {self.mean}, {self.std}")

    def _view(self, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> [0, 1] pixels (same memory layout)."""
        return x * self._view(self.std, x) + self._view(self.mean, x)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> normalised batch (same memory layout)."""
        return (pixels - self._view(self.mean, pixels)) / self._view(self.std, pixels)


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between data sets: classes, image geometry, normalisation, augmentation, reader."""

    num_classes: int
    channels: int
    image_size: int
    pad: int
    flip: bool
    mean: tuple[float, ...] | None  # None: measured on the training split
    std: tuple[float, ...] | None
    layout: str  # the expected on-disk layout, for error messages


# --------------------------------------------------------------------------- readers


def _digits_table() -> np.ndarray:
    """scikit-learn's digits as (1797, 65) rows: 64 pixel values 0..16, then the label.

    Read straight from the CSV in scikit-learn's wheel (what load_digits parses): importing sklearn.datasets
    costs every training process about 2 s of CPU, which a sweep of short trials pays many times over.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        return np.loadtxt(csv, delimiter=",", dtype=np.float32)
    from sklearn.datasets import load_digits  # a scikit-learn that keeps the file elsewhere

    d = load_digits()
    return np.concatenate([d.data, d.target[:, None]], axis=1).astype(np.float32)


def _load_digits(_: Path | None) -> Arrays:
    """scikit-learn's digits (in its wheel), upsampled 8x8 -> 32x32; a fixed 20% test split (seed 0)."""
    table = _digits_table()
    img = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8) / 16.0)
    img = F.interpolate(img, size=(32, 32), mode="bilinear", align_corners=False)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    y = table[:, 64].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return Arrays(x[train], y[train], x[test], y[test])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def _cifar_reader(folder: str, train: list[str], test: list[str], label_key: str, tv_class: str):
    """A reader for CIFAR's python batches under data_dir/<folder>, downloading them when absent."""

    def read(root: Path | None) -> Arrays:
        assert root is not None
        base = root / folder
        if not base.exists():
            _download_cifar(root, tv_class)
        parts = {}
        for split, names in (("train", train), ("test", test)):
            xs, ys = [], []
            for name in names:
                path = base / name
                if not path.is_file():
                    raise DataError(f"data_dir {root}: missing {folder}/{name}")
                try:
                    batch = _unpickle(path)
                    xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                    ys.append(np.asarray(batch[label_key], dtype=np.int64))
                except Exception as exc:
                    raise DataError(f"data_dir {root}: {folder}/{name} is not a CIFAR python batch ({exc})") from None
            parts[split] = (np.concatenate(xs).transpose(0, 2, 3, 1).copy(), np.concatenate(ys))
        return Arrays(*parts["train"], *parts["test"])

    return read


def _download_cifar(root: Path, tv_class: str) -> None:
    import torchvision.datasets as tvd

    try:
        getattr(tvd, tv_class)(str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(
            f"data_dir {root}: no {tv_class} data found and the download failed ({type(exc).__name__}: {exc})"
        ) from None


def _tiny_root(root: Path) -> Path:
    """Accept either the extracted folder or its parent (tiny-imagenet-200/)."""
    nested = root / "tiny-imagenet-200"
    return nested if not (root / "wnids.txt").exists() and nested.exists() else root


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _load_tinyimagenet(root: Path | None) -> Arrays:
    """Tiny-ImageNet-200 in the official zip's layout; its labelled val split serves as the test set."""
    assert root is not None
    root = _tiny_root(root)
    cache = root / TINY_CACHE
    if cache.is_file():
        with np.load(cache) as z:
            return Arrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"])
    if not (root / "wnids.txt").is_file():
        _download_tiny(root)
    wnids = (root / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    train_files, train_y = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"data_dir {root}: no images in train/{w}/images/ ({SPECS['tinyimagenet'].layout})")
        train_files += files
        train_y += [index[w]] * len(files)
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"data_dir {root}: missing val/val_annotations.txt ({SPECS['tinyimagenet'].layout})")
    test_files, test_y = [], []
    for line in ann.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"data_dir {root}: bad line in val/val_annotations.txt: {line!r}")
        test_files.append(root / "val" / "images" / fields[0])
        test_y.append(index[fields[1]])
    try:
        arrays = Arrays(
            np.stack([_read_image(f, 64) for f in train_files]), np.asarray(train_y, dtype=np.int64),
            np.stack([_read_image(f, 64) for f in test_files]), np.asarray(test_y, dtype=np.int64),
        )
    except (OSError, ValueError) as exc:
        raise DataError(f"data_dir {root}: unreadable image ({exc})") from None
    _save_cache(cache, arrays)
    return arrays


def _download_tiny(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        target = root.parent if root.name == "tiny-imagenet-200" else root
        download_and_extract_archive(TINY_URL, download_root=str(target))
    except Exception as exc:
        raise DataError(
            f"data_dir {root}: not a Tiny-ImageNet-200 folder ({SPECS['tinyimagenet'].layout}) "
            f"and the download failed ({type(exc).__name__}: {exc})"
        ) from None
    if not (_tiny_root(root) / "wnids.txt").is_file():
        raise DataError(f"data_dir {root}: download did not produce wnids.txt")


def _save_cache(path: Path, arrays: Arrays) -> None:
    """Write the decoded arrays next to the images (atomically); skipped where the folder is read-only."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **arrays.__dict__)
    os.replace(tmp, path)


# CIFAR's python batches: (folder under data_dir, training files, test files, label key, torchvision class)
CIFAR_FILES: dict[str, tuple[str, list[str], list[str], str, str]] = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR100"),
}

READERS: dict[str, Callable[[Path | None], Arrays]] = {
    "digits": _load_digits,
    "cifar10": _cifar_reader(*CIFAR_FILES["cifar10"]),
    "cifar100": _cifar_reader(*CIFAR_FILES["cifar100"]),
    "tinyimagenet": _load_tinyimagenet,
}

SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(10, 1, 32, 4, False, None, None, "scikit-learn's digits, no directory needed"),
    "cifar10": DatasetSpec(
        10, 3, 32, 4, True, CIFAR_MEAN, CIFAR_STD,
        "cifar-10-batches-py/{data_batch_1..5,test_batch} as in the official python tarball",
    ),
    "cifar100": DatasetSpec(
        100, 3, 32, 4, True, CIFAR_MEAN, CIFAR_STD, "cifar-100-python/{train,test} as in the official python tarball"
    ),
    "tinyimagenet": DatasetSpec(
        200, 3, 64, 4, True, CIFAR_MEAN, CIFAR_STD,
        "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt",
    ),
    "imagenet": DatasetSpec(
        1000, 3, 224, 0, True, IMAGENET_MEAN, IMAGENET_STD, "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder)"
    ),
}


def prepare_data(cfg: TrainConfig) -> None:
    """Download (when online), check and cache the data set; idempotent, once per node before training."""
    if cfg.dataset == "imagenet":
        _imagenet_folders(cfg.data_dir)
    else:
        READERS[cfg.dataset](cfg.data_dir)


def check_layout(cfg: TrainConfig) -> None:
    """Raise DataError unless cfg.data_dir holds cfg.dataset laid out as its reader expects; reads and downloads
    nothing (a dry run's check: a real run's reader downloads CIFAR and Tiny-ImageNet where they are absent)."""
    if cfg.dataset == "digits":
        return
    root, layout = cfg.data_dir, SPECS[cfg.dataset].layout
    assert root is not None
    if not root.is_dir():
        raise DataError(f"data_dir {root}: no such directory (expected {layout})")
    if cfg.dataset == "imagenet":
        _imagenet_folders(root)
    elif cfg.dataset == "tinyimagenet":
        tiny = _tiny_root(root)
        if (tiny / TINY_CACHE).is_file():
            return
        if not (tiny / "wnids.txt").is_file():
            raise DataError(f"data_dir {root}: missing wnids.txt ({layout})")
        for w in (tiny / "wnids.txt").read_text().split():
            if next((tiny / "train" / w / "images").glob("*.JPEG"), None) is None:
                raise DataError(f"data_dir {root}: no images in train/{w}/images/ ({layout})")
        if not (tiny / "val" / "val_annotations.txt").is_file() or not (tiny / "val" / "images").is_dir():
            raise DataError(f"data_dir {root}: missing val/images/ or val/val_annotations.txt ({layout})")
    else:
        folder, train, test, *_ = CIFAR_FILES[cfg.dataset]
        missing = [name for name in (*train, *test) if not (root / folder / name).is_file()]
        if missing:
            raise DataError(f"data_dir {root}: missing {folder}/{missing[0]} ({layout})")


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (train, val) split of range(n); val gets round(fraction * n) items."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(fraction * n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def shard(indices: torch.Tensor, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's equal, disjoint share of `indices`, reshuffled for each epoch (same order on all ranks)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = indices[torch.randperm(len(indices), generator=gen)]
    per_rank = len(order) // world
    return order[rank * per_rank:(rank + 1) * per_rank]


# --------------------------------------------------------------------------- pipelines


class Pipeline(Protocol):
    """What the trainer needs of a split's pipeline: its size, a reseedable augmentation stream, and batches."""

    def __len__(self) -> int: ...

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream (the trainer does it per (seed, epoch, rank) at each epoch)."""

    def batches(self, indices: torch.Tensor, batch_size: int, train: bool, drop_last: bool) -> Iterator[Batch]:
        """Normalised batches (channels_last) of `indices` in order; train: augmented."""


class DevicePipeline:
    """A uint8 data set resident on the device; batches are cropped, flipped and normalised there."""

    def __init__(self, x: np.ndarray, y: np.ndarray, spec: DatasetSpec, norm: Normalization,
                 device: torch.device) -> None:
        p = spec.pad
        images = torch.from_numpy(x).to(device)
        self.images = F.pad(images, (0, 0, p, p, p, p)) if p else images  # zero padding, as RandomCrop(pad)
        self.labels = torch.from_numpy(y).to(device)
        self.pad, self.flip, self.size = p, spec.flip, spec.image_size
        mean, std = torch.tensor(norm.mean), torch.tensor(norm.std)
        self.scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(device)
        self.arange = torch.arange(self.size, device=device)
        self.gen = torch.Generator(device=device)

    def __len__(self) -> int:
        return len(self.labels)

    def reseed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def batches(self, indices: torch.Tensor, batch_size: int, train: bool, drop_last: bool) -> Iterator[Batch]:
        indices = indices.to(self.labels.device)
        stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
        for start in range(0, stop, batch_size):
            yield self.batch(indices[start:start + batch_size], train)

    def batch(self, idx: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of `idx`: per-sample random crop and flip when training, then normalisation."""
        b, dev = len(idx), idx.device
        if train and self.pad:
            dy = torch.randint(0, 2 * self.pad + 1, (b, 1), device=dev, generator=self.gen)
            dx = torch.randint(0, 2 * self.pad + 1, (b, 1), device=dev, generator=self.gen)
        else:
            dy = dx = torch.full((b, 1), self.pad, device=dev)
        rows = dy + self.arange
        cols = dx + self.arange
        if train and self.flip:
            flip = torch.rand((b, 1), device=dev, generator=self.gen) < 0.5
            cols = torch.where(flip, dx + (self.size - 1) - self.arange, cols)
        x = self.images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, H, W, C) uint8
        x = torch.addcmul(self.shift, x.permute(0, 3, 1, 2), self.scale)  # NCHW view of NHWC: channels_last
        return x, self.labels[idx]


class Lighting:
    """AlexNet-style PCA lighting noise (the release's ImageNet augmentation, strength 0.1)."""

    eigval = torch.tensor([0.2175, 0.0188, 0.0045])
    eigvec = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        rgb = (self.eigvec * alpha * self.eigval).sum(dim=1)
        return img + rgb.view(3, 1, 1)


def _imagenet_folders(root: Path | None) -> tuple[Path, Path]:
    assert root is not None
    train, val = root / "train", root / "val"
    for d in (train, val):
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            raise DataError(f"data_dir {root}: missing class folders in {d.name}/ ({SPECS['imagenet'].layout})")
    return train, val


def _imagenet_transforms(train: bool):
    """The release's ImageNet transforms: RandomResizedCrop + flip + jitter + lighting, or resize-crop."""
    import torchvision.transforms as T

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4),
                          T.ToTensor(), Lighting(0.1), norm])
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])


class FolderPipeline:
    """An ImageFolder (ImageNet) through a DataLoader with workers and pinned memory.

    Augmentation draws from torch's generator: each pass's DataLoader gets a generator seeded by `reseed`, from
    which every worker k is seeded (torch seeds worker k's torch, random and numpy from it), so the draws depend
    on (seed, epoch, rank, worker); with no workers the main process's generator is reseeded instead.
    """

    def __init__(self, folder: Path, train: bool, subset: int | None, workers: int, device: torch.device) -> None:
        from torchvision.datasets import ImageFolder

        self.dataset = ImageFolder(str(folder), transform=_imagenet_transforms(train))
        if subset is not None:  # the release's mini-ImageNet: the first `subset` images of each class
            targets = np.asarray(self.dataset.targets)
            keep = np.concatenate([np.flatnonzero(targets == c)[:subset] for c in range(len(self.dataset.classes))])
            self.dataset.samples = [self.dataset.samples[i] for i in keep]
            self.dataset.targets = targets[keep].tolist()
        self.workers, self.device = workers, device
        self.seed = 0

    def __len__(self) -> int:
        return len(self.dataset.targets)

    def reseed(self, seed: int) -> None:
        self.seed = seed

    def batches(self, indices: torch.Tensor, batch_size: int, train: bool, drop_last: bool) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        if train and not self.workers:
            torch.manual_seed(self.seed)
        loader = DataLoader(self.dataset, batch_size=batch_size, sampler=indices.tolist(), num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", drop_last=drop_last,
                            generator=torch.Generator().manual_seed(self.seed),
                            prefetch_factor=4 if self.workers else None)
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True, memory_format=torch.channels_last),
                   y.to(self.device, non_blocking=True))


@dataclass
class Splits:
    """The train/val/test pipelines of one run, the index sets of each split, and the input normalisation.

    `val_idx` is empty under the release's protocol (val_fraction 0): nothing is carved out of training.
    """

    train: Pipeline
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    val: Pipeline
    test: Pipeline
    test_idx: torch.Tensor
    num_classes: int
    channels: int
    image_size: int
    norm: Normalization

    def eval_batches(self, split: str, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        """This rank's strided share of the val or test split, unaugmented."""
        pipe, idx = (self.val, self.val_idx) if split == "val" else (self.test, self.test_idx)
        return pipe.batches(idx[rank::world], batch_size, train=False, drop_last=False)


def load_splits(cfg: TrainConfig, device: torch.device) -> Splits:
    """Read the data set and build its pipelines on `device`, with the seeded validation split."""
    spec = SPECS[cfg.dataset]
    if cfg.dataset == "imagenet":
        train_dir, val_dir = _imagenet_folders(cfg.data_dir)
        train = FolderPipeline(train_dir, True, cfg.subset, cfg.loader_workers, device)
        val = FolderPipeline(train_dir, False, cfg.subset, cfg.loader_workers, device)
        test = FolderPipeline(val_dir, False, None, cfg.loader_workers, device)
        tr, va = split_indices(len(train), cfg.val_fraction, cfg.validation_seed)
        return Splits(train, torch.from_numpy(tr), torch.from_numpy(va), val, test, torch.arange(len(test)),
                      spec.num_classes, spec.channels, spec.image_size, Normalization(IMAGENET_MEAN, IMAGENET_STD))
    arrays = READERS[cfg.dataset](cfg.data_dir)
    tr, va = split_indices(len(arrays.train_y), cfg.val_fraction, cfg.validation_seed)
    if spec.mean is None or spec.std is None:  # measured on the training split (never on val or test)
        fit = arrays.train_x[tr].reshape(-1, spec.channels).astype(np.float64) / 255.0
        norm = Normalization(tuple(fit.mean(0).tolist()), tuple(fit.std(0).tolist()))
    else:
        norm = Normalization(spec.mean, spec.std)
    train = DevicePipeline(arrays.train_x, arrays.train_y, spec, norm, device)
    test = DevicePipeline(arrays.test_x, arrays.test_y, spec, norm, device)
    return Splits(train, torch.from_numpy(tr), torch.from_numpy(va), train, test,
                  torch.arange(len(arrays.test_y)), spec.num_classes, spec.channels, spec.image_size, norm)
