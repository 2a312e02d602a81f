"""Tests for nas_prune.data.folder: ``--dataset folder:PATH`` on tiny trees of PNGs."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nas_prune.data import check_dataset_name, load_dataset
from nas_prune.data.folder import ImageFolderDataset, folder_task, load_image
from nas_prune.errors import NasPruneError
from nas_prune.task import ClassificationTask, TaskError, check_task, resolve_task

CLASSES = ("ant", "bee", "cat")


def write_image(path: Path, size=(12, 12), mode="RGB", seed=0) -> Path:
    """A random image of ``size`` (height, width) in ``mode``, saved in the format its suffix names."""
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def make_tree(root: Path, classes=CLASSES, n=6, mode="RGB", size=(12, 12)) -> Path:
    """``root/<class>/<i>.png``, n per class; ``bee/5`` is 16 x 10 (PNG, upper-case suffix) and
    ``cat/5`` a JPEG; a text file and a hidden file that must be ignored."""
    for c, name in enumerate(classes):
        for i in range(n):
            odd = (name, i) in {("bee", n - 1), ("cat", n - 1)}
            suffix = {"bee": ".PNG", "cat": ".jpg"}.get(name, ".png") if odd else ".png"
            shape = (16, 10) if name == "bee" and odd else size
            write_image(root / name / f"{i}{suffix}", shape, mode, seed=10 * c + i)
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".hidden.png").write_bytes(b"junk")
    return root


def tiny_model(channels: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes),
    )  # fmt: skip


# --- a tree of class folders --------------------------------------------------------------------------


def test_class_folders_become_a_classification_task(tmp_path):
    root = make_tree(tmp_path / "pets")
    task = resolve_task(None, dataset=f"folder:{root}")
    assert isinstance(task, ClassificationTask) and task.name == "folder-pets"
    assert (task.size("train"), task.size("val"), task.size("test")) == (16, 2, 0)  # round(18 * 0.1)
    train, val = task.split("train"), task.split("val")
    assert train.classes == CLASSES and train.augment and not val.augment
    assert sorted(train.files + val.files) == sorted(str(p) for p in root.glob("*/[0-9]*"))
    assert task.model_kwargs == {"in_channels": 3, "num_classes": 3}
    assert task.example().shape == (2, 3, 12, 12)
    torch.manual_seed(1)
    first = list(task.loader("train", 4, train=True, seed=0))
    torch.manual_seed(1)
    again = list(task.loader("train", 4, train=True, seed=0))
    assert len(first) == 4
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        assert x.shape == (4, 3, 12, 12) and x.dtype == torch.float32
        assert y.shape == (4,) and y.dtype == torch.int64
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(train.labels)


def test_train_split_without_augmentation_is_normalised(tmp_path):
    task = folder_task(make_tree(tmp_path / "t"))
    plain = copy.copy(task.split("train"))
    plain.augment = False
    x = torch.stack([plain[i][0] for i in range(len(plain))])  # < 256 images: all of them in the stats
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_val_is_not_augmented_and_train_is(tmp_path):
    task = folder_task(make_tree(tmp_path / "t"))
    val, train = task.split("val"), task.split("train")
    torch.manual_seed(0)
    assert torch.equal(val[0][0], val[0][0])
    draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    flips = ImageFolderDataset(
        train.files[:1], train.labels[:1], mode="RGB", size=(12, 12), mean=(0.0,) * 3, std=(1.0,) * 3,
        augment=True, crop_padding=0,
    )  # fmt: skip
    image = load_image(train.files[0], "RGB", (12, 12)).float() / 255
    seen = [flips[0][0] for _ in range(16)]  # padding 0: the image or its mirror, nothing else
    assert all(torch.equal(x, image) or torch.equal(x, image.flip(2)) for x in seen)
    assert any(torch.equal(x, image) for x in seen) and any(torch.equal(x, image.flip(2)) for x in seen)


def test_sizes_and_channels(tmp_path):
    gray = folder_task(make_tree(tmp_path / "gray", mode="L"))
    assert gray.model_kwargs["in_channels"] == 1 and gray.example().shape == (2, 1, 12, 12)
    assert gray.split("train")[0][0].shape == (1, 12, 12)
    mixed = make_tree(tmp_path / "mixed", mode="L")
    write_image(mixed / "ant" / "0.png", mode="RGB")  # the first image of a class is always probed
    assert folder_task(mixed).model_kwargs["in_channels"] == 3
    small = folder_task(tmp_path / "gray", size=8)
    assert small.example().shape == (2, 1, 8, 8)
    odd = [i for i, f in enumerate(small.split("train").files) if f.endswith(".PNG")]
    assert odd and small.split("train")[odd[0]][0].shape == (1, 8, 8)
    assert folder_task(tmp_path / "gray", size=(8, 6)).example().shape == (2, 1, 8, 6)


def test_train_val_test_layout(tmp_path):
    root = tmp_path / "data"
    make_tree(root / "train", n=4)
    make_tree(root / "val", classes=("bee", "cat"), n=2)  # a class missing from val is fine
    make_tree(root / "test", n=3)
    task = resolve_task(None, dataset=f"folder:{root}")
    assert (task.size("train"), task.size("val"), task.size("test")) == (12, 4, 9)
    assert sorted(set(task.split("val").labels)) == [1, 2]  # train's class indices
    assert not task.split("val").augment and not task.split("test").augment
    x, y = next(iter(task.loader("test", 9, train=False)))
    assert x.shape == (9, 3, 12, 12) and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert resolve_task(None, dataset=f"folder:{root}", subset=5).size("train") == 5


def test_a_tiny_model_trains_one_step(tmp_path):
    task = folder_task(make_tree(tmp_path / "t"))
    model = tiny_model(3, 3)
    check_task(task, model)
    batch = next(iter(task.loader("train", 4, train=True, seed=0)))
    loss, metrics = task.step(model, batch)
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and 0.0 <= metrics["accuracy"] <= 1.0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_task_pickles_with_its_datasets(tmp_path):
    task = folder_task(make_tree(tmp_path / "t"))
    back = pickle.loads(pickle.dumps(task))
    assert back.size("train") == task.size("train")
    assert torch.equal(back.split("val")[1][0], task.split("val")[1][0])


# --- names and bad input ------------------------------------------------------------------------------


def test_folder_names_pass_the_name_check_but_not_load_dataset():
    assert check_dataset_name("folder:/some/where") == "folder:/some/where"
    with pytest.raises(NasPruneError, match="resolve_task") as err:
        load_dataset("folder:/some/where")
    assert "\n" not in str(err.value)
    with pytest.raises(NasPruneError, match="folder:PATH"):
        check_dataset_name("imagenet")
    with pytest.raises(NasPruneError, match="names no folder"):
        check_dataset_name("folder:")


def _corrupt_first(root: Path) -> None:
    make_tree(root)
    (root / "bee" / "0.png").write_bytes(b"\x89PNG not really")


BAD = {
    "missing": (lambda root: None, "does not exist"),
    "file": (lambda root: root.write_text("x"), "is not a directory"),
    "empty": (lambda root: root.mkdir(), "no class folders in"),
    "loose images": (lambda root: write_image(root / "a.png"), "images lie directly in"),
    "no images": (lambda root: [(root / c).mkdir(parents=True) for c in CLASSES], "no images in the class"),
    "empty class": (lambda root: [make_tree(root), (root / "zzz").mkdir()], "zzz has no images"),
    "one class": (lambda root: write_image(root / "ant" / "0.png"), "one class folder (ant)"),
    "corrupt": (_corrupt_first, "cannot read image"),
    "val only": (lambda root: make_tree(root / "val"), "has val/ but no train/"),
    "foreign val class": (
        lambda root: [make_tree(root / "train"), make_tree(root / "val", classes=("ant", "yak"), n=1)],
        "val class folder(s) yak",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_trees_fail_in_one_line(tmp_path, case):
    build, message = BAD[case]
    root = tmp_path / "tree"
    build(root)
    with pytest.raises(TaskError) as err:
        resolve_task(None, dataset=f"folder:{root}")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, NasPruneError)


def test_bad_arguments_and_late_corrupt_images(tmp_path):
    root = make_tree(tmp_path / "t")
    with pytest.raises(TaskError, match="size must be"):
        folder_task(root, size=(0, 4))
    with pytest.raises(TaskError, match="no path given"):
        resolve_task(None, dataset="folder:")
    with pytest.raises(TaskError, match="val_fraction"):
        folder_task(root, val_fraction=1.0)
    task = folder_task(root)
    (root / "ant" / "3.png").write_bytes(b"broken")  # not probed: found when read, named in one line
    with pytest.raises(TaskError, match="3.png") as err:
        list(task.loader("train", 32, train=False))
    assert "\n" not in str(err.value)


def test_the_commands_take_a_folder_tree(tmp_path, capsys):
    from nas_prune.cli import run_cli
    from nas_prune.search import main as search_main
    from nas_prune.train import main as train_main

    root = make_tree(tmp_path / "pets", n=8, size=(16, 16))
    out = tmp_path / "dense.pt"
    argv = ["--dataset", f"folder:{root}", "--model", "convnet", "--epochs", "0.5", "--batch-size", "8",
            "--output", str(out), "--no-progress"]  # fmt: skip
    assert run_cli(train_main, argv) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["spec"]["kwargs"] == {"in_channels": 3, "num_classes": 3} and 0 <= ckpt["val_accuracy"] <= 1
    argv = ["--dataset", f"folder:{root}", "--model", "convnet", "--budget-flops", "0.5", "--dry-run"]
    assert run_cli(search_main, argv) == 0
    assert "convnet on folder-pets" in capsys.readouterr().out
    assert run_cli(search_main, ["--dataset", f"folder:{tmp_path / 'nowhere'}", "--budget-flops", "0.5"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
