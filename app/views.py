"""Small view components shared by the pages. Each draws one thing from plain inputs; the page
scripts (the controllers) decide what to draw and wire the actions. Also the sidebar's Export and
style controls (drawn once, by the entry script streamlit_app.py). The session's state lives in
app/session.py.
Any text that comes from a user (URL values, run names, config fields) is shown through `plain`
or html.escape, never as Markdown or HTML.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st

from app.session import set_ui_state, sync, ui_state
from core import figures

CSS = Path(__file__).resolve().parent.parent / "assets" / "style" / "app.css"
_MARKDOWN = re.compile(r"([\\`*_\[\]<>!:~$|])")  # what can start a link, image, emphasis, code, HTML, directive


# Streamlit's Markdown also turns bare "www.", "http(s)://" and "name@host.tld" into links, after escapes
# are resolved (GFM autolink literals), so escaping cannot stop them: an invisible word joiner placed where
# those patterns need two characters side by side does. What the user reads is unchanged.
_JOIN = "\u2060"
_AUTOLINK = re.compile(r"(?i)(?<=www)(?=\.)|(?<=:)(?=//)|(?<=[-.\w+])(?=@[-\w])")


def plain(text) -> str:
    """User text for a Markdown element (st.warning, st.caption...): every Markdown character escaped and
    every would-be autolink broken, so a link, an image, an e-mail address or a colour directive in a URL
    or a run name shows as the characters it is, never as something to click."""
    return _MARKDOWN.sub(r"\\\1", _AUTOLINK.sub(_JOIN, str(text)))


_IMPORT_LOCK = threading.Lock()


def preload_modules() -> None:
    """Import what the other pages need (pandas for st.dataframe) once, under a lock. Two sessions whose
    first imports of pandas overlap in two script threads can see a half-initialised module
    ("partially initialized module 'pandas' has no attribute 'Series'")."""
    with _IMPORT_LOCK:
        import pandas  # noqa: F401


def load_css() -> None:
    st.html(f"<style>{CSS.read_text()}</style>")


# ---------------------------------------------------------------- charts that update in place


ROOT = Path(__file__).resolve().parent.parent
# Streamlit serves <app root>/static/ at app/static/ (server.enableStaticServing, .streamlit/config.toml).
PLOTLY_JS, PLOTLY_URL = ROOT / "static" / "plotly.min.js", "app/static/plotly.min.js"
_CHART = st.components.v2.component("advft_chart", js=(Path(__file__).parent / "chart.js").read_text(),
                                    isolate_styles=False)


@st.cache_resource(show_spinner=False)
def plotly_js_served() -> bool:
    """Put the installed plotly package's own plotly.js where Streamlit serves static files (a copy, not
    committed: it always matches the Python side that writes the figures). False where the app's folder
    is read-only: charts then fall back to st.plotly_chart."""
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    try:
        if not PLOTLY_JS.is_file() or PLOTLY_JS.read_bytes() != source.read_bytes():
            PLOTLY_JS.parent.mkdir(exist_ok=True)
            partial = PLOTLY_JS.with_suffix(f".{os.getpid()}.tmp")  # servers starting together each write their own
            partial.write_bytes(source.read_bytes())
            partial.replace(PLOTLY_JS)
        return True
    except OSError:
        return False


_KEYS = st.components.v2.component("advft_presenter_keys", js=(Path(__file__).parent / "keys.js").read_text(),
                                   isolate_styles=False)


_RECOVER = st.components.v2.component("advft_recover", js=(Path(__file__).parent / "recover.js").read_text(),
                                      isolate_styles=False)


def recover_from_frontend_errors() -> None:
    """Reload the page when Streamlit's frontend loses its element tree under fast fragment reruns in a busy
    browser (app/recover.js says how); drawn in the sidebar, where it takes no room."""
    with st.sidebar:
        _RECOVER(key="recover")


def presenter_keys() -> None:
    """Space, arrows, S, R, F, P and ? drive the page's own buttons (app/keys.js); a hint says so."""
    _KEYS(key="presenter_keys")


