"""The paper's extraction experiments as grids of independent cells (core.grid runs them, here or on a
Ray cluster; core/cli.py gives them their `table` and `sweep` commands).

run_cell       what one cell does: attack the victim (behind an API defence) or an existing protected
               model, or run AdvFT into the cell's run folder (core.training, through `protect`) and
               attack M_F after its last epoch or after each chosen epoch. Returns the cell's row.
table          Tables 2/3 layout: rows AdvFT / DP / AM / none; columns Acc_MR, Acc_MS before, Q, m, N,
               Acc_MF, Acc_MS after, KL_train, KL_test. One attack setting, one budget, one seed. Cells:
               `before` (the attack on the unprotected victim, which is also the `none` row), `advft`,
               `dp`, `am`.
epoch sweep    Fig. 4: surrogate accuracy vs AdvFT epochs N. Cells: `before` (N = 0, the unprotected
               victim) and `advft`, ONE AdvFT run attacked after each chosen epoch. Not a cell per
               epoch: those would each train from scratch to their epoch (sum of N instead of max N),
               and with a cosine learning rate a run stopped at N is not the first N epochs of the
               longer run, so the points would no longer lie on one training trajectory.
margin sweep   protection (surrogate accuracy) vs fidelity (Acc_MF, KL_test) as the margin m varies:
               one cell per margin (and seed), each a full AdvFT run (run folder m<m>) attacked once.

<x>_cells builds a grid, <x>_report turns the grid's records into the command's report (a failed cell
becomes a row with status 'failed' and its message); attack_table / epoch_sweep / margin_sweep run the
whole thing in this process on an already loaded victim (the app's toy sweeps and the tests).

Fidelity of an API defence is measured on what honest users receive (BlackBoxAPI.respond, uncounted):
Acc_MF = accuracy of its top-1, KL = mean KL(P_R || P_defended) (core.metrics.fidelity). Results are
written by write_experiment: <name>.csv, .json, .md, .html (a core.figures figure), and .png with kaleido.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from .advft import AdvFTConfig, ConfigError, preset_config
from .attacks import AttackConfig, DefenceConfig, make_api, run_attack
from .data import Dataset
from .grid import Cell, CellStopped, GridResult, LocalExecutor, run_grid
from .metrics import accuracy, fidelity, outputs
from .models import CheckpointError, Classifier, load_model
from .runs import atomic_write_bytes, atomic_write_json
from .training import RecordedRun, drive, load_victim, new_trainer

TABLE_METHODS = ("advft", "dp", "am", "none")
TABLE_COLUMNS = ("method", "acc_mr", "acc_ms_before", "q", "m", "n", "acc_mf", "acc_ms_after", "kl_train", "kl_test")
TABLE_ROW = (*TABLE_COLUMNS, "acc_ms_after_best", "agreement", "status")
SWEEP_ROW = ("acc_mf", "kl_test", "ood_agreement", "surrogate_acc", "surrogate_best_acc", "agreement", "queries",
             "attack_seconds", "status")
METHOD_LABELS = {"advft": "AdvFT", "dp": "DP", "am": "AM", "none": "none"}
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


# ---------------------------------------------------------------- one cell


def run_cell(cell: Cell, folder: Path, *, data_dir=None, device="cpu", note: Note = _quiet, should_stop=None,
             victims: dict | None = None) -> dict:
    """Run one grid cell (core.grid calls this, in this process or on a Ray worker); an AdvFT cell writes
    its run folder `folder`. `victims` caches loaded (model, dataset) by victim string across cells.

    Returns the row: dataset, victim_arch, acc_mr (the victim's test accuracy), m and n (the protected
    model's margin and epochs, None for the victim itself), and points, one per attack:
    {epoch (AdvFT epochs so far, None without AdvFT), record (the run's history record at that epoch),
    fidelity (Acc_MF, KL_train, KL_test of what honest users get; with cell.fidelity), attack
    (the AttackResult as a dict) and, when the cell has more attacks, also (their results, in order)}."""
    stop = should_stop or (lambda: False)
    victims = {} if victims is None else victims
    if cell.victim not in victims:
        victims[cell.victim] = load_victim(cell.victim, data_dir, device)
    loaded, data = victims[cell.victim]
    victim = copy.deepcopy(loaded)  # nothing a cell does to its victim reaches the next cell
    device = next(victim.parameters()).device
    attack = AttackConfig(**cell.attack).validate()
    also = [AttackConfig(**a).validate() for a in cell.also]
    defence = DefenceConfig(**(cell.defence or {})).validate()
    ref = _split_logits(victim, data, device) if cell.fidelity else {"test": outputs(victim, data.x_test, device)[1]}
    row = {"dataset": data.name, "victim_arch": victim.arch, "acc_mr": accuracy(ref["test"], data.y_test),
           "m": None, "n": None, "points": []}

    def attack_point(model: Classifier, epoch: int | None = None, record: dict | None = None) -> dict:
        fid = None
        if cell.fidelity:  # what an honest user asking for soft answers gets from this deployment
            if defence.name != "none":
                answers = _split_logits(make_api(model, defence, "soft", None, data), data, device)
            else:
                answers = ref if model is victim else _split_logits(model, data, device)
            fid = fidelity(ref, answers, data.y_test)
        results = []
        for attack_config in (attack, *also):
            result = run_attack(model, data, attack_config, defence, data_dir, should_stop=should_stop)
            if result.status == "stopped":
                raise CellStopped(f"cell {cell.name} stopped")
            results.append(result.to_dict())
        point = {"epoch": epoch, "record": record, "fidelity": fid, "attack": results[0]}
        if also:
            point["also"] = results[1:]
        return point

    if cell.advft is not None:
        config = AdvFTConfig.from_dict(cell.advft).validate()
        at = set(cell.at_epochs) or {config.epochs}

        def attack_after(trainer) -> None:
            if trainer.epoch in at and not stop():
                row["points"].append(attack_point(trainer.model, trainer.epoch, dict(trainer.history[-1])))

        run = protect(victim, data, config, folder, cell.victim, data_dir, note, should_stop, on_epoch=attack_after)
        if run.status != "finished":
            raise CellStopped(f"cell {cell.name} stopped")
        row["m"], row["n"] = config.margin, run.trainer.epoch
    elif cell.target is not None:
        model = load_model(cell.target, device)
        if (model.arch, model.dataset) != (victim.arch, victim.dataset):
            raise CheckpointError(f"'{cell.target}' is a {model.arch} on {model.dataset}, "
                                  f"the victim a {victim.arch} on {victim.dataset}")
        row["m"], row["n"] = model.info.get("margin"), model.info.get("epochs_done")
        row["points"].append(attack_point(model))
    else:
        row["points"].append(attack_point(victim))
    return row


def _failed_row(record: dict, keys: tuple[str, ...], **known) -> dict:
    """The row of a failed cell: its known columns, None elsewhere, and why it failed."""
    return {**dict.fromkeys(keys), **known, "status": "failed", "message": record["message"]}


def cells_summary(result: GridResult) -> dict:
    """name -> how the cell went, for a report's JSON."""
    return {n: {k: r.get(k) for k in ("status", "message", "attempts", "seconds", "device", "host")}
            for n, r in result.records.items()}


def plottable(report: dict) -> dict:
    """The report with only the rows that have results (a figure has no place for a failed cell)."""
    return {**report, "rows": [r for r in report["rows"] if r.get("status") != "failed"]}


# ---------------------------------------------------------------- Tables 2/3


def table_cells(victim: str, attack: AttackConfig, advft: AdvFTConfig | None = None, protected: str | None = None,
                defence: DefenceConfig | None = None, methods=TABLE_METHODS) -> list[Cell]:
    """The table as a grid: `before` (the attack on the unprotected victim: the none row and every row's
    Acc_MS before), then a cell per other row. The AdvFT row attacks `protected` when given, else runs
    AdvFT with `advft` (default: the lecture preset) into the run folder `advft`."""
    unknown = [m for m in methods if m not in TABLE_METHODS]
    if unknown:
        raise ConfigError(f"unknown table rows {unknown}; choose from {TABLE_METHODS}")
    attack = attack.validate()
    base = replace(defence or DefenceConfig(), seed=attack.seed).validate()
    a, none = asdict(attack), asdict(replace(base, name="none"))
    cells = [Cell("before", victim, a, none, fidelity=True)]
    for method in methods:
        if method == "advft" and protected is not None:
            cells.append(Cell("advft", victim, a, none, target=str(protected), fidelity=True))
        elif method == "advft":
            config = (advft or preset_config("lecture")).validate()
            cells.append(Cell("advft", victim, a, none, advft=asdict(config), fidelity=True))
        elif method != "none":
            cells.append(Cell(method, victim, a, asdict(replace(base, name=method)), fidelity=True))
    return cells


def table_report(cells: list[Cell], result: GridResult, methods=TABLE_METHODS, dataset: str | None = None,
                 victim_arch: str | None = None) -> dict:
    """The table's report from its grid: {"rows": [...], "results": {...}, ...} as written by `table`. A
    failed cell is a row with its message; a cell that never ran (the grid was stopped) has no row."""
    by_name = {c.name: c for c in cells}
    before = result.row("before")
    acc_ms_before = before["points"][0]["attack"]["surrogate_acc"] if before else None
    rows, results = [], {}
    for method in methods:
        name = "before" if method == "none" else method
        if name in result.failed:
            rows.append(_failed_row(result.records[name], TABLE_ROW, method=METHOD_LABELS[method],
                                    acc_ms_before=acc_ms_before))
            continue
        cell_row = result.row(name)
        if cell_row is None:
            continue  # never ran: the grid was stopped
        point = cell_row["points"][-1]
        fid, r = point["fidelity"], point["attack"]
        results[method] = r
        rows.append({"method": METHOD_LABELS[method], "acc_mr": cell_row["acc_mr"], "acc_ms_before": acc_ms_before,
                     "q": r["queries"], "m": cell_row["m"], "n": cell_row["n"],
                     "acc_mf": fid["acc_mf"], "acc_ms_after": r["surrogate_acc"],
                     "kl_train": fid["kl_train"], "kl_test": fid["kl_test"],
                     "acc_ms_after_best": r["surrogate_best_acc"], "agreement": r["agreement"], "status": r["status"]})
    first = by_name["before"]
    advft = by_name.get("advft")
    return {"rows": rows, "results": results, "attack": first.attack, "defence": first.defence,
            "advft": advft.advft if advft is not None else None,  # None when the row attacked --protected
            "dataset": dataset, "victim_arch": victim_arch, "cells": cells_summary(result)}


def attack_table(victim: Classifier, data: Dataset, attack: AttackConfig, advft: AdvFTConfig | None = None,
                 protected: str | None = None, defence: DefenceConfig | None = None, data_dir=None,
                 methods=TABLE_METHODS, out: Path | None = None, victim_name: str = "",
                 note: Note = _quiet, should_stop=None) -> dict:
    """The paper's Table 2/3 for one already loaded victim, attack and budget, in this process: its cells'
    records and the AdvFT run folder go under `out` (out/advft). A failed cell raises CellFailed.

    Every row's fidelity is what an honest user asking for soft answers gets from that deployment
    (M_F's softmax, the perturbed softmax of DP / AM, P_R itself for none), whatever the thief asks for."""
    if out is None:
        raise ConfigError("the table needs a folder (out) for its cells and its AdvFT run")
    cells = table_cells(victim_name, attack, advft, protected, defence, methods)
    result = _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop)
    return table_report(cells, result, methods, data.name, victim.arch)


def _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop) -> GridResult:
    """A grid in this process on an already loaded victim; a failed cell raises, as a library call should."""
    result = run_grid(cells, out, run_cell, LocalExecutor({victim_name: (victim, data)}), data_dir=data_dir,
                      device=next(victim.parameters()).device, retries=0, note=note, should_stop=should_stop)
    result.raise_failed()
    return result


