"""The paper's extraction experiments as grids of independent cells (core.grid runs them, here or on a
Ray cluster; core/cli.py gives them their `table` and `sweep` commands).

run_cell       what one cell does: attack the victim (behind an API defence) or an existing protected
               model, or run AdvFT into the cell's run folder (core.training, through `protect`) and
               attack M_F after its last epoch or after each chosen epoch. Returns the cell's row.
table          Tables 2/3 layout: rows AdvFT / DP / AM (simplified) / none; columns Acc_MR, Acc_MS before,
               Q, m, N, Acc_MF, Acc_MS after, KL_train, KL_test, with Acc_MS the best over training (the
               paper's protocol) beside the final one, and the paper's MNIST numbers (PAPER_TABLES) beside
               ours. One attack setting and budget (SCALE_ATTACKS: toy / cpu / paper), one seed or the
               median of several. Cells: `before` (the attack on the unprotected victim, which is also the
               `none` row), `advft`, `dp`, `am` (suffixed -s<seed> with several seeds).
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

Fidelity of an API defence is measured on what honest users asking for soft answers receive
(BlackBoxAPI.respond, uncounted), whatever labels the thief asks for: Acc_MF = accuracy of its top-1, KL =
mean KL(P_R || P_defended) (core.metrics.fidelity). Results are written by write_experiment: <name>.csv,
.json, .md, .html (a core.figures figure, or for a table the table, its notes and the figure), and .png
with kaleido.
"""

from __future__ import annotations

import copy
import csv
import html
import io
import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from .advft import AdvFTConfig, ConfigError, preset_config
from .attacks import AttackConfig, DefenceConfig, make_api, make_defence, run_attack
from .data import Dataset
from .grid import Cell, CellStopped, GridResult, LocalExecutor, run_grid
from .metrics import accuracy, fidelity, outputs
from .models import CheckpointError, Classifier, load_model
from .runs import atomic_write_bytes, atomic_write_json
from .training import RecordedRun, drive, load_victim, new_trainer

TABLE_METHODS = ("advft", "dp", "am", "none")
# The paper's layout: before defence (Acc_MR, Acc_MS, Q), after defence (m, N, Acc_MF, Acc_MS, KL_train,
# KL_test). Acc_MS is the best surrogate accuracy over training (the paper's protocol, the headline);
# *_final is the surrogate's accuracy at the end of training.
TABLE_COLUMNS = ("method", "acc_mr", "acc_ms_before", "acc_ms_before_final", "q", "m", "n", "acc_mf", "acc_ms_after",
                 "acc_ms_after_final", "kl_train", "kl_test")
PAPER_COLUMNS = ("paper_acc_mr", "paper_acc_ms_before", "paper_q", "paper_m", "paper_n", "paper_acc_mf",
                 "paper_acc_ms_after", "paper_kl_train", "paper_kl_test")
TABLE_ROW = (*TABLE_COLUMNS, "agreement", "epochs_trained", "early_stopped", "id_transfer", "status", *PAPER_COLUMNS)
SWEEP_ROW = ("acc_mf", "kl_test", "ood_agreement", "surrogate_acc", "surrogate_best_acc", "agreement", "queries",
             "attack_seconds", "status")
METHOD_LABELS = {"advft": "AdvFT", "dp": "DP", "am": "AM (simplified)", "none": "none",
                 "cip": "CIP (paper only, no public code)"}
AM_SIMPLIFIED = ("AM (simplified): Kariyappa & Qureshi's adaptive misinformation without outlier exposure (the "
                 "victim's own max softmax detects OOD queries), with a misinformation model that re-trains only the "
                 "victim's head, and this project's threshold 0.5 and sharpness 100.")

# The paper's MNIST rows (Table 2: DFME; Table 3: KnockoffNets), as printed. Table 3 has no Acc_MR or KL
# columns, and no row without a defence; the paper has no AM row.
PAPER_TABLES = {
    "dfme": {"table": "Table 2", "model": "MNIST-LeNet", "attack": "DFME, Q = 6M",
             "note": "Acc_MR 99.41%; Acc_MS before 99.21%",
             "before": {"acc_mr": 0.9941, "acc_ms_before": 0.9921, "q": 6_000_000},
             "rows": {"advft": {"m": 100, "n": 6, "acc_mf": 0.9943, "acc_ms_after": 0.1035, "kl_train": 1.2e-4,
                                "kl_test": 1.6e-3},
                      "dp": {"acc_mf": 0.9941, "acc_ms_after": 0.3843, "kl_train": 1.77, "kl_test": 1.76},
                      "cip": {"acc_mf": 0.9938, "acc_ms_after": 0.1243, "kl_train": 0.15, "kl_test": 0.23}}},
    "knockoff": {"table": "Table 3", "model": "MNIST (LeNet)", "attack": "KnockoffNets, Q = 50K (ImageNet images)",
                 "note": "no Acc_MR or KL columns in Table 3; Acc_MS before 98.90%",
                 "before": {"acc_ms_before": 0.9890, "q": 50_000},
                 "rows": {"advft": {"m": 100, "n": 75, "acc_mf": 0.9942, "acc_ms_after": 0.2133},
                          "dp": {"acc_mf": 0.9941, "acc_ms_after": 0.8083},
                          "cip": {"acc_mf": 0.9935, "acc_ms_after": 0.2583}}},
}


