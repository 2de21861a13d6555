"""The AdvFT settings a person can turn, derived from AdvFTConfig's fields: one registry that the command
line (flags and help), the app's state (URL keys) and the Defend page (widgets) all read.

A field added to AdvFTConfig gets a knob with no edit here: its flag is --<name> (underscores as dashes),
its URL key its name, its widget follows its type (a number box for int and float, a toggle for bool, a
select box for a str with choices in CHOICES, else a text box), in the page's Advanced section. DOCS only
adds what the code cannot guess: a label, a help line, a shorter flag, where the page shows it.
Range checks stay in AdvFTConfig.validate(): every boundary calls it, none restates it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, replace

from .advft import DISTANCES, FAKE_REDUCTIONS, LR_SCHEDULES, PRESETS, AdvFTConfig, ConfigError, preset_config
from .data import OOD_SOURCES

# A str field with a fixed set of values: the CLI's choices and the page's select box.
CHOICES: dict[str, tuple[str, ...]] = {"distance": DISTANCES, "fake_reduce": FAKE_REDUCTIONS,
                                       "lr_schedule": LR_SCHEDULES, "ood": OOD_SOURCES}

MAIN, ADVANCED, CLI_ONLY = "main", "advanced", "cli"   # where the Defend page shows a knob


@dataclass(frozen=True)
class Doc:
    label: str = ""       # the widget's label (default: the field's name)
    help: str = ""        # one line for --help and the widget's tooltip
    flag: str = ""        # the CLI flag (default: --<name>)
    place: str = ADVANCED
    step: float = 0       # the number box's step (default: 1 for int, 1e-4 for float)


DOCS: dict[str, Doc] = {
    "margin": Doc("Margin m", "m in eq. (2): how far OOD features must move beyond the ID drift, in units of the "
                  "penultimate features", place=MAIN, step=1),
    "epochs": Doc("Epochs N", "AdvFT epochs N", place=MAIN),
    "seed": Doc("Seed", "seed of the generator, the batches and the probe sets", place=MAIN),
    "i_g": Doc("I_G (G steps/epoch)", "generator steps per epoch I_G", flag="--ig", step=10),
    "i_f": Doc("I_F (M_F steps/epoch)", "model steps per epoch I_F", flag="--if", step=10),
    "lr_g": Doc("lr G", "the generator's Adam learning rate"),
    "lr_f": Doc("lr F", "M_F's Adam learning rate"),
    "distance": Doc("Distance", "l2: the authors' code; l2sq: the paper's equations"),
    "fake_reduce": Doc("Fake reduction", "over the generated batch in L_F1: mean, or median as in the authors' code"),
    "lr_schedule": Doc("lr schedule", "constant, or cosine: lr_f decays to 0 over all model steps"),
    "batch_size": Doc("Batch size", "ID batch and generated batch, each", step=16),
    # Plumbing of the engine, not of the algorithm: the command line has them, the page keeps the preset's.
    "ood": Doc(help="OOD probe set for the plots and the OOD metrics", place=CLI_ONLY),
    "allow_id_ood": Doc(help="allow an --ood source that is the victim's own training distribution "
                        "(refused otherwise)", flag="--allow-id-transfer", place=CLI_ONLY),
    "latent_dim": Doc(help="the generator's latent size (the authors' DFME generator: 256)", place=CLI_ONLY),
    "gen_width": Doc(help="the generator's channels ngf (the authors' DFME generator: 64)", place=CLI_ONLY),
    "probe_size": Doc(help="ID and OOD points drawn in the feature plots", place=CLI_ONLY),
    "eval_train_size": Doc(help="training images KL_train is measured on each epoch", place=CLI_ONLY),
    "eval_ood_size": Doc(help="OOD images for ood_shift and ood_agreement", place=CLI_ONLY),
}


@dataclass(frozen=True)
class Knob:
    name: str                          # the AdvFTConfig field, and its URL key
    kind: type                         # int, float, str or bool
    default: object                    # AdvFTConfig's own default
    label: str
    help: str
    flag: str
    place: str
    step: float
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """argparse's attribute for the flag."""
        return self.flag.lstrip("-").replace("-", "_")

    def parse(self, text: str):
        """A value from text (a URL, a flag), checked by AdvFTConfig.validate(); ValueError says why."""
        if self.kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            value = text.lower() in ("true", "1")
        elif self.kind in (int, float):
            try:
                value = self.kind(text)
            except ValueError:
                raise ValueError(f"expected {'an integer' if self.kind is int else 'a number'}") from None
        else:
            value = text
        check(self.name, value)
        return value

    def format(self, value) -> str:
        return repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)

    def preset_values(self) -> str:
        """Each preset's value, presets that share one grouped: 'lecture, offline: 30; fig5, table-mnist-m10: 10'."""
        groups: dict[str, list[str]] = {}
        for name in PRESETS:
            groups.setdefault(f"{getattr(preset_config(name), self.name):g}" if self.kind is float
                              else str(getattr(preset_config(name), self.name)), []).append(name)
        if len(groups) == 1:
            return f"every preset: {next(iter(groups))}"
        return "; ".join(f"{', '.join(names)}: {value}" for value, names in groups.items())


def check(name: str, value) -> None:
    """AdvFTConfig's own range check of one value (the other fields at their defaults); ConfigError says why."""
    replace(AdvFTConfig(), **{name: value}).validate()


def _kind(annotation) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}.get(str(annotation), str) \
        if not isinstance(annotation, type) else annotation


def _knob(f) -> Knob:
    doc = DOCS.get(f.name, Doc())
    kind = _kind(f.type)
    return Knob(name=f.name, kind=kind, default=f.default if f.default is not MISSING else None,
                label=doc.label or f.name, help=doc.help, flag=doc.flag or "--" + f.name.replace("_", "-"),
                place=doc.place, step=doc.step or (1 if kind is int else 1e-4), choices=CHOICES.get(f.name))


KNOBS: tuple[Knob, ...] = tuple(_knob(f) for f in fields(AdvFTConfig))
BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}
PAGE_KNOBS: tuple[Knob, ...] = tuple(k for k in KNOBS if k.place != CLI_ONLY)  # in the UI state and the URL


# ---------------------------------------------------------------- the command line


def add_flags(parser, skip: tuple[str, ...] = ()) -> None:
    """One flag per knob (none given: the preset's value), its help ending with every preset's value."""
    import argparse

    for k in KNOBS:
        if k.name in skip:
            continue

        def parse(text: str, k=k):
            try:
                return k.parse(text)
            except ValueError as e:  # ConfigError included: core's message, said by argparse in one line
                raise argparse.ArgumentTypeError(str(e)) from None

        extra = {"choices": list(k.choices)} if k.choices else {"type": parse}
        if k.kind is bool:
            extra = {"action": argparse.BooleanOptionalAction}
        parser.add_argument(k.flag, dest=k.dest, default=None, help=f"{k.help} (presets: {k.preset_values()})"
                            .replace("%", "%%"), **extra)


def overrides(args, skip: tuple[str, ...] = ()) -> dict:
    """field -> value for every knob flag the user gave."""
    return {k.name: getattr(args, k.dest) for k in KNOBS
            if k.name not in skip and getattr(args, k.dest, None) is not None}


__all__ = ["KNOBS", "PAGE_KNOBS", "BY_NAME", "Knob", "CHOICES", "add_flags", "overrides", "check", "ConfigError"]
