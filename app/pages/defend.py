"""Defend: watch AdvFT pull OOD features away while ID features stay put (the paper's Fig. 5, live).

The controller of the main page. It wires
    the session's UIState (app/state.py, mirrored in the URL)   -> the sidebar controls,
    the session's Job (app/jobs.py, a background thread)        <- the transport buttons,
    the job's published snapshots or a run folder's saved ones  -> the figures (app/figures.py, app/views.py).
The live part is one fragment that reruns every 0.3 s (LIVE_REFRESH_S) only while a job is active.
Other pages live in app/pages/ and appear in the navigation by being there.
"""

from __future__ import annotations

import html
from dataclasses import replace

import streamlit as st

from app import views
from app.jobs import ABANDON_AFTER_S, WORKERS, Job, JobSpec, Warmup, new_run_dir
from app.state import FIG5_COMMAND, KNOBS, UI_PRESETS, UIState, for_run, preset_available
from app.timeline import shown
from app.views import job_slots, session_job
from core import figures
from core.advft import AdvFTConfig, ConfigError, Snapshot
from core.data import DATASETS
from core.device import pick_device
from core.models import CheckpointError
from core.runs import RunDir, RunError
from core.training import (PREVIEW_FIELDS, committed_victims, preview_snapshot, recorded_runs, served_victim,
                           victim_path)

LIVE_REFRESH_S = 0.3  # the live fragment; with PUBLISH_EVERY_S = 0.3 the page shows a new frame at each of most reruns


# ---------------------------------------------------------------- process- and session-wide objects


@st.cache_resource(show_spinner=False)
def device():
    return pick_device("auto")


@st.cache_resource(show_spinner="Scoring M_R on the probe sets…", max_entries=8)
def preview(victim: str, data_dir: str, preview_values: tuple) -> Snapshot:
    """M_R before any training, kept in memory here and on disk under <runs dir>/.cache (a folder
    list_runs ignores) by core.training.preview_snapshot, so a restarted server draws it at once.
    Keyed by the settings it depends on (PREVIEW_FIELDS), not by the training knobs."""
    config = AdvFTConfig(**dict(zip(PREVIEW_FIELDS, preview_values)))
    return preview_snapshot(victim, config, data_dir, device(), cache_dir=views.runs_dir() / ".cache")


# ---------------------------------------------------------------- sidebar: the configuration


def _sync(field: str) -> None:
    """A widget's callback: its new value into the UIState (and so the URL) before the page reruns."""
    views.set_ui_state(replace(views.ui_state(), **{field: st.session_state[f"w_{field}"]}))


def _set_view() -> None:
    views.set_ui_state(replace(views.ui_state(), view="simple" if st.session_state.w_view else "full"))


def _apply_preset() -> None:
    ui = views.ui_state()
    _set_widgets(UIState.from_preset(st.session_state.w_preset, view=ui.view, style=ui.style, proj=ui.proj))


def _set_widgets(ui: UIState) -> None:
    """Make `ui` the state and put its values into the widgets (allowed before they are drawn)."""
    views.set_ui_state(ui)
    for f in ("preset", "victim", *KNOBS):
        st.session_state[f"w_{f}"] = getattr(ui, f)


def _init(field: str, ui: UIState) -> str:
    key = f"w_{field}"
    if key not in st.session_state:  # first draw, or the widget was hidden (simple view) last run
        st.session_state[key] = getattr(ui, field)
    return key


def data_fallback(ui: UIState) -> UIState:
    """Switch to the offline preset when the victim's dataset is not in the data dir."""
    try:
        dataset = views.victim_dataset(str(victim_path(ui.victim)))
        problem = views.dataset_problem(dataset, str(views.data_dir()))
    except CheckpointError as e:
        dataset, problem = None, str(e)
    if problem is None:
        st.session_state.pop("data_notice", None)
        return ui
    what = DATASETS[dataset].title if dataset else "The victim"
    st.session_state.data_notice = (f"**{what} is not available here**, so the page switched "
                                    f"to the *offline demo* preset (real handwritten digits that ship with "
                                    f"scikit-learn; nothing to download). To use {what}, put its `.npz` in a "
                                    f"folder and start the app with `ADVFT_DATA_DIR=that/folder streamlit run "
                                    f"streamlit_app.py` (or let it download once online). "
                                    f"Details: {views.plain(problem)}")
    fallback = UIState.from_preset("offline", view=ui.view, style=ui.style, proj=ui.proj)
    _set_widgets(fallback)
    return fallback