def chart(fig, key: str, config: dict) -> None:
    """A Plotly figure that a rerun redraws in place (app/chart.js: moves the changed points, or
    Plotly.react on the mounted chart) instead of remounting it as st.plotly_chart does for every new figure."""
    if not plotly_js_served():
        st.plotly_chart(fig, key=key, config=config)
        return
    _CHART(data={"spec": fig.to_json(), "config": json.dumps(config), "src": PLOTLY_URL}, key=key)


def show_url_warnings() -> None:
    for w in st.session_state.get("url_warnings", []):
        st.warning(f"Ignored part of the link: {plain(w)}", icon="🔗")


def explain(text: str) -> None:
    st.html(f"<div class='advft-explain'>{text}</div>")


# ---------------------------------------------------------------- export settings (sidebar)


@dataclass(frozen=True)
class Export:
    fmt: str = "png"
    width: int = 1600
    height: int = 800
    scale: float = 3.0

    def config(self, filename: str) -> dict:
        return figures.chart_config(self.fmt, self.width, self.height, self.scale, filename)


EXPORT_WIDGETS = {"w_export_fmt": "fmt", "w_export_w": "width", "w_export_h": "height", "w_export_scale": "scale"}


def export_settings() -> Export:
    """The sidebar's export settings as they are now (the widgets are drawn after the page, by the entry
    script; their values from the last interaction are already in session_state)."""
    values = {f: st.session_state[k] for k, f in EXPORT_WIDGETS.items() if k in st.session_state}
    return Export(**values)


def _set_style() -> None:
    set_ui_state(replace(ui_state(), style="presentation" if st.session_state.w_style else "screen"))


def shared_sidebar() -> None:
    """The 'Presentation style' toggle and the 'Export' box, the same on every page."""
    d = Export()
    with st.sidebar:
        st.toggle("Presentation style", value=ui_state().style == "presentation", key="w_style",
                  on_change=_set_style, help="White background, large fonts, thick markers, colour-blind-safe colours")
        with st.expander("Export", expanded=False):
            st.caption("The camera in each chart's toolbar downloads it with these settings.")
            st.radio("Format", ("png", "svg"), horizontal=True, key="w_export_fmt")
            c1, c2 = st.columns(2)
            c1.number_input("Width px", 400, 4000, d.width, 100, key="w_export_w")
            c2.number_input("Height px", 300, 3000, d.height, 100, key="w_export_h")
            st.slider("PNG scale", 3, 6, int(d.scale), key="w_export_scale", help="3x or more for sharp slides")


# ---------------------------------------------------------------- downloads


def history_csv(history: list[dict]) -> str:
    keys = list(dict.fromkeys(k for h in history for k in h))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def metrics_downloads(name: str, history: list[dict], key: str) -> None:
    c1, c2 = st.columns(2)
    c1.download_button("Metrics CSV", lambda: history_csv(history), file_name=f"{name}-metrics.csv",
                       mime="text/csv", on_click="ignore", key=f"{key}_csv", icon=":material/download:")
    c2.download_button("Metrics JSON", lambda: json.dumps(history, indent=2), file_name=f"{name}-metrics.json",
                       mime="application/json", on_click="ignore", key=f"{key}_json", icon=":material/download:")


