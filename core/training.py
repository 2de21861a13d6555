"""Running AdvFT into a run folder: the one protocol that the command line, the experiments and the
app's jobs all use.

    run = RecordedRun.create(out, victim, config)      # or RecordedRun.resume(out)
    drive(run, next_action, on_step)                   # steps, records every epoch, closes the run

`drive` is the only loop that steps a recorded trainer. Its callers bring only their control
policy: `next_action()` says what to do next ("step", an extra "g"/"f" update, or None to stop;
the app's pause/step queue blocks inside it), `on_step(action, record)` reports (a progress bar, a
note per epoch, a published frame). Whatever happens, the run ends with exactly one final status:
finished (with metrics.json), stopped (None from next_action, or Ctrl-C) or failed (any exception,
with its one-line message), and its write lock is released.

Also here: loading a victim with its data, and M_R's preview snapshot (what the app draws before Start).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from .advft import BUILD_FIELDS, AdvFT, AdvFTConfig, ConfigError, Snapshot, epoch_label
from .data import Dataset, load_dataset, load_ood
from .device import describe
from .models import CheckpointError, Classifier, load_model, save_model
from .runs import MAX_FRAMES, RunConfig, RunDir, RunError, atomic_torch_save
from .victims import require, victim_path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


# ---------------------------------------------------------------- victims


def load_victim(path: str | Path, data_dir=None, device="cpu") -> tuple[Classifier, Dataset]:
    """The victim (a committed name or a path) and its ID dataset; errors if the data on disk does not
    fit the checkpoint. A known victim name without its checkpoint says how to train it."""
    path = require(path)
    model = load_model(path, device)
    data = load_dataset(model.dataset, data_dir)
    probe = data.x_test[:2].float().to(device)
    try:
        with torch.no_grad():
            model(probe)
    except RuntimeError:
        raise CheckpointError(f"'{path}' does not accept {model.dataset} images of shape {data.shape}") from None
    return model, data


def check_ood(config: AdvFTConfig, data: Dataset) -> bool:
    """Refuse (ConfigError, one line) an OOD source that is the victim's own training distribution (CIFAR-10
    probes for a CIFAR-10 victim) unless config.allow_id_ood; returns whether it is one (allowed)."""
    if config.ood != data.name:
        return False
    if not config.allow_id_ood:
        raise ConfigError(f"the OOD source '{config.ood}' is the victim's own training distribution ({data.name}); "
                          "choose --ood noise or natural, or allow it explicitly (--allow-id-transfer, "
                          "AdvFTConfig.allow_id_ood)")
    return True


def new_trainer(victim: Classifier, data: Dataset, config: AdvFTConfig, data_dir=None, device="cpu") -> AdvFT:
    config.validate()
    id_ood = check_ood(config, data)
    ood = load_ood(config.ood, data.shape, max(config.eval_ood_size, config.probe_size), data_dir, seed=config.seed)
    trainer = AdvFT(victim, config, data, ood, device)
    if id_ood:  # recorded in the run's config.json (ood_source) as well as in its settings (allow_id_ood)
        trainer.ood_source += " [the victim's own training distribution, allowed explicitly]"
    return trainer


# ---------------------------------------------------------------- the run protocol


FRAME_EVERY = 8  # steps between frames: ~2.5 frames/s at the lecture preset's ~20 steps/s on a 2-core CPU


def frame_interval(config: AdvFTConfig) -> int:
    """Steps between two frames: FRAME_EVERY, or more for long runs (at most MAX_FRAMES per run)."""
    total = config.epochs * (config.i_g + config.i_f)
    return max(FRAME_EVERY, -(-total // MAX_FRAMES))


def one_line(e: BaseException) -> str:
    """An exception as one readable line (torch's messages can run to pages)."""
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return text if text else type(e).__name__


class RecordedRun:
    """A trainer bound to the run folder it writes, holding the folder's write lock until close()."""

    def __init__(self, run: RunDir, trainer: AdvFT, victim: str):
        self.run, self.trainer = run, trainer
        self.victim = str(victim_path(victim))  # what model.pt says it protects
        self.status: str | None = None     # the final status, once closed
        self.metrics: dict | None = None   # metrics.json, once finished
        self.frame_every = frame_interval(trainer.config)
        self.last_frame: Snapshot | None = None  # the newest frame written (what a live view shows)
        self.state = "running"             # while open: running | paused (status.json says it with where)

    @classmethod
    def create(cls, out: str | Path, victim: str | Path, config: AdvFTConfig, data_dir=None, device="cpu",
               preset: str | None = None, trainer: AdvFT | None = None) -> "RecordedRun":
        """A new run in `out` (a new or empty folder) from a victim checkpoint; `trainer` when the caller
        already built one from that victim."""
        run = RunDir(out)
        if run.path.exists() and not run.path.is_dir():
            raise RunError(f"'{run.path}' is a file, not a folder for a run; choose another --out")
        if run.exists():
            raise RunError(f"'{run.path}' already holds a run; resume it or choose another folder")
        created = not run.path.exists()
        run.acquire()
        try:
            if trainer is None:
                model, data = load_victim(victim, data_dir, device)
                trainer = new_trainer(model, data, config, data_dir, device)
            info = getattr(trainer.reference, "info", {})
            run.write_config(RunConfig(
                advft=trainer.config, victim=str(victim), preset=preset, dataset=trainer.data.name,
                arch=trainer.model.arch, data_source=trainer.data.source, ood_source=trainer.ood_source,
                device=describe(trainer.device), created=time.strftime("%Y-%m-%d %H:%M:%S"),
                victim_accuracy=info.get("test_accuracy")))
            self = cls(run, trainer, victim)
            self._record_start()  # epoch 0 written (a full disk fails here, before any training)
        except BaseException:
            run.release()
            if created:  # leave no half-made folder behind (a later --out of the same name must work)
                import shutil

                shutil.rmtree(run.path, ignore_errors=True)
            raise
        return self

    @classmethod
    def resume(cls, out: str | Path, data_dir=None, device="cpu") -> "RecordedRun":
        """Continue the run in `out` from its last saved epoch; a run that never saved one (it failed or
        was killed in its first epoch) starts again from epoch 0."""
        run = RunDir(out)
        cfg = run.config()  # RunError when there is no run
        run.acquire()
        try:
            model, data = load_victim(cfg.victim, data_dir, device)
            trainer = new_trainer(model, data, cfg.advft, data_dir, device)
            if run.state_path.is_file():
                try:
                    trainer.load_state_dict(run.load_state())
                except Exception as e:
                    raise CheckpointError(f"'{run.state_path}' does not load ({one_line(e)[:120]}); "
                                          "delete it to start the run again from epoch 0") from None
        except BaseException:
            run.release()
            raise
        run.drop_after(trainer.epoch, trainer.steps_done)
        self = cls(run, trainer, cfg.victim)
        self._record_start()
        return self

    def _record_start(self) -> None:
        t = self.trainer
        if t.epoch == 0:
            self.run.save_snapshot(t.snapshot())
            self.run.write_history(t.history)
        self._record_frame()
        self.set_state("running")

    def _record_frame(self) -> Snapshot:
        self.last_frame = self.trainer.snapshot()
        self.run.save_frame(self.last_frame)
        return self.last_frame

    # ------------------------------------------------------------ while it runs
    def where(self) -> str:
        """Where the run is, in the wording of the page (core.advft.epoch_label)."""
        c = self.trainer.config
        return epoch_label(self.trainer.steps_done, c.i_g + c.i_f, c.epochs)

    def set_state(self, state: str) -> None:
        """'running' or 'paused' (shown in listings while the run is open); rewritten after every epoch."""
        self.state = state
        self.run.write_status(state, self.where())

    def step(self, action: str = "step") -> dict | None:
        """'step': the next step of Algorithm 1, recording the epoch it completes (returns its record);
        'g' / 'f': one extra G or M_F update outside the schedule (kept out of the epoch means)."""
        t = self.trainer
        if action == "g":
            t.step_generator()
            return None
        if action == "f":
            t.step_model()
            return None
        record = t.step()
        if record is not None or t.steps_done % self.frame_every == 0:
            frame = self._record_frame()
            if record is not None:
                self._record_epoch(frame)
        return record

    def _record_epoch(self, snapshot: Snapshot) -> None:
        t, run = self.trainer, self.run
        run.save_snapshot(snapshot)
        save_model(t.model, run.model_path, protected_from=self.victim,
                   margin=t.config.margin, epochs_done=t.epoch, test_accuracy=t.history[-1]["acc_after"])
        run.save_state(t.state_dict())
        run.write_history(t.history)  # after state.pt, so history never runs ahead of it
        self.set_state(self.state)  # a listing, a second reader or a run killed later says how far it got

    # ------------------------------------------------------------ the end
    def close(self, status: str, message: str = "") -> dict | None:
        """Record the final status ('finished' also writes metrics.json) and release the lock. If that
        fails (the final metrics interrupted, a full disk), the run is not closed: drive() then records
        'stopped' or 'failed', and a resume of a run whose epochs are all done only computes the metrics."""
        try:
            if status == "finished":
                self.metrics = self.trainer.metrics()
                self.run.write_metrics(self.metrics)
            self.run.write_status(status, message or self.where())
        except BaseException:
            self.metrics = None
            raise
        self.status = status
        self.run.release()
        return self.metrics


def drive(run: RecordedRun, next_action: Callable[[], str | None] = lambda: "step",
          on_step: Callable[[str, dict | None], None] = lambda action, record: None,
          stop_reason: Callable[[], str] = lambda: "") -> str:
    """Step `run` until its trainer finishes or next_action() returns None; record exactly one final
    status and return it (a stop says stop_reason(), when there is one). Exceptions (Ctrl-C included)
    are recorded, then raised again."""
    t = run.trainer
    try:
        while not t.finished:
            action = next_action()
            if action is None:
                why = stop_reason()
                run.close("stopped", f"stopped during epoch {t.epoch + 1}{f' ({why})' if why else ''}; the finished "
                                     "epochs are saved and the run can be resumed")
                return "stopped"
            on_step(action, run.step(action))
        run.close("finished")
        return "finished"
    except KeyboardInterrupt:
        if run.status is None:
            where = "while computing the final metrics" if t.finished else f"during epoch {t.epoch + 1}"
            _close_anyway(run, "stopped", f"interrupted {where}; resume it (--resume, or Resume in the app)")
        raise
    except BaseException as e:
        if run.status is None:
            _close_anyway(run, "failed", one_line(e))
        raise


def _close_anyway(run: RecordedRun, status: str, message: str) -> None:
    """The final status of a run that went wrong; the lock is released even if the folder cannot be written."""
    try:
        run.close(status, message)
    except BaseException:
        run.run.release()  # the run folder itself may be what went away, or the disk is full


def run_advft(out: str | Path, victim: str | Path | None = None, config: AdvFTConfig | None = None, data_dir=None,
              device="cpu", preset: str | None = None, resume: bool = False,
              should_stop: Callable[[], bool] = lambda: False,
              on_step: Callable[[str, dict | None], None] = lambda action, record: None) -> RecordedRun:
    """Run (or resume) AdvFT into the folder `out` until it finishes or should_stop(); returns the
    closed RecordedRun (its trainer, status and metrics)."""
    run = RecordedRun.resume(out, data_dir, device) if resume else \
        RecordedRun.create(out, victim, config, data_dir, device, preset)
    drive(run, lambda: None if should_stop() else "step", on_step)
    return run


# ---------------------------------------------------------------- recorded runs


RECORDED_DIR = ASSETS / "recorded"
RECORDED_FRAMES = 24  # frames kept in a recording: a replay of a few seconds, ~0.8-1 MB a run
# M_F's weights are kept (in float16) when that is this small: the app's probe needs them, and a 2-D LeNet
# is ~160 KB that way; a ResNet-18 (1.4 MB) would double a recording, so its probe shows M_R only.
RECORDED_MODEL_BYTES = 400_000


def record(run: RunDir, dest: str | Path, command: str, frames: int = RECORDED_FRAMES) -> RunDir:
    """A compact, read-only copy of a finished run for shipping (assets/recorded): its config, status,
    history, metrics and epoch snapshots, and `frames` of its frames, evenly spaced (the first and the
    last kept), made compact; its model M_F in float16 when that is at most RECORDED_MODEL_BYTES (the
    app's probe runs it); never its trainer state. `command` is how it was made (shown in the app)."""
    import shutil

    if run.status().get("status") != "finished":
        raise RunError(f"run '{run.name}' has not finished; only finished runs are recorded")
    out = RunDir(dest)
    if out.path.exists():
        shutil.rmtree(out.path)
    out.path.mkdir(parents=True)
    for name in ("config.json", "status.json", "history.jsonl", "metrics.json"):
        shutil.copy2(run.path / name, out.path / name)
    steps = run.frame_steps()
    keep = evenly(steps, frames)
    for snapshot in [run.load_snapshot(e) for e in run.snapshot_epochs()]:
        out.save_snapshot(compact(snapshot))
    for step in keep:
        out.save_frame(compact(run.load_frame(step)))
    if run.model_path.is_file():
        ckpt = torch.load(run.model_path, map_location="cpu", weights_only=True)
        ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
        if isinstance(ckpt.get("info"), dict) and "protected_from" in ckpt["info"]:
            ckpt["info"]["protected_from"] = run.config().victim  # the victim's name, not this machine's path
        if sum(v.numel() * v.element_size() for v in ckpt["state_dict"].values()) <= RECORDED_MODEL_BYTES:
            atomic_torch_save(ckpt, out.model_path)  # load_model casts it back to float32
    (out.path / "RECORDED.json").write_text(json.dumps({"command": command}, indent=2) + "\n")
    return out


def evenly(items: list, n: int) -> list:
    """At most n of `items`, evenly spaced, the first and the last kept (a recording's frames, an animation's)."""
    n = min(n, len(items))
    return [items[i] for i in sorted({round(k * (len(items) - 1) / max(1, n - 1)) for k in range(n)})]


def compact(snapshot: Snapshot) -> Snapshot:
    """A snapshot for shipping (recordings, atlas bundles): features in float16 (~3 significant digits,
    far below a pixel on the plots), class labels in one byte, and no history (a run folder has its
    history.jsonl; the views read the curves from there). A third of the bytes."""
    from dataclasses import replace

    from .advft import Features

    def h(f: Features) -> Features:
        return Features(f.id.half(), f.ood.half(), f.gen.half())

    labels = snapshot.labels.to(torch.uint8) if int(snapshot.labels.max()) < 256 else snapshot.labels
    return replace(snapshot, before=h(snapshot.before), after=h(snapshot.after), labels=labels, history=())


def recorded_runs() -> list[RunDir]:
    """The recordings shipped in assets/recorded (see `python -m core record`)."""
    return [RunDir(p) for p in sorted(RECORDED_DIR.glob("*")) if (p / "RECORDED.json").is_file()]


def run_by_name(name: str, runs_dir: Path) -> RunDir:
    """A run by its folder name: under the runs dir, else one of the recordings shipped in assets/recorded."""
    run = RunDir(Path(runs_dir) / name)
    if not run.path.exists() and (RECORDED_DIR / name / "RECORDED.json").is_file():
        return RunDir(RECORDED_DIR / name)
    return run


# ---------------------------------------------------------------- M_R before any training


# What M_R's snapshot before training depends on besides the victim and the data: what building a trainer
# reads (BUILD_FIELDS) but the evaluation sets, which a preview makes tiny, and the ID-OOD permission.
PREVIEW_FIELDS = tuple(f for f in BUILD_FIELDS if f not in ("eval_train_size", "eval_ood_size", "allow_id_ood"))
PREVIEW_CACHE_ENTRIES = 32  # a URL can ask for any seed: the disk cache keeps only the newest few


def preview_snapshot(victim: str | Path, config: AdvFTConfig, data_dir=None, device="cpu",
                     cache_dir: Path | None = None) -> Snapshot:
    """M_R's snapshot before any training (what a UI shows before Start).

    Building it scores M_R on the test set (seconds on a CPU), so it is kept in `cache_dir` under a
    key of everything it depends on: the victim file's content, the data files' identity, the preview
    fields and the code that computes it (this package's sources)."""
    config = AdvFTConfig(**{f: getattr(config, f) for f in PREVIEW_FIELDS}, eval_train_size=10,
                         eval_ood_size=config.probe_size).validate()
    path = victim_path(victim)
    cache = None
    if cache_dir is not None:
        key = json.dumps([_file_hash(path), str(Path(data_dir).resolve()) if data_dir else "",
                          [getattr(config, f) for f in PREVIEW_FIELDS], _code_version()])
        cache = Path(cache_dir) / f"preview-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
        try:
            return Snapshot.from_dict(torch.load(cache, map_location="cpu", weights_only=True))
        except Exception:  # absent or unreadable: compute it again
            pass
    model, dataset = load_victim(path, data_dir, device)
    snapshot = new_trainer(model, dataset, config, data_dir, device).snapshot()
    if cache is not None:
        try:
            atomic_torch_save(snapshot.to_dict(), cache)
            old = sorted(cache.parent.glob("preview-*.pt"), key=lambda p: p.stat().st_mtime)
            for stale in old[:-PREVIEW_CACHE_ENTRIES]:
                stale.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache only costs the next start its seconds
    return snapshot


def _file_hash(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


_CODE_VERSION: str | None = None


def _code_version() -> str:
    """A hash of core/'s sources: a preview made by other code is not reused."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        h = hashlib.sha1()
        for p in sorted(Path(__file__).parent.glob("*.py")):
            h.update(p.read_bytes())
        _CODE_VERSION = h.hexdigest()[:12]
    return _CODE_VERSION
