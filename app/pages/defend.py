"""Defend: watch AdvFT pull OOD features away while ID features stay put (the paper's Fig. 5, live).

The controller of the main page, top to bottom:
    sidebar      the settings: a preset, a victim and one widget per knob of core.knobs, into the session's
                 UIState (app/state.py, mirrored in the URL);
    actions      Start / Resume / Reset make or drop the session's Job (app/jobs.py; it trains in the worker
                 process, app/worker.py, so the page never waits for a training step);
    live_area    one fragment, rerun every 0.3 s while a job is active: the transport buttons, the status,
                 the timeline (app/timeline.py) and the figures of the chosen snapshot (core/figures.py,
                 drawn by app/views.py);
    exports      server-side images of the charts, and the run's frames as an animated GIF or video
                 (core/animate.py, drawn by views.animation_export).
"""

from __future__ import annotations

import streamlit as st

from app import session, timeline, views
from app.jobs import ABANDON_AFTER_S, WORKERS, Job, JobSpec, Warmup, new_run_dir
from app.state import FIG5_COMMAND, KNOB_NAMES, UI_PRESETS, UIState, for_run, preset_available
from core import figures
from core.advft import Snapshot
from core.data import DATASETS
from core.errors import UserError
from core.knobs import MAIN, PAGE_KNOBS
from core.runs import RunDir, RunError
from core.training import PREVIEW_FIELDS, recorded_runs
from core.victims import committed_victims, served_victim, victim_path

LIVE_REFRESH_S = 0.3  # the live fragment; with PUBLISH_EVERY_S = 0.3 the page shows a new frame at most reruns
WIDGETS = ("preset", "victim", *KNOB_NAMES)


# ---------------------------------------------------------------- sidebar: the settings


def _preset(name: str, ui: UIState) -> UIState:
    return UIState.from_preset(name, view=ui.view, style=ui.style, proj=ui.proj)


def data_fallback(ui: UIState) -> UIState:
    """Switch to the offline preset when the victim's dataset is not in the data dir (said at the top)."""
    missing = session.missing_dataset(ui.victim)
    if missing is None:
        st.session_state.pop("data_notice", None)
        return ui
    st.session_state.data_notice = views.data_notice(*missing)
    session.put_widgets(_preset("offline", ui), WIDGETS)
    return session.ui_state()


def sidebar(ui: UIState, locked: bool) -> None:
    """The AdvFT settings, `locked` while a job runs (its config is fixed). Knobs come from core.knobs: the
    main ones always, the others in Advanced (hidden in the simple view)."""
    sb = st.sidebar
    sb.header("AdvFT settings")
    offered = [p for p in UI_PRESETS if preset_available(p)]
    if ui.preset not in offered:
        session.put_widgets(_preset("lecture", ui), WIDGETS)
    for name in WIDGETS:  # first draw, or a widget hidden last run (simple view): its value from the state
        st.session_state.setdefault(f"w_{name}", getattr(session.ui_state(), name))
    sb.selectbox("Preset", offered, key="w_preset", format_func=lambda p: UI_PRESETS[p].label, disabled=locked,
                 on_change=lambda: session.put_widgets(_preset(st.session_state.w_preset, session.ui_state()), WIDGETS))
    if "fig5" not in offered:
        with sb.expander("Fig. 5 preset: its victim is not trained yet"):
            st.caption("The paper's Fig. 5 model (ResNet-18 with a 2-D penultimate layer). Train it once, then reload:")
            st.code(FIG5_COMMAND, language="bash", wrap_lines=True)
    sb.selectbox("Dataset · architecture (victim M_R)", committed_victims(), key="w_victim", disabled=locked,
                 format_func=lambda v: v.replace("_", " · ", 1), on_change=session.sync, args=("victim",))
    main = [k for k in PAGE_KNOBS if k.place == MAIN]  # margin and epochs side by side, then the others
    for where, knob in zip([*sb.columns(2), *[sb] * len(main)], main):
        views.knob_input(where, knob, locked)
    if ui.view == "full":
        with sb.expander("Advanced (Algorithm 1)", expanded=False):
            cols = st.columns(2)
            for i, knob in enumerate(k for k in PAGE_KNOBS if k.place != MAIN):
                views.knob_input(cols[i % 2], knob, locked)
        sb.radio("Projection for wide features", ("pca", "umap"), horizontal=True, key="w_proj",
                 index=("pca", "umap").index(ui.proj), on_change=session.sync, args=("proj",),
                 help="Only used when the penultimate layer is wider than 2-D. PCA is live; UMAP is slow to start "
                      "and may pull shifted OOD points onto ID clusters.")
    sb.toggle("Simple view (for teaching)", value=ui.view == "simple", key="w_view", help="Hides the advanced knobs",
              on_change=lambda: session.set_ui_state(session.ui_state().with_(
                  view="simple" if st.session_state.w_view else "full")))
    sb.caption(f"Runs on: **{session.device_label()}** · data dir `{session.data_dir()}` · "
               f"runs dir `{session.runs_dir()}`")