def paper_numbers(dataset: str | None, attack: str) -> dict | None:
    """The paper's MNIST block for this attack (None for other datasets: the paper's other rows use ResNet-18s)."""
    return PAPER_TABLES.get(attack) if dataset == "mnist" else None


def _paper_row(paper: dict | None, method: str) -> dict:
    """paper_* columns of one row: the block's before-defence numbers and the method's own (None where the
    paper has no number: Table 3's Acc_MR and KL, every AM and none after-defence cell)."""
    out = dict.fromkeys(PAPER_COLUMNS)
    if paper is None:
        return out
    out.update({f"paper_{k}": v for k, v in paper["before"].items()})
    out.update({f"paper_{k}": v for k, v in paper["rows"].get(method, {}).items()})
    return out
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
             victims: dict | None = None, progress=None) -> dict:
    """Run one grid cell (core.grid calls this, in this process or on a Ray worker); an AdvFT cell writes
    its run folder `folder`. `victims` caches loaded (model, dataset) by victim string across cells.

    Returns the row: dataset, victim_arch, acc_mr (the victim's test accuracy), m and n (the protected
    model's margin and epochs, None for the victim itself), and points, one per attack:
    {epoch (AdvFT epochs so far, None without AdvFT), record (the run's history record at that epoch),
    fidelity (Acc_MF, KL_train, KL_test of what honest users get; with cell.fidelity), attack
    (the AttackResult as a dict) and, when the cell has more attacks, also (their results, in order)}.
    progress(partial AttackResult) follows each attack as it runs (the app's live curve)."""
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
        guard = make_defence(defence, model, data)  # one per model: AM trains its misinformation model here
        if cell.fidelity:  # what an honest user asking for soft answers gets from this deployment
            if defence.name != "none":
                answers = _split_logits(make_api(model, defence, "soft", None, data, guard), data, device)
            else:
                answers = ref if model is victim else _split_logits(model, data, device)
            fid = fidelity(ref, answers, data.y_test)
        results = []
        for attack_config in (attack, *also):
            result = run_attack(model, data, attack_config, defence, data_dir, progress, should_stop, guard)
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
            if progress is not None:
                progress({"phase": f"AdvFT epoch {trainer.epoch}/{config.epochs}", "done": trainer.epoch / config.epochs,
                          "queries": 0, "budget": attack.queries, "curve": []})
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


def protected_path(pattern: str, seed: int) -> str:
    """A protected model's path for one seed: `pattern` with {seed} replaced (a path without it is every seed's)."""
    return str(pattern).replace("{seed}", str(seed))


