"""The knob registry (core.knobs): every AdvFTConfig field is a knob with a flag, a URL key and a widget
kind, derived from the field itself; a field added to the config needs no edit elsewhere."""

from dataclasses import field, fields, make_dataclass

from app.state import UIState
from core import knobs
from core.advft import AdvFTConfig, preset_config


def test_every_config_field_is_a_knob_and_every_page_knob_is_in_the_url():
    assert [k.name for k in knobs.KNOBS] == [f.name for f in fields(AdvFTConfig)]
    state = UIState.from_preset("paper")
    query = state.to_query()
    for knob in knobs.PAGE_KNOBS:
        assert query[knob.name] == knob.format(getattr(preset_config("paper"), knob.name))
    assert UIState.from_query(query) == (state, [])


def test_a_new_field_gets_a_flag_a_url_key_and_a_default_widget():
    # A config with two more fields, as a developer would add them to AdvFTConfig.
    grown = make_dataclass("Grown", [("warmup_steps", int, field(default=5)), ("sampler", str, field(default="a")),
                                     ("use_ema", bool, field(default=False))], bases=(AdvFTConfig,))
    made = {f.name: knobs._knob(f) for f in fields(grown)}
    steps, sampler, ema = made["warmup_steps"], made["sampler"], made["use_ema"]
    assert (steps.flag, steps.dest, steps.kind, steps.place, steps.step) == ("--warmup-steps", "warmup_steps", int,
                                                                             knobs.ADVANCED, 1)
    assert (sampler.kind, sampler.choices, ema.kind) == (str, None, bool)  # a text box and a toggle on the page
    assert steps.label == "warmup_steps" and steps.default == 5
    assert made["margin"] == knobs.BY_NAME["margin"]  # the known fields keep their labels and flags
