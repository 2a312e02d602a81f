"""YOLO training loss and inference decoding for :class:`~examples.detection.model.TinyYolo`'s outputs.

A head map ``[B, A * (5 + C), H, W]`` holds, per cell and anchor, ``tx, ty, tw, th, objectness`` and
``C`` class logits. Boxes decode as in YOLOv5 (bounded, so early training cannot blow up):
``centre = (2 * sigmoid(txy) - 0.5 + cell) * stride``, ``size = (2 * sigmoid(twh))^2 * anchor``.

Training (:class:`YoloLoss`): a ground-truth box is given to the anchors whose shape matches it best
(the best of all scales' anchors by IoU of widths and heights, plus any other above ``match_iou``), at
the cell holding its centre; those predictions learn the box (1 - GIoU) and the class (BCE), and every
prediction learns objectness (BCE: 1 where assigned, 0 elsewhere).

Inference (:func:`decode`): score = objectness x best class probability, the top candidates per image,
then class-aware NMS (:func:`batched_nms`, exact greedy NMS computed as Cluster-NMS on whole batches,
since torchvision is not a dependency), as ``[{"boxes", "scores", "labels"}]`` per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import ANCHORS, STRIDES

__all__ = ["YoloLoss", "batched_nms", "box_iou", "decode", "decode_boxes", "giou", "head_view"]

EPS = 1e-7


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a [..., N, 4]`` with every box in ``b [..., M, 4]`` (xyxy): ``[..., N, M]``."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter + EPS)


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of paired boxes ``a [N, 4]`` and ``b [N, 4]`` (xyxy): ``[N]`` in (-1, 1]."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).prod(-1) + (b[:, 2:] - b[:, :2]).prod(-1) - inter + EPS
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(-1) + EPS
    return inter / union - (hull - union) / hull


def head_view(output: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """A head map ``[B, A * K, H, W]`` as ``[B, A, H, W, K]`` (K = 5 + classes)."""
    b, _, h, w = output.shape
    return output.view(b, num_anchors, -1, h, w).permute(0, 1, 3, 4, 2)


def decode_boxes(raw: torch.Tensor, stride: int, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``[B, A, H, W, 4]`` (xyxy, pixels) from ``raw [B, A, H, W, K]`` and ``anchors [A, 2]``."""
    _, _, h, w, _ = raw.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij"
    )
    cell = torch.stack([xs, ys], dim=-1).to(raw.dtype)  # [H, W, 2] as (x, y)
    return _boxes(raw[..., :4], cell, anchors.to(raw)[None, :, None, None, :], stride)


def _boxes(t: torch.Tensor, cell: torch.Tensor, anchor: torch.Tensor, stride: int) -> torch.Tensor:
    """xyxy boxes from ``t = (tx, ty, tw, th)``, their cells ``(x, y)`` and anchors ``(w, h)``."""
    centre = (t[..., :2].sigmoid() * 2 - 0.5 + cell) * stride
    size = (t[..., 2:4].sigmoid() * 2) ** 2 * anchor
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def _anchor_table(anchors: Mapping[str, tuple]) -> tuple[list[str], torch.Tensor, list[slice]]:
    """Output names, all anchors ``[A_total, 2]`` and each output's slice of them."""
    names, rows, slices = list(anchors), [], []
    for name in names:
        slices.append(slice(len(rows), len(rows) + len(anchors[name])))
        rows.extend(anchors[name])
    return names, torch.tensor(rows, dtype=torch.float32), slices


@dataclass(frozen=True)
class YoloLoss:
    """``loss(outputs, targets)``: the scalar YOLO loss of head maps ``{"p8", "p16"}`` against a list
    of per-image targets ``{"boxes": xyxy pixels, "labels"}`` (see the module docstring).

    A dataclass, not a closure, so a task holding it pickles by reference.
    """

    num_classes: int = 10
    anchors: Mapping[str, tuple] = field(default_factory=lambda: ANCHORS)
    strides: Mapping[str, int] = field(default_factory=lambda: STRIDES)
    match_iou: float = 0.5
    box_gain: float = 1.0
    obj_gain: float = 4.0
    cls_gain: float = 1.0

    def __call__(self, outputs: Mapping[str, torch.Tensor], targets: list[dict]) -> torch.Tensor:
        names, table, slices = _anchor_table(self.anchors)
        device = next(iter(outputs.values())).device
        gt = _flatten_targets(targets, device)  # [n, 6]: image, label, x1, y1, x2, y2
        wh = gt[:, 4:6] - gt[:, 2:4]
        shape_iou = _wh_iou(wh, table.to(device))  # [n, A_total]
        positive = shape_iou > self.match_iou
        if len(gt):
            positive[torch.arange(len(gt), device=device), shape_iou.argmax(1)] = True
        box_terms, cls_terms, obj = [], [], torch.zeros((), device=device)
        for name, part in zip(names, slices, strict=True):
            raw = head_view(outputs[name], part.stop - part.start).float()
            stride = self.strides[name]
            t, a = positive[:, part].nonzero(as_tuple=True)
            b = gt[t, 0].long()
            centre = (gt[t, 2:4] + gt[t, 4:6]) / 2
            gx = (centre[:, 0] / stride).long().clamp(0, raw.shape[3] - 1)
            gy = (centre[:, 1] / stride).long().clamp(0, raw.shape[2] - 1)
            obj_target = torch.zeros(raw.shape[:4], device=device)
            obj_target[b, a, gy, gx] = 1.0
            obj = obj + F.binary_cross_entropy_with_logits(raw[..., 4], obj_target)
            if len(t):
                chosen = raw[b, a, gy, gx]  # [m, K]
                cell = torch.stack([gx, gy], dim=1).float()
                pred = _boxes(chosen[:, :4], cell, table[part][a].to(device), stride)
                box_terms.append(1.0 - giou(pred, gt[t, 2:6]))
                onehot = F.one_hot(gt[t, 1].long(), self.num_classes).float()
                cls_terms.append(F.binary_cross_entropy_with_logits(chosen[:, 5:], onehot, reduction="none"))
        box = torch.cat(box_terms).mean() if box_terms else obj.new_zeros(())
        cls = torch.cat(cls_terms).mean() if cls_terms else obj.new_zeros(())
        return self.box_gain * box + self.obj_gain * obj + self.cls_gain * cls


