"""Grids of independent cells, run in this process or on a Ray cluster: the one runner behind every
multi-run command (`table`, `sweep`, and any later one).

A grid is a list of Cells. A cell is one experiment that needs nothing from the others: attack the
victim (behind an API defence), attack an existing protected checkpoint, or protect the victim with
AdvFT and attack M_F (after its last epoch, or after each of several epochs, Fig. 4). What a cell
does is the `run` function given to run_grid (core.experiments.run_cell); this module runs cells,
retries them, records them, and skips the ones already done.

Where results land: everything is under the grid's folder `out` on the machine that runs the
command (the driver), and only the driver writes there:
    <out>/cells/<name>.json   the cell's record: its settings, done | failed (with a one-line message),
                              attempts, seconds, where it ran, and its result row. A done record is how
                              a rerun of the same command knows to skip the cell (resume).
    <out>/<name>/             the cell's AdvFT run folder (core.runs layout), for cells that run AdvFT
    <out>/.staging/<name>/    where a cell's folder is put together; it becomes <out>/<name> only after
                              the record says done, so a run folder under its final name is complete
    <out>/cells/.lock         held by the one process running the grid
Executors:
    LocalExecutor  cells one after another in this process (the default; Ray is never imported).
    RayExecutor    each cell is a Ray task asking for one GPU (device cuda) or one CPU. The task runs
                   the cell in a temporary folder on its node and returns the row and that folder's
                   files (config, status, history, metrics, model, state, snapshots: a few MB for the
                   2-D LeNets, ~250 MB for a full-width ResNet-18); the driver writes them into <out>. No
                   shared filesystem is needed, but every node needs this checkout and the datasets
                   at the paths the driver uses (--data-dir, victim paths).
Faults: a cell that raises (TrainingDiverged, a missing checkpoint, out of memory) or whose Ray worker
dies is run again, from scratch, up to `retries` times, then recorded failed with its one-line
message; the grid goes on. A cell stopped by should_stop is not recorded: the next run redoes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from .device import describe, pick_device
from .errors import UserError
from .runs import atomic_write_json, read_json
from .training import one_line

try:  # POSIX; elsewhere a grid folder is not locked (one driver is then the user's business)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

ROOT = Path(__file__).resolve().parent.parent   # the folder that holds the `core` package
# torch threads per cell, on either executor. Part of a cell's settings because float results depend on it:
# the same cell gave a surrogate of 41.96% with 2 threads and 46.36% with 1 (the order of the sums differs),
# and runs with equal thread counts are bit-identical. 2: the cores of the machines this project is built on.
DEFAULT_THREADS = 2
MAX_THREADS = 256
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}")
RESERVED = ("cells",)


class GridError(UserError, ValueError):
    """The grid cannot start (bad cell names, a busy or foreign --out, Ray missing or unreachable);
    the message says what to do."""


class CellStopped(Exception):
    """Raised by a cell's run function when should_stop() ended it early (not a failure)."""


class CellFailed(RuntimeError):
    """A library caller asked for an exception instead of failed rows (GridResult.raise_failed)."""


@dataclass(frozen=True)
class Cell:
    """One independent experiment of a grid. Its dict fields hold plain JSON (the fields of
    AttackConfig, DefenceConfig, AdvFTConfig), so a cell is recorded as it is and compared on resume."""

    name: str                         # unique in the grid: the record cells/<name>.json, the run folder <name>
    victim: str                       # M_R: a committed victim name or a checkpoint path, read where the cell runs
    attack: dict                      # AttackConfig fields
    defence: dict | None = None       # the API defence in front of the attacked model (None: no defence)
    advft: dict | None = None         # AdvFT first (run folder <out>/<name>), then attack M_F
    target: str | None = None         # attack this protected checkpoint instead of the victim
    at_epochs: tuple[int, ...] = ()   # with advft: attack M_F after each of these epochs (default: the last)
    fidelity: bool = False            # also score honest users' answers on the whole train and test sets
    also: tuple[dict, ...] = ()       # more attacks (AttackConfig fields) run at each point after `attack`
    threads: int = DEFAULT_THREADS    # torch threads the cell runs with, wherever it runs (see DEFAULT_THREADS)

    @property
    def kind(self) -> str:
        return "advft" if self.advft is not None else "attack"

    @property
    def makes_folder(self) -> bool:
        return self.advft is not None

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(asdict(self)))  # as it reads back from its record (tuples as lists)
        if not d["also"]:
            del d["also"]  # records written before `also` existed still match their cells on resume
        return d