def config_sidebar(ui: UIState, locked: bool) -> None:
    """The AdvFT settings. `locked` while a job runs (its config is fixed); the URL follows every change."""
    sb = st.sidebar
    sb.header("AdvFT settings")
    offered = [p for p in UI_PRESETS if preset_available(p)]
    if ui.preset not in offered:
        _set_widgets(UIState.from_preset("lecture", view=ui.view, style=ui.style, proj=ui.proj))
    sb.selectbox("Preset", offered, key=_init("preset", ui), format_func=lambda p: UI_PRESETS[p].label,
                 on_change=_apply_preset, disabled=locked)
    if "fig5" not in offered:
        with sb.expander("Fig. 5 preset: its victim is not trained yet"):  # one line until opened
            st.caption("The paper's Fig. 5 model (ResNet-18 with a 2-D penultimate layer). Train it once, "
                       "then reload:")
            st.code(FIG5_COMMAND, language="bash", wrap_lines=True)
    victims = committed_victims()
    sb.selectbox("Dataset · architecture (victim M_R)", victims, key=_init("victim", ui),
                 format_func=lambda v: v.replace("_", " · ", 1), on_change=_sync, args=("victim",), disabled=locked)
    c1, c2 = sb.columns(2)
    c1.number_input("Margin m", key=_init("margin", ui), step=1.0, format="%g", on_change=_sync, args=("margin",),
                    disabled=locked, help="Eq. (2): how far OOD features must move beyond ID drift, in feature units")
    c2.number_input("Epochs N", key=_init("epochs", ui), step=1, on_change=_sync, args=("epochs",), disabled=locked)
    sb.number_input("Seed", key=_init("seed", ui), step=1, on_change=_sync, args=("seed",), disabled=locked)
    if ui.view == "full":
        with sb.expander("Advanced (Algorithm 1)", expanded=False):
            a, b = st.columns(2)
            a.number_input("I_G (G steps/epoch)", key=_init("i_g", ui), step=10, on_change=_sync, args=("i_g",),
                           disabled=locked)
            b.number_input("I_F (M_F steps/epoch)", key=_init("i_f", ui), step=10, on_change=_sync, args=("i_f",),
                           disabled=locked)
            a.number_input("lr G", key=_init("lr_g", ui), step=1e-4, format="%.1e", on_change=_sync,
                           args=("lr_g",), disabled=locked)
            b.number_input("lr F", key=_init("lr_f", ui), step=1e-4, format="%.1e", on_change=_sync,
                           args=("lr_f",), disabled=locked)
            a.selectbox("Distance", ("l2", "l2sq"), key=_init("distance", ui), on_change=_sync,
                        args=("distance",), disabled=locked, help="l2: the authors' code; l2sq: the paper's equations")
            b.selectbox("Fake reduction", ("mean", "median"), key=_init("fake_reduce", ui), on_change=_sync,
                        args=("fake_reduce",), disabled=locked, help="over the generated batch in L_F1")
    sb.toggle("Simple view (for teaching)", value=ui.view == "simple", key="w_view", on_change=_set_view,
              help="Hides I_G, I_F, learning rates, distance and reduction")


# ---------------------------------------------------------------- actions (button callbacks)


def start(ui: UIState) -> None:
    cfg = ui.config().validate()
    spec = JobSpec(str(victim_path(ui.victim)), cfg, new_run_dir(views.runs_dir(), ui.preset, cfg), ui.preset,
                   str(views.data_dir()), str(device()))
    session_job().replace(Job(spec, job_slots(), ABANDON_AFTER_S).start())
    views.set_ui_state(replace(ui, run=spec.run_dir.name, epoch=None))


