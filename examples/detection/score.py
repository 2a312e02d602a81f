"""mAP@0.5 with a kept COCO evaluator (faster-coco-eval, the C++ reimplementation of pycocotools'
COCOeval whose results match it), not with code of our own.

Why not torchmetrics' ``MeanAveragePrecision``: it refuses to run without torchvision (its
constructor checks for it, and it converts boxes with ``torchvision.ops``), and torchvision is not a
dependency of nas_prune. faster-coco-eval is the backend torchmetrics would call; here it is called
directly, with the same settings: COCO's 101-point interpolated AP, IoU threshold 0.5, all areas, at
most 100 detections per image, averaged over the classes present in the ground truth.

Example:
    >>> mean_ap50(predictions, targets)      # lists of per-image dicts, torchmetrics' format
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .loss import decode

__all__ = ["map50", "mean_ap50"]


def _coco_api():
    """faster-coco-eval's ``COCO`` and ``COCOeval_faster``, or one clear ImportError."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as err:
        raise ImportError(
            "the detection example's mAP needs faster-coco-eval: pip install -e '.[examples]'"
        ) from err
    return COCO, COCOeval_faster


def _quiet(*_: Any) -> None:
    """A print function that prints nothing (the evaluator's progress lines)."""


def mean_ap50(predictions: Sequence[dict], targets: Sequence[dict], num_classes: int = 10) -> float:
    """COCO mAP at IoU 0.5 of ``predictions`` (``{"boxes" xyxy, "scores", "labels"}`` per image) against
    ``targets`` (``{"boxes" xyxy, "labels"}``); 0.0 when nothing is predicted, nan without ground truth."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    COCO, COCOeval = _coco_api()
    images, truth, found = [], [], []
    for image_id, (pred, target) in enumerate(zip(predictions, targets, strict=True), start=1):
        images.append({"id": image_id})
        for box, label in zip(_xywh(target["boxes"]), target["labels"].tolist(), strict=True):
            truth.append({"id": len(truth) + 1, "image_id": image_id, "category_id": int(label) + 1,
                          "bbox": box, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
        scores, labels = pred["scores"].tolist(), pred["labels"].tolist()
        for box, score, label in zip(_xywh(pred["boxes"]), scores, labels, strict=True):
            found.append([image_id, *box, score, int(label) + 1])
    if not truth:
        return float("nan")
    if not found:
        return 0.0
    ground = COCO(
        {"images": images, "annotations": truth, "categories": [{"id": c + 1} for c in range(num_classes)]},
        print_function=_quiet,
    )
    result = ground.loadRes(np.asarray(found, dtype=np.float64))
    evaluator = COCOeval(ground, result, "bbox", print_function=_quiet)
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # [recall points, classes], all areas, 100 dets
    present = precision[:, (precision > -1).any(axis=0)]
    return float(present.mean()) if present.size else 0.0


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    """xyxy boxes as COCO's ``[x, y, width, height]`` lists."""
    boxes = boxes.detach().cpu().double().reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


def map50(model: nn.Module, batches: Iterable[Any]) -> float:
    """The task's score: mAP@0.5 of ``model``'s decoded detections over ``batches`` of ``(images,
    targets)``. nas_prune calls it in eval mode under inference mode."""
    predictions, targets = [], []
    for images, batch_targets in batches:
        detections = decode(model(images))
        predictions += [{k: v.cpu() for k, v in d.items()} for d in detections]
        targets += [{k: v.cpu() for k, v in t.items()} for t in batch_targets]
    return mean_ap50(predictions, targets)