def server_export(charts: dict, export: Export, name: str, key: str) -> None:
    """Server-side PNG/SVG of any chart on the page, where Kaleido and a Chromium are available."""
    ok, why = figures.static_export_status()
    with st.expander("Server-side images of the charts"):
        if not ok:
            st.info(f"Not available on this machine: {why}.")
            return
        if not charts:
            st.caption("No chart drawn yet.")
            return
        st.caption(f"Renders on the server with {why} at the Export settings; takes a few seconds.")
        chosen = st.selectbox("Chart", list(charts), key=f"{key}_export_pick")
        if st.button("Render PNG and SVG", key=f"{key}_render"):
            try:
                st.session_state[f"{key}_static"] = (chosen, {
                    fmt: figures.render_static(charts[chosen], fmt, export.width, export.height, export.scale)
                    for fmt in ("png", "svg")})
            except Exception as e:  # Kaleido/Chromium failures are environment problems, not bugs here
                st.error(f"Server-side rendering failed: {plain(str(e).splitlines()[0][:200])}")
        done = st.session_state.get(f"{key}_static")
        if done:
            what, files = done
            stem = f"{name}-{what.replace(' ', '-').replace('.', '')}"
            c1, c2 = st.columns(2)
            c1.download_button(f"Download PNG ({what})", files["png"], f"{stem}.png", "image/png", on_click="ignore")
            c2.download_button(f"Download SVG ({what})", files["svg"], f"{stem}.svg", "image/svg+xml",
                               on_click="ignore")


ANIMATION_MIME = {"gif": "image/gif", "mp4": "video/mp4", "webm": "video/webm"}
ANIMATION_PANELS = {"mr": "M_R", "mf": "M_F", "zoom": "M_F zoom"}


@st.fragment
def animation_export(run, style: str, key: str) -> None:
    """The run's Fig. 5 panels over its frames as an animated GIF (MP4 / WebM where PyAV is installed), in
    the page's style, made by core.animate when the download button is pressed. A fragment: choosing a
    format or checking for new frames reruns this box only."""
    from core import animate

    with st.expander("Animation of the run for slides (GIF, video)"):
        if run is None:
            st.caption("Start a run or open a recorded one: its frames become an animation.")
            return
        count = animate.frame_count(run)
        if count < 2:
            st.info(plain(animate.no_frames_message(run, count)))
            st.button("Check again", key=f"{key}_anim_again")
            return
        video, why = animate.video_available()
        c1, c2, c3 = st.columns(3)
        fmt = c1.radio("Format", ("gif", "mp4", "webm") if video else ("gif",), horizontal=True,
                       format_func=str.upper, key=f"{key}_anim_fmt")
        width = c2.selectbox("Width px", (800, 1200, 1600, 1920), index=1, key=f"{key}_anim_w")
        fps = c3.select_slider("Frames/s", (2, 4, 6, 8, 12), value=4, key=f"{key}_anim_fps")
        panels = st.multiselect("Panels", animate.PANELS, default=animate.PANELS, format_func=ANIMATION_PANELS.get,
                                key=f"{key}_anim_panels")
        if not panels:
            st.caption("Choose at least one panel.")
            return
        spec = animate.AnimationSpec(fps=fps, width=width, panels=tuple(panels), style=style)
        st.caption(f"{min(count, spec.max_frames)} frames on fixed axes, in the {style} style; made when you press "
                   "the button (a few seconds)." + ("" if video else f" {plain(why)}."))
        st.download_button(f"Download {fmt.upper()}", lambda: animate.animate(run, fmt, spec).data,
                           file_name=f"{run.name}-fig5.{fmt}", mime=ANIMATION_MIME[fmt], on_click="ignore",
                           key=f"{key}_anim_download", icon=":material/movie:")


# ---------------------------------------------------------------- plots with their explanations


def fig5_view(fig, export: Export, name: str, key: str) -> None:
    chart(fig, key, export.config(f"{name}-fig5"))
    explain("Left: the original model M_R; right: the fine-tuned M_F, on the same fixed axes. Look for the "
            "coloured ID digits staying on their class rays while the grey OOD crosses and the generator's "
            "stars move away: ID features kept (fidelity), OOD features distorted (the defence).")


def generator_view(fig, export: Export, name: str, key: str) -> None:
    chart(fig, key, export.config(f"{name}-generator"))
    explain("G(z) for a fixed z. The generator hunts for inputs on which M_F still agrees with M_R (eq. 1); "
            "these are the inputs M_F is then trained to push away. In the first epoch M_F still equals M_R, so "
            "L_G has no gradient and G stays put until M_F has moved.")