def resume(run: RunDir) -> None:
    try:
        saved = run.config()
        if not served_victim(saved.victim, views.runs_dir()):
            raise RunError(f"run '{run.name}' starts from a victim outside the committed victims and the runs "
                           "folder; it can only be resumed from the command line")
    except RunError as e:
        st.session_state.resume_error = str(e)
        return
    spec = JobSpec(saved.victim, saved.advft, run.path, saved.preset, str(views.data_dir()), str(device()),
                   resume=True)
    session_job().replace(Job(spec, job_slots(), ABANDON_AFTER_S).start())
    views.set_ui_state(replace(views.ui_state(), run=run.name, epoch=None))


def reset() -> None:
    session_job().replace(None)
    views.set_ui_state(replace(views.ui_state(), run=None, epoch=None))
    st.session_state.pop("axes", None)


def _job_for(ui: UIState) -> Job | None:
    """The live job of the run on screen: this session's, or one that a reloaded or second tab of the
    same run left running (it is adopted: its status, controls and frames show here)."""
    job = session_job().job
    if job is not None and isinstance(job, Job) and ui.run == job.spec.run_dir.name:
        return job
    if ui.run:
        live = job_slots().job_for(views.runs_dir() / ui.run)
        if live is not None and live.view().active:
            session_job().adopt(live)
            return live
    return None


# ---------------------------------------------------------------- the live area


def axes_for(key: str, snapshot: Snapshot, kind: str, seed: int) -> tuple[figures.Projection, figures.Ranges]:
    """Projection and fixed ranges, made once per run (or preview) from M_R's features, then kept."""
    cached = st.session_state.get("axes")
    if cached is None or cached[0] != (key, kind):
        ref = snapshot.before.id
        if ref.shape[1] > 2 and kind == "umap":
            with st.spinner("Fitting UMAP on M_R's features (the first time compiles numba code: ~30 s)…"):
                proj = figures.Projection(ref, "umap", seed)
        else:
            proj = figures.Projection(ref, "pca", seed)
        pts = figures.panel_points(snapshot, proj, "before")
        cached = ((key, kind), proj, figures.Ranges.around(pts.id, pts.ood, pts.gen))
        st.session_state.axes = cached
    return cached[1], cached[2]


def status_line(view) -> None:
    chips = {"queued": "#888", "preparing": "#888", "running": "#2e7d32", "paused": "#f9a825",
             "finished": "#1565c0", "stopped": "#6d4c41", "failed": "#c62828"}
    state = view.state
    text = f"<span class='advft-chip' style='background:{chips.get(state, '#888')}'>{state}</span>"
    if state == "queued":
        text += f"waiting for a free training slot: <b>place {view.place or '?'} in line</b> " \
                f"(at most {job_slots().capacity} run at once on this machine)"
    else:
        # The epoch in progress is epoch+1 until the last one is done ("epoch 1 of 6" from the first step).
        shown = min(view.epoch + (state not in ("finished", "preparing")), view.epochs)
        text += (f"epoch <b>{shown}</b> of {view.epochs} · phase {view.phase} "
                 f"(G {view.g_done}, F {view.f_done}) · {html.escape(view.device or views.device_label())} · "
                 f"run {html.escape(view.run_name)}")
        if view.manual_steps:
            text += f" · {view.manual_steps} manual G/F steps"
    st.html(f"<div class='advft-status' data-testid='advft-status' data-state='{state}'>{text}</div>")
    if view.message and state in ("failed", "stopped"):
        (st.error if state == "failed" else st.info)(views.plain(view.message))
    elif view.message:
        st.caption(views.plain(view.message))