@dataclass
class Outcome:
    """What one attempt at a cell gave."""

    ok: bool
    row: dict | None = None
    message: str = ""
    seconds: float = 0.0                   # the cell's own work
    wall: float = 0.0                      # submission to result, as the driver saw it (Ray overhead included)
    device: str = ""
    host: str = ""
    stopped: bool = False
    files: dict[str, bytes] | None = None  # Ray: the cell's folder, written on the driver


@dataclass
class GridProgress:
    total: int
    done: int = 0        # finished cells, including those skipped as already done
    failed: int = 0
    running: int = 0
    skipped: int = 0


@dataclass
class GridResult:
    out: Path
    records: dict[str, dict]                  # name -> record of every done or failed cell, in grid order
    skipped: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0

    def row(self, name: str) -> dict | None:
        record = self.records.get(name)
        return record["row"] if record and record["status"] == "done" else None

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.records.items() if r["status"] == "failed"]

    def raise_failed(self) -> None:
        if self.failed:
            name = self.failed[0]
            raise CellFailed(f"cell '{name}' failed: {self.records[name]['message']}")


Run = Callable[..., dict]  # run(cell, folder, *, data_dir, device, note, should_stop, victims) -> row


def _quiet(message: str) -> None:
    pass


def threaded(cells: list[Cell], threads: int) -> list[Cell]:
    """The grid's cells with the thread count chosen for all of them (the CLI's --threads)."""
    return [replace(c, threads=threads) for c in cells]


# ---------------------------------------------------------------- running one attempt


def _execute(run: Run, cell: Cell, folder: Path, data_dir, device, note, should_stop, victims) -> Outcome:
    """One attempt at `cell` in `folder`, wherever this process is, with the cell's torch threads (this
    process's count is restored after); never raises for the cell's own errors."""
    import torch

    t0 = time.perf_counter()
    where = {"host": socket.gethostname()}
    threads = torch.get_num_threads()
    torch.set_num_threads(cell.threads)
    try:
        dev = pick_device(str(device))
        where["device"] = describe(dev)
        row = run(cell, folder, data_dir=data_dir, device=dev, note=note, should_stop=should_stop, victims=victims)
    except CellStopped:
        return Outcome(ok=False, stopped=True, seconds=time.perf_counter() - t0, **where)
    except Exception as e:  # the cell's own failure (MemoryError included): recorded, the grid goes on
        return Outcome(ok=False, message=one_line(e), seconds=time.perf_counter() - t0, **where)
    finally:
        torch.set_num_threads(threads)
    return Outcome(ok=True, row=row, seconds=time.perf_counter() - t0, **where)


class LocalExecutor:
    """Cells one after another in this process, each with its own thread count. `victims` maps a cell's
    victim string to an already loaded (model, dataset); others are loaded on first use and kept."""

    slots = 1

    def __init__(self, victims: dict | None = None):
        self.victims = dict(victims or {})
        self._next = None

    def open(self, device, threads: int = DEFAULT_THREADS) -> str:
        return (f"running the cells one after another in this process "
                f"({describe(pick_device(str(device)), threads)} per cell)")

    def submit(self, run: Run, cell: Cell, folder: Path, data_dir, device, note, should_stop) -> None:
        self._next = (run, cell, folder, data_dir, device, note, should_stop, time.perf_counter())

    def wait(self) -> tuple[Cell, Outcome]:
        run, cell, folder, data_dir, device, note, should_stop, t0 = self._next
        self._next = None
        outcome = _execute(run, cell, folder, data_dir, device, note, should_stop, self.victims)
        outcome.wall = time.perf_counter() - t0
        return cell, outcome

    def close(self) -> None:
        self._next = None


