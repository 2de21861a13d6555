"""Background training jobs: the core engine in a plain thread, a queue across sessions, copies for the page.

The page never touches the trainer. A Job owns one thread that builds the trainer, steps it and
records the run folder (core.pipeline.RunRecorder), and publishes what the page draws through
`view()`: a small status record plus the latest `trainer.snapshot()` (a fresh dict of fresh tensors,
never mutated afterwards, so handing it over under a lock is enough). Nothing here imports
Streamlit: the thread must never call it (Streamlit's threading rules), and the module stays testable.

Commands (play, pause, step, stop) only set fields under the lock and wake the thread; the thread
reads them between steps, so a click takes effect within one step (a few ms to tens of ms).
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from core.advft import AdvFTConfig, ConfigError, TrainingDiverged
from core.data import DataError
from core.device import describe
from core.models import CheckpointError
from core.pipeline import RunRecorder, load_victim, new_trainer, resume_trainer
from core.runs import RunDir

PUBLISH_EVERY_S = 0.4    # snapshot() costs ~50 ms; more often would slow training noticeably
SLOW_MOTION_S = 0.25     # pause after each step in slow motion, so one step is one visible frame
USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDiverged, OSError)
ACTIVE = ("queued", "preparing", "running", "paused")


def default_max_jobs() -> int:
    """ADVFT_MAX_JOBS, else 2 with a CUDA GPU and 1 on a CPU (two CPU jobs would halve each other)."""
    try:
        return max(1, int(os.environ.get("ADVFT_MAX_JOBS", "")))
    except ValueError:
        return 2 if torch.cuda.is_available() else 1


class JobSlots:
    """At most `capacity` jobs train at once, process-wide; the others wait first come, first served."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._cond = threading.Condition()
        self._active: set = set()
        self._waiting: list = []

    def acquire(self, job, stop: threading.Event) -> bool:
        """Blocks until `job` may run; False if `stop` was set while it waited."""
        with self._cond:
            self._waiting.append(job)
            while not (self._waiting[0] is job and len(self._active) < self.capacity):
                if stop.is_set():
                    self._waiting.remove(job)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.2)
            self._waiting.pop(0)
            self._active.add(job)
            self._cond.notify_all()
            return True

    def release(self, job) -> None:
        with self._cond:
            self._active.discard(job)
            if job in self._waiting:
                self._waiting.remove(job)
            self._cond.notify_all()

    def place(self, job) -> int | None:
        """1-based place in the waiting line, None when not waiting."""
        with self._cond:
            return self._waiting.index(job) + 1 if job in self._waiting else None

    def running_dirs(self) -> set[Path]:
        """Run folders that a live job of this process is writing."""
        with self._cond:
            return {j.spec.run_dir.resolve() for j in (*self._active, *self._waiting)}

    def load(self) -> tuple[int, int]:
        with self._cond:
            return len(self._active), len(self._waiting)


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
    snapshot: dict | None = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class Job:
    def __init__(self, spec: JobSpec, slots: JobSlots):
        self.spec, self.slots = spec, slots
        self.stop_event = threading.Event()
        self._cond = threading.Condition()
        self._playing = not spec.start_paused
        self._until_epoch_end = False
        self._requests: deque[str] = deque()   # "step" | "g" | "f"
        self._slow = False
        self._announced = ""   # the state last written to the run folder (by the thread)
        self._view = JobView(run_name=spec.run_dir.name, epochs=spec.config.epochs)
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"advft-{spec.run_dir.name}")

    # ------------------------------------------------------------ commands (any thread)
    def start(self) -> "Job":
        self.thread.start()
        return self

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
            self._publish_locked(slow=slow)

    def stop(self) -> None:
        """Ends the job at the next step; the run folder keeps every finished epoch."""
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()

    def view(self) -> JobView:
        with self._cond:
            v = self._view
        return replace(v, place=self.slots.place(self)) if v.state == "queued" else v

    def _command(self, playing: bool) -> None:
        with self._cond:
            self._playing = playing
            self._until_epoch_end = False
            if self._view.state in ("running", "paused"):
                # Shown at once: no new step starts after this (the one in flight ends within ms).
                self._publish_locked(state="running" if playing else "paused")
            self._cond.notify_all()

    def _publish_locked(self, **changes) -> None:
        self._view = replace(self._view, **changes)

    def _publish(self, trainer=None, snapshot: bool = False, **changes) -> None:
        if trainer is not None:
            changes.update(epoch=trainer.epoch, g_done=trainer.g_done, f_done=trainer.f_done, phase=trainer.phase)
        if snapshot:
            snap = trainer.snapshot()  # outside the lock: ~50 ms
            with self._cond:
                self._publish_locked(snapshot=snap, version=self._view.version + 1, **changes)
            return
        with self._cond:
            self._publish_locked(**changes)

    # ------------------------------------------------------------ the thread
    def _main(self) -> None:
        recorder = None
        try:
            if not self.slots.acquire(self, self.stop_event):
                self._publish(state="stopped", message="stopped while waiting in the queue")
                return
            try:
                self._publish(state="preparing", message="loading the victim and the data, scoring M_R")
                trainer, recorder = self._build()
                self._loop(trainer, recorder)
            finally:
                self.slots.release(self)
        except USER_ERRORS as e:
            self._fail(recorder, str(e) or type(e).__name__)
        except Exception as e:  # an engine bug must not kill the page: say what happened, keep the log
            traceback.print_exc()
            self._fail(recorder, f"unexpected {type(e).__name__}: {e}")

    def _fail(self, recorder, message: str) -> None:
        if recorder is not None:
            try:
                recorder.finish("failed", message)
            except OSError:
                pass  # the run folder itself may be what went away
        self._publish(state="failed", message=message)

    def _build(self):
        s = self.spec
        if s.device == "cpu":
            # One core for training, the other for the page: two intra-op threads on a shared 2-core
            # machine make every step and every page rerun slower (see bench/bench_app.py).
            torch.set_num_threads(1)
        run = RunDir(s.run_dir)
        if s.resume:
            trainer = resume_trainer(run, s.data_dir, s.device)
            recorder = RunRecorder(run, trainer, run.config().get("victim", s.victim), resumed=True)
        else:
            victim, data = load_victim(s.victim, s.data_dir, s.device)
            trainer = new_trainer(victim, data, s.config, s.data_dir, s.device)
            recorder = RunRecorder(run, trainer, s.victim, preset=s.preset)
        # The state stays 'preparing' until the loop announces 'running' or 'paused'.
        self._publish(trainer, snapshot=True, device=describe(trainer.device), epochs=trainer.config.epochs,
                      message=f"data: {trainer.data.source}; OOD: {trainer.ood_source}")
        return trainer, recorder

    def _next_action(self) -> str | None:
        """'auto', 'step', 'g', 'f', 'paused' (just became paused), or None to stop.
        Waits without spinning while paused."""
        with self._cond:
            while not self.stop_event.is_set():
                if self._requests:
                    return self._requests.popleft()
                if self._playing or self._until_epoch_end:
                    return "auto"
                if self._announced != "paused":
                    return "paused"
                self._cond.wait(0.5)
            return None

    def _announce(self, trainer, recorder: RunRecorder, state: str) -> None:
        self._announced = state
        self._publish(trainer, state=state)
        recorder.run.write_status(state, f"epoch {trainer.epoch} of {trainer.config.epochs}")

    def _loop(self, trainer, recorder: RunRecorder) -> None:
        last_publish = time.perf_counter()
        while not trainer.finished:
            action = self._next_action()
            if action == "paused":
                self._announce(trainer, recorder, "paused")
                continue
            if action == "auto" and self._announced != "running":
                self._announce(trainer, recorder, "running")
            if action is None:
                recorder.finish("stopped", f"stopped during epoch {trainer.epoch + 1}; the saved epochs stay")
                self._publish(trainer, state="stopped", message="stopped; every finished epoch is saved")
                return
            if action in ("g", "f"):
                self._manual_step(trainer, action)
                self._publish(trainer, snapshot=True, manual_steps=self._view.manual_steps + 1)
                last_publish = time.perf_counter()
                continue
            record = trainer.step()
            time.sleep(0)  # hand the GIL to the page's threads between steps
            if record is not None:
                recorder.epoch_done()
                with self._cond:
                    if self._until_epoch_end:
                        self._until_epoch_end = False
                self._publish(trainer, snapshot=True)
                last_publish = time.perf_counter()
            elif action == "step" or self._slow or time.perf_counter() - last_publish >= PUBLISH_EVERY_S:
                self._publish(trainer, snapshot=True)
                last_publish = time.perf_counter()
            if self._slow and action == "auto":
                self.stop_event.wait(SLOW_MOTION_S)
        self._publish(trainer, message="scoring M_F on the whole training set")
        metrics = recorder.finish("finished")
        self._publish(trainer, snapshot=True, state="finished",
                      message=f"finished: Acc_MF {metrics['acc_after']:.4f}, "
                              f"OOD agreement {metrics['ood_agreement']:.2f}")

    @staticmethod
    def _manual_step(trainer, kind: str) -> None:
        """One extra update of G or M_F outside Algorithm 1's schedule (GAN Lab's 'step G / step D');
        the engine keeps it out of the epoch's mean losses."""
        if kind == "g":
            trainer.step_generator()
        else:
            trainer.step_model()


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
    """The one job of a browser session (held in st.cache_resource(scope='session'))."""

    def __init__(self):
        self.job: Job | None = None

    def replace(self, job: Job | None) -> None:
        if self.job is not None:
            self.job.stop()
        self.job = job

    def stop(self) -> None:
        """on_release: the tab closed (or its session expired); its thread ends at the next step."""
        if self.job is not None:
            self.job.stop()