def transport(job: Job | None, ui: UIState, config_error: str | None) -> None:
    """Start / play-pause / step (Algorithm 1) / step G / step F / step epoch / slow motion / reset."""
    v = job.view() if job else None
    active = bool(v and v.active)
    cols = st.columns([1.2, 1, 1, 1, 1, 1.2, 1.3, 1])
    if not active:
        cols[0].button("Start", type="primary", icon=":material/play_arrow:", on_click=start, args=(ui,),
                       disabled=config_error is not None, key="t_start", width="stretch")
    elif v.state == "paused":
        cols[0].button("Play", type="primary", icon=":material/play_arrow:", on_click=job.play, key="t_play",
                       width="stretch")
    else:
        cols[0].button("Pause", icon=":material/pause:", on_click=job.pause, key="t_pause", width="stretch",
                       disabled=v.state in ("queued", "preparing"))
    can_step = active and v.state in ("running", "paused")
    next_kind = "G" if v and v.phase == "G" else "F"
    cols[1].button(f"Step ({next_kind})" if can_step else "Step", on_click=job.step if job else None,
                   args=("step",), disabled=not can_step, key="t_step", width="stretch",
                   help="The next step of Algorithm 1 (a G step while I_G steps remain in this epoch, then F)")
    cols[2].button("G +1", on_click=job.step if job else None, args=("g",), disabled=not can_step, key="t_g",
                   width="stretch", help="One extra generator update outside the schedule (GAN Lab's 'step G')")
    cols[3].button("F +1", on_click=job.step if job else None, args=("f",), disabled=not can_step, key="t_f",
                   width="stretch", help="One extra M_F update outside the schedule")
    cols[4].button("Epoch", on_click=job.step if job else None, args=("epoch",), disabled=not can_step,
                   key="t_epoch", width="stretch", help="Run to the end of this epoch, then pause")
    slow = cols[5].toggle("Slow motion", value=bool(v and v.slow), key="t_slow", disabled=not active,
                          help="Publish every step and wait 0.25 s after it, to watch single steps")
    if job and active and slow != v.slow:
        job.set_slow_motion(slow)
    run = views.run_folder(ui.run) if ui.run else None
    # Stopped, failed, or interrupted (its process ended, or this tab was reloaded while it trained).
    if not active and run is not None and run.summary().resumable:
        cols[6].button("Resume run", on_click=resume, args=(run,), key="t_resume", width="stretch",
                       help="Continue this run from its last finished epoch (from epoch 0 if none finished)")
    cols[7].button("Reset", on_click=reset, key="t_reset", width="stretch",
                   help="Stop (the run folder keeps every finished epoch) and go back to M_R")
    if "resume_error" in st.session_state:
        st.error(views.plain(st.session_state.pop("resume_error")))


REPLAY_SPEEDS = (2, 5, 10, 20)  # frames per second


def timeline(ui: UIState, run: RunDir | None, live: bool, active: bool = False, running: bool = False):
    """The timeline: scrub the run's frames one by one (its epoch snapshots, for runs recorded before
    frames existed), or follow the live job. Returns 'live', ('frame', step), ('epoch', e) or None.

    `live`: the job's newest snapshot is at hand; `active`: a job of this run is working (the timeline then
    follows it until the user moves the slider: app.timeline.shown); `running`: it is training now.

    While the page itself moves the timeline (a replay, or following a running job) it is drawn as a
    progress bar, not as the slider: a select_slider's value travels as an index into its options, and an
    index the browser sent before it had drawn the newest options or value was read against them as a
    move by the user (the slider's on_change), which stopped every replay after one frame and pinned a
    live chart on its newest frame while the job trained on."""
    st.session_state.timeline_on_screen = False  # until the slider is drawn below (see _choose_frame)
    if run is None:
        return "live" if live else None
    frames, epochs = run.frame_steps(), run.snapshot_epochs()
    advft = run.config().advft if frames else None
    per_epoch = advft.i_g + advft.i_f if advft else 1
    # Options are strings ("frame:120", "epoch:2", "live"): select_slider reads a tuple value as a range.
    options = [f"frame:{s}" for s in frames] if frames else [f"epoch:{e}" for e in epochs]
    options += ["live"] if live else []
    if not options:
        return "live" if live else None
    wanted = f"frame:{ui.epoch * per_epoch}" if frames and ui.epoch is not None else f"epoch:{ui.epoch}"
    key = f"timeline_{ui.run}"
    replay = st.session_state.get("replay")
    replaying = bool(replay and replay["run"] == ui.run)
    following = active and st.session_state.get("timeline_chosen") != ui.run
    st.session_state[key] = shown(options, st.session_state.get(key), wanted, following=following,
                                  replay_index=replay["index"] if replaying else None)  # a replay: one frame per rerun

    def parse(o: str):
        kind, _, n = o.partition(":")
        return "live" if o == "live" else (kind, int(n))

    def label(o: str) -> str:
        p = parse(o)
        if p == "live":
            return "live"
        if p[0] == "epoch":
            return f"epoch {p[1]}"
        epoch, step = divmod(p[1], per_epoch)
        if step == 0:  # a frame on an epoch's boundary shows that epoch's end (or M_R, at the start)
            return f"end of epoch {epoch}" if epoch else "start (M_F = M_R)"
        return f"epoch {epoch + 1} · step {step}"

    if len(options) == 1:
        return parse(options[0])
    if replaying or (following and running):
        value = st.session_state[key]
        done = (options.index(value) + 1) / len(options)
        text = (f"Replay: {label(value)}" if replaying else
                f"Following the live run ({len(frames)} frames so far); pause to scrub them")
        st.progress(done, text=text)
        if replaying:
            replay_controls(ui.run, len(options))
        return parse(value)
    st.session_state.timeline_on_screen = True
    raw = st.select_slider("Timeline (frame by frame)" if frames else "Timeline (saved epochs)", options,
                           key=key, format_func=label, on_change=_choose_frame, args=(ui.run, key))
    choice = parse(raw)
    # The URL names an epoch when an epoch's end is shown and it is not the latest (a link to a finished
    # run shows its end); the frames between epochs are not in the URL.
    at_epoch = choice != "live" and (choice[0] == "epoch" or choice[1] % per_epoch == 0)
    new_epoch = choice[1] // per_epoch if at_epoch and raw != options[-1] else None
    if new_epoch != ui.epoch and not replaying:
        views.set_ui_state(replace(ui, epoch=new_epoch))
    if frames and not live:
        replay_controls(ui.run, len(options))
    return choice