# ---------------------------------------------------------------- Fig. 4 and the margin sweep


def _sweep_row(record: dict, r: dict, **keys) -> dict:
    """A sweep row from an attack point: `record` is the run's history record (Acc_MF, KL_test, OOD agreement)."""
    return {**keys, "acc_mf": record["acc_after"], "kl_test": record["kl_test"],
            "ood_agreement": record["ood_agreement"], "surrogate_acc": r["surrogate_acc"],
            "surrogate_best_acc": r["surrogate_best_acc"], "agreement": r["agreement"], "queries": r["queries"],
            "attack_seconds": round(r["seconds"], 1), "status": r["status"]}


def epoch_cells(victim: str, advft: AdvFTConfig, attack: AttackConfig, at_epochs: list[int] | None = None) -> list[Cell]:
    """Fig. 4 as a grid: `before` (N = 0) when 0 is asked for, and one AdvFT run (run folder `advft`) to the
    last chosen epoch, attacked after each chosen epoch (see the module docstring for why one cell)."""
    attack = attack.validate()
    at = sorted(set(at_epochs if at_epochs is not None else range(advft.epochs + 1)))
    if not at or at[0] < 0 or at[-1] > advft.epochs:
        raise ConfigError(f"sweep epochs must lie in 0..{advft.epochs} (got {at_epochs})")
    a = asdict(attack)
    cells = [Cell("before", victim, a)] if 0 in at else []
    if at[-1] > 0:
        cells.append(Cell("advft", victim, a, advft=asdict(replace(advft, epochs=at[-1]).validate()),
                          at_epochs=tuple(e for e in at if e > 0)))
    return cells


