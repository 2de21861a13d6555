"""The committed victims M_R, read from their sidecars: assets/victims/<name>.json, written by
`python -m core train-victim` beside each checkpoint. The sidecar is the one record of a victim (its
dataset, architecture, test accuracy and the command that made it); the presets name victims, nothing
restates them. A victim whose sidecar is there but whose checkpoint is not (a partial checkout) is
known, and every place that needs it says the command that trains it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from .advft import PRESETS, ConfigError
from .models import CheckpointError

VICTIMS_DIR = Path(__file__).resolve().parent.parent / "assets" / "victims"


@dataclass(frozen=True)
class Victim:
    name: str              # e.g. mnist_lenet2d: <dataset>_<arch>
    dataset: str
    arch: str
    test_accuracy: float
    command: str           # how it was trained, with --out pointing at the committed folder

    @property
    def path(self) -> Path:
        return VICTIMS_DIR / f"{self.name}.pt"

    @property
    def trained(self) -> bool:
        return self.path.is_file()


def _command(text: str) -> str:
    """The recorded command with its --out made the committed folder (it was trained wherever it was)."""
    words = shlex.split(text)
    if "--out" in words:
        words[words.index("--out") + 1] = "assets/victims"
    return " ".join(shlex.quote(w) for w in words)


def registry() -> dict[str, Victim]:
    """Every victim with a sidecar, by name, sorted. Read at each call: a victim trained meanwhile counts."""
    out = {}
    for sidecar in sorted(VICTIMS_DIR.glob("*.json")):
        info = json.loads(sidecar.read_text())
        out[sidecar.stem] = Victim(sidecar.stem, info["dataset"], info["config"]["arch"], info["test_accuracy"],
                                   _command(info["command"]))
    return out


def train_command(name: str) -> str:
    victim = registry().get(name)
    return victim.command if victim else f"python -m core train-victim ... --out {VICTIMS_DIR}"


def committed_victims() -> list[str]:
    """Names of the victims whose checkpoint is here."""
    return sorted(p.stem for p in VICTIMS_DIR.glob("*.pt"))


def victim_path(name: str | Path) -> Path:
    """A committed victim by name (e.g. 'mnist_lenet2d'), else a checkpoint path as given."""
    name = str(name)
    if name in registry() or name in committed_victims():
        return VICTIMS_DIR / f"{name}.pt"
    return Path(name)


def require(name: str | Path) -> Path:
    """The checkpoint of a victim name or path; for a known victim that is not trained here, a
    CheckpointError with the command that trains it."""
    if str(name) in registry() and not victim_path(name).is_file():
        raise CheckpointError(f"victim '{name}' is not trained here; train it with: {train_command(str(name))}")
    return victim_path(name)


def served_victim(victim: str, runs_dir: Path) -> bool:
    """Whether a server may open this victim: a committed one, or a checkpoint inside its runs folder.
    A run's config.json (written by anyone with access to the runs folder) must not make the server
    read files elsewhere."""
    if victim in committed_victims():
        return True
    path = victim_path(victim).resolve()
    inside = any(path.is_relative_to(root.resolve()) for root in (VICTIMS_DIR, Path(runs_dir)))
    return inside and path.suffix == ".pt"


def preset_victim(preset: str) -> Path:
    """The checkpoint of a preset's victim; a CheckpointError saying how to train it when it is missing."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    name = PRESETS[preset]["victim"]
    if not victim_path(name).is_file():
        raise CheckpointError(f"the {preset} preset's victim '{name}' is not trained here; train it with: "
                              f"{train_command(name)}")
    return victim_path(name)