def curves_view(fig, export: Export, name: str, key: str) -> None:
    chart(fig, key, export.config(f"{name}-curves"))
    explain("Per epoch. Acc and KL_test show what honest users see (should stay flat / tiny); OOD agreement "
            "is how often M_F still answers like M_R on natural OOD images: lower is a worse teacher for a thief.")


# ---------------------------------------------------------------- settings


def knob_input(where, knob, locked: bool) -> None:
    """The widget of one AdvFT knob (core.knobs), key w_<name>, picked by its type; its value goes into the
    session's UIState (and the URL) through session.sync. Its value must be in session_state already."""
    common = dict(key=f"w_{knob.name}", on_change=sync, args=(knob.name,), disabled=locked, help=knob.help or None)
    if knob.choices:
        where.selectbox(knob.label, knob.choices, **common)
    elif knob.kind is bool:
        where.toggle(knob.label, **common)
    elif knob.kind is int:
        where.number_input(knob.label, step=int(knob.step), **common)
    elif knob.kind is float:
        where.number_input(knob.label, step=float(knob.step), format="%g" if abs(knob.default or 1) >= 0.01 else "%.1e",
                           **common)
    else:
        where.text_input(knob.label, **common)


# ---------------------------------------------------------------- the Defend page's pieces

STATE_COLOURS = {"queued": "#888", "preparing": "#888", "running": "#2e7d32", "paused": "#f9a825",
                 "finished": "#1565c0", "stopped": "#6d4c41", "failed": "#c62828"}


def time_left(first: tuple[float, float], done: float, now: float) -> str:
    """Time left at the pace since the first progress report `first` = (time, done then); the work before
    it (loading a target and its data) says nothing of the pace. The last 2% (the final scoring, which
    reports no progress of its own) is "finishing" rather than a countdown to 0 s that then waits."""
    since, done_then = first
    if done >= 0.98:
        return "finishing…"
    if done - done_then <= 0.02 or now - since < 2:
        return "estimating the time left…"
    left = (now - since) * (1 - done) / (done - done_then)
    return f"about {left / 60:.0f} min left" if left >= 90 else f"about {max(5, 5 * round(left / 5)):.0f} s left"


def status_line(view, capacity: int) -> None:
    """A job's state chip, where it is in Algorithm 1, and its message (a JobView)."""
    state = view.state
    text = f"<span class='advft-chip' style='background:{STATE_COLOURS.get(state, '#888')}'>{state}</span>"
    if state == "queued":
        text += (f"waiting for a free training slot: <b>place {view.place or '?'} in line</b> "
                 f"(at most {capacity} run at once on this machine)")
    else:
        # The epoch in progress is epoch+1 until the last one is done ("epoch 1 of 6" from the first step).
        shown = min(view.epoch + (state not in ("finished", "preparing")), view.epochs)
        text += (f"epoch <b>{shown}</b> of {view.epochs} · phase {view.phase} (G {view.g_done}, F {view.f_done}) · "
                 f"{html.escape(view.device or '')} · run {html.escape(view.run_name)}")
        if view.manual_steps:
            text += f" · {view.manual_steps} manual G/F steps"
    st.html(f"<div class='advft-status' data-testid='advft-status' data-state='{state}'>{text}</div>")
    if view.message and state in ("failed", "stopped"):
        (st.error if state == "failed" else st.info)(plain(view.message))
    elif view.message:
        st.caption(plain(view.message))


def data_notice(what: str, problem: str) -> tuple[str, str]:
    """(the one-line note, its details for the help tooltip) when the page fell back to the offline demo."""
    return (f":material/info: **Offline demo**: {what} is not available here, so the page uses real handwritten "
            f"digits that ship with scikit-learn. `ADVFT_DATA_DIR=folder/with/{what.lower()}.npz` switches to {what}.",
            f"Or let the app download {what} once while online. Why it is not available: {plain(problem)}")