def epoch_report(cells: list[Cell], result: GridResult, advft: AdvFTConfig, attack: AttackConfig,
                 dataset: str | None = None) -> dict:
    rows = []
    for cell in cells:
        cell_row = result.row(cell.name)
        if cell.name in result.failed:
            rows += [_failed_row(result.records[cell.name], ("epoch", *SWEEP_ROW), epoch=e)
                     for e in (cell.at_epochs if cell.advft is not None else (0,))]
        elif cell_row is None:
            continue  # never ran: the grid was stopped
        elif cell.advft is None:  # N = 0: M_F = M_R
            unprotected = {"acc_after": cell_row["acc_mr"], "kl_test": 0.0, "ood_agreement": 1.0}
            rows.append(_sweep_row(unprotected, cell_row["points"][0]["attack"], epoch=0))
        else:
            rows += [_sweep_row(p["record"], p["attack"], epoch=p["epoch"]) for p in cell_row["points"]]
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": dataset,
            "cells": cells_summary(result)}


def epoch_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig, out: Path,
                at_epochs: list[int] | None = None, data_dir=None, victim_name: str = "", note: Note = _quiet,
                should_stop=None) -> dict:
    """Fig. 4 for an already loaded victim, in this process: the AdvFT run goes to out/advft; the
    protected model is attacked after each epoch in `at_epochs` (N = 0 is the unprotected victim)."""
    cells = epoch_cells(victim_name, advft, attack, at_epochs)
    result = _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop)
    return epoch_report(cells, result, advft, attack, data.name)


