"""The paper's extraction experiments (core/cli.py gives them their `table` and `sweep` commands).

attack_table   Tables 2/3 layout: rows AdvFT / DP / AM / none; columns Acc_MR, Acc_MS before, Q, m, N,
               Acc_MF, Acc_MS after, KL_train, KL_test. One attack setting, one budget, one seed.
epoch_sweep    Fig. 4: surrogate accuracy vs AdvFT epochs N. AdvFT runs epoch by epoch in the engine and
               the protected model is attacked after each chosen epoch (N = 0 is the unprotected victim).
margin_sweep   protection (surrogate accuracy) vs fidelity (Acc_MF, KL_test) as the margin m varies.

Fidelity of an API defence is measured on what honest users receive (BlackBoxAPI.respond, uncounted):
Acc_MF = accuracy of its top-1, KL = mean KL(P_R || P_defended) (core.metrics.fidelity). Each AdvFT run
of an experiment is a run folder under the experiment's folder (core.training.run_advft). Results are
written by write_experiment: <name>.csv, .json, .md, .html (a core.figures figure), and .png with kaleido.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from .advft import AdvFTConfig, ConfigError, preset_config
from .attacks import ATTACK_FUNCTIONS, AttackConfig, DefenceConfig, make_api, run_attack
from .data import Dataset
from .metrics import accuracy, fidelity, outputs
from .models import Classifier
from .runs import atomic_write_bytes, atomic_write_json
from .training import RecordedRun, drive, new_trainer

TABLE_METHODS = ("advft", "dp", "am", "none")
TABLE_COLUMNS = ("method", "acc_mr", "acc_ms_before", "q", "m", "n", "acc_mf", "acc_ms_after", "kl_train", "kl_test")
Note = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def _split_logits(model_or_api, data: Dataset, device) -> dict[str, torch.Tensor]:
    """A model's logits, or a (defended) API's answered log-probabilities, on the train and test sets."""
    splits = (("train", data.x_train), ("test", data.x_test))
    if isinstance(model_or_api, torch.nn.Module):
        return {s: outputs(model_or_api, x, device)[1] for s, x in splits}
    return {s: model_or_api.respond(x, log=True).cpu() for s, x in splits}


def protect(victim: Classifier, data: Dataset, config: AdvFTConfig, out: Path, victim_name: str, data_dir=None,
            note: Note = _quiet, should_stop=None, on_epoch: Callable[[object], None] = lambda trainer: None):
    """AdvFT of an already loaded victim into the run folder `out`, through the one run protocol
    (core.training); on_epoch(trainer) after each recorded epoch. Returns the closed RecordedRun."""
    trainer = new_trainer(victim, data, config, data_dir, next(victim.parameters()).device)
    run = RecordedRun.create(out, victim_name, config, trainer=trainer)

    def on_step(action, record):
        if record is not None:
            note(f"AdvFT epoch {record['epoch']}/{config.epochs}: acc {record['acc_after']:.4f}, "
                 f"OOD agreement {record['ood_agreement']:.2f}")
            on_epoch(trainer)

    stop = should_stop or (lambda: False)
    drive(run, lambda: None if stop() else "step", on_step)
    return run


def attack_table(victim: Classifier, data: Dataset, attack: AttackConfig, advft: AdvFTConfig | None = None,
                 protected: Classifier | None = None, defence: DefenceConfig | None = None, data_dir=None,
                 methods=TABLE_METHODS, advft_out: Path | None = None, victim_name: str = "",
                 note: Note = _quiet, should_stop=None) -> dict:
    """The paper's Table 2/3 for one victim, attack and budget. AdvFT's row uses `protected` when given,
    else runs AdvFT with `advft` into the run folder `advft_out`. Returns {"rows": [...], "results": {...}, ...}.

    Every row's fidelity is what an honest user asking for soft answers gets from that deployment
    (M_F's softmax, the perturbed softmax of DP / AM, P_R itself for none), whatever the thief asks for."""
    unknown = [m for m in methods if m not in TABLE_METHODS]
    if unknown:
        raise ConfigError(f"unknown table rows {unknown}; choose from {TABLE_METHODS}")
    if "advft" in methods and protected is None and advft_out is None:
        raise ConfigError("the AdvFT row needs a folder for its run (advft_out) or a protected model")
    attack = attack.validate()
    base = replace(defence or DefenceConfig(), seed=attack.seed)
    device = next(victim.parameters()).device
    ref = _split_logits(victim, data, device)
    acc_mr = fidelity(ref, {"test": ref["test"]}, data.y_test)["acc_mf"]
    note(f"attack on the unprotected victim ({attack.attack}, {attack.labels}, Q = {attack.queries})")
    before = run_attack(victim, data, attack, replace(base, name="none"), data_dir, should_stop=should_stop)
    rows, results, advft_used = [], {"none": before.to_dict()}, None
    for method in methods:
        m = n = None
        if method == "none":
            fid, result = fidelity(ref, ref, data.y_test), before
        elif method == "advft":
            if protected is None:
                advft_used = advft or preset_config("lecture")
                run = protect(victim, data, advft_used, advft_out, victim_name, data_dir, note, should_stop)
                protected, m, n = run.trainer.model, run.trainer.config.margin, run.trainer.epoch
            else:
                m, n = protected.info.get("margin"), protected.info.get("epochs_done")
            fid = fidelity(ref, _split_logits(protected, data, device), data.y_test)
            note(f"attack on AdvFT's M_F (m = {m}, N = {n})")
            result = run_attack(protected, data, attack, replace(base, name="none"), data_dir, should_stop=should_stop)
        else:
            dcfg = replace(base, name=method)
            honest = make_api(victim, dcfg, "soft", None, data)  # same defence, soft answers, no budget
            fid = fidelity(ref, _split_logits(honest, data, device), data.y_test)
            note(f"attack on the {method.upper()}-defended API")
            api = make_api(victim, dcfg, attack.labels, attack.queries, data)
            result = ATTACK_FUNCTIONS[attack.attack](api, data, attack, dcfg, data_dir, should_stop=should_stop)
        results[method] = result.to_dict()
        rows.append({"method": {"advft": "AdvFT", "dp": "DP", "am": "AM", "none": "none"}[method],
                     "acc_mr": acc_mr, "acc_ms_before": before.surrogate_acc, "q": result.queries, "m": m, "n": n,
                     "acc_mf": fid["acc_mf"], "acc_ms_after": result.surrogate_acc,
                     "kl_train": fid["kl_train"], "kl_test": fid["kl_test"],
                     "acc_ms_after_best": result.surrogate_best_acc, "agreement": result.agreement,
                     "status": result.status})
        note(f"{rows[-1]['method']}: Acc_MF {fid['acc_mf']:.4f}, Acc_MS {result.surrogate_acc:.4f}, "
             f"KL_test {fid['kl_test']:.2e}")
    return {"rows": rows, "results": results, "attack": asdict(attack), "defence": asdict(base),
            "advft": asdict(advft_used) if advft_used else None, "dataset": data.name,
            "victim_arch": victim.arch}


def _sweep_row(model: Classifier, last: dict, data, attack: AttackConfig, data_dir, should_stop, **keys) -> dict:
    """Attack `model`; `last` is its latest history record (Acc_MF, KL_test, OOD agreement)."""
    r = run_attack(model, data, attack, DefenceConfig(), data_dir, should_stop=should_stop)
    return {**keys, "acc_mf": last["acc_after"], "kl_test": last["kl_test"], "ood_agreement": last["ood_agreement"],
            "surrogate_acc": r.surrogate_acc, "surrogate_best_acc": r.surrogate_best_acc,
            "agreement": r.agreement, "queries": r.queries, "attack_seconds": round(r.seconds, 1),
            "status": r.status}


def epoch_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig, out: Path,
                at_epochs: list[int] | None = None, data_dir=None, victim_name: str = "", note: Note = _quiet,
                should_stop=None) -> dict:
    """Fig. 4: one AdvFT run (into the run folder out/advft) to the last chosen epoch; the protected
    model is attacked after each epoch in `at_epochs` (N = 0 is the unprotected victim)."""
    attack = attack.validate()
    at = sorted(set(at_epochs if at_epochs is not None else range(advft.epochs + 1)))
    if not at or at[0] < 0 or at[-1] > advft.epochs:
        raise ConfigError(f"sweep epochs must lie in 0..{advft.epochs} (got {at_epochs})")
    rows = []
    stop = should_stop or (lambda: False)

    def attack_after(trainer) -> None:
        if trainer.epoch in at and not stop():
            rows.append(_sweep_row(trainer.model, trainer.history[-1], data, attack, data_dir, should_stop,
                                   epoch=trainer.epoch))
            note(f"N = {trainer.epoch}: Acc_MF {rows[-1]['acc_mf']:.4f}, surrogate {rows[-1]['surrogate_acc']:.4f}")

    if 0 in at:
        acc_mr = accuracy(outputs(victim, data.x_test, next(victim.parameters()).device)[1], data.y_test)
        unprotected = {"acc_after": acc_mr, "kl_test": 0.0, "ood_agreement": 1.0}  # M_F = M_R
        rows.append(_sweep_row(victim, unprotected, data, attack, data_dir, should_stop, epoch=0))
        note(f"N = 0: surrogate {rows[-1]['surrogate_acc']:.4f}")
    if at[-1] > 0:
        protect(victim, data, replace(advft, epochs=at[-1]).validate(), Path(out) / "advft", victim_name, data_dir,
                note, should_stop, on_epoch=attack_after)
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": data.name}