def _stop_replay() -> None:
    st.session_state.pop("replay", None)


def _choose_frame(run_name: str, key: str) -> None:
    """The user moved the timeline: it stays where they put it (back on 'live', it follows the job again).
    Streamlit also calls this when the browser reports the slider's last value after the page has moved it
    while the slider was not on screen (a replay, a followed run): no user did that, so it changes nothing."""
    if not st.session_state.get("timeline_on_screen"):
        return
    _stop_replay()
    if st.session_state.get(key) == "live":
        st.session_state.pop("timeline_chosen", None)
    else:
        st.session_state.timeline_chosen = run_name


def replay_controls(run_name: str, frames: int) -> None:
    """Play a finished run as an animation: the page's live area reruns at the chosen speed."""
    replay = st.session_state.get("replay")
    c1, c2, _ = st.columns([1, 2, 4])
    fps = c2.select_slider("Replay speed (frames/s)", REPLAY_SPEEDS, value=5, key="replay_fps")
    if replay and replay["run"] == run_name:
        if c1.button("Stop replay", icon=":material/stop:", key="replay_stop"):
            _stop_replay()
            st.rerun()
    elif c1.button("Play", icon=":material/replay:", key="replay_play", help=f"{frames} frames at {fps}/s"):
        st.session_state.replay = {"run": run_name, "index": 0, "fps": fps}
        st.rerun()  # the whole page: the live area's refresh rate becomes the replay's


