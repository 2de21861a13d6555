"""Training the victim M_R: plain supervised training, Adam with a one-cycle schedule.

The 2-D bottleneck makes MNIST harder than usual (the classes must fit in 10 angular sectors of a
plane); `lenet2d` uses dropout to get past 99%. Random translations (`shift`) are available but off
by default for MNIST: they add a little accuracy but make the victim's answers on natural images much
less informative (KnockoffNets with 20k CIFAR-10 queries: ~59% instead of ~89%), i.e. an unprotected
victim that is unusually hard to steal, which would hide what AdvFT does. The committed victim for
the tiny offline digits set (1,437 training images) is trained with them (`--shift 2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Dataset, to_float
from .metrics import accuracy, outputs
from .models import Classifier, build_model


@dataclass
class VictimConfig:
    arch: str = "lenet2d"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    shift: int = 0  # max random translation in pixels (0 = no augmentation)
    seed: int = 0


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by a random integer offset in [-max_shift, max_shift], zero fill."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * max_shift)
    out = padded.gather(2, rows.to(x.device))
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols.to(x.device))


def train_victim(data: Dataset, config: VictimConfig, device: torch.device | str = "cpu",
                 progress=None) -> tuple[Classifier, float]:
    """Returns (model in eval mode, test accuracy). `progress(epoch, acc)` is called per epoch."""
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    model = build_model(config.arch, data.name).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (len(data.x_train) + config.batch_size - 1) // config.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps_per_epoch)
    acc = 0.0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(data.x_train), generator=g)
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            x = random_shift(to_float(data.x_train[idx]), config.shift, g).to(device)
            loss = F.cross_entropy(model(x), data.y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        acc = accuracy(outputs(model, data.x_test, device)[1], data.y_test)
        if progress:
            progress(epoch + 1, acc)
    return model.eval(), acc


def victim_name(dataset: str, arch: str) -> str:
    return f"{dataset}_{arch}"

