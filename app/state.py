"""All UI state of the app as ONE typed object, serialised to and from the URL (like TF Playground's state.ts).

A lecturer bookmarks a configuration: every AdvFT knob, the preset, the victim, the selected epoch,
the reopened run and the view options live in the query string. Reading a URL never fails: a
value that does not parse or is out of range is reported as a warning and replaced by the default.
Range checks are core's own (AdvFTConfig.validate), not a copy of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Mapping

from core.advft import DISTANCES, FAKE_REDUCTIONS, PRESETS, AdvFTConfig, ConfigError, preset_config
from core.runs import RunConfig
from core.training import VICTIM_COMMANDS, committed_victims, victim_path


@dataclass(frozen=True)
class UIPreset:
    label: str
    core_preset: str   # which core.advft.PRESETS entry gives the AdvFT settings
    victim: str        # committed victim name under assets/victims


# The paper's Fig. 5 model (ResNet-18 with a 2-D penultimate layer, MNIST) is not committed: it is
# offered only when its checkpoint exists, with the lecture preset's fast AdvFT settings. Every preset is
# offered only when its victim's checkpoint exists (preset_available); a URL naming another is told how
# to train it (VICTIM_COMMANDS).
FIG5_VICTIM = "mnist_resnet18_2d"
FIG5_COMMAND = VICTIM_COMMANDS[FIG5_VICTIM]
UI_PRESETS: dict[str, UIPreset] = {
    "lecture": UIPreset("lecture demo, CPU", "lecture", PRESETS["lecture"]["victim"]),
    "offline": UIPreset("offline demo", "offline", PRESETS["offline"]["victim"]),
    "table-mnist": UIPreset("Tables 2-3 victim (MNIST LeNet), CPU", "table-mnist", PRESETS["table-mnist"]["victim"]),
    "paper": UIPreset("paper settings", "paper", PRESETS["paper"]["victim"]),
    "fig5": UIPreset("Fig. 5 of the paper", "fig5", FIG5_VICTIM),
}
VIEWS = ("full", "simple")        # simple: the teacher-friendly view without the advanced knobs
STYLES = ("screen", "presentation")
PROJECTIONS = ("pca", "umap")     # for penultimate layers wider than 2-D

# AdvFT knobs the page exposes, in display order; everything else keeps the preset's value.
KNOBS = ("margin", "epochs", "i_g", "i_f", "lr_g", "lr_f", "distance", "fake_reduce", "seed")
CHOICES = {"distance": DISTANCES, "fake_reduce": FAKE_REDUCTIONS, "view": VIEWS, "style": STYLES,
           "proj": PROJECTIONS}


def preset_available(name: str) -> bool:
    return victim_path(UI_PRESETS[name].victim).is_file()


_LECTURE = preset_config("lecture")  # a bare URL opens the lecture preset


@dataclass(frozen=True)
class UIState:
    preset: str = "lecture"
    victim: str = PRESETS["lecture"]["victim"]
    margin: float = _LECTURE.margin
    epochs: int = _LECTURE.epochs
    i_g: int = _LECTURE.i_g
    i_f: int = _LECTURE.i_f
    lr_g: float = _LECTURE.lr_g
    lr_f: float = _LECTURE.lr_f
    distance: str = _LECTURE.distance
    fake_reduce: str = _LECTURE.fake_reduce
    seed: int = _LECTURE.seed
    epoch: int | None = None      # the timeline's selected epoch (None: the latest / live)
    run: str | None = None        # a reopened run folder's name under the runs dir
    view: str = "full"
    style: str = "screen"
    proj: str = "pca"
    atlas: str | None = None      # the Atlas page: which bundle, and its cell (margin, epochs)
    atlas_m: float | None = None
    atlas_n: int | None = None

    # ------------------------------------------------------------ presets and the engine's config
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UIState":
        p = UI_PRESETS[name]
        cfg = preset_config(p.core_preset)
        values = {"preset": name, "victim": p.victim, **{k: getattr(cfg, k) for k in KNOBS}}
        return cls(**{**values, **overrides})

    def config(self) -> AdvFTConfig:
        """The engine's config: the preset's, with this state's knobs. Not validated here."""
        return preset_config(UI_PRESETS[self.preset].core_preset, **{k: getattr(self, k) for k in KNOBS})

    def knobs_differ_from_preset(self) -> list[str]:
        base = UIState.from_preset(self.preset)
        return [k for k in KNOBS + ("victim",) if getattr(self, k) != getattr(base, k)]

    # ------------------------------------------------------------ URL
    def to_query(self) -> dict[str, str]:
        """Every knob always (a bookmark must not depend on defaults that may change); options when set."""
        q = {"preset": self.preset, "victim": self.victim}
        q.update({k: _fmt(getattr(self, k)) for k in KNOBS})
        for k in ("view", "style", "proj"):
            if getattr(self, k) != getattr(UIState, k):
                q[k] = getattr(self, k)
        if self.epoch is not None:
            q["epoch"] = str(self.epoch)
        if self.run:
            q["run"] = self.run
        for key, name in ATLAS_QUERY.items():
            if getattr(self, name) is not None:
                q[key] = _fmt(getattr(self, name))
        return q

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> tuple["UIState", list[str]]:
        """(state, warnings). Never raises: bad values are reported and replaced by defaults."""
        warnings: list[str] = []
        q = {k: (v[-1] if isinstance(v, (list, tuple)) else v) for k, v in dict(query).items()}
        preset = q.get("preset", "lecture")
        if preset not in UI_PRESETS:
            warnings.append(f"preset {_shown(preset)} is not one of {', '.join(UI_PRESETS)}; using 'lecture'")
            preset = "lecture"
        elif not preset_available(preset):
            victim = UI_PRESETS[preset].victim
            how = VICTIM_COMMANDS.get(victim, f"python -m core train-victim ... (victim {victim})")
            warnings.append(f"preset '{preset}' needs its victim, which is not trained here ({how}); using 'lecture'")
            preset = "lecture"
        state = cls.from_preset(preset)
        changes: dict = {}

        victim = q.get("victim")
        if victim is not None:
            if victim in committed_victims():
                changes["victim"] = victim
            else:
                warnings.append(f"victim {_shown(victim)} is not a committed victim ({', '.join(committed_victims())}); "
                                f"using '{state.victim}'")
        for name in KNOBS:
            if name not in q:
                continue
            try:
                value = _parse(name, q[name])
                replace(state.config(), **{name: value}).validate()  # core's own range check
                changes[name] = value
            except (ValueError, ConfigError) as e:
                warnings.append(f"URL value {name}={_shown(q[name])} ignored ({e}); using {getattr(state, name)}")
        for name in ("view", "style", "proj"):
            if name in q:
                if q[name] in CHOICES[name]:
                    changes[name] = q[name]
                else:
                    warnings.append(f"URL value {name}={_shown(q[name])} ignored; choose one of {', '.join(CHOICES[name])}")
        if "epoch" in q:
            try:
                changes["epoch"] = _nonneg_int(q["epoch"])
            except ValueError as e:
                warnings.append(f"URL value epoch={_shown(q['epoch'])} ignored ({e})")
        if q.get("run"):
            if _safe_run_name(q["run"]):
                changes["run"] = q["run"]
            else:
                warnings.append(f"URL value run={_shown(q['run'])} ignored (not a run folder name)")
        if q.get("atlas"):
            if _safe_run_name(q["atlas"]):
                changes["atlas"] = q["atlas"]
            else:
                warnings.append(f"URL value atlas={_shown(q['atlas'])} ignored (not an atlas name)")
        for key, parse in (("am", _positive_float), ("an", _nonneg_int)):
            if key in q:  # whether the atlas has this cell is the Atlas page's check (it knows the grid)
                try:
                    changes[ATLAS_QUERY[key]] = parse(q[key])
                except ValueError as e:
                    warnings.append(f"URL value {key}={_shown(q[key])} ignored ({e})")
        return replace(state, **changes), warnings


