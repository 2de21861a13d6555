"""Run folders: everything one training run writes, written atomically, listable and reloadable.

A run folder holds
    config.json        the AdvFTConfig and the victim it started from
    status.json        running | paused | finished | stopped | failed, with a message
    history.jsonl      one JSON line of metrics per finished epoch
    state.pt           the trainer's full state after the last finished epoch (for resuming)
    model.pt           the protected model M_F (a normal checkpoint, core.load_model reads it)
    metrics.json       final metrics (written when the run finishes)
    snapshots/epoch_NNNN.pt   features of the probe sets and generator samples, per epoch
Each file is written to a temporary name and renamed into place, so a crash or kill leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

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


def read_json(path: str | Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


@dataclass
class RunDir:
    """One run folder. All writes are atomic; reads tolerate a folder that is being written."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ writing
    def write_config(self, config: dict) -> None:
        atomic_write_json(self.path / "config.json", config)

    def _existing(self, name: str) -> Path:
        """Where to write a file of a run that must already exist: a run folder deleted underneath a
        live job is an error, not something to recreate half-empty (list_runs would never show it)."""
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"run folder '{self.path}' was deleted (or never created)")
        return self.path / name

    def write_status(self, status: str, message: str = "", **extra) -> None:
        atomic_write_json(self._existing("status.json"), {"status": status, "message": message, **extra})

    def write_history(self, history: list[dict]) -> None:
        # Rewritten whole (it is small), so a kill mid-write can never leave a torn last line.
        atomic_write_bytes(self._existing("history.jsonl"),
                           "".join(json.dumps(h, default=_json_default) + "\n" for h in history).encode())

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_json(self._existing("metrics.json"), metrics)

    def save_state(self, state: dict) -> None:
        atomic_torch_save(state, self._existing("state.pt"))

    def save_snapshot(self, epoch: int, snapshot: dict) -> None:
        atomic_torch_save(snapshot, self._existing("snapshots") / f"epoch_{epoch:04d}.pt")

    # ------------------------------------------------------------------ reading
    def config(self) -> dict:
        return read_json(self.path / "config.json", {}) or {}

    def status(self) -> dict:
        return read_json(self.path / "status.json", {"status": "unknown", "message": ""}) or {}

    def history(self) -> list[dict]:
        try:
            lines = (self.path / "history.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]  # ValueError on a damaged file

    def metrics(self) -> dict | None:
        return read_json(self.path / "metrics.json")

    def load_state(self) -> dict:
        return torch.load(self.path / "state.pt", map_location="cpu", weights_only=True)

    def snapshot_epochs(self) -> list[int]:
        folder = self.path / "snapshots"
        if not folder.is_dir():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in folder.glob("epoch_*.pt"))

    def load_snapshot(self, epoch: int) -> dict:
        return torch.load(self.path / "snapshots" / f"epoch_{epoch:04d}.pt", map_location="cpu", weights_only=True)

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    def delete(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


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
