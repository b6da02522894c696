"""Writers of small data directories in the real on-disk formats (CIFAR pickles, Tiny-ImageNet, ImageFolder)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def write_cifar(root: Path, classes: int = 10, per_batch: int = 20, test: int = 30, seed: int = 0) -> dict:
    """CIFAR-10 (`cifar-10-batches-py/data_batch_1..5`, `test_batch`) or CIFAR-100 (`cifar-100-python/train`,
    `test`) python pickles, as the official tarballs hold them; returns the arrays written."""
    rng = np.random.default_rng(seed)
    batches = 5 if classes == 10 else 1
    n_train = per_batch * batches
    data = {
        "train_x": rng.integers(0, 256, (n_train, 3072), dtype=np.uint8),
        "train_y": rng.integers(0, classes, n_train),
        "test_x": rng.integers(0, 256, (test, 3072), dtype=np.uint8),
        "test_y": rng.integers(0, classes, test),
    }
    if classes == 10:
        base, key = root / "cifar-10-batches-py", "labels"
        for i in range(batches):
            sl = slice(i * per_batch, (i + 1) * per_batch)
            _pickle(base / f"data_batch_{i + 1}", {"data": data["train_x"][sl], key: data["train_y"][sl].tolist(),
                                                   "batch_label": f"training batch {i + 1} of 5"})
        _pickle(base / "test_batch", {"data": data["test_x"], key: data["test_y"].tolist()})
        _pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        base, key = root / "cifar-100-python", "fine_labels"
        _pickle(base / "train", {"data": data["train_x"], key: data["train_y"].tolist(),
                                 "coarse_labels": (data["train_y"] // 5).tolist()})
        _pickle(base / "test", {"data": data["test_x"], key: data["test_y"].tolist()})
        _pickle(base / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    return data


def _jpeg(path: Path, rng: np.random.Generator, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "JPEG")


def write_tinyimagenet(root: Path, wnids: tuple[str, ...] = ("n01443537", "n01629819", "n01641577"),
                       per_class: int = 4, val: int = 6, seed: int = 0) -> list[str]:
    """The official zip's layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(per_class):
            _jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", rng, 64)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines, labels = [], []
    for i in range(val):
        w = wnids[i % len(wnids)]
        _jpeg(root / "val" / "images" / f"val_{i}.JPEG", rng, 64)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        labels.append(w)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return labels


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 5, val: int = 2, seed: int = 0,
                      same_image: bool = False) -> None:
    """ImageNet's ImageFolder layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (one image repeated if asked)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            draw = np.random.default_rng(seed) if same_image else rng
            _jpeg(root / "train" / f"n{c:08d}" / f"img_{i}.JPEG", draw, 40)
        for i in range(val):
            _jpeg(root / "val" / f"n{c:08d}" / f"val_{i}.JPEG", rng, 40)