def table_cells(victim: str, attack: AttackConfig, advft: AdvFTConfig | None = None, protected: str | None = None,
                defence: DefenceConfig | None = None, methods=TABLE_METHODS, seeds: list[int] | None = None,
                seed_rows=None) -> list[Cell]:
    """The table as a grid: `before` (the attack on the unprotected victim: the none row and every row's
    Acc_MS before), then a cell per other row. The AdvFT row attacks `protected` when given (a model path;
    {seed} in it names each seed's model: protected_path), else runs AdvFT with `advft` (default: the lecture
    preset) into the run folder `advft`.

    seeds: run every row once per seed (the seed of the attack, of AM's misinformation model and of
    AdvFT), cells named <row>-s<seed>; the report gives each row's median. seed_rows: the rows that get
    every seed (default all); the others run at the first seed only. Without seeds: attack.seed, one cell
    per row, named as before (before, advft, dp, am)."""
    unknown = [m for m in methods if m not in TABLE_METHODS]
    if unknown:
        raise ConfigError(f"unknown table rows {unknown}; choose from {TABLE_METHODS}")
    if not methods:
        raise ConfigError("the table needs at least one row")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"seeds must be distinct and at least one (got {seeds})")
    bad = [m for m in (seed_rows or ()) if m not in TABLE_METHODS]
    if bad:
        raise ConfigError(f"unknown seed rows {bad}; choose from {TABLE_METHODS}")
    attack = attack.validate()
    base = (defence or DefenceConfig()).validate()
    config = None if protected is not None else (advft or preset_config("lecture")).validate()
    seeded = set(seed_rows if seed_rows is not None else TABLE_METHODS)
    cells = []

    def name(row: str, seed: int) -> str:
        return row if seeds is None else f"{row}-s{seed}"

    for i, seed in enumerate(seeds if seeds is not None else [attack.seed]):
        a = asdict(replace(attack, seed=seed))
        d = replace(base, seed=seed)
        none = asdict(replace(d, name="none"))
        wanted = [m for m in methods if i == 0 or m in seeded]
        if i == 0 or "none" in wanted:  # the first seed's `before` gives every row its Acc_MS before
            cells.append(Cell(name("before", seed), victim, a, none, fidelity=True))
        for method in wanted:
            if method == "advft" and protected is not None:
                cells.append(Cell(name("advft", seed), victim, a, none, target=protected_path(protected, seed),
                                  fidelity=True))
            elif method == "advft":
                cells.append(Cell(name("advft", seed), victim, a, none, advft=asdict(replace(config, seed=seed)
                                                                                    if seeds is not None else config),
                                  fidelity=True))
            elif method != "none":
                cells.append(Cell(name(method, seed), victim, a, asdict(replace(d, name=method)), fidelity=True))
    return cells


def _cell_seed(cell: Cell) -> int:
    return cell.attack["seed"]


def _median(values: list):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(statistics.median(vals)) if all(isinstance(v, (int, float)) for v in vals) else vals[0]


def attack_row(cell_row: dict) -> dict:
    """One attack as a row of the table (the keys of TABLE_ROW; no Acc_MS before: that is the unprotected
    victim's row, see with_before), from the row of a cell run with fidelity: its last attack point.
    `table` and the app's Attack page both build their rows here."""
    point = cell_row["points"][-1]
    fid, r = point["fidelity"], point["attack"]
    return {"acc_mr": cell_row["acc_mr"], "q": r["queries"], "m": cell_row["m"], "n": cell_row["n"],
            "acc_mf": fid["acc_mf"], "acc_ms_after": r["surrogate_best_acc"], "acc_ms_after_final": r["surrogate_acc"],
            "kl_train": fid["kl_train"], "kl_test": fid["kl_test"], "agreement": r["agreement"],
            "epochs_trained": r.get("epochs_trained"), "early_stopped": r.get("early_stopped"),
            "id_transfer": r.get("id_transfer", False), "status": r["status"]}


def with_before(rows: list[dict], key=lambda r: (r.get("attack"), r.get("labels"), r["q"])) -> list[dict]:
    """Rows of separate attacks with Acc_MS before filled in: the best (and final) accuracy of the same attack
    (same `key`) on an unprotected target, a row whose m is None and whose defence is none."""
    before = {key(r): r for r in rows if r.get("m") is None and r.get("defence", "none") == "none"}
    return [{**r, "acc_ms_before": before[key(r)]["acc_ms_after"] if key(r) in before else None,
             "acc_ms_before_final": before[key(r)]["acc_ms_after_final"] if key(r) in before else None} for r in rows]