def for_run(name: str, saved: RunConfig) -> tuple[UIState, list[str]]:
    """The state that reopens a run folder: its preset, victim and knobs, through the URL parser
    (so a run written by another version or by hand is checked like any link)."""
    query = {"run": name}
    if saved.preset in UI_PRESETS:
        query["preset"] = saved.preset
    victim = Path(saved.victim).stem
    if victim:
        query["victim"] = victim
    query.update({k: _fmt(getattr(saved.advft, k)) for k in KNOBS})
    return UIState.from_query(query)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


ATLAS_QUERY = {"atlas": "atlas", "am": "atlas_m", "an": "atlas_n"}  # URL key -> UIState field


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not (v > 0 and v < float("inf")):
        raise ValueError("must be a finite number > 0")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError("expected an integer") from None
    if v < 0:
        raise ValueError("must be >= 0")
    return v


def _parse(name: str, text: str):
    kind = {f.name: f.type for f in fields(UIState)}[name]
    if name in CHOICES:
        return text  # validate() names the allowed values
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"expected {'an integer' if kind == 'int' else 'a number'}") from None


def _shown(value: str, limit: int = 60) -> str:
    """A URL value quoted for a warning, cut short (a link can carry kilobytes)."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _safe_run_name(name: str) -> bool:
    """A plain folder name: no path separators or parent references can sneak out of the runs dir,
    and short enough for any file system (255 bytes)."""
    return bool(name) and Path(name).name == name and name not in (".", "..") and len(name.encode()) <= 255 \
        and "\x00" not in name
