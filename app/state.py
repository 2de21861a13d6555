"""All UI state of the app as ONE typed object, serialised to and from the URL (like TF Playground's state.ts).

A lecturer bookmarks a configuration: every AdvFT knob, the preset, the victim, the selected epoch,
the reopened run and the view options live in the query string. Reading a URL never fails: a
value that does not parse or is out of range is reported as a warning and replaced by the default.
Range checks are core's own (AdvFTConfig.validate), not a copy of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from core.advft import PRESETS, AdvFTConfig, preset_config
from core.knobs import PAGE_KNOBS
from core.runs import RunConfig
from core.victims import committed_victims, train_command, victim_path


@dataclass(frozen=True)
class UIPreset:
    label: str
    core_preset: str   # which core.advft.PRESETS entry gives the AdvFT settings and the victim
    victim: str        # committed victim name under assets/victims


# How the page names each core preset; a preset without a label here is offered under its own name.
PRESET_LABELS = {"lecture": "lecture demo, CPU", "offline": "offline demo", "fig5": "Fig. 5 of the paper",
                 "table-mnist": "Tables 2-3 victim (MNIST LeNet), m = 100, CPU (~15 min)",
                 "table-mnist-m10": "Tables 2-3 victim, m = 10, CPU (~3 min)", "paper": "paper settings"}
# Every preset is offered only when its victim's checkpoint exists (preset_available); a URL naming
# another is told how to train it.
UI_PRESETS: dict[str, UIPreset] = {name: UIPreset(PRESET_LABELS.get(name, name), name, p["victim"])
                                   for name, p in PRESETS.items()}
FIG5_COMMAND = train_command(PRESETS["fig5"]["victim"])
VIEWS = ("full", "simple")        # simple: the teacher-friendly view without the advanced knobs
STYLES = ("screen", "presentation")
PROJECTIONS = ("pca", "umap")     # for penultimate layers wider than 2-D
OPTIONS = {"view": VIEWS, "style": STYLES, "proj": PROJECTIONS}
KNOB_NAMES = tuple(k.name for k in PAGE_KNOBS)  # the AdvFT settings the page shows, from core.knobs


def preset_available(name: str) -> bool:
    return victim_path(UI_PRESETS[name].victim).is_file()


@dataclass(frozen=True)
class UIState:
    preset: str = "lecture"
    victim: str = PRESETS["lecture"]["victim"]
    advft: AdvFTConfig = field(default_factory=lambda: preset_config("lecture"))  # the preset's, with the page's knobs
    epoch: int | None = None      # the timeline's selected epoch (None: the latest / live)
    run: str | None = None        # a reopened run folder's name under the runs dir
    view: str = "full"
    style: str = "screen"
    proj: str = "pca"
    atlas: str | None = None      # the Atlas page: which bundle, and its cell (margin, epochs)
    atlas_m: float | None = None
    atlas_n: int | None = None

    def __getattr__(self, name: str):
        """A knob reads through to the config: ui.margin is ui.advft.margin."""
        if name in KNOB_NAMES:
            return getattr(object.__getattribute__(self, "advft"), name)
        raise AttributeError(name)

    def with_(self, **changes) -> "UIState":
        """replace() that also takes knobs (margin=..., seed=...) and puts them into the config."""
        knobs = {k: changes.pop(k) for k in list(changes) if k in KNOB_NAMES}
        return replace(self, **changes, **({"advft": replace(self.advft, **knobs)} if knobs else {}))

    # ------------------------------------------------------------ presets and the engine's config
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UIState":
        p = UI_PRESETS[name]
        return cls(preset=name, victim=p.victim, advft=preset_config(p.core_preset)).with_(**overrides)

    def config(self) -> AdvFTConfig:
        """The engine's config (a copy). Not validated here."""
        return replace(self.advft)

    def knobs_differ_from_preset(self) -> list[str]:
        base = UIState.from_preset(self.preset)
        return [k for k in KNOB_NAMES + ("victim",) if getattr(self, k) != getattr(base, k)]

    # ------------------------------------------------------------ URL
    def to_query(self) -> dict[str, str]:
        """Every knob always (a bookmark must not depend on defaults that may change); options when set."""
        q = {"preset": self.preset, "victim": self.victim}
        q.update({k.name: k.format(getattr(self.advft, k.name)) for k in PAGE_KNOBS})
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
            how = train_command(UI_PRESETS[preset].victim)
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
        for knob in PAGE_KNOBS:
            if knob.name not in q:
                continue
            try:
                changes[knob.name] = knob.parse(q[knob.name])  # core's own range check
            except ValueError as e:
                warnings.append(f"URL value {knob.name}={_shown(q[knob.name])} ignored ({e}); "
                                f"using {getattr(state, knob.name)}")
        for name in ("view", "style", "proj"):
            if name in q:
                if q[name] in OPTIONS[name]:
                    changes[name] = q[name]
                else:
                    warnings.append(f"URL value {name}={_shown(q[name])} ignored; choose one of {', '.join(OPTIONS[name])}")
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
        return state.with_(**changes), warnings


def for_run(name: str, saved: RunConfig) -> tuple[UIState, list[str]]:
    """The state that reopens a run folder: its preset, victim and knobs, through the URL parser
    (so a run written by another version or by hand is checked like any link)."""
    query = {"run": name}
    if saved.preset in UI_PRESETS:
        query["preset"] = saved.preset
    victim = Path(saved.victim).stem
    if victim:
        query["victim"] = victim
    query.update({k.name: k.format(getattr(saved.advft, k.name)) for k in PAGE_KNOBS})
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


def _shown(value: str, limit: int = 60) -> str:
    """A URL value quoted for a warning, cut short (a link can carry kilobytes)."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _safe_run_name(name: str) -> bool:
    """A plain folder name: no path separators or parent references can sneak out of the runs dir,
    and short enough for any file system (255 bytes)."""
    return bool(name) and Path(name).name == name and name not in (".", "..") and len(name.encode()) <= 255 \
        and "\x00" not in name
