"""Background work for the pages: AdvFT training jobs and attack tasks, each in a plain thread, a queue
across sessions, consistent copies for the page.

`Background` holds what both kinds share: the thread, the slot in the process-wide queue (JobSlots),
the stop flag, and a frozen view record replaced under a lock, so the page reads a consistent copy
with `view()`. Nothing here imports Streamlit: a thread must never call it (Streamlit's threading
rules), and the module stays testable.

A `Job` trains through the one run protocol of core.training (RecordedRun + drive); it brings only
its control policy: the pause/step queue (`_next_action`) and publishing frames (`_on_step`).
Commands (play, pause, step, stop) only set fields under the lock and wake the thread; the thread
reads them between steps, so a click takes effect within one step (a few ms to tens of ms).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from core.advft import AdvFTConfig, ConfigError, TrainingDiverged
from core.attacks import BudgetExhausted
from core.data import DataError
from core.device import describe
from core.models import CheckpointError
from core.runs import RunError
from core.training import RecordedRun, drive, one_line

PUBLISH_EVERY_S = 0.4    # snapshot() costs ~50 ms; more often would slow training noticeably
# Work whose page stopped asking for its view this long ago is stopped (its tab was closed): the
# pages poll every 0.5-2 s while work is active, and Streamlit itself only notices a closed tab
# after its 120 s session timeout.
ABANDON_AFTER_S = 10.0
SLOW_MOTION_S = 0.25     # pause after each step in slow motion, so one step is one visible frame
USER_ERRORS = (ConfigError, DataError, CheckpointError, RunError, TrainingDiverged, BudgetExhausted, ValueError,
               OSError)
ACTIVE = ("queued", "preparing", "running", "paused")


def default_max_jobs() -> int:
    """ADVFT_MAX_JOBS, else 2 with a CUDA GPU and 1 on a CPU (two CPU jobs would halve each other)."""
    try:
        return max(1, int(os.environ.get("ADVFT_MAX_JOBS", "")))
    except ValueError:
        return 2 if torch.cuda.is_available() else 1


class JobSlots:
    """At most `capacity` jobs or tasks run at once, process-wide; the others wait first come, first served."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._cond = threading.Condition()
        self._active: set = set()
        self._waiting: list = []

    def acquire(self, work, should_stop: Callable[[], bool]) -> bool:
        """Blocks until `work` may run; False if should_stop() became true while it waited."""
        with self._cond:
            self._waiting.append(work)
            while not (self._waiting[0] is work and len(self._active) < self.capacity):
                if should_stop():
                    self._waiting.remove(work)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.2)
            self._waiting.pop(0)
            self._active.add(work)
            self._cond.notify_all()
            return True

    def release(self, work) -> None:
        with self._cond:
            self._active.discard(work)
            if work in self._waiting:
                self._waiting.remove(work)
            self._cond.notify_all()

    def place(self, work) -> int | None:
        """1-based place in the waiting line, None when not waiting."""
        with self._cond:
            return self._waiting.index(work) + 1 if work in self._waiting else None

    def load(self) -> tuple[int, int]:
        with self._cond:
            return len(self._active), len(self._waiting)

    def job_for(self, run_dir: Path) -> "Job | None":
        """The live training job (running or waiting) that writes `run_dir`, whichever tab started it."""
        target = Path(run_dir).resolve()
        with self._cond:
            works = (*self._active, *self._waiting)
        return next((w for w in works if isinstance(w, Job) and w.spec.run_dir.resolve() == target), None)