def _flatten_targets(targets: list[dict], device: torch.device) -> torch.Tensor:
    """Every ground-truth box of a batch as rows ``[image index, label, x1, y1, x2, y2]``."""
    rows = [
        torch.cat([torch.full((len(t["labels"]), 1), float(i), device=device),
                   t["labels"].to(device).float()[:, None], t["boxes"].to(device).float()], dim=1)
        for i, t in enumerate(targets)
    ]  # fmt: skip
    return torch.cat(rows) if rows else torch.zeros(0, 6, device=device)


def _wh_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of box shapes ``[n, 2]`` with anchor shapes ``[A, 2]``, both centred at the origin."""
    inter = torch.minimum(wh[:, None], anchors[None]).prod(-1)
    return inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter + EPS)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Greedy class-aware NMS on a batch: which of ``boxes [B, K, 4]`` to keep (``[B, K]`` bool).

    Computed as Cluster-NMS (Zheng et al. 2021): suppress every box that overlaps a higher-scoring
    *kept* box by more than ``iou_threshold``, repeating until nothing changes, which gives exactly the
    boxes greedy NMS keeps, with whole-batch tensor operations instead of a loop over boxes. Boxes of
    different labels never suppress each other (they are moved apart by label).
    """
    order = scores.argsort(dim=1, descending=True)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    shift = labels.gather(1, order).to(boxes.dtype)[..., None] * (boxes.abs().max() + 1)
    overlap = box_iou(boxes + shift, boxes + shift).triu(diagonal=1)  # [B, K, K]: i above j in score
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    for _ in range(scores.shape[1]):
        new = (overlap * keep[..., None]).amax(dim=1) <= iou_threshold
        if torch.equal(new, keep):
            break
        keep = new
    return torch.zeros_like(keep).scatter(1, order, keep)


@torch.no_grad()
def decode(
    outputs: Mapping[str, torch.Tensor],
    anchors: Mapping[str, tuple] = ANCHORS,
    strides: Mapping[str, int] = STRIDES,
    conf_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    candidates: int = 200,
    max_detections: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Detections per image, ``{"boxes": xyxy [n, 4], "scores": [n], "labels": int64 [n]}``, from head
    maps: score = objectness x best class probability; the ``candidates`` best per image above
    ``conf_threshold`` go through :func:`batched_nms`; at most ``max_detections`` remain, clipped to
    the image."""
    boxes, scores, labels, side = [], [], [], None
    for name, stride in strides.items():
        raw = head_view(outputs[name], len(anchors[name])).float()
        side = (raw.shape[2] * stride, raw.shape[3] * stride)
        table = torch.tensor(anchors[name], device=raw.device)
        boxes.append(decode_boxes(raw, stride, table).flatten(1, 3))
        best, label = (raw[..., 5:].sigmoid() * raw[..., 4:5].sigmoid()).max(dim=-1)
        scores.append(best.flatten(1))
        labels.append(label.flatten(1))
    boxes, scores, labels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(labels, 1)
    top = scores.topk(min(candidates, scores.shape[1]), dim=1).indices
    boxes = boxes.gather(1, top[..., None].expand(-1, -1, 4))
    scores, labels = scores.gather(1, top), labels.gather(1, top)
    keep = batched_nms(boxes, scores, labels, iou_threshold) & (scores > conf_threshold)
    height, width = side
    limit = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
    boxes = boxes.clamp(min=0).minimum(limit)
    results = []
    for b in range(len(scores)):
        chosen = keep[b].nonzero().flatten()
        chosen = chosen[scores[b, chosen].argsort(descending=True)[:max_detections]]
        results.append({"boxes": boxes[b, chosen], "scores": scores[b, chosen], "labels": labels[b, chosen]})
    return results