def table_report(cells: list[Cell], result: GridResult, methods=TABLE_METHODS, dataset: str | None = None,
                 victim_arch: str | None = None) -> dict:
    """The table's report from its grid: {"rows": [...], "results": {...}, ...} as written by `table`. A
    failed cell is a row with its message; a cell that never ran (the grid was stopped) has no row.

    Acc_MS before / after are the best surrogate accuracy over training (the paper's protocol; the
    headline), *_final the last model's. With several seeds every number is the median over the seeds
    that row ran (`seeds`), and `per_seed` keeps each seed's values. Paper numbers (Tables 2-3, MNIST)
    join as paper_* columns for an MNIST victim, with the paper's CIP row (no public code) after ours."""
    base = {c.name: c for c in cells}
    befores = [c for c in cells if c.name.split("-s")[0] == "before"]
    failed_before = [c.name for c in befores if c.name in result.failed]
    before_results = [result.row(c.name)["points"][0]["attack"] for c in befores
                      if c.name not in result.failed and result.row(c.name) is not None]
    acc_ms_before = _median([r["surrogate_best_acc"] for r in before_results])
    acc_ms_before_final = _median([r["surrogate_acc"] for r in before_results])
    attack = befores[0].attack
    paper = paper_numbers(dataset, attack["attack"])
    rows, results = [], {}
    for method in methods:
        row_name = "before" if method == "none" else method
        mine = [c for c in cells if c.name.split("-s")[0] == row_name]
        label = METHOD_LABELS[method]
        known = {"acc_ms_before": acc_ms_before, "acc_ms_before_final": acc_ms_before_final, **_paper_row(paper, method)}
        failed = [c.name for c in mine if c.name in result.failed]
        if failed:
            record = result.records[failed[0]]
            rows.append(_failed_row(record, TABLE_ROW, method=label, **known))
            continue
        done = [(c, result.row(c.name)) for c in mine if result.row(c.name) is not None]
        if not done:
            continue  # never ran: the grid was stopped
        per_seed = {}
        for cell, cell_row in done:
            per_seed[_cell_seed(cell)] = attack_row(cell_row)
            results[method if len(done) == 1 else f"{method}-s{_cell_seed(cell)}"] = cell_row["points"][-1]["attack"]
        keys = ("acc_mr", "q", "m", "n", "acc_mf", "acc_ms_after", "acc_ms_after_final", "kl_train", "kl_test", "agreement")
        row = {"method": label, **{k: _median([s[k] for s in per_seed.values()]) for k in keys},
               "acc_ms_before": acc_ms_before, "acc_ms_before_final": acc_ms_before_final,
               "seeds": sorted(per_seed), "epochs_trained": _median([s["epochs_trained"] for s in per_seed.values()]),
               "early_stopped": all(s["early_stopped"] for s in per_seed.values()),
               "id_transfer": any(s["id_transfer"] for s in per_seed.values()),
               "status": "finished" if all(s["status"] == "finished" for s in per_seed.values()) else "stopped",
               **known}
        for k in ("q", "n"):  # counts stay whole numbers
            row[k] = None if row[k] is None else int(row[k]) if float(row[k]).is_integer() else row[k]
        if len(per_seed) > 1:
            row["per_seed"] = {str(s): {k: v[k] for k in ("acc_mf", "acc_ms_after", "acc_ms_after_final", "kl_test")}
                               for s, v in per_seed.items()}
        rows.append({k: row[k] for k in (*TABLE_ROW, "seeds", "per_seed") if k in row})
    if paper is not None and "cip" in paper["rows"]:
        rows.append({**dict.fromkeys(TABLE_ROW), "method": METHOD_LABELS["cip"], "status": "paper only",
                     **_paper_row(paper, "cip")})
    advft = next((c for c in cells if c.name.split("-s")[0] == "advft"), None)
    seeds = sorted({_cell_seed(c) for c in cells})
    return {"rows": rows, "results": results, "attack": attack, "defence": befores[0].defence,
            "advft": advft.advft if advft is not None else None,  # None when the row attacked --protected
            "dataset": dataset, "victim_arch": victim_arch, "seeds": seeds,
            "id_transfer": any(r.get("id_transfer") for r in rows),
            "paper": None if paper is None else {k: paper[k] for k in ("table", "model", "attack", "note")},
            "failed_before": failed_before, "cells": cells_summary(result)}


def attack_table(victim: Classifier, data: Dataset, attack: AttackConfig, advft: AdvFTConfig | None = None,
                 protected: str | None = None, defence: DefenceConfig | None = None, data_dir=None,
                 methods=TABLE_METHODS, out: Path | None = None, victim_name: str = "",
                 note: Note = _quiet, should_stop=None, seeds: list[int] | None = None, seed_rows=None) -> dict:
    """The paper's Table 2/3 for one already loaded victim, attack and budget, in this process: its cells'
    records and the AdvFT run folder go under `out` (out/advft). A failed cell raises CellFailed.

    Every row's fidelity is what an honest user asking for soft answers gets from that deployment
    (M_F's softmax, the perturbed softmax of DP / AM, P_R itself for none), whatever the thief asks for."""
    if out is None:
        raise ConfigError("the table needs a folder (out) for its cells and its AdvFT run")
    cells = table_cells(victim_name, attack, advft, protected, defence, methods, seeds, seed_rows)
    result = _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop)
    return table_report(cells, result, methods, data.name, victim.arch)


def _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop, progress=None) -> GridResult:
    """A grid in this process on an already loaded victim; a failed cell raises, as a library call should.
    `progress` gets the grid's GridProgress as cells start and end."""
    result = run_grid(cells, out, run_cell, LocalExecutor({victim_name: (victim, data)}), data_dir=data_dir,
                      device=next(victim.parameters()).device, retries=0, note=note, should_stop=should_stop,
                      progress=progress)
    result.raise_failed()
    return result