_WORKER_VICTIMS: dict = {}  # in a Ray worker process: (data dir, device) -> {victim: (model, data)}, reused by its tasks


def _remote_cell(run: Run, cell: Cell, data_dir, device) -> Outcome:
    """A Ray task: the cell in a temporary folder on this node; returns its row and its folder's files."""
    victims = _WORKER_VICTIMS.setdefault((str(data_dir), str(device)), {})
    with tempfile.TemporaryDirectory(prefix="advft-cell-") as tmp:
        folder = Path(tmp) / cell.name
        outcome = _execute(run, cell, folder, data_dir, device, _quiet, None, victims)
        if outcome.ok and folder.is_dir():
            outcome.files = {}
            for p in sorted(folder.rglob("*")):
                rel = str(p.relative_to(folder))
                if p.is_dir() and not any(p.iterdir()):
                    outcome.files[rel + "/"] = b""  # an empty folder (a trailing slash says so)
                elif p.is_file() and p.name != ".lock" and not p.name.endswith(".tmp"):
                    outcome.files[rel] = p.read_bytes()
    return outcome


class RayExecutor:
    """Each cell a Ray task on a cluster: `address` 'auto' (the cluster this machine belongs to, as
    started by `ray start`), 'ray://host:port' (Ray Client), or None for a local cluster started here
    (with num_cpus CPUs, default all). Ray is imported here, and only here."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise GridError("--executor ray needs Ray, which is not installed here: "
                            "pip install -r requirements-ray.txt") from None
        self.ray, self.address, self.num_cpus = ray, address, num_cpus
        self.slots, self._owns, self._remote, self._refs = 1, False, None, {}

    def open(self, device, threads: int = DEFAULT_THREADS) -> str:
        ray = self.ray
        if not ray.is_initialized():
            # Workers import `core` from this checkout's path (the same path on every node); Ray's own
            # logs stay in its session folder so the driver's terminal shows only the grid.
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            options = dict(runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=False,
                           logging_level=logging.WARNING)
            if self.address is None:  # 'local': a new cluster here, even when `ray start` made one already
                # CPUs are Ray's logical units: a machine with fewer cores than a cell's threads still runs it
                cpus = max(self.num_cpus or os.cpu_count() or 1, threads)
                options.update(num_cpus=cpus, include_dashboard=False)
            main_thread = threading.current_thread() is threading.main_thread()
            on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
            try:
                ray.init(address=self.address or "local", **options)
                # ray.init replaces the process's SIGTERM handler (with sys.exit, and its core worker then
                # dumps a C++ stack and aborts, exit 134): the caller's handler (the CLI's: a run records
                # where it stopped, exit 143) is put back.
                if main_thread and on_sigterm is not None:
                    signal.signal(signal.SIGTERM, on_sigterm)
            except Exception as e:
                hint = {"auto": " (start one with `ray start --head`)",
                        "ray:": " (is the head's Ray Client port reachable? with token authentication, set "
                                "RAY_AUTH_MODE=token and the cluster's token here)"}.get((self.address or "")[:4], "")
                raise GridError(f"could not start or reach Ray at '{self.address or 'a local cluster'}'{hint}: "
                                f"{one_line(e)}") from None
            self._owns = True
        gpu = str(device).startswith("cuda")
        have = ray.cluster_resources()
        kind = "GPU" if gpu else "CPU"
        if not have.get(kind):
            raise GridError(f"the Ray cluster has no {kind}s (`ray status` lists what it has)"
                            + ("; use --device cpu, or add GPU nodes" if gpu else ""))
        widest = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if widest < threads:
            raise GridError(f"each cell runs with {threads} threads (--threads) and asks Ray for as many CPUs, but no "
                            f"node of this cluster has more than {int(widest)}; use --threads {max(1, int(widest))} "
                            "(the rows then differ from a run with more threads)")
        # One cell per GPU, or per `threads` CPUs: in flight at most as many as the cluster can run at once,
        # so 'running' on the progress bar means running, and retries queue behind the others.
        self.slots = max(1, int(have[kind]) if gpu else int(have[kind]) // threads)
        self._remote = ray.remote(_remote_cell).options(num_cpus=threads, num_gpus=1 if gpu else 0, max_retries=0)
        return (f"Ray: {int(have.get('CPU', 0))} CPUs, {int(have.get('GPU', 0))} GPUs; each cell asks for "
                f"{'one GPU and ' if gpu else ''}{threads} CPU{'s' if threads != 1 else ''} and runs with as many "
                f"torch threads, {self.slots} at a time")

    def submit(self, run: Run, cell: Cell, folder: Path, data_dir, device, note, should_stop) -> None:
        ref = self._remote.remote(run, cell, data_dir, str(device))
        self._refs[ref] = (cell, folder, time.perf_counter())

    def wait(self) -> tuple[Cell, Outcome]:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        cell, folder, t0 = self._refs.pop(ready[0])
        try:
            outcome = self.ray.get(ready[0])
        except Exception as e:  # the worker died (killed, out of memory) or Ray lost the task
            outcome = Outcome(ok=False, message=f"the Ray task did not return: {one_line(e)}")
        if outcome.files is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for rel, data in outcome.files.items():
                path = folder / rel
                if ".." in Path(rel).parts or Path(rel).is_absolute():
                    raise GridError(f"cell '{cell.name}' returned a file outside its folder: {rel!r}")
                if rel.endswith("/"):
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)  # in staging: the folder is renamed into place once complete
            outcome.files = None
        outcome.wall = time.perf_counter() - t0
        return cell, outcome

    def close(self) -> None:
        for ref in self._refs:  # only after an interrupt: cells still in flight are not wanted any more
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self._refs = {}
        if self._owns:
            self.ray.shutdown()
            self._owns = False


def make_executor(name: str, ray_address: str | None = None):
    """'local' or 'ray' (the CLI's --executor)."""
    if name == "local":
        if ray_address:
            raise GridError("--ray-address is for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(ray_address)
    raise GridError(f"unknown executor '{name}'; choose local or ray")


# ---------------------------------------------------------------- the grid folder


class _Lock:
    """<out>/cells/.lock, held (flock) while a grid runs; the OS drops it when the process dies."""

    def __init__(self, out: Path):
        self.out, self.fd = out, None

    def __enter__(self):
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.out / "cells" / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                raise GridError(f"another process is running a grid in '{self.out}'; wait for it or choose "
                                "another --out") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _check_cells(cells: list[Cell]) -> None:
    seen = set()
    for c in cells:
        if not NAME.fullmatch(c.name) or c.name in RESERVED:
            raise GridError(f"cell name '{c.name[:60]}' cannot name a file (letters, digits and ._=+- only, "
                            f"at most 100, not {', '.join(RESERVED)})")
        if c.name in seen:
            raise GridError(f"two cells are named '{c.name}' (a value listed twice?); each needs its own name")
        seen.add(c.name)


def _difference(a, b, prefix="") -> str:
    """The first setting in which two recorded cells differ, as 'attack.queries'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in dict.fromkeys([*a, *b]):
            if a.get(k) != b.get(k):
                return _difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return prefix.rstrip(".")


def _as_recorded(current: dict, recorded) -> dict:
    """A cell's settings as an older version of this project would have recorded them: the settings the
    record lacks (fields added to AttackConfig, DefenceConfig or AdvFTConfig since) are left out when
    they hold their default. A new field's default keeps the old behaviour (that is the rule for adding
    one), so a grid made before an upgrade still resumes; a new field set to anything else differs."""
    from dataclasses import fields

    from .advft import AdvFTConfig
    from .attacks import AttackConfig, DefenceConfig

    if not isinstance(recorded, dict):
        return current
    defaults = {name: {f.name: f.default for f in fields(cls)}
                for name, cls in (("attack", AttackConfig), ("also", AttackConfig), ("defence", DefenceConfig),
                                  ("advft", AdvFTConfig))}

    def older(now, then, default: dict):
        if not (isinstance(now, dict) and isinstance(then, dict)):
            return now
        return {k: v for k, v in now.items() if k in then or k not in default or v != default[k]}

    out = dict(current)
    for name, default in defaults.items():
        now, then = current.get(name), recorded.get(name)
        if name == "also" and isinstance(now, list) and isinstance(then, list) and len(now) == len(then):
            out[name] = [older(a, b, default) for a, b in zip(now, then)]
        elif name in current:
            out[name] = older(now, then, default)
    return out


def load_records(cells: list[Cell], out: Path) -> dict[str, dict]:
    """The records of this grid's cells under `out`; GridError when `out` holds results that are not
    this grid's (a done cell with other settings, or a run folder that no finished cell recorded)."""
    records = {}
    for c in cells:
        record = read_json(out / "cells" / f"{c.name}.json")
        if not (isinstance(record, dict) and record.get("status") in ("done", "failed")):
            record = None  # absent, or a damaged file: the cell runs again
        settings = c.to_dict() if record is None else _as_recorded(c.to_dict(), record.get("cell"))
        if record is not None and isinstance(record.get("cell"), dict) and "threads" not in record["cell"]:
            # recorded before cells had a thread count: the one it ran with is in its device ("CPU (2 threads)")
            ran = re.search(r"\((\d+) threads?\)", str(record.get("device", "")))
            record = {**record, "cell": {**record["cell"], "threads": int(ran[1]) if ran else c.threads}}
        if record is not None and record.get("cell") != settings:
            if record["status"] == "done":
                what = _difference(record.get("cell"), settings) or "settings"
                hint = (f" (it ran with {record['cell'].get('threads')}: pass --threads "
                        f"{record['cell'].get('threads')} to resume this grid)" if what == "threads" else "")
                raise GridError(f"'{out}' already holds cell '{c.name}' run with other settings "
                                f"({what} differs{hint}); choose another "
                                f"--out, or delete '{out / 'cells' / (c.name + '.json')}' to run it again")
            record = None  # a failed cell with other settings: this grid's version runs instead
        if record is not None:
            records[c.name] = record
        folder = out / c.name
        if c.makes_folder and folder.exists() and (record is None or record["status"] != "done"):
            raise GridError(f"'{folder}' already holds files that no finished cell of this grid recorded; "
                            "delete it or choose another --out")
        if c.makes_folder and folder.exists() and not _folder_is_cells(folder, c):
            raise GridError(f"'{folder}' holds a run that is not cell '{c.name}' (other AdvFT settings: another "
                            "process wrote it); move it elsewhere and run the same command again")
    return records


def _folder_is_cells(folder: Path, cell: Cell) -> bool:
    """Whether the run in `folder` was made with the cell's AdvFT settings (a record and a folder of the
    same name can still disagree: another process may have written the folder)."""
    from .advft import AdvFTConfig
    from .runs import RunDir, RunError

    try:
        made = RunDir(folder).config().advft
    except RunError:
        return False
    return asdict(made) == asdict(AdvFTConfig.from_dict(cell.advft))


def _settle_staging(out: Path, records: dict[str, dict]) -> None:
    """Finish what a killed driver left half done: a done cell's folder still in staging is moved into
    place; anything else in staging (interrupted or failed attempts) is removed."""
    staging = out / ".staging"
    if not staging.is_dir():
        return
    for name, record in records.items():
        if record["status"] == "done" and (staging / name).is_dir() and not (out / name).exists():
            os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)


