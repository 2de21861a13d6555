"""From a victim checkpoint and a config to a run folder: the glue the CLI and the app share."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from .advft import AdvFT, AdvFTConfig, ConfigError, PRESETS
from .data import Dataset, load_dataset, load_ood
from .device import describe
from .models import CheckpointError, Classifier, load_model, save_model
from .runs import RunDir

ASSETS = Path(__file__).resolve().parent.parent / "assets"
VICTIMS_DIR = ASSETS / "victims"


def victim_path(name: str) -> Path:
    """A committed victim by name (e.g. 'mnist_lenet2d'), or a path given as is."""
    p = Path(name)
    return p if p.suffix == ".pt" or p.exists() else VICTIMS_DIR / f"{name}.pt"


def preset_victim(preset: str) -> Path:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    return victim_path(PRESETS[preset]["victim"])


def load_victim(path: str | Path, data_dir=None, device="cpu") -> tuple[Classifier, Dataset]:
    """The victim and its ID dataset; errors if the data on disk does not fit the checkpoint."""
    model = load_model(path, device)
    data = load_dataset(model.dataset, data_dir)
    probe = data.x_test[:2].float().to(device)
    try:
        with torch.no_grad():
            model(probe)
    except RuntimeError:
        raise CheckpointError(f"'{path}' does not accept {model.dataset} images of shape {data.shape}") from None
    return model, data


def new_trainer(victim: Classifier, data: Dataset, config: AdvFTConfig, data_dir=None, device="cpu") -> AdvFT:
    config.validate()
    ood = load_ood(config.ood, data.shape, max(config.eval_ood_size, config.probe_size), data_dir, seed=config.seed)
    return AdvFT(victim, config, data, ood, device)


class RunRecorder:
    """Writes a trainer's progress into a run folder: at the start, after each epoch, at the end."""

    def __init__(self, run: RunDir, trainer: AdvFT, victim: str | Path, preset: str | None = None,
                 resumed: bool = False):
        self.run, self.trainer = run, trainer
        if not resumed:
            victim_info = getattr(trainer.reference, "info", {})
            run.write_config({
                "advft": asdict(trainer.config), "victim": str(victim), "preset": preset,
                "dataset": trainer.data.name, "arch": trainer.model.arch,
                "data_source": trainer.data.source, "ood_source": trainer.ood_source,
                "device": describe(trainer.device), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "victim_accuracy": victim_info.get("test_accuracy"),
            })
            run.save_snapshot(0, trainer.snapshot())
            run.write_history(trainer.history)
        run.write_status("running", f"epoch {trainer.epoch} of {trainer.config.epochs}")

    def epoch_done(self) -> None:
        t = self.trainer
        self.run.save_snapshot(t.epoch, t.snapshot())
        save_model(t.model, self.run.model_path, protected_from=self.run.config().get("victim"),
                   margin=t.config.margin, epochs_done=t.epoch, test_accuracy=t.history[-1]["acc_after"])
        self.run.save_state(t.state_dict())
        self.run.write_history(t.history)  # last, so history never runs ahead of state.pt

    def finish(self, status: str, message: str = "") -> dict | None:
        """status: 'finished' (writes metrics.json), 'stopped' or 'failed'."""
        metrics = None
        if status == "finished":
            metrics = self.trainer.metrics()
            self.run.write_metrics(metrics)
        self.run.write_status(status, message or f"epoch {self.trainer.epoch} of {self.trainer.config.epochs}")
        return metrics


def resume_trainer(run: RunDir, data_dir=None, device="cpu") -> AdvFT:
    """Rebuild a trainer from a run folder's config and state.pt (epoch boundary of the last save)."""
    cfg = run.config()
    if not cfg or not (run.path / "state.pt").is_file():
        raise CheckpointError(f"'{run.path}' has no saved state to resume from (no finished epoch yet?)")
    victim, data = load_victim(cfg["victim"], data_dir, device)
    trainer = new_trainer(victim, data, AdvFTConfig.from_dict(cfg["advft"]), data_dir, device)
    try:
        trainer.load_state_dict(run.load_state())
    except Exception as e:
        raise CheckpointError(f"'{run.path / 'state.pt'}' does not load ({str(e).splitlines()[0][:120]})") from None
    return trainer