# ---------------------------------------------------------------- Fig. 4 and the margin sweep


def _also_columns(also: tuple[dict, ...]) -> tuple[str, ...]:
    """A sweep row's columns for its extra attacks (Cell.also): <attack>_best_acc, <attack>_acc (final) and
    <attack>_seconds for each, e.g. knockoff_best_acc."""
    return tuple(f"{a['attack']}_{k}" for a in also for k in ("best_acc", "acc", "seconds"))


def _sweep_row(record: dict, r: dict, also: list[dict] = (), **keys) -> dict:
    """A sweep row from an attack point: `record` is the run's history record (Acc_MF, KL_test, OOD agreement),
    `r` the attack's result, `also` the extra attacks' results (columns: _also_columns)."""
    row = {**keys, "acc_mf": record["acc_after"], "kl_test": record["kl_test"],
           "ood_agreement": record["ood_agreement"], "surrogate_acc": r["surrogate_acc"],
           "surrogate_best_acc": r["surrogate_best_acc"], "agreement": r["agreement"], "queries": r["queries"],
           "attack_seconds": round(r["seconds"], 1), "status": r["status"]}
    for extra in also:
        row.update({f"{extra['attack']}_best_acc": extra["surrogate_best_acc"],
                    f"{extra['attack']}_acc": extra["surrogate_acc"],
                    f"{extra['attack']}_seconds": round(extra["seconds"], 1)})
    return row


def _also(attack: AttackConfig, also: tuple[AttackConfig, ...]) -> tuple[dict, ...]:
    """Extra attacks for every point of a sweep (Cell.also), one per kind, each a different one from `attack`."""
    kinds = [a.attack for a in also]
    if attack.attack in kinds or len(set(kinds)) < len(kinds):
        raise ConfigError(f"a sweep's extra attacks must differ from its attack ({attack.attack}) and from each "
                          f"other (got {', '.join(kinds)}): choose another attack to add")
    return tuple(asdict(a.validate()) for a in also)


def epoch_cells(victim: str, advft: AdvFTConfig, attack: AttackConfig, at_epochs: list[int] | None = None,
                also: tuple[AttackConfig, ...] = ()) -> list[Cell]:
    """Fig. 4 as a grid: `before` (N = 0) when 0 is asked for, and one AdvFT run (run folder `advft`) to the
    last chosen epoch, attacked after each chosen epoch (see the module docstring for why one cell), by
    `attack` and then by each of `also` (e.g. DFME for Fig. 4 and a KnockoffNets thief from the same run)."""
    attack = attack.validate()
    extra = _also(attack, also)
    at = sorted(set(at_epochs if at_epochs is not None else range(advft.epochs + 1)))
    if not at or at[0] < 0 or at[-1] > advft.epochs:
        raise ConfigError(f"sweep epochs must lie in 0..{advft.epochs} (got {at_epochs})")
    a = asdict(attack)
    cells = [Cell("before", victim, a, also=extra)] if 0 in at else []
    if at[-1] > 0:
        cells.append(Cell("advft", victim, a, advft=asdict(replace(advft, epochs=at[-1]).validate()),
                          at_epochs=tuple(e for e in at if e > 0), also=extra))
    return cells


def epoch_report(cells: list[Cell], result: GridResult, advft: AdvFTConfig, attack: AttackConfig,
                 dataset: str | None = None) -> dict:
    rows = []
    for cell in cells:
        cell_row = result.row(cell.name)
        if cell.name in result.failed:
            rows += [_failed_row(result.records[cell.name], ("epoch", *SWEEP_ROW, *_also_columns(cell.also)), epoch=e)
                     for e in (cell.at_epochs if cell.advft is not None else (0,))]
        elif cell_row is None:
            continue  # never ran: the grid was stopped
        elif cell.advft is None:  # N = 0: M_F = M_R
            unprotected = {"acc_after": cell_row["acc_mr"], "kl_test": 0.0, "ood_agreement": 1.0}
            point = cell_row["points"][0]
            rows.append(_sweep_row(unprotected, point["attack"], point.get("also", ()), epoch=0))
        else:
            rows += [_sweep_row(p["record"], p["attack"], p.get("also", ()), epoch=p["epoch"]) for p in cell_row["points"]]
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": dataset,
            "cells": cells_summary(result)}


