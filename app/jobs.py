"""The server's side of background work: a queue across sessions, a relay thread per piece of work,
and consistent copies of its state for the page. The work itself runs in a worker process
(app/worker.py): AdvFT jobs and the Attack page's tasks alike, so the server never trains, never sets
torch's thread count and stays responsive.

`Background` holds what every kind shares: the thread, the slot in the process-wide queue (JobSlots),
the stop flag, and a frozen view record replaced under a lock, so the page reads a consistent copy with
`view()`. `Relayed` runs its spec in a worker process and applies what comes back; `Job` (here) adds the
transport commands of a training run, `Task` (app/tasks.py) the Attack page's results. `WorkerPool`
keeps one spare worker process ready. Nothing here imports Streamlit: a thread must never call it
(Streamlit's threading rules), and the module stays testable.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import subprocess
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

import torch

from core.advft import BUILD_FIELDS, AdvFTConfig, Snapshot
from core.errors import UserError
from core.training import one_line

ROOT = Path(__file__).resolve().parent.parent  # where `python -m app.worker` finds the app and core
# Work whose page stopped asking for its view this long ago is stopped (its tab was closed): the
# pages poll every 0.5-2 s while work is active, and Streamlit itself only notices a closed tab
# after its 120 s session timeout.
ABANDON_AFTER_S = 10.0
USER_ERRORS = (UserError, ValueError, OSError)  # said in one line; anything else also goes to the log
ACTIVE = ("queued", "preparing", "running", "paused")


def default_max_jobs() -> int:
    """ADVFT_MAX_JOBS, else 2 with a CUDA GPU and 1 on a CPU (two CPU jobs would halve each other)."""
    try:
        return max(1, int(os.environ.get("ADVFT_MAX_JOBS", "")))
    except ValueError:
        return 2 if torch.cuda.is_available() else 1


def job_threads() -> int:
    """ADVFT_JOB_THREADS, else every core (see Worker.start)."""
    try:
        return max(1, int(os.environ.get("ADVFT_JOB_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


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

    def job_for(self, run_dir: Path) -> "Job | None":
        """The live training job (running or waiting) that writes `run_dir`, whichever tab started it."""
        target = Path(run_dir).resolve()
        with self._cond:
            works = (*self._active, *self._waiting)
        return next((w for w in works if isinstance(w, Job) and w.spec.run_dir.resolve() == target), None)


_LIVE: "weakref.WeakSet[Background]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    """Stop and join every live worker thread before the interpreter goes away: a daemon thread still
    inside a torch operation at exit aborts the process ("terminate called without an active exception")."""
    works = list(_LIVE)
    for work in works:
        work.stop()
    for work in works:
        work.thread.join(timeout=30)


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
        _LIVE.add(self)
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


@dataclass
class Worker:
    """A worker process (`python -m app.worker`) and the two pipes to it."""

    process: subprocess.Popen
    commands: Connection   # to the child
    messages: Connection   # from the child

    @classmethod
    def start(cls) -> "Worker":
        commands_r, commands_w = os.pipe()
        messages_r, messages_w = os.pipe()
        # Every core (ADVFT_JOB_THREADS to choose), with OpenMP's threads sleeping instead of spinning while
        # they wait (OMP_WAIT_POLICY=PASSIVE): a spinning thread whose partner was preempted by the browser or
        # the server burns its core for nothing. Measured with the page open on 2 cores (bench/bench_app.py):
        # 22.2 steps/s with one thread, 22.2 with two spinning threads, 26.4 with two passive ones.
        threads = job_threads()
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
        process = subprocess.Popen(
            [sys.executable, "-m", "app.worker", *map(str, (commands_r, messages_w, os.getpid(), threads))],
            pass_fds=(commands_r, messages_w), cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        os.close(commands_r)  # the child's ends: only the child holds them now
        os.close(messages_w)
        return cls(process, Connection(commands_w, readable=False), Connection(messages_r, writable=False))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self.commands.close()
        self.messages.close()


@dataclass(frozen=True)
class Warmup:
    """What the page will most likely start next (its settings on screen): a spare process builds that
    trainer (victim, data, M_R's reference outputs: ~2.5 s on a 2-core CPU) before Start is clicked."""

    victim: str
    config: AdvFTConfig
    data_dir: str | None = None
    device: str = "cpu"

    def key(self) -> tuple:
        """Equal keys build the same trainer, up to its training knobs (AdvFT.retune)."""
        try:
            stamp = os.stat(self.victim).st_mtime_ns  # a victim retrained since is another victim
        except OSError:
            stamp = None
        return (self.victim, stamp, self.data_dir, self.device, tuple(getattr(self.config, f) for f in BUILD_FIELDS))

    @classmethod
    def of(cls, spec: JobSpec) -> "Warmup":
        return cls(spec.victim, spec.config, spec.data_dir, spec.device)


class WorkerPool:
    """Keeps one spare worker process waiting with torch and the engine imported (~1-3 s on a 2-core
    CPU) and the page's next trainer built (Warmup), so that Start shows a moving M_F within seconds.
    The spare is made and warmed only while none of this pool's work runs: on a CPU it would take the
    core the job runs on."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spare: Worker | None = None
        self._warmup: Warmup | None = None   # the newest wish of a page
        self._sent: Warmup | None = None     # what the spare was asked to build
        self._busy = 0                       # jobs of this pool that hold a process

    def prestart(self, warmup: Warmup | None = None) -> None:
        """Have a spare ready (called when the Defend page is drawn), building `warmup`'s trainer."""
        with self._lock:
            if warmup is not None:
                self._warmup = warmup
            if not self._busy:
                self._ready()

    def _ready(self) -> None:
        if self._spare is None or self._spare.process.poll() is not None:
            self._spare, self._sent = Worker.start(), None
        if self._warmup is not None and self._warmup != self._sent:
            with contextlib.suppress(OSError, ValueError):
                self._spare.commands.send(("warm", self._warmup))
                self._sent = self._warmup

    def take(self) -> Worker:
        with self._lock:
            worker, self._spare, self._sent = self._spare, None, None
            if worker is None or worker.process.poll() is not None:
                worker = Worker.start()
            self._busy += 1
        return worker

    def done(self) -> None:
        """A job's process has ended: make the next spare now that the cores are free."""
        with self._lock:
            self._busy -= 1
            if not self._busy:
                self._ready()

    def close(self) -> None:
        with self._lock:
            if self._spare is not None:
                self._spare.close()
                self._spare = None


WORKERS = WorkerPool()
atexit.register(WORKERS.close)


class Relayed(Background):
    """Work done in a worker process (`python -m app.worker`, app/worker.py: a fresh interpreter, nothing
    shared with the server's threads; not multiprocessing's 'spawn', which re-runs the parent's main
    script, here the Streamlit page). The work has its own GIL and its own torch thread count, and the
    page never waits for it. The server keeps only this relay: a thread that holds the queue slot, sends
    the spec and the commands down a pipe, and turns what comes back (a few tens of KB, at most a few times
    a second) into the view the page reads. The child notices within half a second that the server is
    gone, however it died, and exits."""

    STOP_GRACE_S = 60.0  # a stop ends the work at its next step; a child that does not comply is killed
    # ... except one finishing its work (a run whose epochs are all done computing its final metrics, ~1 min on
    # a loaded CPU): it ends by itself, and killed it would leave a complete run without metrics.json
    FINISH_GRACE_S = 15 * 60.0

    def __init__(self, name: str, spec, slots: JobSlots, device: str, abandon_after: float | None = None):
        super().__init__(name, slots, device, abandon_after)
        self.spec = spec
        self._send_lock = threading.Lock()
        self._pending: list = []                # commands given before the work has its process
        self.worker: Worker | None = None
        self.finishing = False                  # the child said its work is done but for the final metrics

    @property
    def process(self) -> subprocess.Popen | None:
        return self.worker.process if self.worker else None

    def _send(self, message) -> None:
        with self._send_lock, contextlib.suppress(OSError, ValueError):  # a child that is gone: nothing to tell
            if self.worker is None:
                self._pending.append(message)
            else:
                self.worker.commands.send(message)

    def _apply(self, kind: str, changes: dict) -> dict:
        """A message from the child as changes to the view (subclasses decode their own kinds)."""
        return changes

    def _relay(self, timeout: float) -> bool:
        """Apply the child's messages that arrive within `timeout`; True if one was a final state."""
        final = False
        try:
            while self.worker.messages.poll(timeout):
                timeout = 0
                kind, changes = self.worker.messages.recv()
                self.finishing = changes.pop("finishing", False) or self.finishing
                final = final or changes.get("state") in ("finished", "stopped", "failed")
                self._publish(**self._apply(kind, changes))
        except (EOFError, OSError):  # the child closed its end: it is exiting
            pass
        return final

    def _work(self) -> None:
        self._publish(**self._starting)
        worker = WORKERS.take()
        stop_sent = None
        final = False
        try:
            with self._send_lock:
                worker.commands.send(("spec", self.spec))
                for message in self._pending:
                    worker.commands.send(message)
                self.worker = worker
            while True:
                if self.should_stop() and stop_sent is None:
                    self._send(("stop", "its page was closed" if self.abandoned else ""))
                    stop_sent = time.monotonic()
                grace = self.FINISH_GRACE_S if self.finishing else self.STOP_GRACE_S
                if stop_sent is not None and time.monotonic() - stop_sent > grace:
                    worker.process.kill()
                alive = worker.process.poll() is None  # read before draining: what it sent is in the pipe
                final = self._relay(0.1) or final
                if not alive:
                    final = self._relay(0) or final  # the last messages of a process that has just ended
                    break
        finally:
            worker.close()  # kills it only if the relay itself failed: no child is left behind
            WORKERS.done()
        if not final:  # killed, out of memory, a crash
            self._publish(state="failed", message=f"the worker process ended unexpectedly (exit code "
                                                  f"{self.process.returncode}){self._resumable}")

    _resumable = ""
    _starting = {"state": "running"}


class Job(Relayed):
    """An AdvFT run, driven from the page: play / pause / single steps / slow motion. Its child
    (app.worker.Runner) trains through the one run protocol and sends frames; a pipe rather than the run
    folder for the live frames: no file polling, a click reaches the trainer in milliseconds. The child
    also writes every frame to the run folder for the timeline and replays."""

    _resumable = "; the run can be resumed"
    _starting = {"state": "preparing", "message": "starting the training process"}

    def __init__(self, spec: JobSpec, slots: JobSlots, abandon_after: float | None = None):
        super().__init__(f"advft-{spec.run_dir.name}", spec, slots, spec.device, abandon_after)
        self._view = JobView(run_name=spec.run_dir.name, epochs=spec.config.epochs)

    # ------------------------------------------------------------ commands (any thread)
    def play(self) -> None:
        self._command("play", state="running")

    def pause(self) -> None:
        self._command("pause", state="paused")

    def step(self, kind: str = "step") -> None:
        """kind: 'step' (the next step of Algorithm 1), 'g' or 'f' (one extra G or M_F update),
        'epoch' (to the end of the current epoch, then pause)."""
        self._send(("step", kind))

    def set_slow_motion(self, slow: bool) -> None:
        self._send(("slow", slow))
        self._publish(slow=slow)

    def _command(self, command: str, state: str) -> None:
        self._send((command,))
        with self._cond:
            if self._view.state in ("running", "paused"):
                # Shown at once: the child starts no new step after it reads this (within one step).
                self._view = replace(self._view, state=state)

    def _apply(self, kind: str, changes: dict) -> dict:
        if changes.get("state") == "stopped":
            changes["message"] = f"{self._stop_reason()}; every finished epoch is saved"
        if kind == "frame":
            snap = torch.load(io.BytesIO(changes["snapshot"]), map_location="cpu", weights_only=True)
            changes = {**changes, "snapshot": Snapshot.from_dict(snap), "version": self._view.version + 1}
        return changes

    def _cancelled(self) -> None:
        if not self.spec.resume:  # the folder new_run_dir reserved for it stays empty: remove it
            with contextlib.suppress(OSError):
                self.spec.run_dir.rmdir()


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
        """Replace or Reset: the job ends at its next step, unless another session has adopted it."""
        if self.job is not None and self.job.owner is self:
            self.job.stop()

    def release(self) -> None:
        """on_release: Streamlit drops the session the moment its tab disconnects, a reload included.
        The job is not stopped here: with nobody reading its view it stops itself after its
        abandon_after seconds, which leaves a reloaded tab the time to adopt it."""
        if self.job is not None and self.job.abandon_after is None:
            self.stop()  # work that cannot notice it was left alone
