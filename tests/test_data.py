"""Tests for nas_prune.data: readers, file search, split, factories and the batched loader."""

from __future__ import annotations

import gzip
import pickle
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas_prune import data
from nas_prune.data import (
    check_dataset_name,
    dataset_names,
    load_dataset,
    make_loader,
    make_synthetic,
    read_cifar_batches,
    read_idx,
)
from nas_prune.data import files as data_files
from nas_prune.errors import NasPruneError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an idx file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_idx_dataset(folder: Path, n_train: int = 40, n_test: int = 12, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $NAS_PRUNE_DATA, an empty ./data, a fake system folder, and no network."""
    monkeypatch.delenv("NAS_PRUNE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_files, "SYSTEM_DATA_DIR", tmp_path / "system")

    def offline(url, dest, timeout=None):
        raise OSError(f"offline test: {url}")

    monkeypatch.setattr(data_files, "_download_file", offline)
    return tmp_path


# --- readers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_raw_and_gz(tmp_path, name):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    x = read_idx(write_idx(tmp_path / name, array))
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 4)
    assert torch.equal(x, torch.from_numpy(array.astype(np.uint8)))


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(NasPruneError, match="not an idx file"):
        read_idx(bad)
    short = write_idx(tmp_path / "short-idx1-ubyte", np.arange(5))
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(NasPruneError, match="header promises"):
        read_idx(short)


def test_mnist_from_raw_idx_files(isolated):
    write_idx_dataset(isolated / "given", gz=False)
    splits = load_dataset("mnist", data_dir=isolated / "given", val_fraction=0.25, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 12)
    assert splits.train.x.shape[1:] == (1, 28, 28) and splits.train.x.dtype == torch.uint8
    assert splits.train.y.dtype == torch.int64
    assert (splits.in_channels, splits.input_size, splits.num_classes) == (1, (28, 28), 10)
    assert not splits.hflip and splits.crop_padding == 2  # no flips for digits


def write_cifar(folder: Path, files: list[str], n: int, label_key: bytes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    written = {}
    folder.mkdir(parents=True)
    for file in files:
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / file, "wb") as fh:
            pickle.dump({b"data": pixels, label_key: list(range(n)), b"batch_label": b"x"}, fh)
        written[file] = pixels
    return written


def test_cifar10_pickle_reader(isolated):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    pixels = write_cifar(isolated / "data" / "cifar10" / "cifar-10-batches-py", files, 4, b"labels")
    x, y = read_cifar_batches([isolated / "data/cifar10/cifar-10-batches-py/data_batch_1"])
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3]
    # Rows are stored channel-major: R plane (1024 values), then G, then B.
    assert torch.equal(x[1, 2].flatten(), torch.from_numpy(pixels["data_batch_1"][1, 2048:]))

    splits = load_dataset("cifar10", val_fraction=0.25, download=False)  # found under ./data/cifar10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 4)
    assert splits.in_channels == 3 and splits.input_size == (32, 32) and splits.crop_padding == 4
    assert splits.hflip and len(splits.mean) == 3


def test_cifar100_uses_fine_labels(isolated):
    write_cifar(isolated / "given" / "cifar-100-python", ["train", "test"], 6, b"fine_labels")
    splits = load_dataset("cifar100", data_dir=isolated / "given", val_fraction=0.5, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 3, 6)
    assert splits.test.y.tolist() == list(range(6))


# --- split -----------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete():
    a = load_dataset("synthetic", seed=3)
    b = load_dataset("synthetic", seed=3)
    c = load_dataset("synthetic", seed=4)
    assert torch.equal(a.val.indices, b.val.indices) and torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.val.indices, c.val.indices)
    train_idx, val_idx = set(a.train.indices.tolist()), set(a.val.indices.tolist())
    assert not train_idx & val_idx
    assert train_idx | val_idx == set(range(512))
    assert len(a.val) == round(512 * 0.1) and len(a.train) + len(a.val) == 512
    (full_x, full_y), (test_x, test_y) = make_synthetic()
    assert torch.equal(a.val.x, full_x[a.val.indices]) and torch.equal(a.val.y, full_y[a.val.indices])
    # The test set is never split or reordered.
    assert torch.equal(a.test.x, test_x) and torch.equal(a.test.y, test_y)
    assert torch.equal(a.test.x, c.test.x)


def test_subset_limits_every_split():
    splits = load_dataset("synthetic", subset=100, val_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 100)
    again = load_dataset("synthetic", subset=100, val_fraction=0.2)
    assert torch.equal(splits.train.indices, again.train.indices)
    assert torch.equal(splits.test.indices, again.test.indices)


def test_mean_std_come_from_train_split():
    splits = load_dataset("synthetic")
    x = splits.train.x.double() / 255
    assert splits.mean[0] == pytest.approx(x.mean().item(), abs=1e-6)
    assert splits.std[0] == pytest.approx(x.std().item(), rel=1e-3)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_is_found(isolated, monkeypatch):
    monkeypatch.setattr(data_files, "SYSTEM_DATA_DIR", FASHION_DIR.parent)
    splits = load_dataset(download=False)
    assert splits.name == "fashion-mnist" and splits.source == str(FASHION_DIR)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert splits.train.x.shape[1:] == (1, 28, 28) and splits.train.x.dtype == torch.uint8
    assert splits.num_classes == 10 and splits.hflip
    assert 0.25 < splits.mean[0] < 0.32 and 0.33 < splits.std[0] < 0.37


# --- search, download, errors ----------------------------------------------------------------------


def test_missing_data_names_every_directory(isolated, monkeypatch):
    monkeypatch.setenv("NAS_PRUNE_DATA", str(isolated / "env"))
    with pytest.raises(NasPruneError) as err:
        load_dataset("mnist", data_dir=isolated / "given", download=False)
    message = str(err.value)
    for folder in (isolated / "given", isolated / "env", "./data", isolated / "system"):
        assert str(folder) in message
    assert "downloading is off" in message and "--data-dir" in message and "\n" not in message


def test_failed_download_is_one_line_error(isolated):
    with pytest.raises(NasPruneError) as err:
        load_dataset("fashion-mnist")  # download=True, but the downloader is offline
    message = str(err.value)
    assert "download failed" in message and "apt-get install dataset-fashion-mnist" in message
    assert "\n" not in message
    assert not (isolated / "data").exists()  # no empty folders left behind


def test_download_writes_into_data_dir(isolated, monkeypatch):
    source = isolated / "mirror"
    write_idx_dataset(source)
    urls = []

    def fake_download(url, dest, timeout=None):
        urls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(data_files, "_download_file", fake_download)
    splits = load_dataset("mnist", data_dir=isolated / "dl", val_fraction=0.5)
    assert len(urls) == 4 and all(
        u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for u in urls
    )
    assert (isolated / "dl" / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert len(splits.train) + len(splits.val) == 40


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(NasPruneError) as err:
        load_dataset("imagenet")
    for name in dataset_names():
        assert name in str(err.value)


def test_dataset_name_aliases():
    assert check_dataset_name("FashionMNIST") == "fashion-mnist"
    assert check_dataset_name("fashion_mnist") == "fashion-mnist"
    assert check_dataset_name("CIFAR-10") == "cifar10"
    assert check_dataset_name("pkg.mod:fn") == "pkg.mod:fn"
    with pytest.raises(NasPruneError):
        check_dataset_name("pkg.mod:")


# --- factories -------------------------------------------------------------------------------------


def test_factory_with_dataset_and_arrays(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import torch

            class Items(torch.utils.data.Dataset):
                def __len__(self):
                    return 20
                def __getitem__(self, i):
                    return torch.full((8, 8), i / 20.0), i % 4

            def build():
                test_x = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)  # N H W C
                return Items(), (test_x, np.arange(6) % 4)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NasPruneError, match="train images are"):
        load_dataset("my_data:build")  # train is 1 x 8 x 8, test 3 x 8 x 8
    (tmp_path / "my_data2.py").write_text(
        "import torch\n"
        "def build():\n"
        "    x = torch.rand(20, 8, 8)\n"
        "    return (x, torch.arange(20) % 4), (x[:5], torch.arange(5) % 4)\n"
    )
    splits = load_dataset("my_data2:build", val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 5)
    assert splits.train.x.dtype == torch.float32 and splits.train.x.shape[1:] == (1, 8, 8)
    assert splits.num_classes == 4 and not splits.hflip
    x, y = next(iter(splits.loader("train", 4, train=True)))
    assert x.shape == (4, 1, 8, 8)


def test_factory_dataset_is_materialised(tmp_path, monkeypatch):
    (tmp_path / "items_data.py").write_text(
        "import torch\n"
        "class Items(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n"
        "        return 10\n"
        "    def __getitem__(self, i):\n"
        "        return torch.full((2, 6, 6), i, dtype=torch.uint8), i % 2\n"
        "def build():\n"
        "    return Items(), Items()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    splits = load_dataset("items_data:build", val_fraction=0.2)
    assert splits.test.x.dtype == torch.uint8 and splits.test.x.shape == (10, 2, 6, 6)
    assert splits.test.x[7].unique().tolist() == [7] and splits.num_classes == 2


def test_bad_factories():
    with pytest.raises(NasPruneError, match="cannot import"):
        load_dataset("no_such_module_xyz:build")
    with pytest.raises(NasPruneError, match="no attribute"):
        load_dataset("nas_prune.data:nope")
    splits = load_dataset("nas_prune.data:make_synthetic")  # make_synthetic is itself a factory
    assert len(splits.train) + len(splits.val) == 512


# --- loader ----------------------------------------------------------------------------------------


def test_loader_shapes_dtypes_and_normalisation():
    splits = load_dataset("synthetic")
    loader = splits.loader("train", 64, train=False)
    assert len(loader) == 8  # ceil(461 / 64)
    batches = list(loader)
    assert len(batches) == 8 and batches[0][0].shape == (64, 1, 28, 28) and len(batches[-1][1]) == 461 % 64
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, splits.train.y)  # no shuffle when train=False
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2
    assert len(splits.loader("train", 64, train=True, drop_last=True)) == 7


def test_train_loader_shuffles_reproducibly():
    splits = load_dataset("synthetic")
    first = [y for _, y in splits.loader("train", 461, train=True, seed=1)]
    loader = splits.loader("train", 461, train=True, seed=1)
    epoch1, epoch2 = next(iter(loader))[1], next(iter(loader))[1]
    assert torch.equal(first[0], epoch1) and not torch.equal(epoch1, epoch2)
    assert sorted(epoch1.tolist()) == sorted(splits.train.y.tolist())


def test_augmentation_is_a_flip_or_a_shift():
    n = 32
    x = torch.randint(0, 256, (n, 2, 12, 12), dtype=torch.uint8)
    split = data.TensorSplit(x, torch.arange(n))  # labels identify the source image
    mean, std = (0.0, 0.0), (1.0, 1.0)  # normalised value == pixel / 255

    flips = make_loader(split, n, train=True, mean=mean, std=std, crop_padding=0, hflip=True)
    out, idx = next(iter(flips))
    src = x[idx].float() / 255
    flipped = torch.tensor([torch.equal(o, s.flip(2)) for o, s in zip(out, src, strict=True)])
    same = torch.tensor([torch.equal(o, s) for o, s in zip(out, src, strict=True)])
    assert bool((flipped | same).all()) and 0 < int(flipped.sum()) < n

    crops = make_loader(split, n, train=True, mean=mean, std=std, crop_padding=2, hflip=False)
    out, idx = next(iter(crops))
    assert out.shape == (n, 2, 12, 12)
    padded = F.pad(x[idx].float() / 255, (2, 2, 2, 2))
    shifts = set()
    for o, p in zip(out, padded, strict=True):
        match = [
            (dy, dx) for dy in range(5) for dx in range(5) if torch.equal(o, p[:, dy : dy + 12, dx : dx + 12])
        ]
        assert match
        shifts.add(match[0])
    assert len(shifts) > 1

    plain = make_loader(split, n, train=True, augment=False, mean=mean, std=std)
    out, idx = next(iter(plain))
    assert torch.equal(out, x[idx].float() / 255)


def test_loader_rejects_bad_split_name():
    with pytest.raises(ValueError):
        load_dataset("synthetic").loader("validation", 8, train=False)
