"""Background tasks for the Attack page: an attack, "protect then attack", or a toy sweep.

A Task runs one function of core/ in the same Background mechanics as the training jobs (app/jobs.py):
it waits for a slot in the same process-wide JobSlots (so an attack and a training run never fight
over a 2-core CPU), and publishes what the page reads through `view()`: state, a log of notes, the
latest partial AttackResult (as a dict), and the final value or error. Nothing here imports Streamlit.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from app.jobs import Background, JobSlots, new_run_dir
from core.advft import preset_config
from core.attacks import AttackConfig, DefenceConfig, make_api, run_attack
from core.data import DataError
from core.metrics import fidelity, outputs
from core.models import CheckpointError
from core.runs import RunError, atomic_write_json, list_runs, read_json
from core.training import committed_victims, load_victim, served_victim, victim_path

ACTIVE = ("queued", "running")
# Toy sweeps: small enough for a lecture on a 2-core CPU (minutes, not hours).
TOY_ATTACK = {"attack": "knockoff", "labels": "soft", "queries": 5000, "epochs": 10}
TOY_EPOCHS = (0, 1, 2, 4, 6)
TOY_MARGINS = (1.0, 3.0, 10.0, 30.0)
# Wall minutes of each toy sweep on the 2-core CPU of the README (bench: time_toy_sweeps in the closing note).
TOY_MINUTES = {"epochs": 2, "margins": 5}  # measured 88 s and 287 s, with another job on the machine


@dataclass(frozen=True)
class TaskView:
    title: str
    state: str = "queued"          # queued | running | finished | stopped | failed
    message: str = ""              # why it failed or stopped
    notes: tuple[str, ...] = ()
    progress: dict | None = None   # the latest partial AttackResult.to_dict() (queries, curve, phase)
    value: object = None           # what the function returned (set when finished or stopped)
    place: int | None = None
    started: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


# fn(progress, note, should_stop) -> value; progress takes an AttackResult, note a line of text.
TaskFn = Callable[[Callable, Callable[[str], None], Callable[[], bool]], object]


class Task(Background):
    """Runs fn(progress, note, should_stop); a finished value (an attack's row, a sweep's report) is
    saved into `results_dir` (see save_result), so every tab and later visits list it."""

    def __init__(self, title: str, fn: TaskFn, slots: JobSlots, device: str = "cpu",
                 abandon_after: float | None = None, results_dir: Path | None = None):
        super().__init__(f"task-{title[:30]}", slots, device, abandon_after)
        self.fn, self.results_dir = fn, results_dir
        self._view = TaskView(title)

    def _note(self, line: str) -> None:
        with self._cond:
            self._view = replace(self._view, notes=self._view.notes + (line,))

    def _progress(self, result) -> None:
        """An AttackResult (partial), or a dict with at least phase and done (0..1) for other phases."""
        d = result if isinstance(result, dict) else result.to_dict()
        d.get("extra", {}).pop("samples", None)  # images are not needed while it runs
        self._publish(progress=copy.deepcopy(d))

    def _work(self) -> None:
        if self.device == "cpu":
            # Attacks run in a thread of the server: one core for the attack, the other for the page (two
            # intra-op threads on a shared 2-core machine slow every step and every page rerun). This is
            # process-wide; training jobs run in their own process and are not affected.
            torch.set_num_threads(1)
        self._publish(state="running")
        value = self.fn(self._progress, self._note, self.should_stop)
        if self.stop_event.is_set():
            self._publish(state="stopped", message=self._stop_reason(), value=value)
        else:
            if self.results_dir is not None and isinstance(value, dict):
                save_result(self.results_dir, value)
            self._publish(state="finished", value=value)


# ---------------------------------------------------------------- saved results


def save_result(folder: Path, value: dict) -> None:
    """One finished attack row or sweep report as <folder>/<time>-<n>.json (atomic, never overwritten)."""
    stem = time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while (folder / f"{stem}-{n}.json").exists():
        n += 1
    atomic_write_json(folder / f"{stem}-{n}.json", value)


def load_results(folder: Path, newest: int = 50) -> tuple[list[dict], list[dict]]:
    """(attack rows, sweep reports) saved in `folder`, oldest first; unreadable files are skipped."""
    rows, sweeps = [], []
    for path in sorted(folder.glob("*.json"))[-newest:]:
        value = read_json(path)
        if isinstance(value, dict) and isinstance(value.get("rows"), list):
            sweeps.append(value)
        elif isinstance(value, dict) and {"target", "defence", "attack", "Acc_MS"} <= set(value):
            rows.append(value)
    return rows, sweeps


def clear_results(folder: Path) -> None:
    for path in folder.glob("*.json"):
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- targets


def attack_targets(runs_dir: Path) -> dict[str, dict]:
    """Label -> {path, kind, margin, epochs, victim}: the committed victims and every AdvFT run with a model."""
    out = {}
    for name in committed_victims():
        path = str(victim_path(name))
        out[f"original M_R · {name}"] = {"path": path, "kind": "original", "victim": path}
    for run in list_runs(runs_dir):
        summary = run.summary()
        if not summary.has_model or summary.problem:
            continue  # nothing to attack yet, or a damaged run (the Runs page says what is wrong)
        try:
            victim = run.config().victim
        except RunError:
            continue
        if not served_victim(victim, runs_dir):
            victim = ""  # scored against the target itself rather than open a file outside the app's folders
        out[f"AdvFT M_F · {run.name}"] = {"path": str(run.model_path), "kind": "advft", "margin": summary.margin,
                                          "epochs": summary.epoch, "victim": victim}
    return out


# ---------------------------------------------------------------- what the Attack page runs as tasks


def attack_task(target: dict, attack: AttackConfig, defence: DefenceConfig, data_dir: str, dev: str):
    """fn(progress, note, should_stop) for app.tasks.Task: attack one target, return one table row."""

    def fn(progress, note, should_stop):
        model, data = load_victim(target["path"], data_dir, dev)
        note(f"target loaded: {model.dataset} · {model.arch} ({data.source})")
        row = fidelity_row(target, model, data, defence, attack, data_dir, dev)
        result = run_attack(model, data, attack, defence, data_dir, progress=progress, should_stop=should_stop)
        if result.status == "stopped":
            return None  # a partial attack is no row of Tables 2-3
        note(f"{result.status}: surrogate accuracy {result.surrogate_acc:.4f} after {result.queries:,} queries")
        return {**row, "Acc_MS": result.surrogate_acc, "best Acc_MS": result.surrogate_best_acc,
                "agreement": result.agreement, "Q": result.queries, "status": result.status,
                "curve": result.curve}

    return fn


def fidelity_row(target: dict, model, data, defence: DefenceConfig, attack: AttackConfig, data_dir, dev) -> dict:
    """What honest users get from this target + defence: accuracy and KL_test against the original M_R."""
    try:
        reference = load_victim(victim_path(target["victim"]), data_dir, dev)[0] if target["victim"] else model
    except (CheckpointError, DataError):  # the run's victim moved away: measure against the target itself
        reference = model
    honest = make_api(model, defence, "soft", None, data)  # what an honest user asking for soft answers gets
    ref = {"test": outputs(reference, data.x_test, dev)[1]}
    fid = fidelity(ref, {"test": honest.respond(data.x_test, log=True).cpu()}, data.y_test)
    labels = make_api(model, defence, attack.labels, None, data).labels  # top1 forces hard labels
    return {"target": target["label"], "defence": defence.name, "attack": attack.attack, "labels": labels,
            "m": target.get("margin"), "N": target.get("epochs"),
            "Acc_MR": fidelity(ref, ref, data.y_test)["acc_mf"], "Acc_MF": fid["acc_mf"], "KL_test": fid["kl_test"]}


def protect_then_attack_task(victim: str, margin: float, epochs: int, attack: AttackConfig, runs_dir: Path,
                             data_dir: str, dev: str):
    """AdvFT with the lecture settings and margin m (into a new run folder), then the attack on M_F."""

    def fn(progress, note, should_stop):
        from core.experiments import protect

        model, data = load_victim(victim, data_dir, dev)
        config = preset_config("lecture", margin=margin, epochs=epochs).validate()
        out = new_run_dir(runs_dir, "attackpage", config)

        def advft_progress(trainer) -> None:
            progress({"phase": f"AdvFT epoch {trainer.epoch}/{epochs}", "done": trainer.epoch / epochs,
                      "queries": 0, "budget": attack.queries, "curve": []})

        progress({"phase": "AdvFT starting", "done": 0.0, "queries": 0, "budget": attack.queries, "curve": []})
        run = protect(model, data, config, out, str(victim_path(victim)), data_dir, note, should_stop,
                      on_epoch=advft_progress)
        if should_stop():
            return None
        target = {"label": f"AdvFT M_F · {out.name}", "path": str(run.run.model_path), "kind": "advft",
                  "margin": margin, "epochs": run.trainer.epoch, "victim": str(victim_path(victim))}
        return attack_task(target, attack, DefenceConfig(), data_dir, dev)(progress, note, should_stop)

    return fn


def sweep_task(kind: str, victim: str, runs_dir: Path, data_dir: str, dev: str):
    """A toy Fig. 4 or margin sweep; its AdvFT runs go to a folder under the runs dir."""
    def fn(progress, note, should_stop):
        from core.experiments import epoch_sweep, margin_sweep

        model, data = load_victim(victim, data_dir, dev)
        attack = AttackConfig(**TOY_ATTACK)
        advft = preset_config("lecture")
        out = Path(runs_dir) / ".sweeps" / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"
        name = str(victim_path(victim))
        if kind == "epochs":
            return epoch_sweep(model, data, advft, attack, out, list(TOY_EPOCHS), data_dir, name, note, should_stop)
        return margin_sweep(model, data, advft, attack, list(TOY_MARGINS), out, data_dir, name, note, should_stop)

    return fn