def margin_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig, margins: list[float],
                 out: Path, data_dir=None, victim_name: str = "", note: Note = _quiet, should_stop=None) -> dict:
    """Protection vs fidelity: a full AdvFT run per margin (run folders out/m<m>), each protected model
    attacked once."""
    attack = attack.validate()
    rows = []
    stop = should_stop or (lambda: False)
    for m in margins:
        if stop():
            break
        run = protect(victim, data, replace(advft, margin=m).validate(), Path(out) / f"m{m:g}", victim_name, data_dir,
                      note, should_stop)
        t = run.trainer
        rows.append(_sweep_row(t.model, t.history[-1], data, attack, data_dir, should_stop, margin=m, epochs=t.epoch))
        note(f"m = {m}: Acc_MF {rows[-1]['acc_mf']:.4f}, KL_test {rows[-1]['kl_test']:.2e}, "
             f"surrogate {rows[-1]['surrogate_acc']:.4f}")
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": data.name}


# ---------------------------------------------------------------- writing results


def write_experiment(out: Path, name: str, report: dict, figure, markdown: str | None = None) -> list[str]:
    """<name>.csv, .json, .html (and .md when given, .png with kaleido) in `out`, atomically; returns
    notes for the user."""
    rows = report["rows"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["empty"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / f"{name}.csv", buf.getvalue().encode())
    atomic_write_json(out / f"{name}.json", report)
    if markdown is not None:
        atomic_write_bytes(out / f"{name}.md", (markdown + "\n").encode())
    # plotly.js embedded (~4 MB) so the figure opens offline, like the rest of the project
    atomic_write_bytes(out / f"{name}.html", figure.to_html(include_plotlyjs=True).encode())
    try:
        atomic_write_bytes(out / f"{name}.png", figure.to_image(format="png"))
        return [f"wrote {name}.csv, .json, .html, .png in {out}"]
    except Exception:  # kaleido (plotly's image export) is not installed: HTML only
        return [f"wrote {name}.csv, .json, .html in {out} (no PNG: plotly's image export needs kaleido, not installed)"]


def format_table(rows: list[dict]) -> str:
    def f(v, kind):
        if v is None:
            return "-"
        if v == 0 and kind == "sci":
            return "0"
        return {"pct": f"{100 * v:.2f}%", "sci": f"{v:.1e}", "int": f"{v:g}"}[kind]

    kinds = {"acc_mr": "pct", "acc_ms_before": "pct", "q": "int", "m": "int", "n": "int", "acc_mf": "pct",
             "acc_ms_after": "pct", "kl_train": "sci", "kl_test": "sci"}
    head = "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * len(TABLE_COLUMNS)
    body = ["| " + " | ".join([r["method"]] + [f(r[c], kinds[c]) for c in TABLE_COLUMNS[1:]]) + " |" for r in rows]
    return "\n".join([head, *body])
