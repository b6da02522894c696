"""Data: readers of the real on-disk formats, splits, shards and the device pipeline's augmentation."""

import numpy as np
import pytest
import torch
from helpers.data_writers import write_cifar, write_imagefolder, write_tinyimagenet

from alignmixup.config import DATASETS, TrainConfig
from alignmixup.data import (
    READERS,
    SPECS,
    DataError,
    DevicePipeline,
    Normalization,
    load_splits,
    prepare_data,
    shard,
    split_indices,
)


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails the test."""
    import torchvision.datasets.utils as tvu

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(tvu, "download_url", refuse)
    monkeypatch.setattr(tvu, "download_and_extract_archive", refuse)


@pytest.mark.parametrize("classes,name", [(10, "cifar10"), (100, "cifar100")])
def test_cifar_reads_the_python_batches_without_downloading(tmp_path, offline, classes, name):
    written = write_cifar(tmp_path, classes=classes)
    cfg = TrainConfig(dataset=name, data_dir=tmp_path, val_fraction=0.2, network="preactresnet18")
    prepare_data(cfg)
    s = load_splits(cfg, torch.device("cpu"))
    assert s.num_classes == classes and len(s.train) == len(written["train_y"])
    assert len(s.val_idx) == round(0.2 * len(written["train_y"])) and len(s.test_idx) == len(written["test_y"])
    assert set(s.train_idx.tolist()).isdisjoint(s.val_idx.tolist())
    # an unaugmented test batch is the written image, normalised with the release's constants
    x, y = s.test.batch(torch.arange(3), train=False)
    img = torch.from_numpy(written["test_x"][:3].reshape(3, 3, 32, 32)).float() / 255
    mean, std = torch.tensor(SPECS[name].mean).view(1, 3, 1, 1), torch.tensor(SPECS[name].std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (img - mean) / std, atol=1e-5, rtol=1e-5)
    assert y.tolist() == written["test_y"][:3].tolist()


def test_tinyimagenet_layout_labels_follow_wnids_and_decode_once(tmp_path, offline):
    labels = write_tinyimagenet(tmp_path)
    wnids = (tmp_path / "wnids.txt").read_text().split()
    cfg = TrainConfig(dataset="tinyimagenet", data_dir=tmp_path, val_fraction=0.25)
    prepare_data(cfg)
    assert (tmp_path / "alignmixup-uint8-v1.npz").is_file()
    s = load_splits(cfg, torch.device("cpu"))
    assert s.num_classes == 200 and len(s.train) == 12 and len(s.test_idx) == 6
    assert s.test.labels.tolist() == [wnids.index(w) for w in labels]
    assert s.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    x, _ = s.train.batch(torch.arange(4), train=True)
    assert x.shape == (4, 3, 64, 64)


def test_imagenet_folder_subset_keeps_first_images_per_class(tmp_path):
    write_imagefolder(tmp_path, classes=3, per_class=5)
    cfg = TrainConfig(dataset="imagenet", data_dir=tmp_path, subset=2, network="resnet50", val_fraction=0.0,
                      loader_workers=0)
    s = load_splits(cfg, torch.device("cpu"))
    assert len(s.train) == 6
    assert [p.rsplit("/", 1)[1] for p, _ in s.train.dataset.samples] == ["img_0.JPEG", "img_1.JPEG"] * 3
    x, y = next(s.eval_batches("test", 4, 0, 1))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("name,layout", [("cifar10", "cifar-10-batches-py"), ("tinyimagenet", "wnids.txt"),
                                         ("imagenet", "train/")])
def test_a_wrong_layout_is_one_clear_error(tmp_path, offline, name, layout):
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but empty for cifar10; irrelevant junk for the others
    (tmp_path / "train").mkdir()
    cfg = TrainConfig(dataset=name, data_dir=tmp_path, network="resnet50" if name == "imagenet" else "preactresnet18")
    with pytest.raises(DataError) as err:
        prepare_data(cfg)
    msg = str(err.value)
    assert str(tmp_path) in msg and layout.split("/")[0] in msg and "\n" not in msg


def test_splits_are_seeded_and_shards_disjoint():
    tr, va = split_indices(100, 0.1, seed=5)
    _tr2, va2 = split_indices(100, 0.1, seed=5)
    assert np.array_equal(va, va2) and len(va) == 10 and not set(tr) & set(va)
    assert not np.array_equal(va, split_indices(100, 0.1, seed=6)[1])
    idx = torch.arange(101)
    a, b = shard(idx, 3, 0, 0, 2), shard(idx, 3, 0, 1, 2)
    assert len(a) == len(b) == 50 and not set(a.tolist()) & set(b.tolist())
    assert not torch.equal(a, shard(idx, 4, 0, 0, 2))  # reshuffled each epoch


def test_crops_and_flips_are_drawn_per_sample():
    img = np.arange(32 * 32, dtype=np.int64).reshape(1, 32, 32, 1) % 251
    x = np.repeat(img.astype(np.uint8), 64, axis=0)
    spec = SPECS["cifar10"]
    pipe = DevicePipeline(np.repeat(x, 3, axis=3), np.zeros(64, dtype=np.int64), spec,
                          Normalization((0.0,) * 3, (1.0,) * 3), torch.device("cpu"))
    pipe.reseed(0)
    out, _ = pipe.batch(torch.arange(64), train=True)
    distinct = {tuple(o[0].flatten()[:40].tolist()) for o in out}
    assert len(distinct) > 20  # one draw per batch would give a single crop
    # each output is a crop of the zero-padded image, possibly mirrored
    padded = np.pad(x[0, :, :, 0], 4).astype(np.float32) / 255
    o = out[0, 0].numpy()
    found = any(np.allclose(o, w[dy:dy + 32, dx:dx + 32]) for w in (padded, padded[:, ::-1].copy())
                for dy in range(9) for dx in range(9))
    assert found
    evald, _ = pipe.batch(torch.arange(2), train=False)
    torch.testing.assert_close(evald[0, 0], torch.from_numpy(x[0, :, :, 0]).float() / 255)


def test_every_data_set_has_one_spec_and_a_reader():
    assert tuple(SPECS) == DATASETS
    assert set(READERS) == set(DATASETS) - {"imagenet"}  # ImageNet is read by ImageFolder


def test_release_protocol_carves_nothing_out_of_training():
    s = load_splits(TrainConfig(dataset="digits", val_fraction=0), torch.device("cpu"))
    assert len(s.val_idx) == 0 and sorted(s.train_idx.tolist()) == list(range(len(s.train)))


def test_one_process_keeps_the_last_partial_batch_ddp_drops_it():
    s = load_splits(TrainConfig(dataset="digits", val_fraction=0), torch.device("cpu"))
    idx = torch.arange(10)
    assert [len(y) for _, y in s.train.batches(idx, 4, train=True, drop_last=False)] == [4, 4, 2]
    assert [len(y) for _, y in s.train.batches(idx, 4, train=True, drop_last=True)] == [4, 4]


def _imagenet_crops(root, rank: int, epoch: int, workers: int) -> torch.Tensor:
    """Training batches of the first 8 images as the trainer draws them for (seed 3, epoch, rank)."""
    from alignmixup.trainer import derive_seed

    cfg = TrainConfig(dataset="imagenet", data_dir=root, network="resnet50", val_fraction=0, loader_workers=workers)
    s = load_splits(cfg, torch.device("cpu"))
    s.train.reseed(derive_seed(3, epoch, rank, 2))
    return torch.cat([x for x, _ in s.train.batches(torch.arange(8), 2, train=True, drop_last=False)])


def test_imagenet_augmentation_is_drawn_per_rank_epoch_and_worker(tmp_path):
    write_imagefolder(tmp_path, classes=2, per_class=4, same_image=True)  # 8 copies of one image
    crops = _imagenet_crops(tmp_path, rank=0, epoch=0, workers=2)
    torch.testing.assert_close(crops, _imagenet_crops(tmp_path, rank=0, epoch=0, workers=2))  # reproducible
    assert not torch.allclose(crops, _imagenet_crops(tmp_path, rank=1, epoch=0, workers=2))  # per rank
    assert not torch.allclose(crops, _imagenet_crops(tmp_path, rank=0, epoch=1, workers=2))  # per epoch
    # worker 0 makes batches 0 and 2, worker 1 batches 1 and 3: one image, so equal batches mean equal draws
    assert not torch.allclose(crops[0:2], crops[2:4])
    single = _imagenet_crops(tmp_path, rank=0, epoch=0, workers=0)
    assert not torch.allclose(single, _imagenet_crops(tmp_path, rank=1, epoch=0, workers=0))
