"""The margin x epochs atlas: a precomputed grid of AdvFT runs of one victim that a UI moves through
with two sliders (margin m, epochs N) without training anything.

What `python -m core atlas --out DIR` makes, on core.grid (so it resumes, retries, and runs on Ray):
    cells   `m0`: the unprotected victim (N = 0, the same for every margin), attacked;
            `m<m>`: ONE AdvFT run per margin, to the largest N asked for, attacked after each chosen
            N > 0. Not a run per (m, N): that would train sum(N) epochs instead of max(N), and each
            point would lie on a different trajectory (see core.experiments, the epoch sweep). With
            the default constant learning rate, epoch N of the long run IS an N-epoch run; with a
            cosine schedule it is not, and the bundle says which (advft.lr_schedule).
            Every attack point runs the strong thief (`attack`: KnockoffNets, 20k soft CIFAR-10 queries
            by default) and then the toy DFME (`also`, TOY_DFME: a budget a CPU runs in seconds).
    bundle  DIR/atlas (or --bundle): atlas.json (settings, each cell's metrics and attack results,
            the command, how long it took) and snapshots.pt (each cell's Fig. 5 snapshot: features in
            float16, no history, no weights): everything a UI draws, a few MB.

load_atlas(folder) reads a bundle back: atlas.cell(m, n) -> AtlasCell, atlas.snapshot(m, n) -> Snapshot.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .advft import AdvFTConfig, ConfigError, Snapshot
from .attacks import AttackConfig
from .grid import Cell, GridResult
from .runs import RunDir, RunError, atomic_torch_save, atomic_write_json, read_json
from .training import compact

ATLAS_FORMAT = "advft-atlas/1"
ATLAS_DIR = Path(__file__).resolve().parent.parent / "assets" / "atlas"
MARGINS = (1.0, 3.0, 10.0, 30.0, 100.0)
EPOCHS = (0, 1, 2, 4, 6, 10, 15, 20)
# A DFME that one CPU core runs in about 30 s: it shows whether a generator-driven thief learns at all,
# not what the paper's 6M-query DFME reaches (that is `table --attack dfme`). The student has the
# victim's own architecture (the paper's setting): against the unprotected lecture victim it reached
# 31% at this budget (7% -> 31% over the curve), where the full-width LeNet-5 student stayed at 10%.
TOY_DFME = {"attack": "dfme", "labels": "soft", "queries": 100_352, "surrogate": "same", "evals": 8}
# What the app shows per cell, from the run's history record at epoch N.
METRICS = ("acc_after", "kl_test", "kl_train", "ood_agreement", "ood_shift", "id_shift")
# status: 'finished', or 'diverged' (DFME's student went to nan: its best from before is kept); budget: the
# queries it was given, `queries` the ones it spent.
ATTACK_FIELDS = ("attack", "labels", "status", "budget", "queries", "surrogate_acc", "surrogate_best_acc", "agreement",
                 "seconds", "surrogate_arch", "transfer_source", "curve")


def cell_key(margin: float, epochs: int) -> str:
    return f"m{margin:g}/n{epochs}"


def atlas_cells(victim: str, advft: AdvFTConfig, attack: AttackConfig, margins=MARGINS, epochs=EPOCHS,
                dfme: dict | None = TOY_DFME) -> list[Cell]:
    """The grid (see the module docstring); `dfme` None leaves the toy DFME out."""
    margins = sorted({float(m) for m in margins})
    at = sorted({int(n) for n in epochs})
    if not margins or margins[0] <= 0:
        raise ConfigError(f"atlas margins must be numbers > 0 (got {list(margins)})")
    if not at or at[0] < 0 or at[-1] < 1:
        raise ConfigError(f"atlas epochs must be integers >= 0 with at least one >= 1 (got {list(epochs)})")
    advft = replace(advft, epochs=at[-1]).validate()
    a = asdict(attack.validate())
    # The toy DFME shares the thief's seed and scoring set, nothing else (its budget and settings are its own).
    also = (asdict(AttackConfig(seed=attack.seed, eval_size=attack.eval_size, **dfme).validate()),) if dfme else ()
    cells = [Cell("m0", victim, a, also=also)]
    for m in margins:
        cells.append(Cell(f"m{m:g}", victim, a, advft=asdict(replace(advft, margin=m).validate()),
                          at_epochs=tuple(n for n in at if n > 0), also=also))
    return cells


def _attack_summary(result: dict) -> dict:
    return {k: result.get(k) for k in ATTACK_FIELDS}


def write_bundle(cells: list[Cell], result: GridResult, out: Path, bundle: Path, victim: str, command: str,
                 seconds: float) -> Path:
    """The atlas bundle (atlas.json + snapshots.pt) from a finished grid under `out`. Cells that failed
    or never ran are left out (atlas.json lists them under `missing`), so a partial atlas still opens."""
    unprotected = result.row("m0")
    first = next(c for c in cells if c.advft is not None)
    advft = {k: v for k, v in first.advft.items() if k != "margin"}
    entries, snapshots, missing = {}, {}, [n for n in (c.name for c in cells) if result.row(n) is None]
    for cell in cells:
        row = result.row(cell.name)
        if cell.advft is None or row is None:
            continue
        margin, run = cell.advft["margin"], RunDir(out / cell.name)
        history = {h["epoch"]: h for h in run.history()}
        points = {p["epoch"]: p for p in row["points"]}
        if unprotected is not None:  # N = 0: M_F is M_R; the unprotected victim's attacks, this run's epoch 0
            points[0] = {**unprotected["points"][0], "epoch": 0, "record": history[0]}
        for n, point in sorted(points.items()):
            key = cell_key(margin, n)
            record = point["record"]
            entries[key] = {"margin": margin, "epochs": n, **{k: record.get(k) for k in METRICS},
                            "acc_mr": record.get("acc_before"),
                            "knockoff": _attack_summary(point["attack"]),
                            "dfme": _attack_summary(point["also"][0]) if point.get("also") else None}
            snapshots[key] = compact(run.load_snapshot(n)).to_dict()
    if not entries:
        raise RunError(f"no atlas cell finished under '{out}': nothing to bundle")
    dataset = next(r["row"]["dataset"] for r in result.records.values() if r["status"] == "done")
    meta = {"format": ATLAS_FORMAT, "victim": victim, "dataset": dataset,
            "margins": sorted({e["margin"] for e in entries.values()}),
            "epochs": sorted({e["epochs"] for e in entries.values()}),
            "advft": advft, "attack": first.attack, "dfme": first.also[0] if first.also else None,
            "command": command, "seconds": round(seconds, 1),
            "cell_seconds": {n: r.get("seconds") for n, r in result.records.items()},
            "devices": sorted({r.get("device", "") for r in result.records.values()} - {""}),
            "made": time.strftime("%Y-%m-%d"), "missing": missing, "cells": entries}
    bundle.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(snapshots, bundle / "snapshots.pt")
    atomic_write_json(bundle / "atlas.json", meta)
    return bundle


@dataclass(frozen=True)
class AtlasCell:
    margin: float
    epochs: int
    acc_mr: float
    acc_after: float          # Acc_MF
    kl_test: float
    kl_train: float
    ood_agreement: float
    ood_shift: float
    id_shift: float
    knockoff: dict | None     # the strong thief's result: surrogate_acc (final), surrogate_best_acc, curve...
    dfme: dict | None         # the toy DFME's

    @property
    def key(self) -> str:
        return cell_key(self.margin, self.epochs)


class Atlas:
    """A bundle read back. Snapshots are decoded on first use and kept (a slider move only draws)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = read_json(self.folder / "atlas.json")
        if not isinstance(meta, dict) or meta.get("format") != ATLAS_FORMAT:
            raise RunError(f"'{self.folder}' is not an atlas bundle (no atlas.json of format {ATLAS_FORMAT}); "
                           "make one with `python -m core atlas --out DIR`")
        if problem := _meta_problem(meta):
            raise RunError(f"atlas '{self.folder.name}': {problem}; make it again with `python -m core atlas --out DIR`")
        self.meta = meta
        self.cells = {k: AtlasCell(**{f: v.get(f) for f in AtlasCell.__dataclass_fields__}) for k, v in meta["cells"].items()}
        self.margins: list[float] = meta["margins"]
        self.epochs: list[int] = meta["epochs"]
        self._raw = None
        self._snapshots: dict[str, Snapshot] = {}

    @property
    def name(self) -> str:
        return self.folder.name

    def cell(self, margin: float, epochs: int) -> AtlasCell | None:
        return self.cells.get(cell_key(margin, epochs))

    def snapshot(self, margin: float, epochs: int) -> Snapshot | None:
        key = cell_key(margin, epochs)
        if key not in self._snapshots:
            if self._raw is None:
                try:
                    self._raw = torch.load(self.folder / "snapshots.pt", map_location="cpu", weights_only=True)
                except Exception as e:
                    raise RunError(f"atlas '{self.name}': snapshots.pt does not load ({type(e).__name__})") from None
            if key not in self._raw:
                return None
            self._snapshots[key] = Snapshot.from_dict(self._raw[key])
        return self._snapshots[key]

    def snapshots(self) -> list[Snapshot]:
        return [s for s in (self.snapshot(c.margin, c.epochs) for c in self.cells.values()) if s is not None]


def _meta_problem(meta: dict) -> str | None:
    """What in atlas.json the page could not draw from, or None: the grid's axes, its cells, its provenance."""
    def numbers(v, kind=(int, float)):
        return isinstance(v, list) and v and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)

    if not numbers(meta.get("margins")) or not numbers(meta.get("epochs"), int):
        return "'margins' and 'epochs' must be non-empty lists of numbers"
    cells = meta.get("cells")
    if not isinstance(cells, dict) or not cells or not all(isinstance(c, dict) for c in cells.values()):
        return "it has no cells"
    for c in cells.values():
        if not isinstance(c.get("margin"), (int, float)) or not isinstance(c.get("epochs"), int):
            return "a cell without its margin and epochs"
    for key, kind in (("victim", str), ("command", str), ("seconds", (int, float))):
        if not isinstance(meta.get(key), kind):
            return f"no '{key}'"
    return None


def shipped_atlases() -> list[Path]:
    """The bundles shipped in assets/atlas (see the README: `python -m core atlas`)."""
    return [p for p in sorted(ATLAS_DIR.glob("*")) if (p / "atlas.json").is_file()]