def axes_note(proj, ranges) -> None:
    note = f"Axes fixed from M_R's features (+{int(figures.HEADROOM * 100)}% headroom)"
    if ranges.extended_at:
        note += f"; extended at {', '.join(ranges.extended_at[-3:])} because points left them"
    st.caption(f"{note}. Plane: {proj.label}. Dotted rays: class directions of the frozen last layer.")


def strip_view(snaps, proj, ranges, classes, style: str, export: Export, name: str):
    """M_F at a few saved epochs on the same axes, for slides; returns the figure."""
    st.markdown("**M_F over the run** (first / middle / last saved epoch, same axes)")
    strip = figures.small_multiples(snaps, proj, ranges, classes, style)
    chart(strip, "strip", export.config(f"{name}-strip"))
    explain("A strip for slides: the OOD crosses and G(z) stars drift epoch by epoch while the ID digits stay on "
            "their rays.")
    return strip


def transport(job, v, start, resume, reset, start_disabled: bool) -> None:
    """Start / Play-Pause / Step (Algorithm 1) / G +1 / F +1 / Epoch / slow motion / Resume / Reset. `job` and
    its view `v` may be None (nothing runs); `resume` None hides Resume."""
    active = bool(v and v.active)
    cols = st.columns([1.2, 1, 1, 1, 1, 1.2, 1.3, 1])
    if not active:
        cols[0].button("Start", type="primary", icon=":material/play_arrow:", on_click=start,
                       disabled=start_disabled, key="t_start", width="stretch")
    elif v.state == "paused":
        cols[0].button("Play", type="primary", icon=":material/play_arrow:", on_click=job.play, key="t_play",
                       width="stretch")
    else:
        cols[0].button("Pause", icon=":material/pause:", on_click=job.pause, key="t_pause", width="stretch",
                       disabled=v.state in ("queued", "preparing"))
    can_step = active and v.state in ("running", "paused")
    for col, (label, kind, key, why) in zip(cols[1:5], (
            (f"Step ({'G' if v and v.phase == 'G' else 'F'})" if can_step else "Step", "step", "t_step",
             "The next step of Algorithm 1 (a G step while I_G steps remain in this epoch, then F)"),
            ("G +1", "g", "t_g", "One extra generator update outside the schedule (GAN Lab's 'step G')"),
            ("F +1", "f", "t_f", "One extra M_F update outside the schedule"),
            ("Epoch", "epoch", "t_epoch", "Run to the end of this epoch, then pause"))):
        col.button(label, on_click=job.step if job else None, args=(kind,), disabled=not can_step, key=key,
                   width="stretch", help=why)
    slow = cols[5].toggle("Slow motion", value=bool(v and v.slow), key="t_slow", disabled=not active,
                          help="Publish every step and wait 0.25 s after it, to watch single steps")
    if job and active and slow != v.slow:
        job.set_slow_motion(slow)
    if resume is not None:
        cols[6].button("Resume run", on_click=resume, key="t_resume", width="stretch",
                       help="Continue this run from its last finished epoch (from epoch 0 if none finished)")
    cols[7].button("Reset", on_click=reset, key="t_reset", width="stretch",
                   help="Stop (the run folder keeps every finished epoch) and go back to M_R")


def recorded_picker(runs, open_run) -> None:
    """Before any run: the shipped recordings, one click away (they open without training)."""
    if runs:
        cols = st.columns([2] + [1] * len(runs) + [3])
        cols[0].caption("Or open a recorded run, no waiting:")
        for col, run in zip(cols[1:], runs):
            col.button(run.name.removeprefix("recorded-"), key=f"open_{run.name}", icon=":material/movie:",
                       on_click=open_run, args=(run.name,), width="stretch")


# ---------------------------------------------------------------- probe your own input (Defend)


_DRAW = st.components.v2.component("advft_draw", js=(Path(__file__).parent / "draw.js").read_text(),
                                   isolate_styles=False)
PROBE_SOURCES = ("Draw a digit", "Upload an image", "An OOD image")
PNG_DATA_URL = "data:image/png;base64,"


