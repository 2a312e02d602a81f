"""README, "Your own model and task": a segmenter of your own, searched at 30% of its FLOPs."""

import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import nas_prune
from nas_prune.data import load_dataset


class Segmenter(nn.Module):  # 1. your model: any nn.Module (this one returns a dict)
    def __init__(self):
        super().__init__()
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        self.body, self.head = nn.Sequential(block(1, 32), block(32, 64), block(64, 32)), nn.Conv2d(32, 1, 1)

    def forward(self, x):
        return {"mask": self.head(self.body(x))}


def masks(split):  # 2. your data: map-style datasets (here Fashion-MNIST with foreground masks)
    x = split.x.float() / 255
    return TensorDataset(x, (x > 0.3).float())


def step(model, batch):  # 3. your training step -> a scalar loss
    x, y = batch
    return F.binary_cross_entropy_with_logits(model(x)["mask"], y)


def miou(model, batches):  # 4. your score: higher is better
    inter = union = 0
    for x, y in batches:
        pred, truth = model(x)["mask"] > 0, y > 0
        inter, union = inter + (pred & truth).sum().item(), union + (pred | truth).sum().item()
    return inter / max(union, 1)


if __name__ == "__main__":
    data = load_dataset("fashion-mnist", subset=6000)
    task = nas_prune.Task(train=masks(data.train), val=masks(data.val), test=masks(data.test),
                          training_step=step, score=miou, score_name="mIoU")  # fmt: skip
    model = Segmenter()
    nas_prune.fit(model, task, epochs=1)  # or your own training loop
    trials = nas_prune.search(model=model, task=task, budget_flops=0.3, trials=60, output="results/segmenter")
    metrics = nas_prune.retrain("results/segmenter", model=model, task=task, init="inherit", epochs=1)
    print(f"mIoU {metrics['test_score']:.3f} (dense {metrics['dense']['test_score']:.3f}), "
          f"{metrics['flops_ratio']:.0%} of the FLOPs, {metrics['speedup']:.2f}x faster at batch 1")  # fmt: skip
