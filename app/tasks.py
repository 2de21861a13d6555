"""Background tasks for the Attack page: an attack, "protect then attack", or a toy sweep.

A Task runs one function of core/ in a plain thread. It waits for a slot in the same process-wide
JobSlots as the training jobs (so an attack and a training run never fight over a 2-core CPU), and
publishes what the page reads through `view()`: state, a log of notes, the latest partial
AttackResult (as a dict), and the final value or error. Nothing here imports Streamlit.
"""

from __future__ import annotations

import copy
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from app.jobs import USER_ERRORS, JobSlots, new_run_dir
from app.state import committed_victims
from core.advft import preset_config
from core.attacks import AttackConfig, BudgetExhausted, DefenceConfig, make_api, run_attack
from core.data import DataError
from core.metrics import accuracy, kl_divergence, outputs
from core.models import CheckpointError
from core.pipeline import load_victim, victim_path
from core.runs import list_runs

ACTIVE = ("queued", "running")
# Toy sweeps: small enough for a lecture on a 2-core CPU (minutes, not hours).
TOY_ATTACK = {"attack": "knockoff", "labels": "soft", "queries": 5000, "epochs": 10}
TOY_EPOCHS = (0, 1, 2, 4, 6)
TOY_MARGINS = (1.0, 3.0, 10.0, 30.0)


@dataclass(frozen=True)
class TaskView:
    title: str
    state: str = "queued"          # queued | running | finished | stopped | failed
    notes: tuple[str, ...] = ()
    progress: dict | None = None   # the latest partial AttackResult.to_dict() (queries, curve, phase)
    value: object = None           # what the function returned (set when finished or stopped)
    error: str = ""
    place: int | None = None
    started: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


# fn(progress, note, should_stop) -> value; progress takes an AttackResult, note a line of text.
TaskFn = Callable[[Callable, Callable[[str], None], Callable[[], bool]], object]


class Task:
    def __init__(self, title: str, fn: TaskFn, slots: JobSlots, device: str = "cpu"):
        self.fn, self.slots, self.device = fn, slots, device
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._view = TaskView(title)
        self.collected = False  # set by the page once it has taken the finished value
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"task-{title[:30]}")

    def start(self) -> "Task":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def view(self) -> TaskView:
        with self._lock:
            v = self._view
        return replace(v, place=self.slots.place(self)) if v.state == "queued" else v

    def _set(self, **changes) -> None:
        with self._lock:
            self._view = replace(self._view, **changes)

    def _note(self, line: str) -> None:
        with self._lock:
            self._view = replace(self._view, notes=self._view.notes + (line,))

    def _progress(self, result) -> None:
        d = result.to_dict()
        d.get("extra", {}).pop("samples", None)  # images are not needed while it runs
        self._set(progress=copy.deepcopy(d))

    def _main(self) -> None:
        try:
            if not self.slots.acquire(self, self.stop_event):
                self._set(state="stopped", error="stopped while waiting in the queue")
                return
            try:
                if self.device == "cpu":
                    torch.set_num_threads(1)  # the other core keeps the page responsive
                self._set(state="running")
                value = self.fn(self._progress, self._note, self.stop_event.is_set)
                self._set(state="stopped" if self.stop_event.is_set() else "finished", value=value)
            finally:
                self.slots.release(self)
        except (*USER_ERRORS, BudgetExhausted, ValueError) as e:
            self._set(state="failed", error=str(e) or type(e).__name__)
        except Exception as e:  # a bug must not take the page down: say what happened, keep the log
            traceback.print_exc()
            self._set(state="failed", error=f"unexpected {type(e).__name__}: {e}")


# ---------------------------------------------------------------- targets


def attack_targets(runs_dir: Path) -> dict[str, dict]:
    """Label -> {path, kind, margin, epochs, victim}: the committed victims and every AdvFT run with a model."""
    out = {}
    for name in committed_victims():
        path = str(victim_path(name))
        out[f"original M_R · {name}"] = {"path": path, "kind": "original", "victim": path}
    for run in list_runs(runs_dir):
        if not run.model_path.is_file():
            continue
        cfg = run.config()
        adv = cfg.get("advft") or {}
        epochs = len(run.history()) - 1 if (run.path / "history.jsonl").is_file() else None
        out[f"AdvFT M_F · {run.name}"] = {"path": str(run.model_path), "kind": "advft", "margin": adv.get("margin"),
                                          "epochs": epochs, "victim": cfg.get("victim", "")}
    return out


# ---------------------------------------------------------------- what the Attack page runs as tasks


def attack_task(target: dict, attack: AttackConfig, defence: DefenceConfig, data_dir: str, dev: str):
    """fn(progress, note, should_stop) for app.tasks.Task: attack one target, return one table row."""

    def fn(progress, note, should_stop):
        model, data = load_victim(target["path"], data_dir, dev)
        note(f"target loaded: {model.dataset} · {model.arch} ({data.source})")
        row = fidelity_row(target, model, data, defence, attack, data_dir, dev)
        result = run_attack(model, data, attack, defence, data_dir, progress=progress, should_stop=should_stop)
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
    api = make_api(model, defence, attack.labels, None, data)
    served = api.respond(data.x_test, log=True).cpu()
    ref_logits = outputs(reference, data.x_test, dev)[1]
    return {"target": target["label"], "defence": defence.name, "attack": attack.attack, "labels": api.labels,
            "m": target.get("margin"), "N": target.get("epochs"),
            "Acc_MR": accuracy(ref_logits, data.y_test), "Acc_MF": accuracy(served, data.y_test),
            "KL_test": kl_divergence(ref_logits, served)}


def protect_then_attack_task(victim: str, margin: float, epochs: int, attack: AttackConfig, runs_dir: Path,
                             data_dir: str, dev: str):
    """AdvFT with the lecture settings and margin m (into a new run folder), then the attack on M_F."""

    def fn(progress, note, should_stop):
        from core.experiments import run_advft

        model, data = load_victim(str(victim_path(victim)), data_dir, dev)
        config = preset_config("lecture", margin=margin, epochs=epochs).validate()
        out = new_run_dir(runs_dir, "attackpage", config)
        trainer = run_advft(model, data, config, data_dir, out, str(victim_path(victim)), note, should_stop)
        if should_stop():
            return None
        target = {"label": f"AdvFT M_F · {out.name}", "path": str(out / "model.pt"), "kind": "advft",
                  "margin": margin, "epochs": trainer.epoch, "victim": str(victim_path(victim))}
        return attack_task(target, attack, DefenceConfig(), data_dir, dev)(progress, note, should_stop)

    return fn


def sweep_task(kind: str, victim: str, data_dir: str, dev: str):
    def fn(progress, note, should_stop):
        from core.experiments import epoch_sweep, margin_sweep

        model, data = load_victim(str(victim_path(victim)), data_dir, dev)
        attack = AttackConfig(**TOY_ATTACK)
        advft = preset_config("lecture")
        if kind == "epochs":
            return epoch_sweep(model, data, advft, attack, list(TOY_EPOCHS), data_dir, note, should_stop)
        return margin_sweep(model, data, advft, attack, list(TOY_MARGINS), data_dir, note, should_stop)

    return fn
