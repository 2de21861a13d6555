"""The paper's Table 2 columns and the feature-drift measures, for a reference model M_R and a model M_F.

- acc:       top-1 accuracy on the ID test set
- kl_train / kl_test: mean KL(P_R || P_F) of the softmax outputs over train / test images (this
  direction reproduces the paper's DP figures, see ../shared/notes)
- id_shift / ood_shift: mean ||F_F(x) - F_R(x)|| of the penultimate features on ID test / OOD images
- ood_shift_head: the same for the part of the OOD shift in the frozen head's row space, the only part that
  changes a logit (on a 500-D layer with 10 classes, a shift can be large and change no answer at all)
- ood_agreement: fraction of OOD images on which M_R and M_F give the same top-1 class
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import to_float


@torch.no_grad()
def outputs(model: torch.nn.Module, x: torch.Tensor, device: torch.device | str = "cpu",
            batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) for uint8 or float images, computed in batches, returned on the CPU."""
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        xb = to_float(x[i:i + batch_size]).to(device)
        f = model.features(xb)
        feats.append(f.float().cpu())
        logits.append(model.head(f).float().cpu())
    if not feats:
        return torch.empty(0), torch.empty(0)
    return torch.cat(feats), torch.cat(logits)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def confusion(y: torch.Tensor, predicted: torch.Tensor, n_classes: int) -> list[list[int]]:
    """counts[true class][answered class] over the given images."""
    counts = torch.bincount(y.long() * n_classes + predicted.long(), minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).tolist()


def per_class_accuracy(counts: list[list[int]]) -> list[float | None]:
    """Each true class's share answered right, from a confusion (None for a class with no image)."""
    return [row[c] / sum(row) if sum(row) else None for c, row in enumerate(counts)]


def kl_divergence(logits_ref: torch.Tensor, logits_new: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(ref) || softmax(new))."""
    log_p = F.log_softmax(logits_ref.double(), 1)
    log_q = F.log_softmax(logits_new.double(), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


def feature_shift(f_ref: torch.Tensor, f_new: torch.Tensor) -> float:
    return float((f_new - f_ref).norm(dim=1).mean())


def head_basis(head: torch.nn.Linear) -> torch.Tensor:
    """An orthonormal basis (columns) of the head's row space: a feature shift outside it moves no logit."""
    return torch.linalg.qr(head.weight.detach().float().cpu().T)[0]


def shift_seen_by_head(f_ref: torch.Tensor, f_new: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean norm of the feature shift's part in the head's row space (`basis` from head_basis)."""
    return float(((f_new - f_ref) @ basis).norm(dim=1).mean())


def agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    return float((logits_a.argmax(1) == logits_b.argmax(1)).float().mean())


@dataclass
class Evaluator:
    """Computes the reference model's outputs once, then scores any number of fine-tuned models."""

    reference: torch.nn.Module
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor  # the (sub)set KL_train is measured on
    x_ood: torch.Tensor
    device: torch.device | str = "cpu"

    def __post_init__(self):
        self._ref = {name: outputs(self.reference, x, self.device)
                     for name, x in (("test", self.x_test), ("train", self.x_train), ("ood", self.x_ood))}
        self.acc_before = accuracy(self._ref["test"][1], self.y_test)
        self._basis = head_basis(self.reference.head)  # M_F's head is M_R's, frozen

    def identical(self) -> dict[str, float]:
        """The scores of a model identical to the reference (no forward pass needed)."""
        return {"acc_before": self.acc_before, "acc_after": self.acc_before, "kl_train": 0.0, "kl_test": 0.0,
                "id_shift": 0.0, "ood_shift": 0.0, "ood_shift_head": 0.0, "ood_agreement": 1.0}

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        f_test, l_test = outputs(model, self.x_test, self.device)
        _, l_train = outputs(model, self.x_train, self.device)
        f_ood, l_ood = outputs(model, self.x_ood, self.device)
        rf_test, rl_test = self._ref["test"]
        rf_ood, rl_ood = self._ref["ood"]
        return {
            "acc_before": self.acc_before,
            "acc_after": accuracy(l_test, self.y_test),
            "kl_train": kl_divergence(self._ref["train"][1], l_train),
            "kl_test": kl_divergence(rl_test, l_test),
            "id_shift": feature_shift(rf_test, f_test),
            "ood_shift": feature_shift(rf_ood, f_ood),
            "ood_shift_head": shift_seen_by_head(rf_ood, f_ood, self._basis),
            "ood_agreement": agreement(rl_ood, l_ood),
        }


def fidelity(reference_logits: dict[str, torch.Tensor], answers: dict[str, torch.Tensor],
             y_test: torch.Tensor) -> dict[str, float]:
    """What honest users get: Acc_MF on the test split and KL(P_R || P_answer) on each split given.

    `reference_logits` and `answers` map a split ('train', 'test') to M_R's logits and to the logits
    (or log-probabilities: the same distribution) of what the deployment answers; a defended API's
    answers are floored at 1e-30 before their log (see core.attacks), so KL stays finite."""
    out = {"acc_mf": accuracy(answers["test"], y_test)}
    out.update({f"kl_{split}": kl_divergence(reference_logits[split], answers[split]) for split in answers})
    return out