def epoch_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig, out: Path,
                at_epochs: list[int] | None = None, data_dir=None, victim_name: str = "", note: Note = _quiet,
                should_stop=None, progress=None, also: tuple[AttackConfig, ...] = ()) -> dict:
    """Fig. 4 for an already loaded victim, in this process: the AdvFT run goes to out/advft; the
    protected model is attacked after each epoch in `at_epochs` (N = 0 is the unprotected victim), by
    `attack` and then each of `also`."""
    cells = epoch_cells(victim_name, advft, attack, at_epochs, also)
    result = _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop, progress)
    return epoch_report(cells, result, advft, attack, data.name)


def margin_cells(victim: str, advft: AdvFTConfig, attack: AttackConfig, margins: list[float],
                 seeds: list[int] | None = None, also: tuple[AttackConfig, ...] = ()) -> list[Cell]:
    """The margin sweep as a grid: a cell per margin (run folder m<m>), or per margin and seed (m<m>-s<seed>,
    the seed of AdvFT and of every attack) when `seeds` are given; `also` as for epoch_cells."""
    attack = attack.validate()
    extra = _also(attack, also)
    cells = []
    for m in margins:
        for seed in (seeds if seeds else [None]):
            config, att, more, name = replace(advft, margin=m), attack, extra, f"m{m:g}"
            if seed is not None:
                config, att, name = replace(config, seed=seed), replace(attack, seed=seed), f"{name}-s{seed}"
                more = tuple({**e, "seed": seed} for e in extra)
            cells.append(Cell(name, victim, asdict(att.validate()), advft=asdict(config.validate()), also=more))
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
            rows.append(_failed_row(result.records[cell.name], (*keys, *SWEEP_ROW, *_also_columns(cell.also)), **keys))
        elif cell_row is not None:
            point = cell_row["points"][-1]
            rows.append(_sweep_row(point["record"], point["attack"], point.get("also", ()),
                                   **{**keys, "epochs": cell_row["n"]}))
    return {"rows": rows, "advft": asdict(advft), "attack": asdict(attack), "dataset": dataset,
            "cells": cells_summary(result)}


def margin_sweep(victim: Classifier, data: Dataset, advft: AdvFTConfig, attack: AttackConfig, margins: list[float],
                 out: Path, data_dir=None, victim_name: str = "", note: Note = _quiet, should_stop=None,
                 progress=None) -> dict:
    """Protection vs fidelity for an already loaded victim, in this process: a full AdvFT run per margin
    (run folders out/m<m>), each protected model attacked once."""
    cells = margin_cells(victim_name, advft, attack, margins)
    result = _run_here(cells, out, victim, data, victim_name, data_dir, note, should_stop, progress)
    return margin_report(cells, result, advft, attack, data.name)


# ---------------------------------------------------------------- budgets: --scale


SCALES = ("toy", "cpu", "paper")
# Attack settings per scale (AttackConfig fields; explicit options override them):
#   toy    the lecture-size defaults (KnockoffNets 20k queries, 20 passes; DFME 200k queries)
#   cpu    the paper's KnockoffNets budget (50k queries) trained until its test accuracy stops improving (a
#          pass-by-pass score, patience 5, at most 20 passes: ~20 s a pass for the full-width LeNet on one
#          core, so that the four attacks of a table fit 45 minutes with AdvFT), DFME at 1M queries (chosen
#          to take minutes per row on a 2-core CPU, not the paper's 6M)
#   paper  the paper's budgets, for a GPU: KnockoffNets 50k queries for up to 100 passes (KnockoffNets' own
#          epochs; patience 10), DFME 6M queries with the original's batch 256 and generator (latent 256, ngf 64)
SCALE_ATTACKS = {
    "toy": {"knockoff": {}, "dfme": {"queries": 200_000}},
    "cpu": {"knockoff": {"queries": 50_000, "epochs": 20, "patience": 5}, "dfme": {"queries": 1_000_000}},
    "paper": {"knockoff": {"queries": 50_000, "epochs": 100, "patience": 10},
              "dfme": {"queries": 6_000_000, "dfme_batch": 256, "latent_dim": 256, "gen_width": 64}},
}
# --scale paper also takes the AdvFT settings of the `paper` preset, with the N of the paper's table for the
# attack (Table 2, DFME: N = 6; Table 3, KnockoffNets: N = 75).
PAPER_EPOCHS = {"dfme": 6, "knockoff": 75}
PRESET_SCALES = {"table-mnist": "cpu", "table-mnist-m10": "cpu", "paper": "paper"}  # a preset's default scale; the others: toy


def default_scale(preset: str) -> str:
    return PRESET_SCALES.get(preset, "toy")


