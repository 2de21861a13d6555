"""Run folders: everything one training run writes, written atomically, listable and reloadable.

A run folder holds
    config.json        the AdvFTConfig and the victim it started from (RunConfig)
    status.json        running | paused | finished | stopped | failed, with a message
    history.jsonl      one JSON line of metrics per finished epoch
    state.pt           the trainer's full state after the last finished epoch (for resuming)
    model.pt           the protected model M_F (a normal checkpoint, core.load_model reads it)
    metrics.json       final metrics (written when the run finishes)
    snapshots/epoch_NNNN.pt   a core.advft.Snapshot per epoch (probe features, generator samples)
    frames/step_NNNNNNN.pt    the same every few steps (at most MAX_FRAMES per run): the live view,
                       the timeline's frame-by-frame scrubbing and replays
    .lock              held (flock) by the one process writing the run; the OS drops it when that
                       process dies, so a crash never leaves a run locked
Each file is written to a temporary name and renamed into place, so a crash or kill leaves either
the old file or the new one, never half of one (and the next writer sweeps up stray temporaries).

Only this module knows the layout: everything else asks a RunDir for typed objects (RunConfig,
RunSummary, Snapshot) or paths.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .advft import AdvFTConfig, ConfigError, Snapshot
from .errors import UserError

try:  # POSIX; elsewhere runs are not locked (one writer is then the user's business)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

RUNS_DIR_ENV = "ADVFT_RUNS_DIR"
DEFAULT_RUNS_DIR = "./runs"


def resolve_runs_dir(cli_value: str | None = None) -> Path:
    return Path(cli_value or os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# What any JSON file the project reads may be: far above every file it writes (an atlas index is ~1 MB, a run's
# files a few KB), and far below what breaks a reader. A file written by hand or by a hostile user that is
# bigger or deeper is refused with that reason, where it is read: it never reaches the code that uses it.
MAX_JSON_BYTES = 32 * 2**20
MAX_JSON_DEPTH = 32


def parse_json(text: str | bytes):
    """JSON text, checked: ValueError when it is not JSON or nests deeper than MAX_JSON_DEPTH levels
    (json.loads itself fails on deep nesting with a RecursionError, which no caller expects)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return value