# ---------------------------------------------------------------- actions (button callbacks)


def _launch(spec: JobSpec, run_name: str) -> None:
    session.session_job().replace(Job(spec, session.job_slots(), ABANDON_AFTER_S).start())
    session.set_ui_state(session.ui_state().with_(run=run_name, epoch=None))
    timeline.forget()


def start(ui: UIState) -> None:
    cfg = ui.config().validate()
    out = new_run_dir(session.runs_dir(), ui.preset, cfg)
    _launch(JobSpec(str(victim_path(ui.victim)), cfg, out, ui.preset, str(session.data_dir()), str(session.device())), out.name)


def resume(run: RunDir) -> None:
    try:
        saved = run.config()
        if not served_victim(saved.victim, session.runs_dir()):
            raise RunError(f"run '{run.name}' starts from a victim outside the committed victims and the runs "
                           "folder; it can only be resumed from the command line")
    except RunError as e:
        st.session_state.resume_error = str(e)
        return
    _launch(JobSpec(saved.victim, saved.advft, run.path, saved.preset, str(session.data_dir()), str(session.device()),
                    resume=True), run.name)


def reset() -> None:
    session.session_job().replace(None)
    session.set_ui_state(session.ui_state().with_(run=None, epoch=None))
    timeline.forget()


def open_recorded(name: str) -> None:
    try:
        session.set_ui_state(for_run(name, session.run_folder(name).config())[0])
    except RunError as e:
        st.session_state.resume_error = str(e)


def _job_for(ui: UIState) -> Job | None:
    """The live job of the run on screen: this session's, or one that a reloaded or second tab of the
    same run left running (adopted: its status, controls and frames show here)."""
    job = session.session_job().job
    if isinstance(job, Job) and ui.run == job.spec.run_dir.name:
        return job
    live = session.job_slots().job_for(session.runs_dir() / ui.run) if ui.run else None
    if live is not None and live.view().active:
        session.session_job().adopt(live)
        return live
    return None


# ---------------------------------------------------------------- the live area


def transport(job: Job | None, ui: UIState, config_error: str | None) -> None:
    """The transport row for the session's job (or Start), Resume for a resumable run on screen, Reset."""
    run = session.run_folder(ui.run) if ui.run else None
    v = job.view() if job else None
    resumable = not (v and v.active) and run is not None and run.summary().resumable  # stopped, failed, interrupted
    views.transport(job, v, start=lambda: start(ui), resume=(lambda: resume(run)) if resumable else None, reset=reset,
                    start_disabled=config_error is not None)
    if "resume_error" in st.session_state:
        st.error(views.plain(st.session_state.pop("resume_error")))


