"""A one-stage detector pruned by width search: the seed case (a pruned YOLOv3) at laptop size.

Modules: ``model`` (:class:`TinyYolo`), ``data`` (Fashion-MNIST items on a canvas, boxes known),
``loss`` (YOLO assignment, loss, decoding, NMS), ``score`` (mAP@0.5 with a COCO evaluator), ``task``
(the nas_prune :class:`~nas_prune.task.Task` and factories) and ``run`` (the one command).
"""