def scaled_attack(attack: str, scale: str, **explicit) -> AttackConfig:
    """The attack config of a scale: AttackConfig's defaults < the scale's < `explicit` (options the user gave)."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale '{scale}'; choose one of: {', '.join(SCALES)}")
    return AttackConfig(**{"attack": attack, **SCALE_ATTACKS[scale].get(attack, {}), **explicit}).validate()


def scaled_advft(preset: str, scale: str, attack: str, **explicit) -> AdvFTConfig:
    """The AdvFT config of a preset at a scale: the preset's, or at scale `paper` the paper preset's with the
    N of the paper's table for `attack`; `explicit` (options the user gave) last."""
    if scale == "paper":
        return preset_config("paper", **{"epochs": PAPER_EPOCHS.get(attack, PAPER_EPOCHS["dfme"]), **explicit}).validate()
    return preset_config(preset, **explicit).validate()


# ---------------------------------------------------------------- writing results


def write_experiment(out: Path, name: str, report: dict, figure, markdown: str | None = None,
                     html_page: str | None = None) -> list[str]:
    """<name>.csv, .json, .html (and .md when given, .png with kaleido) in `out`, atomically; returns
    notes for the user. `html_page` replaces the figure's own page (it should embed the figure)."""
    # the thread count the rows were computed with, in every row of the CSV (float results depend on it)
    rows = [{**r, "threads": report["threads"]} for r in report["rows"]] if "threads" in report else report["rows"]
    buf = io.StringIO()
    flat = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in rows]
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in flat for k in r)) or ["empty"])
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_bytes(out / f"{name}.csv", buf.getvalue().encode())
    atomic_write_json(out / f"{name}.json", report)
    if markdown is not None:
        atomic_write_bytes(out / f"{name}.md", (markdown + "\n").encode())
    # plotly.js embedded (~4 MB) so the figure opens offline, like the rest of the project
    page = html_page if html_page is not None else figure.to_html(include_plotlyjs=True)
    atomic_write_bytes(out / f"{name}.html", page.encode())
    from .figures import render_static  # here, not at the top: grid workers import this module and draw nothing

    try:  # retried when Kaleido's fresh tab is not ready; without Kaleido or a Chromium the reason is said
        png = render_static(figure, "png", figure.layout.width or 700, figure.layout.height or 500, 1)
    except RuntimeError as e:
        return [f"wrote {name}.csv, .json, .html in {out} (no PNG: {e})"]
    atomic_write_bytes(out / f"{name}.png", png)
    return [f"wrote {name}.csv, .json, .html, .png in {out}"]


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "sci":  # KL: the paper prints 1.2x10^-4 and 1.77
        return "0" if v == 0 else f"{v:.1e}" if abs(v) < 0.01 else f"{v:.3g}"
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "q":
        return f"{v / 1e6:g}M" if v >= 1e6 and v % 100_000 == 0 else f"{v:,}"
    return f"{v:g}"


# (header, our key, paper key, kind); group: before / after defence, as in the paper
_LAYOUT = (("before", "Acc_MR", "acc_mr", "paper_acc_mr", "pct"),
           ("before", "Acc_MS best", "acc_ms_before", "paper_acc_ms_before", "pct"),
           ("before", "Acc_MS final", "acc_ms_before_final", None, "pct"),
           ("before", "Q", "q", "paper_q", "q"),
           ("after", "m", "m", "paper_m", "num"),
           ("after", "N", "n", "paper_n", "num"),
           ("after", "Acc_MF", "acc_mf", "paper_acc_mf", "pct"),
           ("after", "Acc_MS best", "acc_ms_after", "paper_acc_ms_after", "pct"),
           ("after", "Acc_MS final", "acc_ms_after_final", None, "pct"),
           ("after", "KL_train", "kl_train", "paper_kl_train", "sci"),
           ("after", "KL_test", "kl_test", "paper_kl_test", "sci"))


def _has_paper(rows: list[dict]) -> bool:
    return any(r.get(k) is not None for r in rows for k in PAPER_COLUMNS)


def formatted(rows: list[dict]) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """(group, header) per column and the formatted cells: ours, with the paper's number in the column beside."""
    paper = _has_paper(rows)
    heads, body = [("", "method")], [[r["method"] for r in rows]]
    for group, head, key, pkey, kind in _LAYOUT:
        heads.append((group, head))
        body.append([_fmt(r.get(key), kind) if r.get("status") != "paper only" else "" for r in rows])
        if paper and pkey is not None:
            heads.append((group, f"{head} (paper)"))
            body.append([_fmt(r.get(pkey), kind) for r in rows])
    return heads, [list(x) for x in zip(*body)]


