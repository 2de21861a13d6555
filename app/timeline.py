"""The Defend page's timeline over a run's frames, and its replay.

`Timeline` (which options a run's slider has, how each is labelled, which epoch the URL names) and the
rule `shown` (which option the slider shows) are plain Python, tested alone. `Replay` is the one
typed record of a replay in progress; the widget functions at the bottom are the only code that keeps
them in st.session_state (keys REPLAY, CHOSEN, ON_SCREEN), so no other page reads or pops them.

Options are strings ("frame:120", "epoch:2", "live"): select_slider reads a tuple value as a range.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.advft import epoch_label

REPLAY_SPEEDS = (2, 5, 10, 20)   # frames per second
REPLAY, CHOSEN, ON_SCREEN = "replay", "timeline_chosen", "timeline_on_screen"


def shown(options: list[str], stored: str | None, wanted: str | None, *, following: bool,
          replay_index: int | None = None) -> str:
    """The option to show.

    replay_index   a replay in progress shows its frame;
    following      a job of this run is working and the user has not moved the slider: its newest option,
                   which is 'live' once the job's snapshots reach the page. Keeping the stored option instead
                   pinned the chart to step 0 whenever the page reran between the job writing its first frame
                   to the run folder and its first snapshot arriving: the job trained, the chart stood still;
    stored         otherwise the option the slider holds, while it still exists;
    wanted         else the one the link names (its epoch), else the newest.
    """
    if replay_index is not None:
        return options[min(replay_index, len(options) - 1)]
    if following:
        return options[-1]
    if stored in options:
        return stored
    return wanted if wanted in options else options[-1]


@dataclass(frozen=True)
class Timeline:
    """One run's slider: its frames (one every few steps) in step order, with the epoch snapshots of the epoch
    ends that have no frame (a recording keeps a few evenly spaced frames, so a link's ?epoch= still finds
    its epoch's end), or only the epoch snapshots for runs recorded before frames existed; and 'live' while
    a job's newest snapshot is at hand."""

    options: tuple[str, ...]
    per_epoch: int          # steps per epoch (I_G + I_F): turns a frame's step into its epoch
    frames: bool

    @classmethod
    def of(cls, run, live: bool) -> "Timeline":
        frames, epochs = run.frame_steps(), run.snapshot_epochs()
        per_epoch = 1
        if frames:
            advft = run.config().advft
            per_epoch = advft.i_g + advft.i_f
        at_step = {s: f"frame:{s}" for s in frames}
        for e in epochs if frames else ():
            at_step.setdefault(e * per_epoch, f"epoch:{e}")
        options = [at_step[s] for s in sorted(at_step)] if frames else [f"epoch:{e}" for e in epochs]
        return cls(tuple(options + (["live"] if live else [])), per_epoch, bool(frames))

    @staticmethod
    def parse(option: str):
        kind, _, n = option.partition(":")
        return "live" if option == "live" else (kind, int(n))

    def label(self, option: str) -> str:
        p = self.parse(option)
        if p == "live":
            return "live"
        if p[0] == "epoch":
            return epoch_label(p[1] * self.per_epoch, self.per_epoch) if self.frames else f"epoch {p[1]}"
        return epoch_label(p[1], self.per_epoch)

    def wanted(self, epoch: int | None) -> str | None:
        """The option a link's ?epoch= names: the end of that epoch (its frame, else its snapshot)."""
        if epoch is None:
            return None
        at_end = f"frame:{epoch * self.per_epoch}"
        return at_end if self.frames and at_end in self.options else f"epoch:{epoch}"

    def url_epoch(self, option: str) -> int | None:
        """The epoch the URL names while `option` is shown: an epoch's end that is not the newest option (a
        link to a finished run shows its end); frames between epochs are not in the URL."""
        p = self.parse(option)
        if p == "live" or option == self.options[-1] or (p[0] == "frame" and p[1] % self.per_epoch):
            return None
        return p[1] // self.per_epoch if p[0] == "frame" else p[1]


@dataclass
class Replay:
    """A finished run played as an animation: the page's live area reruns at `fps`, one frame a rerun."""

    run: str
    fps: int
    index: int = 0


# ---------------------------------------------------------------- the widgets (Streamlit)


def replay_of(run_name: str | None) -> Replay | None:
    replay = st.session_state.get(REPLAY)
    return replay if isinstance(replay, Replay) and replay.run == run_name else None


def stop_replay() -> None:
    st.session_state.pop(REPLAY, None)


def forget(run_name: str | None = None) -> None:
    """A new run or a reset: no replay, and the next job is followed again."""
    stop_replay()
    st.session_state.pop(CHOSEN, None)


def slider(run, run_name: str, epoch: int | None, live: bool, active: bool, running: bool = False):
    """The timeline of `run`; returns (choice, epoch for the URL). `live`: the job's newest snapshot is at
    hand; `active`: a job of this run is working (followed until the user moves the slider); `running`: it
    is training now.

    While the page itself moves the timeline (a replay, or following a running job) it is drawn as a
    progress bar, not as the slider: a select_slider's value travels as an index into its options, and an
    index the browser sent before it had drawn the newest options or value was read against them as a
    move by the user (the slider's on_change), which stopped every replay after one frame and pinned a
    live chart on its newest frame while the job trained on."""
    st.session_state[ON_SCREEN] = False  # until the slider is drawn below (see _chosen)
    timeline = Timeline.of(run, live)
    if not timeline.options:
        return ("live" if live else None), epoch
    key = f"timeline_{run_name}"
    replay = replay_of(run_name)
    following = active and st.session_state.get(CHOSEN) != run_name
    value = st.session_state[key] = shown(list(timeline.options), st.session_state.get(key), timeline.wanted(epoch),
                                          following=following, replay_index=replay.index if replay else None)
    if len(timeline.options) == 1:
        return timeline.parse(value), epoch
    if replay or (following and running):
        st.progress((timeline.options.index(value) + 1) / len(timeline.options),
                    text=f"Replay: {timeline.label(value)}" if replay else
                    f"Following the live run ({len(timeline.options) - live} frames so far); pause to scrub them")
        if replay:
            replay_controls(run_name, len(timeline.options))
        return timeline.parse(value), epoch
    st.session_state[ON_SCREEN] = True
    raw = st.select_slider("Timeline (frame by frame)" if timeline.frames else "Timeline (saved epochs)",
                           timeline.options, key=key, format_func=timeline.label, on_change=_chosen,
                           args=(run_name, key))
    cols = st.columns([1, 1, 1, 2, 2])
    at = timeline.options.index(raw)
    for col, (label, icon, delta, disabled) in zip(cols, (
            ("Previous", ":material/skip_previous:", -1, at == 0),
            ("Next", ":material/skip_next:", 1, at == len(timeline.options) - 1))):
        col.button(label, icon=icon, key=f"frame_{label.lower()}", on_click=step_frame, disabled=disabled,
                   args=(run_name, key, timeline.options, delta), width="stretch",
                   help=f"The {label.lower()} {'frame' if timeline.frames else 'saved epoch'} "
                        f"({'left' if delta < 0 else 'right'} arrow key)")
    if timeline.frames and not live:
        replay_controls(run_name, len(timeline.options), cols[2:4])
    return timeline.parse(raw), timeline.url_epoch(raw)


def step_frame(run_name: str, key: str, options: tuple[str, ...], delta: int) -> None:
    """Previous / Next: the timeline one option along, as if the user had moved the slider there."""
    stored = st.session_state.get(key)
    at = options.index(stored) if stored in options else len(options) - 1
    st.session_state[key] = options[min(max(at + delta, 0), len(options) - 1)]
    _stay(run_name, key)


def _chosen(run_name: str, key: str) -> None:
    """The user moved the timeline: it stays where they put it (_stay).
    Streamlit also calls this when the browser reports the slider's last value after the page has moved it
    while the slider was not on screen (a replay, a followed run): no user did that, so it changes nothing."""
    if st.session_state.get(ON_SCREEN):
        _stay(run_name, key)


def _stay(run_name: str, key: str) -> None:
    """The timeline stays where the user put it, no replay moving it; back on 'live', it follows the job again."""
    stop_replay()
    if st.session_state.get(key) == "live":
        st.session_state.pop(CHOSEN, None)
    else:
        st.session_state[CHOSEN] = run_name


def replay_controls(run_name: str, frames: int, cols=None) -> None:
    """Play / Stop replay and its speed, in `cols` (two columns) or a row of their own."""
    c1, c2 = cols or st.columns([1, 2, 4])[:2]
    fps = c2.select_slider("Replay speed (frames/s)", REPLAY_SPEEDS, value=5, key="replay_fps")
    if replay_of(run_name):
        if c1.button("Stop replay", icon=":material/stop:", key="replay_stop"):
            stop_replay()
            st.rerun()
    elif c1.button("Play", icon=":material/replay:", key="replay_play", help=f"{frames} frames at {fps}/s"):
        st.session_state[REPLAY] = Replay(run_name, fps)
        st.rerun()  # the whole page: the live area's refresh rate becomes the replay's


def advance(run) -> None:
    """One frame further at each rerun of a replay; the last frame ends it."""
    replay = replay_of(run.name if run is not None else None)
    if replay is None:
        return
    replay.index += 1
    if replay.index >= len(Timeline.of(run, live=False).options):
        stop_replay()
        st.rerun()  # back to the page's normal refresh