def load_json(path: str | Path):
    """The checked JSON of a file: OSError when it cannot be read, ValueError (saying why) when it is not
    JSON, larger than MAX_JSON_BYTES or nested too deeply."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_JSON_BYTES // 2**20} MB")
    return parse_json(data)


def read_json(path: str | Path, default=None):
    """load_json, or `default` for a file that is absent or does not read (callers check the shape)."""
    try:
        return load_json(path)
    except (OSError, ValueError):
        return default


class RunError(UserError, ValueError):
    """A run folder is gone, or one of its files does not read; the message names the run and the file."""


class RunBusy(RunError):
    """Another job or process is writing this run folder right now."""


FINAL_STATES = ("finished", "stopped", "failed")
MAX_FRAMES = 240  # frames per run: ~20 KB each, so a run folder stays within a few MB
LIVE_STATES = ("running", "paused")


@dataclass(frozen=True)
class RunConfig:
    """config.json: how the run was made."""

    advft: AdvFTConfig
    victim: str
    preset: str | None = None
    dataset: str = "?"
    arch: str = "?"
    data_source: str = ""
    ood_source: str = ""
    device: str = ""
    created: str = ""
    victim_accuracy: float | None = None

    def to_dict(self) -> dict:
        return {**self.__dict__, "advft": self.advft.__dict__}

    @classmethod
    def from_dict(cls, d) -> "RunConfig":
        """Raises ValueError (with what is wrong) for a file that is not a run's config, down to the type of
        each field: a list where a name belongs must not reach a page as one."""
        if not isinstance(d, dict) or not isinstance(d.get("advft"), dict) or not isinstance(d.get("victim"), str):
            raise ValueError("not a run configuration (expected an object with 'advft' and 'victim')")
        try:
            advft = AdvFTConfig.from_dict(d["advft"]).validate()
        except (TypeError, ConfigError) as e:
            raise ValueError(f"its AdvFT settings are invalid ({e})") from None
        known = {k: d[k] for k in ("preset", "dataset", "arch", "data_source", "ood_source", "device", "created",
                                   "victim_accuracy") if k in d}
        for k, v in known.items():
            ok = (_number(v) is not None or v is None) if k == "victim_accuracy" else \
                (isinstance(v, str) or (k == "preset" and v is None))
            if not ok:
                raise ValueError(f"not a run configuration ('{k}' is a {type(v).__name__})")
        return cls(advft=advft, victim=d["victim"], **known)


@dataclass(frozen=True)
class RunSummary:
    """One line of a run listing (the CLI's `runs`, the app's Runs page, the Attack page's targets).
    `status` is 'interrupted' for a run that says running/paused but that nobody is writing."""

    name: str
    status: str
    message: str = ""
    dataset: str = "?"
    arch: str = "?"
    margin: float | None = None
    epoch: int = 0
    epochs: int | None = None
    acc_before: float | None = None
    acc_after: float | None = None
    kl_test: float | None = None
    ood_agreement: float | None = None
    created: str = ""
    has_model: bool = False
    problem: str | None = None   # why a file of this run does not read; None when all is well

    @property
    def resumable(self) -> bool:
        return self.problem is None and self.status in ("stopped", "failed", "interrupted")


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class RunDir:
    """One run folder. All writes are atomic; reads tolerate a folder that is being written."""

    path: Path
    _lock_fd: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def state_path(self) -> Path:
        return self.path / "state.pt"

    def snapshot_path(self, epoch: int) -> Path:
        return self.path / "snapshots" / f"epoch_{epoch:04d}.pt"

    def frame_path(self, step: int) -> Path:
        return self.path / "frames" / f"step_{step:07d}.pt"

    def exists(self) -> bool:
        return (self.path / "config.json").is_file()

    # ------------------------------------------------------------------ one writer at a time
    def acquire(self) -> None:
        """Take the run's write lock (creating the folder); RunBusy if another writer holds it.
        Stray temporaries of a writer that was killed mid-write are removed here."""
        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunBusy(f"run '{self.name}' is being written by another job or process") from None
        self._lock_fd = fd
        for tmp in (*self.path.glob(".*.tmp"), *self.path.glob("snapshots/.*.tmp"), *self.path.glob("frames/.*.tmp")):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def is_locked(self) -> bool:
        """Whether some job or process (this one included) is writing the run now."""
        if self._lock_fd is not None:
            return True
        if fcntl is None:
            return False
        try:
            fd = os.open(self.path / ".lock", os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops the probe's own shared lock

    # ------------------------------------------------------------------ writing
    def write_config(self, config: RunConfig) -> None:
        atomic_write_json(self.path / "config.json", config.to_dict())

    def _existing(self, name: str) -> Path:
        """Where to write a file of a run that must already exist: a run folder deleted underneath a
        live job is an error, not something to recreate half-empty (list_runs would never show it)."""
        if not self.exists():
            raise FileNotFoundError(f"run folder '{self.path}' was deleted (or never created)")
        return self.path / name

    def write_status(self, status: str, message: str = "", **extra) -> None:
        atomic_write_json(self._existing("status.json"), {"status": status, "message": message, **extra})

    def write_history(self, history) -> None:
        # Rewritten whole (it is small), so a kill mid-write can never leave a torn last line.
        atomic_write_bytes(self._existing("history.jsonl"),
                           "".join(json.dumps(h, default=_json_default) + "\n" for h in history).encode())

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self._existing("metrics.json"), metrics)

    def save_state(self, state: dict) -> None:
        atomic_torch_save(state, self._existing("state.pt"))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._existing("snapshots")
        atomic_torch_save(snapshot.to_dict(), self.snapshot_path(snapshot.epoch))

    def save_frame(self, snapshot: Snapshot) -> None:
        self._existing("frames")
        atomic_torch_save(snapshot.to_dict(), self.frame_path(snapshot.step))

    def drop_after(self, epoch: int, step: int) -> None:
        """Snapshots and frames that a restarted run will redo (they would show a future that is not there)."""
        stale = [self.snapshot_path(e) for e in self.snapshot_epochs() if e > epoch]
        stale += [self.frame_path(s) for s in self.frame_steps() if s > step]
        for path in stale:
            with contextlib.suppress(OSError):
                path.unlink()

    # ------------------------------------------------------------------ reading
    def config(self) -> RunConfig:
        """RunError when the folder is gone or config.json is not a run's configuration."""
        try:
            raw = load_json(self.path / "config.json")
        except FileNotFoundError:
            raise RunError(f"run '{self.name}' no longer exists under {self.path.parent}") from None
        except (OSError, ValueError) as e:
            raise RunError(f"run '{self.name}': config.json does not read ({str(e)[:120]})") from None
        try:
            return RunConfig.from_dict(raw)
        except ValueError as e:
            raise RunError(f"run '{self.name}': config.json is {e}") from None

    def status(self) -> dict:
        st = read_json(self.path / "status.json")
        if not isinstance(st, dict) or not isinstance(st.get("status"), str):
            return {"status": "unknown", "message": "status.json is missing or damaged"}
        if not isinstance(st.get("message", ""), str):
            st = {**st, "message": "status.json's message is damaged"}
        if st["status"] in LIVE_STATES and not self.is_locked():
            return {**st, "status": "interrupted",
                    "message": f"was {st['status']} when its process ended; it can be resumed"}
        return st

    def history(self) -> list[dict]:
        """RunError when history.jsonl does not read (a missing file is an empty history)."""
        try:
            lines = (self.path / "history.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RunError(f"run '{self.name}': history.jsonl does not read ({e})") from None
        try:
            records = [parse_json(line) for line in lines if line.strip()]
        except ValueError as e:
            raise RunError(f"run '{self.name}': history.jsonl does not read ({str(e)[:120]})") from None
        if not all(isinstance(r, dict) for r in records):
            raise RunError(f"run '{self.name}': history.jsonl does not read (a line is not a record)")
        return records

    def metrics(self) -> dict | None:
        m = read_json(self.path / "metrics.json")
        return m if isinstance(m, dict) else None

    def load_state(self) -> dict:
        return torch.load(self.state_path, map_location="cpu", weights_only=True)

    def snapshot_epochs(self) -> list[int]:
        folder = self.path / "snapshots"
        if not folder.is_dir():
            return []
        epochs = []
        for p in folder.glob("epoch_*.pt"):
            with contextlib.suppress(ValueError, IndexError):
                epochs.append(int(p.stem.split("_")[1]))
        return sorted(epochs)

    def frame_steps(self) -> list[int]:
        steps = []
        for p in (self.path / "frames").glob("step_*.pt"):
            with contextlib.suppress(ValueError, IndexError):
                steps.append(int(p.stem.split("_")[1]))
        return sorted(steps)

    def load_snapshot(self, epoch: int) -> Snapshot:
        """RunError when the snapshot is missing or does not load."""
        return self._load(self.snapshot_path(epoch), f"epoch {epoch} snapshot")

    def load_frame(self, step: int) -> Snapshot:
        return self._load(self.frame_path(step), f"frame of step {step}")

    def _load(self, path: Path, what: str) -> Snapshot:
        if not path.is_file():
            raise RunError(f"run '{self.name}' has no saved {what} (deleted?)")
        try:
            return Snapshot.from_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # torch.load on a truncated or foreign file: zip, pickle, key or runtime errors
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise RunError(f"run '{self.name}': the {what} does not load ({reason})") from None

    def summary(self) -> RunSummary:
        """Never raises: a file that does not read becomes the summary's `problem`."""
        st = self.status()
        problem, cfg, history = None, None, []
        try:
            cfg = self.config()
            history = self.history()
        except RunError as e:
            problem = str(e)
        if problem is None and st["status"] == "unknown":
            problem = f"run '{self.name}': {st['message']}"
        last = history[-1] if history else {}
        return RunSummary(
            name=self.name, status=st["status"], message=str(st.get("message", "")),
            dataset=cfg.dataset if cfg else "?", arch=cfg.arch if cfg else "?",
            margin=cfg.advft.margin if cfg else None, epochs=cfg.advft.epochs if cfg else None,
            epoch=int(last["epoch"]) if isinstance(last.get("epoch"), int) else 0,
            acc_before=_number(last.get("acc_before")), acc_after=_number(last.get("acc_after")),
            kl_test=_number(last.get("kl_test")), ood_agreement=_number(last.get("ood_agreement")),
            created=cfg.created if cfg else "", has_model=self.model_path.is_file(), problem=problem)

    def delete(self) -> str:
        """Delete the run's folder and say what was done. Refuses (RunBusy) while a job or process writes
        the run. A run that is a link to a folder elsewhere loses the link only: what it points to may be
        anyone's files. Raises RunError when files are left (no permission), rather than claim it is gone."""
        if self.is_locked():
            raise RunBusy(f"run '{self.name}' is being trained right now; stop it before deleting it")
        if self.path.is_symlink():
            target = os.readlink(self.path)
            self.path.unlink()
            return f"Removed the link '{self.name}'; the folder it points to ('{target}') is left as it is"
        shutil.rmtree(self.path, ignore_errors=True)
        if self.path.exists():
            raise RunError(f"could not delete every file of run '{self.name}' (permissions?); what is left is in "
                           f"'{self.path}'")
        return f"Deleted {self.name}"


def list_runs(root: str | Path) -> list[RunDir]:
    """Run folders under root, newest first (folders without a config.json are not runs)."""
    root = Path(root)
    if not root.is_dir():
        return []
    dated = []
    for p in root.iterdir():
        try:
            dated.append(((p / "config.json").stat().st_mtime, RunDir(p)))
        except OSError:  # not a run, or deleted while we looked
            continue
    return [run for _, run in sorted(dated, key=lambda t: t[0], reverse=True)]