def _commit(out: Path, cell: Cell, record: dict, staging: Path) -> None:
    """The record first (the commit point), then the run folder into place: a driver killed in between
    leaves the folder in staging, and the next run finishes the move (_settle_staging). A folder of the
    cell's name that another process made meanwhile stops the grid, and is left as it is."""
    if staging.is_dir() and any(staging.iterdir()) and (out / cell.name).exists():
        raise GridError(f"'{out / cell.name}' appeared while cell '{cell.name}' ran (another process wrote there); "
                        "the cell's own run is discarded and that folder left as it is: move it elsewhere and run the "
                        "same command again")
    atomic_write_json(out / "cells" / f"{cell.name}.json", record)
    if staging.is_dir():
        if any(staging.iterdir()):
            os.replace(staging, out / cell.name)
        else:
            staging.rmdir()


# ---------------------------------------------------------------- the runner


def run_grid(cells: list[Cell], out: str | Path, run: Run, executor=None, *, data_dir=None, device="cpu",
             retries: int = 1, note: Callable[[str], None] = _quiet,
             progress: Callable[[GridProgress], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> GridResult:
    """Run every cell of the grid not already done under `out` with `executor` (default: a LocalExecutor);
    each failed cell is tried again up to `retries` times, then recorded failed. Returns the records
    of all cells done or failed so far, in grid order."""
    _check_cells(cells)
    if int(retries) != retries or retries < 0:
        raise GridError(f"retries must be an integer >= 0 (got {retries})")
    out = Path(out)
    stop = should_stop or (lambda: False)
    report = progress or (lambda p: None)
    data_dir = str(Path(data_dir).resolve()) if data_dir else None  # workers elsewhere get an absolute path
    t0 = time.perf_counter()
    with _Lock(out):
        records = load_records(cells, out)
        _settle_staging(out, records)
        skipped = [c.name for c in cells if records.get(c.name, {}).get("status") == "done"]
        pending = [c for c in cells if c.name not in skipped]
        state = GridProgress(total=len(cells), done=len(skipped), skipped=len(skipped))
        if skipped:
            note(f"{len(skipped)} of {len(cells)} cells already done in {out}: skipped")
        report(state)
        stopped = False
        if pending and not stop():
            executor = executor or LocalExecutor()
            try:
                note(executor.open(device, max(c.threads for c in pending)))
                stopped = _run_pending(pending, out, run, executor, data_dir, device, retries, note, stop, state,
                                       report, records)
            finally:
                executor.close()
                shutil.rmtree(out / ".staging", ignore_errors=True)
        else:
            stopped = bool(pending)
    ordered = {c.name: records[c.name] for c in cells if c.name in records}
    return GridResult(out, ordered, skipped, stopped, time.perf_counter() - t0)


def _run_pending(pending, out, run, executor, data_dir, device, retries, note, stop, state, report, records) -> bool:
    """The executor's loop: keep its slots busy, retry failures at the back of the queue, commit
    results as they come. Returns whether should_stop() ended it early."""
    queue, attempts, in_flight, stopped = deque(pending), {}, 0, False
    while queue or in_flight:
        while queue and in_flight < executor.slots:
            if stop():
                stopped = True
                break
            cell = queue.popleft()
            attempts[cell.name] = attempts.get(cell.name, 0) + 1
            staging = out / ".staging" / cell.name
            shutil.rmtree(staging, ignore_errors=True)  # every attempt starts from scratch
            executor.submit(run, cell, staging, data_dir, device, note, stop)
            in_flight += 1
            state.running = in_flight
            report(state)
        if not in_flight:
            break
        cell, outcome = executor.wait()
        in_flight -= 1
        staging = out / ".staging" / cell.name
        tries = attempts[cell.name]
        if outcome.stopped:
            stopped = True
            shutil.rmtree(staging, ignore_errors=True)
        elif outcome.ok or tries > retries:
            record = {"name": cell.name, "status": "done" if outcome.ok else "failed", "message": outcome.message,
                      "attempts": tries, "seconds": round(outcome.seconds, 2), "wall": round(outcome.wall, 2),
                      "device": outcome.device, "host": outcome.host,
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "cell": cell.to_dict(), "row": outcome.row}
            if not outcome.ok:
                shutil.rmtree(staging, ignore_errors=True)
            _commit(out, cell, record, staging)
            records[cell.name] = record
            if outcome.ok:
                state.done += 1
                note(f"cell {cell.name}: done in {outcome.seconds:.1f} s")
            else:
                state.failed += 1
                note(f"cell {cell.name}: failed after {tries} attempt{'s' if tries > 1 else ''}: {outcome.message}")
        else:
            shutil.rmtree(staging, ignore_errors=True)
            note(f"cell {cell.name}: attempt {tries} failed ({outcome.message}); trying again")
            queue.append(cell)
        state.running = in_flight
        report(state)
    return stopped
