"""Small view components shared by the pages. Each draws one thing from plain inputs; the page
scripts (the controllers) decide what to draw and wire the actions.

Also the session plumbing every page needs: the one UIState of the session, kept in
st.session_state and mirrored to the URL (set_ui_state is its only writer); the sidebar's Export
and style controls (drawn once, by the entry script streamlit_app.py); and cached readers of run
folders (core.runs raises RunError with a readable message for anything that does not load).
Any text that comes from a user (URL values, run names, config fields) is shown through `plain`
or html.escape, never as Markdown or HTML.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st

from app.jobs import ACTIVE, JobSlots, SessionJob, default_max_jobs
from app.state import UIState
from core import figures
from core.advft import Snapshot
from core.data import DataError, load_dataset, resolve_data_dir
from core.models import read_checkpoint
from core.runs import RunDir, resolve_runs_dir

CSS = Path(__file__).resolve().parent.parent / "assets" / "style" / "app.css"
_MARKDOWN = re.compile(r"([\\`*_\[\]<>!:~$|])")  # what can start a link, image, emphasis, code, HTML, directive


def plain(text) -> str:
    """User text for a Markdown element (st.warning, st.caption...): every Markdown character escaped,
    so a link, an image or a colour directive in a URL or a run name shows as the characters it is."""
    return _MARKDOWN.sub(r"\\\1", str(text))


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
            partial = PLOTLY_JS.with_suffix(".tmp")
            partial.write_bytes(source.read_bytes())
            partial.replace(PLOTLY_JS)
        return True
    except OSError:
        return False


def chart(fig, key: str, config: dict) -> None:
    """A Plotly figure that a rerun redraws in place (app/chart.js: moves the changed points, or
    Plotly.react on the mounted chart) instead of remounting it as st.plotly_chart does for every new figure."""
    if not plotly_js_served():
        st.plotly_chart(fig, key=key, config=config)
        return
    _CHART(data={"spec": fig.to_json(), "config": json.dumps(config), "src": PLOTLY_URL}, key=key)


# ---------------------------------------------------------------- the session's one UI state


def ui_state() -> UIState:
    """The session's UIState: parsed from the URL once per session (warnings kept to show)."""
    if "ui" not in st.session_state:
        state, warnings = UIState.from_query(st.query_params.to_dict())
        st.session_state.url_warnings = warnings
        set_ui_state(state)
    return st.session_state.ui


def set_ui_state(state: UIState) -> None:
    """The one writer of st.session_state.ui: store the state and mirror it into the URL. Widget
    callbacks call it (they run before the page), so the URL never lags behind the last edit."""
    st.session_state.ui = state
    mirror_url()


def mirror_url() -> None:
    """The URL's query string := the UIState's (only when it differs, to spare the browser history;
    the entry script calls it after every page, whose links drop the query string)."""
    query = st.session_state.ui.to_query()
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


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


# ---------------------------------------------------------------- environment


@st.cache_resource(show_spinner=False)
def job_slots() -> JobSlots:
    """Process-wide: how many training jobs may run at once across all sessions (ADVFT_MAX_JOBS)."""
    return JobSlots(default_max_jobs())


@st.cache_resource(scope="session", on_release=lambda s: s.release(), show_spinner=False)
def session_job() -> SessionJob:
    """Per browser session: its training job (Defend). Stopped when the session ends, and sooner by
    the heartbeat (see `heartbeat`)."""
    return SessionJob()


@st.cache_resource(scope="session", on_release=lambda s: s.release(), show_spinner=False)
def session_task() -> SessionJob:
    """Per browser session: its attack task (Attack page)."""
    return SessionJob()


HEARTBEAT_S = 2.0


def heartbeat() -> None:
    """While this session has active work, read its views every HEARTBEAT_S from whatever page is open:
    work nobody reads for ABANDON_AFTER_S (the tab was closed) stops itself and frees its slot."""
    works = [h.job for h in (session_job(), session_task()) if h.job is not None]
    if any(w.view().state in ACTIVE for w in works):
        st.fragment(run_every=HEARTBEAT_S)(_beat)()


def _beat() -> None:
    for holder in (session_job(), session_task()):
        if holder.job is not None:
            holder.job.view()


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    """Where jobs run, said once at start-up."""
    from core.device import describe, pick_device

    return describe(pick_device("auto"))


def data_dir() -> Path:
    return resolve_data_dir()


def runs_dir() -> Path:
    return resolve_runs_dir()


@st.cache_resource(show_spinner=False)
def victim_dataset(path: str) -> str:
    """The dataset a victim checkpoint was trained on (read from the checkpoint itself)."""
    return read_checkpoint(path)["dataset"]


@st.cache_resource(show_spinner="Looking for the dataset…")
def dataset_problem(name: str, data_dir: str) -> str | None:
    """None when the dataset loads without a download; else the reason, for the page to show."""
    try:
        load_dataset(name, data_dir, download=False)
        return None
    except (DataError, OSError) as e:
        return str(e)


# ---------------------------------------------------------------- run folders


def run_folder(name: str) -> RunDir:
    """A run by name: under the runs dir, else one of the recordings shipped in assets/recorded."""
    from core.training import RECORDED_DIR

    run = RunDir(runs_dir() / name)
    if not run.path.exists() and (RECORDED_DIR / name / "RECORDED.json").is_file():
        return RunDir(RECORDED_DIR / name)
    return run


def recording(run: RunDir) -> str | None:
    """The command that made a shipped recording; None for an ordinary run."""
    info = json.loads((run.path / "RECORDED.json").read_text()) if (run.path / "RECORDED.json").is_file() else {}
    return info.get("command") if isinstance(info, dict) else None


def read_snapshot(run: RunDir, kind: str, index: int) -> Snapshot:
    """kind 'epoch' (an epoch's snapshot) or 'frame' (the frame at a step). RunError (a readable
    message) when it is gone or does not load."""
    path = run.snapshot_path(index) if kind == "epoch" else run.frame_path(index)
    stamp = path.stat().st_mtime_ns if path.is_file() else 0
    return _cached_snapshot(str(run.path), kind, index, stamp)


@st.cache_resource(max_entries=256, show_spinner=False)  # a replay walks through up to MAX_FRAMES
def _cached_snapshot(path: str, kind: str, index: int, stamp: int) -> Snapshot:
    run = RunDir(Path(path))
    return run.load_snapshot(index) if kind == "epoch" else run.load_frame(index)


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