def probe_source() -> str:
    """Where the probed input comes from (one row, above the input itself)."""
    return st.segmented_control("Input to probe", PROBE_SOURCES, default=PROBE_SOURCES[0], key="probe_source",
                                label_visibility="collapsed") or PROBE_SOURCES[0]


def probe_input(source: str, shape: tuple[int, int, int], ood_images) -> tuple["np.ndarray | None", str]:
    """The input to probe from `source` (one of PROBE_SOURCES) as uint8 C x H x W in the victim's shape, and a
    few words on what it is; (None, a hint) when there is none yet. `ood_images()` gives the OOD images to
    pick from (loaded when asked)."""
    import base64
    import binascii

    from core.data import DataError
    from core.probe import as_digit, as_photo, decode_image

    def digit(image, invert=False):
        d = as_digit(image, invert)
        return None if d is None else d if tuple(d.shape) == tuple(shape) else as_photo(d[0], shape)

    try:
        if source == PROBE_SOURCES[0]:
            st.caption("Draw a digit (white on black, like MNIST), then let go.")
            url = _DRAW(key="probe_canvas", on_drawing_change=lambda: None).drawing
            if not isinstance(url, str) or not url.startswith(PNG_DATA_URL):
                return None, "Draw a digit in the box."
            try:
                data = base64.b64decode(url[len(PNG_DATA_URL):], validate=True)
            except (binascii.Error, ValueError):
                return None, "The drawing did not arrive whole; draw again."
            image = digit(decode_image(data, "the drawing"))
            return (image, "your drawing, laid out as MNIST's digits are") if image is not None else \
                (None, "Draw a digit in the box.")
        if source == PROBE_SOURCES[1]:
            up = st.file_uploader("An image", type=["png", "jpg", "jpeg", "webp", "gif", "bmp"], key="probe_upload",
                                  label_visibility="collapsed")
            as_a_digit = st.checkbox("It is a dark digit on a light background: lay it out as MNIST's digits",
                                     key="probe_as_digit")
            if up is None:
                return None, "Upload a photo (or a picture of a digit)."
            rgb = decode_image(up.getvalue(), f"'{up.name}'")
            if as_a_digit:
                image = digit(rgb, invert=True)
                return (image, f"'{up.name}' as a digit") if image is not None else (None, f"'{up.name}' has no ink")
            return as_photo(rgb, shape), f"'{up.name}', resized as the OOD probes are"
        images = ood_images()
        i = st.slider("OOD image", 0, len(images.x) - 1, key="probe_ood")
        return images.x[i].numpy(), f"OOD image {i} ({images.source})"
    except DataError as e:
        return None, f"That image cannot be probed: {plain(e)}"


def probe_answers(result, classes, where: str, shifts: tuple[float, float] | None) -> None:
    """Both models' top answers and how far AdvFT moved the input, beside the image the models saw."""
    def lines(answer) -> str:
        return "  \n".join(f"**{plain(classes[c])}** · {100 * p:.1f}%" for c, p in answer.top)

    left, right = st.columns(2)
    left.markdown(f"**M_R answers**  \n{lines(result.before)}")
    if result.after is None:
        right.caption("No M_F yet: start a run (or open one) to see where AdvFT moves this input.")
        return
    right.markdown(f"**M_F answers** ({plain(where)})  \n{lines(result.after)}")
    if shifts is not None:
        id_shift, ood_shift = shifts
        st.caption(f"AdvFT moved this input's features by **{result.shift:.2f}**; on median it moves a test digit "
                   f"by {id_shift:.2f} and an OOD image by {ood_shift:.2f} (this snapshot's probes). "
                   "A digit should stay put, a photo should jump.")


def probe_image(image) -> None:
    """The input as the models see it, enlarged without smoothing."""
    import numpy as np

    x = np.asarray(image)
    x = x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)
    scale = max(1, 112 // x.shape[0])
    st.image(np.kron(x, np.ones((scale, scale) + (1,) * (x.ndim - 2), dtype=np.uint8)), caption="what the models see")
