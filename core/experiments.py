"""The paper's extraction experiments, and the `attack`, `table` and `sweep` commands.

attack_table   Tables 2/3 layout: rows AdvFT / DP / AM / none; columns Acc_MR, Acc_MS before, Q, m, N,
               Acc_MF, Acc_MS after, KL_train, KL_test. One attack setting, one budget, one seed.
epoch_sweep    Fig. 4: surrogate accuracy vs AdvFT epochs N. AdvFT runs epoch by epoch in the engine and
               the protected model is attacked after each chosen epoch (N = 0 is the unprotected victim).
margin_sweep   protection (surrogate accuracy) vs fidelity (Acc_MF, KL_test) as the margin m varies.

Fidelity of an API defence is measured on what honest users receive (BlackBoxAPI.respond, uncounted):
Acc_MF = accuracy of its top-1, KL = mean KL(P_R || P_defended) with the answered probabilities' logs as
logits (answers are floored at 1e-30 before the log, so KL stays finite). Each experiment writes
<name>.csv, <name>.json and <name>.html (plotly), and <name>.png when kaleido is installed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from .advft import AdvFTConfig, ConfigError, PRESETS, preset_config
from .attacks import (ATTACK_FUNCTIONS, ATTACKS, DEFENCES, LABELS, SAMPLINGS, SURROGATES, AttackConfig,
                      AttackResult, DefenceConfig, make_api, run_attack)
from .data import Dataset
from .device import describe, pick_device
from .metrics import accuracy, kl_divergence, outputs
from .models import CheckpointError, Classifier, load_model, save_model
from .runs import RunDir, atomic_write_bytes, atomic_write_json

TABLE_METHODS = ("advft", "dp", "am", "none")
TABLE_COLUMNS = ("method", "acc_mr", "acc_ms_before", "q", "m", "n", "acc_mf", "acc_ms_after", "kl_train", "kl_test")
Note = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def fidelity(reference: Classifier, model_or_api, data: Dataset, ref_logits: dict | None = None) -> dict:
    """Acc_MF, KL_train, KL_test of a protected model or of a defended API against M_R."""
    device = next(reference.parameters()).device
    ref = ref_logits or {s: outputs(reference, x, device)[1] for s, x in (("train", data.x_train), ("test", data.x_test))}
    if isinstance(model_or_api, torch.nn.Module):
        new = {s: outputs(model_or_api, x, device)[1] for s, x in (("train", data.x_train), ("test", data.x_test))}
    else:  # a BlackBoxAPI: log-probabilities are logits of the same distribution
        new = {s: model_or_api.respond(x, log=True).cpu() for s, x in (("train", data.x_train), ("test", data.x_test))}
    return {"acc_mf": accuracy(new["test"], data.y_test), "kl_train": kl_divergence(ref["train"], new["train"]),
            "kl_test": kl_divergence(ref["test"], new["test"])}


def run_advft(victim: Classifier, data: Dataset, config: AdvFTConfig, data_dir=None, out: Path | None = None,
              victim_name: str = "", note: Note = _quiet, should_stop=None):
    """AdvFT through the engine (into a run folder when `out` is given); returns the trainer."""
    from .pipeline import RunRecorder, new_trainer

    trainer = new_trainer(victim, data, config, data_dir, next(victim.parameters()).device)
    recorder = RunRecorder(RunDir(out), trainer, victim_name) if out else None
    while not trainer.finished:
        record = trainer.run_epoch(should_stop or (lambda: False))
        if record is None:
            break
        if recorder:
            recorder.epoch_done()
        note(f"AdvFT epoch {record['epoch']}/{config.epochs}: acc {record['acc_after']:.4f}, "
             f"OOD agreement {record['ood_agreement']:.2f}")
    if recorder:
        recorder.finish("finished" if trainer.finished else "stopped")
    return trainer


def attack_table(victim: Classifier, data: Dataset, attack: AttackConfig, advft: AdvFTConfig | None = None,
                 protected: Classifier | None = None, defence: DefenceConfig | None = None, data_dir=None,
                 methods=TABLE_METHODS, advft_out: Path | None = None, victim_name: str = "",
                 note: Note = _quiet, should_stop=None) -> dict:
    """The paper's Table 2/3 for one victim, attack and budget. AdvFT's row uses `protected` when given,
    else runs AdvFT with `advft` (into `advft_out`). Returns {"rows": [...], "results": {...}, ...}."""
    unknown = [m for m in methods if m not in TABLE_METHODS]
    if unknown:
        raise ConfigError(f"unknown table rows {unknown}; choose from {TABLE_METHODS}")
    attack = attack.validate()
    base = replace(defence or DefenceConfig(), seed=attack.seed)
    device = next(victim.parameters()).device
    ref = {s: outputs(victim, x, device)[1] for s, x in (("train", data.x_train), ("test", data.x_test))}
    acc_mr = accuracy(ref["test"], data.y_test)
    note(f"attack on the unprotected victim ({attack.attack}, {attack.labels}, Q = {attack.queries})")
    before = run_attack(victim, data, attack, replace(base, name="none"), data_dir, should_stop=should_stop)
    rows, results, advft_used = [], {"none": before.to_dict()}, None
    for method in methods:
        m = n = None
        if method == "none":
            fid, result = {"acc_mf": acc_mr, "kl_train": 0.0, "kl_test": 0.0}, before
        elif method == "advft":
            if protected is None:
                advft_used = advft or preset_config("lecture")
                trainer = run_advft(victim, data, advft_used, data_dir, advft_out,
                                    victim_name, note, should_stop)
                protected, m, n = trainer.model, trainer.config.margin, trainer.epoch
            else:
                m, n = protected.info.get("margin"), protected.info.get("epochs_done")
            fid = fidelity(victim, protected, data, ref)
            note(f"attack on AdvFT's M_F (m = {m}, N = {n})")
            result = run_attack(protected, data, attack, replace(base, name="none"), data_dir, should_stop=should_stop)
        else:
            dcfg = replace(base, name=method)
            api = make_api(victim, dcfg, attack.labels, attack.queries, data)
            fid = fidelity(victim, api, data, ref)
            note(f"attack on the {method.upper()}-defended API")
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


def _sweep_row(trainer, data, attack: AttackConfig, data_dir, should_stop, **keys) -> dict:
    r = run_attack(trainer.model, data, attack, DefenceConfig(), data_dir, should_stop=should_stop)
    h = trainer.history[-1]
    return {**keys, "acc_mf": h["acc_after"], "kl_test": h["kl_test"], "ood_agreement": h["ood_agreement"],
            "surrogate_acc": r.surrogate_acc, "surrogate_best_acc": r.surrogate_best_acc,
            "agreement": r.agreement, "queries": r.queries, "attack_seconds": round(r.seconds, 1),
            "status": r.status}


def epoch_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig,
                at_epochs: list[int] | None = None, data_dir=None, note: Note = _quiet, should_stop=None) -> dict:
    """Fig. 4: AdvFT epoch by epoch, the protected model attacked after each epoch in `at_epochs`."""
    from .pipeline import new_trainer

    attack = attack.validate()
    at = sorted(set(at_epochs if at_epochs is not None else range(advft.epochs + 1)))
    if not at or at[0] < 0 or at[-1] > advft.epochs:
        raise ConfigError(f"sweep epochs must lie in 0..{advft.epochs} (got {at_epochs})")
    trainer = new_trainer(victim, data, advft, data_dir, next(victim.parameters()).device)
    rows = []
    if 0 in at:
        rows.append(_sweep_row(trainer, data, attack, data_dir, should_stop, epoch=0))
        note(f"N = 0: surrogate {rows[-1]['surrogate_acc']:.4f}")
    while trainer.epoch < at[-1]:
        if trainer.run_epoch(should_stop or (lambda: False)) is None:
            break
        if trainer.epoch in at:
            rows.append(_sweep_row(trainer, data, attack, data_dir, should_stop, epoch=trainer.epoch))
            note(f"N = {trainer.epoch}: Acc_MF {rows[-1]['acc_mf']:.4f}, surrogate {rows[-1]['surrogate_acc']:.4f}")
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": data.name}


def margin_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig, margins: list[float],
                 data_dir=None, note: Note = _quiet, should_stop=None) -> dict:
    """Protection vs fidelity: a full AdvFT run per margin, each protected model attacked once."""
    attack = attack.validate()
    rows = []
    for m in margins:
        trainer = run_advft(victim, data, replace(advft, margin=m).validate(), data_dir, should_stop=should_stop)
        rows.append(_sweep_row(trainer, data, attack, data_dir, should_stop, margin=m, epochs=trainer.epoch))
        note(f"m = {m}: Acc_MF {rows[-1]['acc_mf']:.4f}, KL_test {rows[-1]['kl_test']:.2e}, "
             f"surrogate {rows[-1]['surrogate_acc']:.4f}")
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": data.name}


# ---------------------------------------------------------------- writing results


def write_experiment(out: Path, name: str, report: dict, figure) -> list[str]:
    """<name>.csv, .json, .html (and .png with kaleido) in `out`, atomically; returns notes for the user."""
    rows = report["rows"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["empty"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / f"{name}.csv", buf.getvalue().encode())
    atomic_write_json(out / f"{name}.json", report)
    # plotly.js embedded (~4 MB) so the figure opens offline, like the rest of the project
    atomic_write_bytes(out / f"{name}.html", figure.to_html(include_plotlyjs=True).encode())
    try:
        atomic_write_bytes(out / f"{name}.png", figure.to_image(format="png"))
        return [f"wrote {name}.csv, .json, .html, .png in {out}"]
    except Exception:  # kaleido (plotly's image export) is not installed: HTML only
        return [f"wrote {name}.csv, .json, .html in {out} (no PNG: plotly's image export needs kaleido, not installed)"]


def table_figure(report: dict):
    import plotly.graph_objects as go

    rows = report["rows"]
    names = [r["method"] for r in rows]
    fig = go.Figure([go.Bar(name="Acc_MF (fidelity)", x=names, y=[r["acc_mf"] for r in rows]),
                     go.Bar(name="Acc_MS after (surrogate)", x=names, y=[r["acc_ms_after"] for r in rows])])
    a = report["attack"]
    fig.update_layout(barmode="group", yaxis_title="test accuracy", yaxis_range=[0, 1],
                      title=f"{a['attack']} ({a['labels']} labels, Q = {a['queries']}) on {report['dataset']}")
    return fig


def sweep_figure(report: dict, x: str):
    import plotly.graph_objects as go

    rows = report["rows"]
    xs = [r[x] for r in rows]
    fig = go.Figure([go.Scatter(name="surrogate Acc_MS", x=xs, y=[r["surrogate_acc"] for r in rows], mode="lines+markers"),
                     go.Scatter(name="protected Acc_MF", x=xs, y=[r["acc_mf"] for r in rows], mode="lines+markers"),
                     go.Scatter(name="KL_test", x=xs, y=[r["kl_test"] for r in rows], mode="lines+markers",
                                yaxis="y2")])
    fig.update_layout(xaxis_title={"epoch": "AdvFT epochs N", "margin": "margin m"}[x], yaxis_title="test accuracy",
                      yaxis_range=[0, 1], yaxis2={"title": "KL_test", "overlaying": "y", "side": "right", "type": "log"},
                      title=f"{report['attack']['attack']} vs AdvFT on {report['dataset']}")
    return fig


# ---------------------------------------------------------------- command line


def _load_target(name: str, data_dir, device) -> tuple[Classifier, Dataset]:
    from .pipeline import load_victim, victim_path

    return load_victim(victim_path(name), data_dir, device)


def _attack_config(a) -> AttackConfig:
    return AttackConfig(attack=a.attack, labels=a.labels, queries=a.queries, surrogate=a.surrogate, seed=a.seed,
                        sampling=a.sampling, transfer=a.transfer, rounds=a.rounds, evals=a.evals,
                        eval_size=a.eval_size).validate()


def _advft_config(a) -> AdvFTConfig:
    overrides = {k: v for k, v in {"margin": a.margin, "epochs": a.epochs, "seed": a.seed}.items() if v is not None}
    return preset_config(a.preset, **overrides).validate()


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_attack(a) -> int:
    from .cli import _progress

    device = pick_device(a.device)
    config = _attack_config(a)
    defence = DefenceConfig(name=a.defence, seed=a.seed).validate()
    target, data = _load_target(a.target, a.data_dir, device)
    print(f"target: {a.target} ({target.arch} on {data.name}); data: {data.source}; device: {describe(device)}",
          file=sys.stderr)
    bar = _progress(config.queries, f"{config.attack} vs {defence.name}")

    def progress(r: AttackResult):
        bar.update(r.queries - bar.n)
        if r.surrogate_acc is not None:
            bar.set_postfix(phase=r.phase, acc=f"{r.surrogate_acc:.4f}")

    try:
        result = run_attack(target, data, config, defence, a.data_dir, progress=progress)
    finally:
        bar.close()
    if result.transfer_source:
        print(f"transfer set: {result.transfer_source}", file=sys.stderr)
    out = Path(a.out)
    save_model(result.surrogate.cpu(), out / "surrogate.pt", attack=config.attack, target=str(a.target),
               test_accuracy=result.surrogate_acc)
    atomic_write_json(out / "result.json", {**result.to_dict(), "target": str(a.target), "device": describe(device)})
    print(json.dumps({k: getattr(result, k) for k in ("surrogate_acc", "surrogate_best_acc", "agreement", "queries",
                                                       "target_acc", "seconds", "status")}, indent=2))
    return 0


def _experiment_setup(a):
    """(device, attack config, victim name, victim, its data) for `table` and `sweep`."""
    device = pick_device(a.device)
    attack = _attack_config(a)
    victim_name = a.victim or PRESETS[a.preset]["victim"]
    return (device, attack, victim_name, *_load_target(victim_name, a.data_dir, device))


def cmd_table(a) -> int:
    device, attack, victim_name, victim, data = _experiment_setup(a)
    protected = None
    if a.protected:
        protected = load_model(a.protected, device)
        if (protected.arch, protected.dataset) != (victim.arch, victim.dataset):
            raise CheckpointError(f"'{a.protected}' is a {protected.arch} on {protected.dataset}, "
                                  f"the victim a {victim.arch} on {victim.dataset}")
    out = Path(a.out)
    t0 = time.perf_counter()
    report = attack_table(victim, data, attack, None if protected is not None else _advft_config(a), protected,
                          data_dir=a.data_dir, advft_out=None if protected is not None else out / "advft",
                          victim_name=victim_name, note=_note)
    report.update({"victim": victim_name, "protected": a.protected, "device": describe(device),
                   "seconds": round(time.perf_counter() - t0, 1)})
    for line in write_experiment(out, "table", report, table_figure(report)):
        _note(line)
    print(format_table(report["rows"]))
    return 0


def cmd_sweep(a) -> int:
    device, attack, victim_name, victim, data = _experiment_setup(a)
    advft = _advft_config(a)
    t0 = time.perf_counter()
    if a.kind == "epochs":
        report = epoch_sweep(victim, data, advft, attack, a.at, a.data_dir, _note)
    else:
        report = margin_sweep(victim, data, advft, attack, a.margins, a.data_dir, _note)
    report.update({"victim": victim_name, "device": describe(device), "seconds": round(time.perf_counter() - t0, 1)})
    name = f"sweep_{a.kind}"
    for line in write_experiment(Path(a.out), name, report, sweep_figure(report, "epoch" if a.kind == "epochs" else "margin")):
        _note(line)
    for r in report["rows"]:
        print(json.dumps(r))
    return 0


def format_table(rows: list[dict]) -> str:
    def f(v, kind):
        if v is None:
            return "-"
        return {"pct": f"{100 * v:.2f}%", "sci": f"{v:.1e}", "int": f"{v:g}"}[kind]

    kinds = {"acc_mr": "pct", "acc_ms_before": "pct", "q": "int", "m": "int", "n": "int", "acc_mf": "pct",
             "acc_ms_after": "pct", "kl_train": "sci", "kl_test": "sci"}
    head = "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * len(TABLE_COLUMNS)
    body = ["| " + " | ".join([r["method"]] + [f(r[c], kinds[c]) for c in TABLE_COLUMNS[1:]]) + " |" for r in rows]
    return "\n".join([head, *body])


def _csv_floats(text: str) -> list[float]:
    import argparse
    import math

    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected finite numbers > 0, got '{text}'")
    return vals


def _csv_epochs(text: str) -> list[int]:
    import argparse

    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got '{text}'")
    return vals


def _attack_args(p, target_flag: str) -> None:
    from .cli import _common, _int_at_least, _positive_int

    d = AttackConfig()
    if target_flag == "--target":
        p.add_argument("--target", required=True, help="checkpoint to attack (a victim, or an AdvFT run's model.pt), "
                                                      "or a committed victim name such as mnist_lenet2d")
    else:
        p.add_argument("--victim", help="M_R: checkpoint path or committed victim name (default: the preset's victim)")
    p.add_argument("--attack", default=d.attack, choices=list(ATTACKS))
    p.add_argument("--labels", default=d.labels, choices=list(LABELS), help="what the thief asks the API for")
    p.add_argument("--queries", type=_positive_int, default=d.queries, help=f"query budget Q (default {d.queries})")
    p.add_argument("--surrogate", default=d.surrogate, choices=list(SURROGATES),
                   help="full: the victim arch's full-width counterpart (strong attacker); same: the victim's arch")
    p.add_argument("--sampling", default=d.sampling, choices=list(SAMPLINGS), help="KnockoffNets' query policy")
    p.add_argument("--transfer", default=d.transfer,
                   help="KnockoffNets' transfer set: cifar10 (offline crops when absent), natural, or an .npz path")
    p.add_argument("--rounds", type=_positive_int, default=d.rounds,
                   help=f"KnockoffNets' query/train rounds = its accuracy-vs-queries points (default {d.rounds}: "
                        "query the whole budget, then train)")
    p.add_argument("--evals", type=_positive_int, default=d.evals,
                   help=f"DFME's points on the accuracy-vs-queries curve (default {d.evals})")
    p.add_argument("--eval-size", type=_int_at_least(10), default=d.eval_size,
                   help=f"ID test images the surrogate is scored on (default {d.eval_size})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for the results")
    _common(p)


def add_commands(sub) -> None:
    """Registered in core.cli's _EXTRA_COMMANDS."""
    from .cli import _margin, _positive_int

    t = sub.add_parser("attack", help="steal a model through its black-box API",
                       description="Run KnockoffNets or DFME against a model behind a (defended) API; "
                                   "writes OUT/result.json and OUT/surrogate.pt.")
    _attack_args(t, "--target")
    t.add_argument("--defence", default="none", choices=list(DEFENCES),
                   help="API poisoning: none, dp (deceptive perturbation), am (adaptive misinformation), top1")
    t.set_defaults(func=cmd_attack)

    for name, helptext in (("table", "the paper's Table 2/3: AdvFT vs DP vs AM vs none under one attack"),
                           ("sweep", "Fig. 4 (surrogate accuracy vs AdvFT epochs) or a margin sweep")):
        p = sub.add_parser(name, help=helptext, description=helptext + "; writes CSV, JSON and an HTML figure.")
        _attack_args(p, "--victim")
        p.add_argument("--preset", default="lecture", choices=list(PRESETS), help="AdvFT settings")
        p.add_argument("--margin", type=_margin, help="AdvFT margin m (default: the preset's)")
        p.add_argument("--epochs", type=_positive_int, help="AdvFT epochs N (default: the preset's)")
        if name == "table":
            p.add_argument("--protected", help="an existing protected model.pt for the AdvFT row (skips running AdvFT)")
            p.set_defaults(func=cmd_table)
        else:
            p.add_argument("--kind", default="epochs", choices=["epochs", "margin"])
            p.add_argument("--at", type=_csv_epochs, help="epochs to attack after, e.g. 0,1,2,4,6 (default: every epoch)")
            p.add_argument("--margins", type=_csv_floats, default=[1.0, 3.0, 10.0, 30.0], help="margins for --kind margin")
            p.set_defaults(func=cmd_sweep)
