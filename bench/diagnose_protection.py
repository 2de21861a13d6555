"""Why does (or doesn't) an AdvFT model stop a thief? Compares M_R and M_F on ID test images and on the
thief's kind of queries (CIFAR-10), one line per victim and image set:

    ADVFT_DATA_DIR=../shared/data python3 bench/diagnose_protection.py VICTIM M_F_MODEL [VICTIM M_F_MODEL ...]
    e.g. ... mnist_lenet runs/table3-mnist/advft-s0/model.pt mnist_lenet2d runs/lecture/model.pt

Columns: the median penultimate feature norm under M_R and M_F; the mean feature shift and the part of
it in the frozen head's row space (the only part that changes the logits, hence the answers); the median
top probability under M_R and M_F; top-1 agreement; the correlation of M_R's and M_F's logits (what a
soft-label thief copies). Seeds and image counts are fixed, so two runs print the same numbers.

    ... diagnose_protection.py --epochs RUN_DIR [RUN_DIR ...]

prints, epoch by epoch from a run folder's history, the OOD shift, the part the head sees and the share in
its null space (1 - seen / shift, as in the table above), with OOD agreement, Acc_MF and KL_test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.data import load_ood, resolve_data_dir  # noqa: E402
from core.metrics import outputs  # noqa: E402
from core.models import load_model  # noqa: E402
from core.runs import RunDir  # noqa: E402
from core.training import load_victim  # noqa: E402


def describe(victim: str, protected: str, data_dir, n: int) -> list[str]:
    reference, data = load_victim(victim, data_dir)
    model = load_model(protected)
    probes = (("ID test", data.x_test[:n]), ("CIFAR-10", load_ood("cifar10", data.shape, n, data_dir, seed=0).x))
    # An orthonormal basis of the head's row space: a feature shift outside it leaves every logit as it was.
    basis, _ = torch.linalg.qr(reference.head.weight.detach().T)
    lines = []
    for name, x in probes:
        f_r, l_r = outputs(reference, x)
        f_f, l_f = outputs(model, x)
        p_r, p_f = F.softmax(l_r, 1), F.softmax(l_f, 1)
        shift = f_f - f_r
        corr = torch.corrcoef(torch.stack([l_r.flatten(), l_f.flatten()]))[0, 1]
        lines.append(
            f"| {victim} ({f_r.shape[1]}-D) | {name} | {f_r.norm(dim=1).median():.2f} -> {f_f.norm(dim=1).median():.2f} "
            f"| {shift.norm(dim=1).mean():.2f}, {(shift @ basis).norm(dim=1).mean():.2f} "
            f"| {p_r.max(1).values.median():.3f} -> {p_f.max(1).values.median():.3f} "
            f"| {float((l_r.argmax(1) == l_f.argmax(1)).float().mean()):.2f} | {float(corr):.3f} |")
    return lines


def per_epoch(run_dir: str) -> list[str]:
    """The run's history, one line per epoch: where its OOD shift went (engine's eval_ood_size OOD images)."""
    run = RunDir(run_dir)
    lines = []
    for h in run.history()[1:]:
        seen = h.get("ood_shift_head")
        null = "-" if seen is None or not h["ood_shift"] else f"{1 - seen / h['ood_shift']:.0%}"
        lines.append(f"| {run.name} | {h['epoch']} | {h['ood_shift']:.1f} | {'-' if seen is None else f'{seen:.1f}'} "
                     f"| {null} | {h['ood_agreement']:.3f} | {100 * h['acc_after']:.2f}% | {h['kl_test']:.1e} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", help="VICTIM M_F_MODEL, repeated (with --epochs: run folders)")
    p.add_argument("--images", type=int, default=5000, help="images per set")
    p.add_argument("--epochs", action="store_true", help="per-epoch lines from run folders' histories")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args()
    if a.epochs:
        print("| run | epoch | OOD shift | of which the head sees | in its null space | OOD agreement | Acc_MF | KL_test |")
        print("|---|---|---|---|---|---|---|---|")
        for run in a.pairs:
            print("\n".join(per_epoch(run)))
        return 0
    if len(a.pairs) % 2:
        p.error("give pairs: VICTIM M_F_MODEL [VICTIM M_F_MODEL ...]")
    data_dir = resolve_data_dir(a.data_dir)
    print("| victim | images | feature norm M_R -> M_F (median) | shift, of which the frozen head sees "
          "| top prob. M_R -> M_F (median) | top-1 agreement | corr. of logits |")
    print("|---|---|---|---|---|---|---|")
    for victim, protected in zip(a.pairs[::2], a.pairs[1::2]):
        print("\n".join(describe(victim, protected, data_dir, a.images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