class Background:
    """One piece of work in its own thread: waits for a slot, runs `_work()`, publishes a view.
    Subclasses set `_view` to a frozen dataclass with `state`, `message` and `place` fields.
    With `abandon_after`, the work stops itself when nobody has read its view for that long."""

    _view: object

    def __init__(self, name: str, slots: JobSlots, device: str, abandon_after: float | None = None):
        self.slots, self.device, self.abandon_after = slots, device, abandon_after
        self.stop_event = threading.Event()
        self.abandoned = False
        self.owner = None                   # the SessionJob holding it (see SessionJob.adopt)
        self._seen = time.monotonic()
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._main, daemon=True, name=name)

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        """Ends the work at its next step (or its wait in the queue)."""
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()

    def view(self):
        self._seen = time.monotonic()
        with self._cond:
            v = self._view
        return replace(v, place=self.slots.place(self)) if v.state == "queued" else v

    def should_stop(self) -> bool:
        """A stop was asked for, or the page has not looked for `abandon_after` seconds (tab closed)."""
        if not self.stop_event.is_set() and self.abandon_after is not None \
                and time.monotonic() - self._seen > self.abandon_after:
            self.abandoned = True
            self.stop_event.set()
        return self.stop_event.is_set()

    def _stop_reason(self) -> str:
        return (f"stopped: its page was closed (nobody watched it for {self.abandon_after:g} s)" if self.abandoned
                else "stopped")

    def _publish(self, **changes) -> None:
        with self._cond:
            self._view = replace(self._view, **changes)

    def _main(self) -> None:
        try:
            if not self.slots.acquire(self, self.should_stop):
                self._publish(state="stopped", message=f"{self._stop_reason()} while waiting in the queue")
                self._cancelled()
                return
            try:
                if self.device == "cpu":
                    # One core for the work, the other for the page: two intra-op threads on a shared
                    # 2-core machine make every step and every page rerun slower (bench/bench_app.py).
                    torch.set_num_threads(1)
                self._work()
            finally:
                self.slots.release(self)
        except USER_ERRORS as e:
            self._publish(state="failed", message=one_line(e))
        except Exception as e:  # a bug must not take the page down: say what happened, keep the log
            traceback.print_exc()
            self._publish(state="failed", message=f"unexpected {type(e).__name__}: {one_line(e)}")

    def _work(self) -> None:
        raise NotImplementedError

    def _cancelled(self) -> None:
        """Called when the work was stopped before it got a slot."""


# ---------------------------------------------------------------- AdvFT training jobs


@dataclass(frozen=True)
class JobSpec:
    victim: str                 # checkpoint path (or committed name) the run starts from
    config: AdvFTConfig
    run_dir: Path               # the run folder to create (or to resume, see `resume`)
    preset: str | None = None
    data_dir: str | None = None
    device: str = "cpu"
    resume: bool = False        # continue the run in run_dir from its state.pt
    start_paused: bool = False  # build and record epoch 0, then wait for play/step


