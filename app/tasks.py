"""The Attack page's background work: an attack, "protect then attack", or a toy sweep.

The page makes a TaskSpec (plain values: it crosses a pipe) and a Task (app/jobs.py) that waits for a
slot in the same process-wide queue as the training jobs (an attack and a training run never fight over
a 2-core CPU) and relays. The worker process (app/worker.py) runs the spec's function from TASKS, with
its own torch threads, and reports progress, notes and the value. An attack is a one-cell grid run
through core.experiments.run_cell, so its row is the `table` command's row (experiments.attack_row),
with the API built once. A finished row or sweep report is saved under <runs dir>/.attacks, so every
tab and later visits list it. Nothing here imports Streamlit.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.jobs import JobSlots, Relayed, new_run_dir
from core.advft import preset_config
from core.attacks import DEFENCES, AttackConfig
from core.experiments import METHOD_LABELS, attack_row, epoch_sweep, margin_sweep, run_cell
from core.grid import Cell, CellStopped
from core.runs import RunError, atomic_write_json, list_runs, read_json
from core.training import load_victim
from core.victims import committed_victims, served_victim, victim_path

ACTIVE = ("queued", "running")
# Toy sweeps: small enough for a lecture on a 2-core CPU (minutes, not hours).
TOY_ATTACK = {"attack": "knockoff", "labels": "soft", "queries": 5000, "epochs": 10}
TOY_EPOCHS = (0, 1, 2, 4, 6)
TOY_MARGINS = (1.0, 3.0, 10.0, 30.0)
TOY_MINUTES = {"epochs": 2, "margins": 5}  # wall minutes of each toy sweep on a 2-core CPU (88 s and 287 s)
DEFENCE_LABELS = {d: METHOD_LABELS.get(d, "top-1 label only") for d in DEFENCES}  # the API defences, as the table names them


@dataclass(frozen=True)
class TaskSpec:
    title: str
    kind: str                 # a key of TASKS
    args: dict                # its keyword arguments (plain values)
    data_dir: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class TaskView:
    title: str
    state: str = "queued"          # queued | running | finished | stopped | failed
    message: str = ""              # why it failed or stopped
    notes: tuple[str, ...] = ()
    progress: dict | None = None   # the latest partial AttackResult.to_dict(), or {phase, done} of an AdvFT phase
    value: object = None           # what the function returned (set when finished or stopped)
    place: int | None = None
    started: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class Task(Relayed):
    """A TaskSpec run in the worker; a finished value (an attack's row, a sweep's report) is saved into
    `results_dir` (see save_result)."""

    def __init__(self, spec: TaskSpec, slots: JobSlots, abandon_after: float | None = None,
                 results_dir: Path | None = None):
        super().__init__(f"task-{spec.title[:30]}", spec, slots, spec.device, abandon_after)
        self.results_dir = results_dir
        self._view = TaskView(spec.title)

    def _apply(self, kind: str, changes: dict) -> dict:
        if kind == "note":
            return {"notes": self._view.notes + (changes["line"],)}
        if changes.get("state") == "stopped":
            changes["message"] = self._stop_reason()
        if changes.get("state") == "finished" and self.results_dir is not None and isinstance(changes.get("value"), dict):
            save_result(self.results_dir, changes["value"])
        return changes


# ---------------------------------------------------------------- what the worker runs


def attack(target: dict, attack: dict, defence: dict, data_dir, device, progress, note, should_stop,
           advft: dict | None = None, runs_dir: str | None = None):
    """One target behind one defence, attacked: a one-cell grid. With `advft`, the cell first runs AdvFT
    on target['victim'] into a new run folder under `runs_dir` and attacks its M_F. Returns the row."""
    folder = None
    if advft is not None:
        config = preset_config("lecture", **advft).validate()
        folder = new_run_dir(Path(runs_dir), "attackpage", config)
        target = {"label": f"AdvFT M_F · {folder.name}", "victim": target["victim"]}
        cell = Cell("attack", target["victim"], attack, defence, advft=asdict(config), fidelity=True)
    elif target.get("victim") and target.get("kind") == "advft":  # M_F, scored against its own victim M_R
        cell = Cell("attack", target["victim"], attack, defence, target=target["path"], fidelity=True)
    else:  # a victim, or M_F whose victim the server may not open: scored against itself
        cell = Cell("attack", target["path"], attack, defence, fidelity=True)
    try:
        row = run_cell(cell, folder, data_dir=data_dir, device=device, note=note, should_stop=should_stop,
                       progress=progress)
    except CellStopped:
        return None  # a partial attack is no row of Tables 2-3
    result = row["points"][-1]["attack"]
    note(f"{result['status']}: surrogate {100 * result['surrogate_acc']:.2f}% right after {result['queries']:,} queries")
    return {**attack_row(row), "method": DEFENCE_LABELS.get(defence["name"], defence["name"]),
            "target": target["label"], "defence": defence["name"], "attack": attack["attack"],
            "labels": "hard" if defence["name"] == "top1" else attack["labels"], "curve": result["curve"],
            "thief_view": result.get("thief_view")}


SWEEPS_DIR = ".sweeps"  # under the runs dir: a toy sweep's AdvFT runs while it works, removed when it ends


def sweep(kind: str, victim: str, runs_dir: str, data_dir, device, progress, note, should_stop):
    """A toy Fig. 4 or margin sweep. Its AdvFT runs go to a folder under the runs dir that is removed when
    the sweep ends, finished or not (~8 MB each; the saved report holds everything the page shows)."""
    import shutil

    progress({"phase": "loading the target and the data", "done": 0.0})
    model, data = load_victim(victim, data_dir, device)
    toy = AttackConfig(**TOY_ATTACK)
    out = Path(runs_dir) / SWEEPS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"
    name = str(victim_path(victim))

    def cells_done(p) -> None:  # the grid's GridProgress, as the page's {phase, done}
        running = f", run {p.done + 1} in progress (AdvFT, then the thief)" if p.running else ""
        progress({"phase": f"{p.done} of {p.total} runs done{running}", "done": p.done / max(1, p.total)})

    try:
        if kind == "epochs":
            return epoch_sweep(model, data, preset_config("lecture"), toy, out, list(TOY_EPOCHS), data_dir, name, note,
                               should_stop, cells_done)
        return margin_sweep(model, data, preset_config("lecture"), toy, list(TOY_MARGINS), out, data_dir, name, note,
                            should_stop, cells_done)
    finally:
        shutil.rmtree(out, ignore_errors=True)


TASKS = {"attack": attack, "sweep": sweep}


def progress_dict(result) -> dict:
    """What the page needs of a partial AttackResult (or an AdvFT phase's {phase, done}): no images."""
    d = copy.deepcopy(result if isinstance(result, dict) else result.to_dict())
    d.get("extra", {}).pop("samples", None)
    return d


# ---------------------------------------------------------------- saved results


def save_result(folder: Path, value: dict) -> None:
    """One finished attack row or sweep report as <folder>/<time>-<n>.json (atomic, never overwritten)."""
    stem = time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while (folder / f"{stem}-{n}.json").exists():
        n += 1
    atomic_write_json(folder / f"{stem}-{n}.json", value)


_NUMBER, _TEXT = (int, float), (str,)
# What the Attack page reads from a saved attack row and a saved toy sweep, with the types it needs
# (None where the value may be missing). A file of another shape is reported, never drawn.
ATTACK_ROW_FIELDS = {"method": _TEXT, "target": _TEXT, "defence": _TEXT, "attack": _TEXT, "labels": _TEXT, "status": _TEXT,
                     "q": (int,), "acc_ms_after": _NUMBER, "acc_ms_after_final": _NUMBER + (type(None),),
                     "acc_mr": _NUMBER + (type(None),), "m": _NUMBER + (type(None),), "n": (int, type(None)),
                     "acc_mf": _NUMBER + (type(None),), "kl_train": _NUMBER + (type(None),),
                     "kl_test": _NUMBER + (type(None),), "curve": (list, type(None))}
SWEEP_ROW_FIELDS = {"surrogate_best_acc": _NUMBER + (type(None),), "surrogate_acc": _NUMBER + (type(None),),
                    "acc_mf": _NUMBER + (type(None),), "kl_test": _NUMBER + (type(None),)}


def shape_problem(value: dict, fields: dict) -> str | None:
    """What is wrong with `value` against `fields` (name -> allowed types), or None; booleans are not numbers."""
    for name, types in fields.items():
        v = value.get(name)
        if name not in value and type(None) in types:
            continue
        if name not in value:
            return f"no '{name}'"
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            return f"'{name}' is {type(v).__name__}"
    return None


def sweep_problem(report: dict) -> str | None:
    """What is wrong with a saved toy sweep's rows, or None (each row a sweep row with its epoch or margin)."""
    if not isinstance(report["rows"], list):
        return "'rows' is not a list"
    for i, row in enumerate(report["rows"], 1):
        if not isinstance(row, dict):
            return f"row {i}: not an object"
        if bad := shape_problem(row, SWEEP_ROW_FIELDS):
            return f"row {i}: {bad}"
        if not isinstance(row.get("epoch", row.get("margin")), (int, float)):
            return f"row {i}: no epoch or margin"
    return None


def load_results(folder: Path, newest: int = 50) -> tuple[list[dict], list[dict], list[str]]:
    """(attack rows, sweep reports, problems) saved in `folder`, oldest first. A file that is not one of
    them (unreadable, or of another shape) is left out and named in `problems`, with what is wrong."""
    rows, sweeps, problems = [], [], []
    for path in sorted(folder.glob("*.json"))[-newest:]:
        value = read_json(path)
        if not isinstance(value, dict):
            problems.append(f"{path.name}: not a saved result")
        elif "rows" in value:
            if bad := sweep_problem(value):
                problems.append(f"{path.name}: {bad}")
            else:
                sweeps.append(value)
        elif bad := shape_problem(value, ATTACK_ROW_FIELDS):
            problems.append(f"{path.name}: {bad}")
        else:
            rows.append(value)
    return rows, sweeps, problems


def clear_results(folder: Path) -> None:
    for path in folder.glob("*.json"):
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- targets


def attack_targets(runs_dir: Path) -> dict[str, dict]:
    """Label -> {label, path, kind, victim}: the committed victims, every AdvFT run with a model, and the
    recordings shipped with their M_F (a lecturer can attack the recorded lecture run without training)."""
    from core.training import recorded_runs

    out = {}
    for name in committed_victims():
        path = str(victim_path(name))
        out[f"original M_R · {name}"] = {"path": path, "kind": "original", "victim": path}
    mine = list_runs(runs_dir)
    for run in [*mine, *(r for r in recorded_runs() if r.name not in {m.name for m in mine})]:
        summary = run.summary()
        if not summary.has_model or summary.problem:
            continue  # nothing to attack yet, or a damaged run (the Runs page says what is wrong)
        try:
            victim = run.config().victim
        except RunError:
            continue
        if not served_victim(victim, runs_dir):
            victim = ""  # scored against the target itself rather than open a file outside the app's folders
        out[f"AdvFT M_F · {run.name}"] = {"path": str(run.model_path), "kind": "advft", "victim": victim}
    return {label: {**t, "label": label} for label, t in out.items()}
