"""Victim architectures and the project's checkpoint format.

Every model takes images in [0, 1] of shape (B, C, H, W), normalises inside (so callers never need
to know the dataset's statistics), and is a feature extractor followed by one linear layer:
    logits = model.head(model.features(x))
`features` is the penultimate layer that AdvFT pulls apart. The `*2d` variants have a 2-neuron
penultimate layer and a bias-free head, as in the paper's Fig. 5 (after Pernici et al.): the rows
of `head.weight` are the class directions drawn as rays in the plots.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .data import DATASETS
from .errors import UserError

# Per-dataset normalisation, applied inside the model.
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "digits": ((0.1307,), (0.3081,)),
    "fmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
CHECKPOINT_FORMAT = "advft-model/1"


class CheckpointError(UserError, ValueError):
    """A file is not a checkpoint this project wrote, or does not fit where it is used."""


class Classifier(nn.Module):
    """normalise -> body (feature extractor) -> head (last linear layer)."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, mean, std, head_bias: bool):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes, bias=head_bias)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _lenet_body(c: int, hw: int, widths: tuple[int, int], hidden: tuple[int, ...], feature_dim: int,
                relu_features: bool, dropout: tuple[float, float] = (0.0, 0.0)) -> nn.Sequential:
    """conv-pool x 2, then fully connected layers; `dropout` = (before the first fc, before the last)."""
    flat = widths[1] * ((((hw - 4) // 2) - 4) // 2) ** 2
    layers: list[nn.Module] = [
        nn.Conv2d(c, widths[0], 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(widths[0], widths[1], 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    ]
    if dropout[0]:
        layers.append(nn.Dropout(dropout[0]))
    dims = (flat, *hidden)
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    if dropout[1]:
        layers.append(nn.Dropout(dropout[1]))
    layers.append(nn.Linear(dims[-1], feature_dim))
    if relu_features:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet18_body(c: int, widths: tuple[int, int, int, int], feature_dim: int, relu_features: bool) -> nn.Sequential:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool) ending in an extra fc to the feature layer."""
    layers: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for i, w in enumerate(widths):
        for j in range(2):
            layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, feature_dim)]
    if relu_features:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# arch name -> (description, builder(c, hw) -> (body, feature_dim, head_bias))
ARCHS = {
    # Dropout instead of shift augmentation lifts the 2-D bottleneck past 99% on MNIST (98.6% without
    # either) while keeping the victim as stealable as the paper's: a shift-augmented victim answered
    # CIFAR-10 queries so uninformatively that KnockoffNets reached only ~59% (README, "Victims").
    "lenet2d": ("small LeNet, 2-D penultimate layer (CPU default)",
                lambda c, hw: (_lenet_body(c, hw, (16, 32), (128,), 2, relu_features=False, dropout=(0.25, 0.5)),
                               2, False)),
    "resnet18_2d": ("slim ResNet-18 (16/32/64/128), 2-D penultimate layer (paper Fig. 5)",
                    lambda c, hw: (_resnet18_body(c, (16, 32, 64, 128), 2, relu_features=False), 2, False)),
    "lenet": ("LeNet as in the authors' code (20/50 conv, 500-D features)",
              lambda c, hw: (_lenet_body(c, hw, (20, 50), (), 500, relu_features=True), 500, True)),
    "resnet18": ("ResNet-18 with a 256-D penultimate fc and bias-free head",
                 lambda c, hw: (_resnet18_body(c, (64, 128, 256, 512), 256, relu_features=True), 256, False)),
    # The classic LeNet-5 (6/16 conv, fc 120 -> 84): the strong attacker's surrogate for lenet2d on a CPU;
    # it trains ~5x faster than `lenet` (20/50 conv, 500-D), which misses a 1-minute KnockoffNets budget.
    "lenet5": ("LeNet-5 (6/16 conv, fc 120, 84-D features; CPU surrogate for lenet2d)",
               lambda c, hw: (_lenet_body(c, hw, (6, 16), (120,), 84, relu_features=True), 84, True)),
}
# The full-width counterpart of each architecture (the strong attacker's default surrogate).
FULL_WIDTH = {"lenet2d": "lenet5", "resnet18_2d": "resnet18", "lenet": "lenet", "resnet18": "resnet18",
              "lenet5": "lenet5"}


def build_model(arch: str, dataset: str) -> Classifier:
    if arch not in ARCHS:
        raise CheckpointError(f"unknown architecture '{arch}'; choose one of: {', '.join(ARCHS)}")
    if dataset not in DATASETS:
        raise CheckpointError(f"unknown dataset '{dataset}'; choose one of: {', '.join(DATASETS)}")
    c, h, _ = DATASETS[dataset].shape
    body, dim, head_bias = ARCHS[arch][1](c, h)
    mean, std = NORMALISATION[dataset]
    model = Classifier(body, dim, len(DATASETS[dataset].classes), mean, std, head_bias)
    model.arch, model.dataset = arch, dataset
    return model


def save_model(model: Classifier, path: str | Path, **info) -> None:
    """Write a self-describing checkpoint atomically (architecture and dataset inside)."""
    from .runs import atomic_torch_save

    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "arch": model.arch,
        "dataset": model.dataset,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "info": info,
    }, path)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, or a CheckpointError that says what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"'{path}' is not a readable checkpoint ({_load_failure(path, e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a model checkpoint written by this project")
    return ckpt


def _load_failure(path: Path, e: Exception) -> str:
    """Why torch.load refused a file, in a few words (torch's own notice runs to a page)."""
    import zipfile

    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "not a PyTorch file: truncated, or some other format"
    if "Weights only load failed" in str(e):
        return "it holds Python objects other than tensors; refused, since loading them could run code"
    return str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load any model checkpoint the project writes, in eval mode."""
    ckpt = read_checkpoint(path)
    try:
        model = build_model(ckpt["arch"], ckpt["dataset"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError, CheckpointError) as e:
        raise CheckpointError(f"'{path}' does not hold a valid model ({str(e).splitlines()[0][:120]})") from None
    model.info = dict(ckpt.get("info") or {})
    return model.to(device).eval()