def live_area(export: views.Export, config_error: str | None, was_active: bool) -> None:
    ui = session.ui_state()  # fresh: buttons in here change it between fragment reruns
    job = _job_for(ui)
    v = job.view() if job else None
    active = bool(v and v.active)
    if active != was_active:
        st.rerun()  # the job started or ended: redraw the whole page (controls, refresh rate)
    transport(job, ui, config_error)
    run = session.run_folder(ui.run) if ui.run else None
    if v is not None:
        views.status_line(v, session.job_slots().capacity)
    elif run is not None and (recorded := session.recording(run)):
        st.info(f"**Recorded run** shipped with the app (no training needed): made with `{recorded}`. "
                "Scrub the timeline or press Play to replay it.", icon=":material/movie:")
    elif run is not None:
        summary = run.summary()
        st.caption(f"Reopened run **{views.plain(run.name)}** · status: {summary.status} · "
                   f"{views.plain(summary.message)}")
    else:
        views.recorded_picker(recorded_runs(), open_recorded)

    # Which snapshot to draw: live, a saved frame or epoch, or M_R before any training (preview).
    snapshot, history = (v.snapshot, list(v.snapshot.history)) if v and v.snapshot else (None, [])
    try:
        if run is not None and v is None and not run.path.is_dir():
            raise RunError(f"run '{run.name}' no longer exists under {run.path.parent}")
        if run is not None:
            choice, epoch = timeline.slider(run, ui.run, ui.epoch, live=bool(active and v.snapshot), active=active,
                                            running=bool(v and v.state in ("queued", "preparing", "running")))
            if epoch != ui.epoch:
                session.set_ui_state(ui.with_(epoch=epoch))
            if choice not in ("live", None):
                snapshot, history = session.read_snapshot(run, *choice), run.history()
            timeline.advance(run)
    except RunError as e:
        st.error(f"{views.plain(e)}. Other runs are not affected; press Reset to start afresh.")
        return
    if snapshot is None:
        if v is not None and v.state in ("queued", "preparing"):
            st.info("Preparing the run (scoring M_R on the evaluation sets); meanwhile, M_R as it is:"
                    if v.state == "preparing" else "Waiting in the queue; meanwhile, M_R as it is:")
        try:
            snapshot = session.preview(str(victim_path(ui.victim)), str(session.data_dir()),
                                       tuple(getattr(ui.advft, f) for f in PREVIEW_FIELDS))
        except Exception as e:  # a checkpoint or dataset that does not load: say so, keep the page
            st.error(f"Could not score the victim M_R: {views.plain(e)}")
            return
        history = list(snapshot.history)
    draw(snapshot, history, ui, export, run, live=active)


def draw(snapshot: Snapshot, history: list[dict], ui: UIState, export: views.Export, run: RunDir | None,
         live: bool) -> None:
    name = ui.run or ui.victim
    classes = DATASETS[session.victim_dataset(str(victim_path(ui.victim)))].classes
    proj, ranges = session.held_axes(ui.run or f"preview:{ui.victim}:{ui.seed}", snapshot, ui.proj, ui.seed)
    now = figures.panel_points(snapshot, proj, "after")
    ranges.extend(f"epoch {snapshot.epoch}", now.id, now.ood, now.gen)
    # Built once per run and look; each newer snapshot only swaps M_F's points in (refresh_fig5).
    fig = session.held("fig5", (ui.style, classes), lambda: figures.fig5_panels(snapshot, proj, ranges, classes, ui.style),
                       source=proj)
    if st.session_state.get("fig5_shows") is not snapshot:
        figures.refresh_fig5(fig, snapshot, proj, ranges)
        st.session_state.fig5_shows = snapshot
    charts = st.session_state.charts = {"Fig. 5 panels": fig}  # what the server-side export offers
    chart_slot = st.container()  # the chart above the probe, drawn once the probe has marked its input
    probe(snapshot, ui, run, proj, fig)
    with chart_slot:
        views.fig5_view(fig, export, name, key="fig5")
        views.axes_note(proj, ranges)

    left, right = st.columns([1, 2.4])
    with left:
        st.markdown("**Generator samples G(z)**")
        charts["generator samples"] = grid = session.held(
            "gen", (ui.style,), lambda: figures.gen_grid(snapshot.gen_images, ui.style), source=snapshot)
        views.generator_view(grid, export, name, key="gen")
    with right:
        st.markdown("**Curves**")
        charts["curves"] = curves = session.held(
            "curves", (name, len(history), ui.style), lambda: figures.curves({name: history}, ui.style))
        views.curves_view(curves, export, name, key="curves")
        if history:
            views.metrics_downloads(name, history, key="dl")
    if run is not None and not live and len(epochs := run.snapshot_epochs()) >= 2:
        picks = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
        try:
            snaps = [(f"epoch {e}", session.read_snapshot(run, "epoch", e)) for e in picks]
        except RunError as e:
            st.error(views.plain(e))
            return
        charts["M_F over the run"] = views.strip_view(snaps, proj, ranges, classes, ui.style, export, name)


