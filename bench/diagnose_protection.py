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
its null space (1 - seen / shift, as in the table above), with OOD agreement, Acc_MF and KL_test; with
--figure PATH.png also draws them per epoch, a line per run (Acc_MF - Acc_MR, KL_test, null-space share).
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
        lines.append(f"| {run.path.parent.name}/{run.name} | {h['epoch']} | {h['ood_shift']:.1f} | {'-' if seen is None else f'{seen:.1f}'} "
                     f"| {null} | {h['ood_agreement']:.3f} | {100 * h['acc_after']:.2f}% | {h['kl_test']:.1e} |")
    return lines


COLOURS = ("#b2182b", "#2166ac", "#1b7837", "#e08214", "#762a83", "#4d4d4d")  # told apart in print and by most eyes


def epoch_figure(run_dirs: list[str], path: str) -> None:
    """Fidelity and where the OOD shift went, per epoch, a line per run: the trade-off a run's length buys."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09,
                        subplot_titles=("Acc_MF - Acc_MR (points)", "KL_test (log)", "OOD shift in the head's null space"))
    for i, run_dir in enumerate(run_dirs):
        run = RunDir(run_dir)
        h = run.history()
        base, epochs = h[0]["acc_after"], [r["epoch"] for r in h[1:]]
        name = f"{run.path.parent.name}/{run.name}"
        style = dict(mode="lines+markers", name=name, legendgroup=name, line=dict(color=COLOURS[i % len(COLOURS)]))
        fig.add_trace(go.Scatter(x=epochs, y=[100 * (r["acc_after"] - base) for r in h[1:]], **style), 1, 1)
        fig.add_trace(go.Scatter(x=epochs, y=[r["kl_test"] for r in h[1:]], showlegend=False, **style), 1, 2)
        fig.add_trace(go.Scatter(x=epochs, y=[1 - r["ood_shift_head"] / r["ood_shift"] if r.get("ood_shift") else None
                                              for r in h[1:]], showlegend=False, **style), 1, 3)
    fig.add_hline(y=-0.1, line_dash="dot", row=1, col=1, annotation_text="target -0.1")
    fig.add_hline(y=1.6e-3, line_dash="dot", row=1, col=2, annotation_text="paper's 1.6e-3")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=3)
    fig.update_xaxes(title_text="AdvFT epoch")
    fig.update_layout(width=1500, height=480, template="plotly_white", legend=dict(orientation="h", y=-0.25),
                      margin=dict(l=60, r=20, t=50, b=110))
    fig.write_image(path, scale=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", help="VICTIM M_F_MODEL, repeated (with --epochs: run folders)")
    p.add_argument("--images", type=int, default=5000, help="images per set")
    p.add_argument("--epochs", action="store_true", help="per-epoch lines from run folders' histories")
    p.add_argument("--figure", help="with --epochs: also draw them per epoch into this PNG")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args()
    if a.epochs:
        if a.figure:
            epoch_figure(a.pairs, a.figure)
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