def live_area(export: views.Export, config_error: str | None, was_active: bool) -> None:
    ui = views.ui_state()  # fresh: buttons in here change it between fragment reruns
    job = _job_for(ui)
    v = job.view() if job else None
    if bool(v and v.active) != was_active:
        st.rerun()  # the job started or ended: redraw the whole page (controls, refresh rate)
    transport(job, ui, config_error)
    run = views.run_folder(ui.run) if ui.run else None
    if v is not None:
        status_line(v)
    elif run is not None and (recorded := views.recording(run)):
        st.info(f"**Recorded run** shipped with the app (no training needed): made with `{recorded}`. "
                "Scrub the timeline or press Play to replay it.", icon=":material/movie:")
    elif run is not None:
        summary = run.summary()
        st.caption(f"Reopened run **{views.plain(run.name)}** · status: {summary.status} · "
                   f"{views.plain(summary.message)}")
    else:
        recorded_picker()

    # Which snapshot to draw: live, a saved epoch, or M_R before any training (preview).
    try:
        if run is not None and v is None and not run.path.is_dir():
            raise RunError(f"run '{run.name}' no longer exists under {run.path.parent}")
        choice = timeline(ui, run, live=bool(v and v.snapshot is not None and v.active), active=bool(v and v.active),
                          running=bool(v and v.state in ("queued", "preparing", "running")))
        if choice == "live" or (v is not None and choice is None):
            snapshot = v.snapshot if v else None
            history = list(snapshot.history) if snapshot else []
        elif choice is not None:
            snapshot = views.read_snapshot(run, *choice)
            history = run.history()
        else:
            snapshot, history = None, []
        advance_replay(ui.run)
    except RunError as e:
        st.error(f"{views.plain(e)}. Other runs are not affected; press Reset to start afresh.")
        return
    if snapshot is None:
        if v is not None and v.state in ("queued", "preparing"):
            st.info("Preparing the run (scoring M_R on the evaluation sets); meanwhile, M_R as it is:"
                    if v.state == "preparing" else "Waiting in the queue; meanwhile, M_R as it is:")
        try:
            cfg = ui.config()
            snapshot = preview(str(victim_path(ui.victim)), str(views.data_dir()),
                               tuple(getattr(cfg, f) for f in PREVIEW_FIELDS))
        except Exception as e:  # a checkpoint or dataset that does not load: say so, keep the page
            st.error(f"Could not score the victim M_R: {views.plain(e)}")
            return
        history = list(snapshot.history)
    draw(snapshot, history, ui, export, run, name=ui.run or ui.victim, live=bool(v and v.active))


def recorded_picker() -> None:
    """Before any run: the shipped recordings, one click away (they open without training)."""
    runs = recorded_runs()
    if not runs:
        return
    cols = st.columns([2] + [1] * len(runs) + [3])
    cols[0].caption("Or open a recorded run, no waiting:")
    for col, run in zip(cols[1:], runs):
        col.button(run.name.removeprefix("recorded-"), key=f"open_{run.name}", icon=":material/movie:",
                   on_click=open_recorded, args=(run.name,), width="stretch")


def open_recorded(name: str) -> None:
    try:
        state, _ = for_run(name, views.run_folder(name).config())
    except RunError as e:
        st.session_state.resume_error = str(e)
        return
    views.set_ui_state(state)
    st.session_state.pop("axes", None)


def advance_replay(run_name: str | None) -> None:
    """One frame further at each rerun of a replay; the last frame ends it."""
    replay = st.session_state.get("replay")
    if not replay or replay["run"] != run_name:
        return
    replay["index"] += 1
    if replay["index"] >= len(views.run_folder(run_name).frame_steps()):
        _stop_replay()
        st.rerun()  # back to the page's normal refresh


def _memo(name: str, source, key: tuple, build):
    """Rebuild a figure only when what it shows changed: the live fragment reruns every 0.3 s, and
    building Plotly figures in Python holds the GIL the training thread needs. `source` is compared
    by identity (published snapshots are never mutated; an id() could be reused once one is freed)."""
    memo = st.session_state.setdefault("figures", {})
    if name not in memo or memo[name][0] is not source or memo[name][1] != key:
        memo[name] = (source, key, build())
    return memo[name][2]