def probe(snapshot: Snapshot, ui: UIState, run: RunDir | None, proj, fig) -> None:
    """Probe your own input: draw a digit (or upload an image, or pick an OOD one) and see where M_R and
    M_F put it, marked in the Fig. 5 panels, with both models' top answers. M_F is the run's saved model
    (after its last finished epoch), so a digit staying put and a photo jumping is AdvFT itself at work."""
    from core.probe import median_shifts
    from core.probe import probe as probe_models

    shape = DATASETS[session.victim_dataset(str(victim_path(ui.victim)))].shape
    with st.expander("Probe your own input: a digit should stay put, a photo should jump", icon=":material/draw:"):
        source = views.probe_source()
        given, seen, answers = st.columns([1.15, 0.75, 2])
        with given:
            image, what = views.probe_input(
                source, shape, lambda: session.ood_examples(ui.advft.ood, shape, str(session.data_dir())))
        if image is None:
            answers.caption(what)
            figures.mark_probe(fig, None, None, ui.style)
            return
        try:
            m_r = session.model(victim_path(ui.victim))
            m_f = session.model(run.model_path) if run is not None else None
        except UserError as e:
            answers.error(f"Could not load a model to probe: {views.plain(e)}")
            figures.mark_probe(fig, None, None, ui.style)  # no marks left from an earlier input
            return
        result = probe_models(m_r, m_f, image)
        with seen:
            views.probe_image(image)
        with answers:
            st.caption(views.plain(what))
            done = m_f.info.get("epochs_done") if m_f is not None else None
            views.probe_answers(result, DATASETS[m_r.dataset].classes,
                                f"saved after epoch {done}" if isinstance(done, int) else "saved",
                                median_shifts(snapshot))
    figures.mark_probe(fig, proj(result.before.features[None])[0],
                       None if result.after is None else proj(result.after.features[None])[0], ui.style)


# ---------------------------------------------------------------- the page


def main() -> None:
    ui = data_fallback(session.ui_state())
    try:  # a training process importing torch and building this trainer now, so that Start answers at once
        WORKERS.prestart(Warmup(str(victim_path(ui.victim)), ui.config().validate(), str(session.data_dir()),
                                str(session.device())))
    except UserError:
        WORKERS.prestart()
    job = _job_for(ui)
    active = bool(job and job.view().active)

    st.title("Defend: adversarial fine-tuning, live")
    views.show_url_warnings()
    if "data_notice" in st.session_state:
        note, details = st.session_state.data_notice
        st.caption(note, help=details)  # a calm note: the offline demo is a working default, not an error
    sidebar(ui, locked=active)
    ui = session.ui_state()
    config_error = None
    try:
        ui.config().validate()
    except UserError as e:
        config_error = str(e)
        st.error(f"Check the settings: {config_error}")  # the engine's message about numbers the widgets hold
    if ui.view == "full" and (changed := ui.knobs_differ_from_preset()):
        st.caption(f"Changed from the *{UI_PRESETS[ui.preset].label}* preset: {', '.join(changed)}")

    views.presenter_keys()
    export = views.export_settings()
    replay = timeline.replay_of(ui.run)
    every = 1 / replay.fps if replay else LIVE_REFRESH_S if active else None
    with st.container(key="live"):  # assets/style/app.css: a live area never fades while it reruns
        st.fragment(run_every=every)(live_area)(export, config_error, active)
    views.server_export(st.session_state.get("charts", {}), export, name=ui.run or ui.victim, key="defend")
    views.animation_export(session.run_folder(ui.run) if ui.run else None, ui.style, key="defend")


main()