def column_names(heads: list[tuple[str, str]]) -> list[str]:
    """One name per column of `formatted`: 'before: Q', 'after: Acc_MF', 'method'."""
    return [f"{'before: ' if g == 'before' else 'after: ' if g == 'after' else ''}{h}" for g, h in heads]


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table in the paper's layout (our number, then the paper's where it has one)."""
    heads, cells = formatted(rows)
    names = column_names(heads)
    head = "| " + " | ".join(names) + " |\n|" + "---|" * len(names)
    return "\n".join([head, *("| " + " | ".join(c) + " |" for c in cells)])


def table_notes(report: dict) -> list[str]:
    """What a reader must know to read the table: protocol, fidelity, simplifications, the paper's block."""
    a = report["attack"]
    notes = [f"Attack: {a['attack']} with {a['labels']} labels, Q = {a['queries']:,}"
             + (f", surrogate '{a['surrogate']}'" if a.get("surrogate") else "")
             + (f", KnockoffNets trained until its test accuracy stopped improving (a score after every pass, patience "
                f"{a['patience']}, at most {a['epochs']} passes)" if a["attack"] == "knockoff" and a.get("patience") else
                f", {a['epochs']} passes over the transfer set" if a["attack"] == "knockoff" else "") + ".",
             "Acc_MS best: the surrogate's best test accuracy over training (the paper's protocol, the headline); "
             "Acc_MS final: at the end of training. Acc_MS before: the same attack on the unprotected victim (the none row).",
             "Acc_MF and KL (KL(P_R || P_answer) on the whole train / test set) are the fidelity an honest user asking "
             "for soft answers gets, for every row alike: M_F's softmax for AdvFT, the perturbed softmax for DP and AM, "
             "P_R itself for none (KL = 0)."]
    if a["labels"] == "hard":
        notes.append("The thief asked for hard labels (top-1 only). The KL columns are nevertheless the soft-answer "
                      "fidelity of each deployment, for every row alike; they do not measure the hard-label API "
                      "(a one-hot answer's KL is the API's cost, not the defence's).")
    if any(r["method"] == METHOD_LABELS["am"] for r in report["rows"]):
        notes.append(AM_SIMPLIFIED)
    if len(report.get("seeds") or []) > 1:
        notes.append(f"Median over seeds {', '.join(map(str, report['seeds']))} for the rows that ran them "
                     "(each row's `seeds` in table.json; per-seed values under `per_seed`).")
    if report.get("threads"):
        notes.append(f"Computed on {report.get('device') or 'this machine'}, {report['threads']} torch threads per cell "
                     "(--threads): float results depend on the thread count, so compare rows made with the same one.")
    if report.get("id_transfer"):
        notes.append("WARNING: the transfer set was the victim's own training distribution (allowed explicitly "
                     "with --allow-id-transfer): this is not an OOD attack.")
    if report.get("paper"):
        p = report["paper"]
        notes.append(f"(paper) columns: the paper's {p['table']}, {p['model']} rows, {p['attack']} ({p['note']}); "
                     f"'-' where the paper has no number (it has no AM row and no row without a defence). The "
                     f"paper's victim is the authors' full-width LeNet; ours is {report.get('victim_arch') or '?'}. "
                     "CIP has no public code: its row is the paper's only.")
    return notes


def table_markdown(report: dict, title: str | None = None) -> str:
    lines = [f"## {title}", ""] if title else []
    lines += [format_table(report["rows"]), ""]
    lines += [f"- {n}" for n in table_notes(report)]
    return "\n".join(lines)


def table_html(report: dict, figure, title: str) -> str:
    """A page with the table (the paper's two-level header: before / after defence), its notes and the figure."""
    heads, cells = formatted(report["rows"])
    groups = []
    for g, _ in heads:
        if groups and groups[-1][0] == g:
            groups[-1][1] += 1
        else:
            groups.append([g, 1])
    top = "".join(f'<th colspan="{n}">{html.escape({"before": "Before defence", "after": "After defence"}.get(g, ""))}</th>'
                  for g, n in groups)
    sub = "".join(f"<th>{html.escape(h)}</th>" for _, h in heads)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table_notes(report))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #bbb;"
             "padding:4px 8px;text-align:right}th{background:#f2f2f2}td:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h2>{html.escape(title)}</h2>"
            f"<table><thead><tr>{top}</tr><tr>{sub}</tr></thead><tbody>{body}</tbody></table>"
            f"<ul>{notes}</ul>{figure.to_html(include_plotlyjs=True, full_html=False)}</body></html>")