def margin_cells(victim: str, advft: AdvFTConfig, attack: AttackConfig, margins: list[float],
                 seeds: list[int] | None = None) -> list[Cell]:
    """The margin sweep as a grid: a cell per margin (run folder m<m>), or per margin and seed (m<m>-s<seed>,
    the seed of both AdvFT and the attack) when `seeds` are given."""
    attack = attack.validate()
    cells = []
    for m in margins:
        for seed in (seeds if seeds else [None]):
            config, att, name = replace(advft, margin=m), attack, f"m{m:g}"
            if seed is not None:
                config, att, name = replace(config, seed=seed), replace(attack, seed=seed), f"{name}-s{seed}"
            cells.append(Cell(name, victim, asdict(att.validate()), advft=asdict(config.validate())))
    return cells


def margin_report(cells: list[Cell], result: GridResult, advft: AdvFTConfig, attack: AttackConfig,
                  dataset: str | None = None, seeds: list[int] | None = None) -> dict:
    rows = []
    for cell in cells:
        keys = {"margin": cell.advft["margin"], "epochs": None}
        if seeds:
            keys["seed"] = cell.advft["seed"]
        cell_row = result.row(cell.name)
        if cell.name in result.failed:
            rows.append(_failed_row(result.records[cell.name], (*keys, *SWEEP_ROW), **keys))
        elif cell_row is not None:
            point = cell_row["points"][-1]
            rows.append(_sweep_row(point["record"], point["attack"], **{**keys, "epochs": cell_row["n"]}))
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": dataset,
            "cells": cells_summary(result)}


def margin_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig, margins: list[float],
                 out: Path, data_dir=None, victim_name: str = "", note: Note = _quiet, should_stop=None) -> dict:
    """Protection vs fidelity for an already loaded victim, in this process: a full AdvFT run per margin
    (run folders out/m<m>), each protected model attacked once."""
    cells = margin_cells(victim_name, advft, attack, margins)
    result = _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop)
    return margin_report(cells, result, advft, attack, data.name)


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
