"""The worker process: `python -m app.worker COMMANDS_FD MESSAGES_FD PARENT_PID THREADS`.

All background work of the app runs here, never in the server: an AdvFT job (Runner: the one run
protocol, core.training.drive, under the page's control policy) or an Attack page task (TaskRunner: an
attack or a toy sweep from app.tasks.TASKS). The server (app.jobs.Relayed) starts it, sends one spec and
the commands down one pipe and reads views, frames, progress and notes from the other. The process sets
its own torch thread count; the server never touches it. It exits when its work ends, or within half a
second of the server's end, however the server ended.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection

import torch

from app.jobs import USER_ERRORS, JobSpec, Warmup
from app.tasks import TASKS, TaskSpec, progress_dict
from core.advft import AdvFT
from core.device import describe
from core.training import RecordedRun, drive, load_victim, new_trainer, one_line

PUBLISH_EVERY_S = 0.3    # snapshot() costs ~30 ms: ~10% of training at this rate; the page shows >= 2 frames/s
PROGRESS_EVERY_S = 0.2   # an attack reports after every chunk of queries; the page reads twice a second
SLOW_MOTION_S = 0.25     # pause after each step in slow motion, so one step is one visible frame


def main(commands_fd: int, messages_fd: int, parent_pid: int, threads: int) -> None:
    """Wait (as a spare of WorkerPool, building the trainer of the newest Warmup) for one spec, run it,
    exit."""
    _die_with_parent(parent_pid)
    torch.set_num_threads(threads)  # a CUDA job's CPU side needs no more; a CPU job's gets what the page leaves
    # The first optimiser of a process imports torch._dynamo (~1 s): done while waiting, not after Start.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    commands = Connection(commands_fd, writable=False)
    conn = _Duplex(commands, Connection(messages_fd, readable=False))
    try:
        spec, warm = _wait_for_spec(commands)
    except (EOFError, OSError):  # a spare that was never used: the server closed its pipe
        return
    work = Runner(spec, conn, warm) if isinstance(spec, JobSpec) else TaskRunner(spec, conn)
    try:
        work.run()
    except BaseException as e:  # a run records it in its folder (drive()); said to the page here
        if not isinstance(e, USER_ERRORS):
            traceback.print_exc()  # the server's log gets the details, the page one line
        send(conn, "view", state="failed", message=one_line(e))
    finally:
        conn.close()


def send(conn, kind: str, **changes) -> None:
    with contextlib.suppress(OSError, ValueError):  # the server went away: nothing to tell
        conn.send((kind, changes))


def _wait_for_spec(commands: Connection) -> tuple[object, tuple | None]:
    """The spec (a JobSpec or a TaskSpec), and (Warmup key, trainer) for the last Warmup before it. A Warmup
    followed at once by a newer one is skipped unbuilt (the page sends one per settings change); one followed by the spec is
    built (most likely the spec's own trainer: no time lost). One that fails to build (a missing victim,
    data not on disk) is dropped: the job then builds its trainer itself and reports the error."""
    warm: tuple | None = None
    queued = None
    while True:
        kind, payload = queued or commands.recv()
        queued = None
        if kind == "spec":
            return payload, warm
        if commands.poll(0):
            queued = commands.recv()
            if queued[0] == "warm":
                continue
        if warm is not None and warm[0] == payload.key():
            continue
        warm = None  # free the old trainer's memory before building the next
        with contextlib.suppress(Exception):
            model, data = load_victim(payload.victim, payload.data_dir, payload.device)
            warm = (payload.key(), new_trainer(model, data, payload.config, payload.data_dir, payload.device))


class _Duplex:
    """Commands in, messages out: one object with the Connection methods the runner uses."""

    def __init__(self, commands: Connection, messages: Connection):
        self.commands, self.messages = commands, messages
        self.poll, self.recv, self.send = commands.poll, commands.recv, messages.send

    def close(self) -> None:
        self.commands.close()
        self.messages.close()


def _die_with_parent(parent_pid: int) -> None:
    """Exit as soon as the server is gone, even killed by SIGKILL: an orphan is adopted by another
    process, which changes getppid(). (Not prctl(PR_SET_PDEATHSIG): it fires when the *thread* that
    started the process ends, and spare workers outlive the thread that started them.)"""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class Runner:
    """The control policy of a live AdvFT job: play / pause / single steps / slow motion.
    drive() asks `next_action` what to do and reports through `on_step`."""

    def __init__(self, spec: JobSpec, conn, warm: tuple | None = None):
        self.spec, self.conn = spec, conn
        self.warm = warm                      # (Warmup key, trainer) built while this process was a spare
        self.playing = not spec.start_paused
        self.until_epoch_end = False
        self.requests: deque[str] = deque()   # "step" | "g" | "f"
        self.slow = False
        self.stopping = False
        self.stop_reason = ""
        self.announced = ""                   # the state last written to the run folder
        self.manual_steps = 0
        self.run_: RecordedRun | None = None
        self.last_sent = 0.0

    def send(self, kind: str, **changes) -> None:
        send(self.conn, kind, **changes)

    def _position(self) -> dict:
        t = self.run_.trainer
        return {"epoch": t.epoch, "g_done": t.g_done, "f_done": t.f_done, "phase": t.phase}

    def _frame(self, frame, **changes) -> None:
        # As bytes (torch.save), not as tensors: multiprocessing would pass tensors as shared memory that
        # the receiver can no longer map once this process has exited (the last frame of a run was lost).
        buf = io.BytesIO()
        torch.save(frame.to_dict(), buf)
        self.last_sent = time.perf_counter()
        self.send("frame", snapshot=buf.getvalue(), **self._position(), **changes)

    def _read(self, timeout: float) -> None:
        """Apply the commands that arrived (waiting up to `timeout` for the first)."""
        try:
            while self.conn.poll(timeout):
                timeout = 0
                message = self.conn.recv()
                if message[0] == "stop":
                    self.stopping, self.stop_reason = True, message[1]
                elif message[0] in ("play", "pause"):
                    self.playing, self.until_epoch_end = message[0] == "play", False
                elif message[0] == "slow":
                    self.slow = message[1]
                elif message[1] == "epoch":
                    self.playing, self.until_epoch_end = False, True
                else:
                    self.playing = False
                    self.requests.append(message[1])
        except (EOFError, OSError):  # the server went away
            self.stopping = True

    def run(self) -> None:
        s = self.spec
        self.send("view", state="preparing", message="loading the victim and the data, scoring M_R")
        self.run_ = run = RecordedRun.resume(s.run_dir, s.data_dir, s.device) if s.resume else \
            RecordedRun.create(s.run_dir, s.victim, s.config, s.data_dir, s.device, s.preset, self._prebuilt())
        t = run.trainer
        self._frame(run.last_frame, device=describe(t.device), epochs=t.config.epochs,
                    message=f"data: {t.data.source}; OOD: {t.ood_source}")
        status = drive(run, self.next_action, self.on_step, lambda: self.stop_reason)
        if status == "stopped":
            self._frame(t.snapshot(), state="stopped", message="stopped; every finished epoch is saved")
        else:
            self._frame(run.last_frame, state="finished",
                        message=f"finished: Acc_MF {run.metrics['acc_after']:.4f}, "
                                f"OOD agreement {run.metrics['ood_agreement']:.2f}")

    def _prebuilt(self) -> AdvFT | None:
        """The trainer built ahead of Start, when it is this job's (up to the training knobs)."""
        if self.warm is None or self.warm[0] != Warmup.of(self.spec).key():
            return None
        trainer = self.warm[1]
        trainer.retune(self.spec.config)
        return trainer

    def _announce(self, state: str) -> None:
        self.announced = state
        self.run_.set_state(state)
        self.send("view", state=state, **self._position())

    def next_action(self) -> str | None:
        while True:
            self._read(0)
            if self.stopping:
                return None
            if self.requests:
                return self.requests.popleft()
            if not (self.playing or self.until_epoch_end):
                if self.announced != "paused":
                    self._announce("paused")
                self._read(0.5)  # wait for a command without spinning
                continue
            if self.announced != "running":
                self._announce("running")
            if self.slow:
                self._read(SLOW_MOTION_S)  # one step, one visible frame
                if self.stopping:
                    return None
            return "step"

    def on_step(self, action: str, record: dict | None) -> None:
        run = self.run_
        if record is not None:
            self.until_epoch_end = False
            if run.trainer.finished:  # next: the final metrics, which a stop does not cut short
                self.send("view", finishing=True,
                          message="every epoch is done; computing the final metrics (KL over the training set)")
        if action in ("g", "f"):
            self.manual_steps += 1
            self._frame(run.trainer.snapshot(), manual_steps=self.manual_steps)
        elif run.last_frame is not None and run.last_frame.step == run.trainer.steps_done:
            self._frame(run.last_frame)  # drive() just wrote this frame to the run folder: show it live too
        elif self.slow or self.announced == "paused" or time.perf_counter() - self.last_sent >= PUBLISH_EVERY_S:
            self._frame(run.trainer.snapshot())


class TaskRunner:
    """An Attack page task: its function with progress, notes and a stop that arrives down the pipe."""

    def __init__(self, spec: TaskSpec, conn):
        self.spec, self.conn = spec, conn
        self.stopping = False
        self.last_sent = 0.0

    def should_stop(self) -> bool:
        with contextlib.suppress(EOFError, OSError):
            while not self.stopping and self.conn.poll(0):
                self.stopping = self.conn.recv()[0] == "stop"
            return self.stopping
        return True  # the server went away

    def progress(self, result) -> None:
        phase_done = isinstance(result, dict)  # an AdvFT epoch of "protect then attack": rare, always sent
        if phase_done or time.perf_counter() - self.last_sent >= PROGRESS_EVERY_S:
            self.last_sent = time.perf_counter()
            send(self.conn, "progress", progress=progress_dict(result))

    def note(self, line: str) -> None:
        send(self.conn, "note", line=line)

    def run(self) -> None:
        s = self.spec
        send(self.conn, "view", state="running")
        value = TASKS[s.kind](**s.args, data_dir=s.data_dir, device=s.device, progress=self.progress, note=self.note,
                              should_stop=self.should_stop)
        send(self.conn, "view", state="stopped" if self.stopping else "finished", value=value)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