def draw(snapshot: Snapshot, history: list[dict], ui: UIState, export: views.Export, run: RunDir | None,
         name: str, live: bool) -> None:
    classes = DATASETS[views.victim_dataset(str(victim_path(ui.victim)))].classes
    proj, ranges = axes_for(ui.run or f"preview:{ui.victim}:{ui.seed}", snapshot, ui.proj, ui.seed)
    now = figures.panel_points(snapshot, proj, "after")
    ranges.extend(f"epoch {snapshot.epoch}", now.id, now.ood, now.gen)
    # Built once per run and look; each newer snapshot only swaps M_F's points in (refresh_fig5).
    fig = _memo("fig5", proj, (ui.style, classes), lambda: figures.fig5_panels(snapshot, proj, ranges, classes, ui.style))
    if st.session_state.get("fig5_shows") is not snapshot:
        figures.refresh_fig5(fig, snapshot, proj, ranges)
        st.session_state.fig5_shows = snapshot
    charts = {"Fig. 5 panels": fig}
    st.session_state.charts = charts  # what the server-side export offers (views.server_export)
    views.fig5_view(fig, export, name, key="fig5")
    note = f"Axes fixed from M_R's features (+{int(figures.HEADROOM * 100)}% headroom)"
    if ranges.extended_at:
        note += f"; extended at {', '.join(ranges.extended_at[-3:])} because points left them"
    st.caption(f"{note}. Plane: {proj.label}. Dotted rays: class directions of the frozen last layer.")

    left, right = st.columns([1, 2.4])
    with left:
        st.markdown("**Generator samples G(z)**")
        grid = _memo("gen", snapshot, (ui.style,), lambda: figures.gen_grid(snapshot.gen_images, ui.style))
        charts["generator samples"] = grid
        views.generator_view(grid, export, name, key="gen")
    with right:
        st.markdown("**Curves**")
        curves = _memo("curves", None, (name, len(history), ui.style), lambda: figures.curves({name: history}, ui.style))
        charts["curves"] = curves
        views.curves_view(curves, export, name, key="curves")
        if history:
            views.metrics_downloads(name, history, key="dl")

    if run is not None and not live:
        epochs = run.snapshot_epochs()
        if len(epochs) >= 2:
            picks = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
            try:
                snaps = [(f"epoch {e}", views.read_snapshot(run, "epoch", e)) for e in picks]
            except RunError as e:
                st.error(views.plain(e))
                return
            st.markdown("**M_F over the run** (first / middle / last saved epoch, same axes)")
            strip = figures.small_multiples(snaps, proj, ranges, classes, ui.style)
            charts["M_F over the run"] = strip
            views.chart(strip, "strip", export.config(f"{name}-strip"))
            views.explain("A strip for slides: the OOD crosses and G(z) stars drift epoch by epoch while the "
                          "ID digits stay on their rays.")


# ---------------------------------------------------------------- the page


def _warmup(ui: UIState) -> Warmup | None:
    """The job Start would launch with the settings on screen, for the spare process to build ahead."""
    try:
        return Warmup(str(victim_path(ui.victim)), ui.config().validate(), str(views.data_dir()), str(device()))
    except (ConfigError, CheckpointError):
        return None


def main() -> None:
    ui = data_fallback(views.ui_state())
    # A training process importing torch and building this trainer now, so that Start answers at once.
    WORKERS.prestart(_warmup(ui))
    job = _job_for(ui)
    active = bool(job and job.view().active)

    st.title("Defend: adversarial fine-tuning, live")
    views.show_url_warnings()
    if "data_notice" in st.session_state:
        st.warning(st.session_state.data_notice, icon="💾")

    config_sidebar(ui, locked=active)
    ui = views.ui_state()
    if ui.view == "full":
        st.sidebar.radio("Projection for wide features", ("pca", "umap"), horizontal=True,
                         index=("pca", "umap").index(ui.proj), key="w_proj", on_change=_sync, args=("proj",),
                         help="Only used when the penultimate layer is wider than 2-D. PCA is live; "
                              "UMAP is slow to start and may pull shifted OOD points onto ID clusters.")
    st.sidebar.caption(f"Runs on: **{views.device_label()}** · data dir `{views.data_dir()}` · "
                       f"runs dir `{views.runs_dir()}`")

    config_error = None
    try:
        ui.config().validate()
    except ConfigError as e:
        config_error = str(e)
        st.error(f"Check the settings: {config_error}")  # the engine's message about numbers the widgets hold
    if ui.view == "full" and (changed := ui.knobs_differ_from_preset()):
        st.caption(f"Changed from the *{UI_PRESETS[ui.preset].label}* preset: {', '.join(changed)}")

    export = views.export_settings()
    replay = st.session_state.get("replay")
    every = 1 / replay["fps"] if replay and replay["run"] == ui.run else LIVE_REFRESH_S if active else None
    st.fragment(run_every=every)(live_area)(export, config_error, active)
    views.server_export(st.session_state.get("charts", {}), export, ui.run or ui.victim, key="defend")


main()
