"""The detection example (examples/detection) at its tiny size: model, data, loss, NMS, mAP, task."""

from __future__ import annotations

import pickle

import pytest
import torch

import nas_prune
from examples.detection.data import CanvasSplit, collate
from examples.detection.loss import YoloLoss, batched_nms, box_iou, decode
from examples.detection.model import TinyYolo
from examples.detection.score import mean_ap50
from examples.detection.task import tiny_model, tiny_task
from nas_prune.task import check_task

CANVAS = 64


@pytest.fixture(scope="module")
def canvases():
    return CanvasSplit("train", 16, CANVAS)()


def test_model_returns_both_heads_per_anchor_and_class():
    out = TinyYolo(num_classes=10, width=8)(torch.zeros(3, 1, CANVAS, CANVAS))
    assert set(out) == {"p8", "p16"}
    assert out["p8"].shape == (3, 3 * 15, CANVAS // 8, CANVAS // 8)
    assert out["p16"].shape == (3, 3 * 15, CANVAS // 16, CANVAS // 16)


def test_canvas_has_one_to_four_boxes_inside_and_is_deterministic(canvases):
    for i in range(len(canvases)):
        image, target = canvases[i]
        assert image.shape == (1, CANVAS, CANVAS)
        boxes, labels = target["boxes"], target["labels"]
        assert 1 <= len(boxes) <= 4 and labels.shape == (len(boxes),) and labels.dtype == torch.int64
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= CANVAS).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
    again = CanvasSplit("train", 16, CANVAS)()
    for i in (0, 7):
        assert torch.equal(canvases[i][0], again[i][0])
        assert torch.equal(canvases[i][1]["boxes"], again[i][1]["boxes"])
    assert not torch.equal(canvases[0][0], canvases[1][0])


def test_loss_is_finite_and_a_fixed_batch_overfits(canvases):
    torch.manual_seed(0)
    images, targets = collate([canvases[i] for i in range(8)])
    model, loss_fn = TinyYolo(width=8), YoloLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = loss_fn(model(images), targets)
        assert loss.ndim == 0 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_decode_gives_torchmetrics_style_detections(canvases):
    images, _ = collate([canvases[i] for i in range(4)])
    model = TinyYolo(width=8).eval()
    torch.nn.init.zeros_(model.head8.bias)  # every score 0.25: candidates survive the threshold
    torch.nn.init.zeros_(model.head16.bias)
    with torch.no_grad():
        detections = decode(model(images), max_detections=50)
    assert len(detections) == 4
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        n = len(det["scores"])
        assert 0 < n <= 50
        assert det["boxes"].shape == (n, 4) and det["labels"].dtype == torch.int64
        assert (det["boxes"] >= 0).all() and (det["boxes"] <= CANVAS).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_batched_nms_equals_greedy_nms():
    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(2, 60, 2, generator=gen) * 20  # crowded: many overlaps
    boxes = torch.cat([corner, corner + 10 + torch.rand(2, 60, 2, generator=gen) * 10], dim=-1)
    scores, labels = torch.rand(2, 60, generator=gen), torch.randint(0, 2, (2, 60), generator=gen)
    keep = batched_nms(boxes, scores, labels, 0.5)
    for b in range(2):
        kept: list[int] = []
        for i in scores[b].argsort(descending=True).tolist():
            same = [j for j in kept if labels[b, j] == labels[b, i]]
            if not same or box_iou(boxes[b, i : i + 1], boxes[b, same]).max() <= 0.5:
                kept.append(i)
        assert sorted(keep[b].nonzero().flatten().tolist()) == sorted(kept)
        assert 2 < len(kept) < 50


def test_map50_is_one_for_the_truth_and_zero_for_nothing(canvases):
    targets = [canvases[i][1] for i in range(6)]
    perfect = [
        {"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets
    ]
    empty = [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    ] * 6
    assert mean_ap50(perfect, targets) == pytest.approx(1.0)
    assert mean_ap50(empty, targets) == 0.0
    shifted = [{**p, "boxes": p["boxes"] + 40.0} for p in perfect]  # no box overlaps its truth
    assert mean_ap50(shifted, targets) == 0.0


def test_tiny_task_passes_check_task_and_pickles():
    task = tiny_task()
    check_task(task, tiny_model())
    again = pickle.loads(pickle.dumps(task))
    assert again.score_name == "mAP50" and again.size("val") == task.size("val")


def test_channel_groups_cover_backbone_and_neck_never_heads():
    model, example = tiny_model(), tiny_task().example()
    groups = nas_prune.channel_groups(model, example)
    names = {g.name for g in groups if g.prunable}
    assert {"stem.0", "stage8.0.0", "stage16.1.reduce.0", "lateral.0", "fuse.1.0"} <= names
    assert not any(g.name.startswith("head") for g in groups)
    slim = nas_prune.prune(model, example, 0.5)
    out = slim(example)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in model(example).items()}
    macs, _ = nas_prune.count_macs(slim, example)
    assert macs < 0.5 * nas_prune.count_macs(model, example)[0]


def _fake_metrics(widths: dict[str, int]) -> dict:
    """A retrain metrics.json's figures (the fields run.py reads), as the Task wiring will write them."""
    figures = {"latency_batch": 1, "latency_large_batch": 256, "latency_device": "cpu (test)"}
    dense = {"test_score": 0.80, "val_score": 0.81, "params": 1000, "flops": 4000, "latency_ms": 2.0,
             "latency_large_ms": 90.0, **figures}  # fmt: skip
    return {"test_score": 0.78, "val_score": 0.80, "params": 180, "flops": 1200, "latency_ms": 1.0,
            "latency_large_ms": 30.0, "speedup": 2.0, "speedup_low": 1.9, "speedup_high": 2.1,
            "speedup_large": 3.0, "speedup_large_low": 2.8, "speedup_large_high": 3.2, "widths": widths,
            "dense": dense, **figures}  # fmt: skip


def test_case_study_table_and_figure(tmp_path):
    from examples.detection.run import case_study_rows, plot_kept_channels, write_case_study

    model, example = tiny_model(), tiny_task().example()
    metrics = _fake_metrics({"stem.0": 4, "stage16.0.0": 20})
    rows = case_study_rows(metrics, dense_bytes=4000, pruned_bytes=1000)
    by_name = {r["figure"]: r for r in rows}
    assert by_name["mAP@0.5 (test)"]["change"] == "-0.0200"
    assert by_name["FLOPs per image"]["change"] == "70% fewer"
    assert by_name["parameters"]["ratio"] == pytest.approx(0.18)
    assert by_name["model size (bytes, state_dict file)"]["change"] == "75% smaller"
    assert by_name["CPU latency, batch 256 (ms)"]["ratio"] == 3.0  # the paired speed-up, not 30 / 90
    md, csv_path = write_case_study(tmp_path, metrics, rows, ["a note"])
    assert "| FLOPs per image | 4,000 | 1,200 | 70% fewer |" in md.read_text()
    assert csv_path.read_text().splitlines()[0] == "figure,dense,pruned,ratio,change"
    png = plot_kept_channels(model, example, metrics["widths"], tmp_path / "kept.png")
    assert png.stat().st_size > 1000


def test_run_settings_per_size():
    from examples.detection.run import parse_args

    tiny = parse_args(["--size", "tiny", "--trials", "3"])
    assert tiny.trials == 3 and tiny.epochs == 1 and str(tiny.output).endswith("detection-tiny")
    assert parse_args([]).size == "full"


def test_run_tiny_end_to_end(tmp_path):
    from examples.detection.run import main

    metrics = main(["--size", "tiny", "--output", str(tmp_path), "--trials", "3"])
    for name in ("dense.pt", "pruned.pt", "case_study.md", "case_study.csv", "kept_channels.png"):
        assert (tmp_path / name).is_file(), name
    assert metrics["flops"] <= 0.3 * metrics["dense"]["flops"]
    assert "mAP@0.5 (test)" in (tmp_path / "case_study.md").read_text()