@dataclass(frozen=True)
class JobView:
    """What the page may read: a copy, consistent in itself."""

    state: str = "queued"       # queued | preparing | running | paused | finished | stopped | failed
    message: str = ""
    run_name: str = ""
    device: str = ""
    epoch: int = 0
    epochs: int = 0
    g_done: int = 0
    f_done: int = 0
    phase: str = "G"
    manual_steps: int = 0
    slow: bool = False
    version: int = 0            # increments with every published snapshot
    place: int | None = None    # place in the waiting line while queued
    snapshot: object = field(default=None, repr=False, compare=False)  # core.advft.Snapshot

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class Job(Background):
    def __init__(self, spec: JobSpec, slots: JobSlots, abandon_after: float | None = None):
        super().__init__(f"advft-{spec.run_dir.name}", slots, spec.device, abandon_after)
        self.spec = spec
        self._view = JobView(run_name=spec.run_dir.name, epochs=spec.config.epochs)
        self._playing = not spec.start_paused
        self._until_epoch_end = False
        self._requests: deque[str] = deque()   # "step" | "g" | "f"
        self._slow = False
        self._announced = ""                   # the state last written to the run folder (by the thread)
        self._run: RecordedRun | None = None
        self._last_publish = 0.0

    # ------------------------------------------------------------ commands (any thread)
    def play(self) -> None:
        self._command(playing=True)

    def pause(self) -> None:
        self._command(playing=False)

    def step(self, kind: str = "step") -> None:
        """kind: 'step' (the next step of Algorithm 1), 'g' or 'f' (one extra G or M_F update),
        'epoch' (to the end of the current epoch, then pause)."""
        with self._cond:
            self._playing = False
            if kind == "epoch":
                self._until_epoch_end = True
            else:
                self._requests.append(kind)
            self._cond.notify_all()

    def set_slow_motion(self, slow: bool) -> None:
        with self._cond:
            self._slow = slow
            self._view = replace(self._view, slow=slow)

    def _command(self, playing: bool) -> None:
        with self._cond:
            self._playing = playing
            self._until_epoch_end = False
            if self._view.state in ("running", "paused"):
                # Shown at once: no new step starts after this (the one in flight ends within ms).
                self._view = replace(self._view, state="running" if playing else "paused")
            self._cond.notify_all()

    # ------------------------------------------------------------ the thread
    def _cancelled(self) -> None:
        if not self.spec.resume:  # the folder new_run_dir reserved for it stays empty: remove it
            with contextlib.suppress(OSError):
                self.spec.run_dir.rmdir()

    def _work(self) -> None:
        s = self.spec
        self._publish(state="preparing", message="loading the victim and the data, scoring M_R")
        self._run = run = RecordedRun.resume(s.run_dir, s.data_dir, s.device) if s.resume else \
            RecordedRun.create(s.run_dir, s.victim, s.config, s.data_dir, s.device, s.preset)
        t = run.trainer
        # The state stays 'preparing' until _next_action announces 'running' or 'paused'.
        self._publish_frame(device=describe(t.device), epochs=t.config.epochs,
                            message=f"data: {t.data.source}; OOD: {t.ood_source}")
        status = drive(run, self._next_action, self._on_step)
        if status == "stopped":
            self._publish_frame(state="stopped", message=f"{self._stop_reason()}; every finished epoch is saved")
        else:
            self._publish_frame(state="finished", message=f"finished: Acc_MF {run.metrics['acc_after']:.4f}, "
                                                         f"OOD agreement {run.metrics['ood_agreement']:.2f}")

    def _publish_frame(self, **changes) -> None:
        t = self._run.trainer
        snap = t.snapshot()  # outside the lock: ~50 ms
        self._last_publish = time.perf_counter()
        with self._cond:
            self._view = replace(self._view, snapshot=snap, version=self._view.version + 1, epoch=t.epoch,
                                 g_done=t.g_done, f_done=t.f_done, phase=t.phase, **changes)

    def _announce(self, state: str) -> None:
        self._announced = state
        self._run.set_state(state)
        t = self._run.trainer
        self._publish(state=state, epoch=t.epoch, g_done=t.g_done, f_done=t.f_done, phase=t.phase)

    def _next_action(self) -> str | None:
        """drive()'s policy: 'step', 'g', 'f', or None to stop. Blocks (without spinning) while paused."""
        while True:
            if self.should_stop():
                return None
            with self._cond:
                if self._requests:
                    return self._requests.popleft()
                playing = self._playing or self._until_epoch_end
                if not playing and self._announced == "paused":
                    self._cond.wait(0.5)
                    continue
            if not playing:
                self._announce("paused")
                continue
            if self._announced != "running":
                self._announce("running")
            if self._slow:
                self.stop_event.wait(SLOW_MOTION_S)  # one step, one visible frame
                if self.stop_event.is_set():
                    return None
            return "step"

    def _on_step(self, action: str, record: dict | None) -> None:
        time.sleep(0)  # hand the GIL to the page's threads between steps
        if record is not None:
            with self._cond:
                self._until_epoch_end = False
            self._publish_frame()
        elif action in ("g", "f"):
            self._publish_frame(manual_steps=self._view.manual_steps + 1)
        elif self._slow or self._announced == "paused" or time.perf_counter() - self._last_publish >= PUBLISH_EVERY_S:
            self._publish_frame()


def new_run_dir(runs_dir: Path, preset: str, config: AdvFTConfig) -> Path:
    """A fresh, readable, sortable folder (20250101-120000-lecture-m10-s0), created here so that two
    jobs started in the same second cannot pick the same name."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{preset}-m{config.margin:g}-s{config.seed}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = runs_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise OSError(f"could not create a new run folder under {runs_dir}")


class SessionJob:
    """The one job (or task) of a browser session (held in st.cache_resource(scope='session')).
    A job belongs to the last session that took it: a reloaded tab (a new session) adopts the live job
    of its run, and the old session's end must not stop it then."""

    def __init__(self):
        self.job: Background | None = None

    def replace(self, job: Background | None) -> None:
        self.stop()
        self.adopt(job)

    def adopt(self, job: Background | None) -> None:
        self.job = job
        if job is not None:
            job.owner = self

    def stop(self) -> None:
        """Replace, Reset, or on_release (the tab closed or its session expired): the job ends at its
        next step, unless another session has adopted it since."""
        if self.job is not None and self.job.owner is self:
            self.job.stop()
