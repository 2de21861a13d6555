"""Small view components shared by the pages. Each draws one thing from plain inputs; the page
scripts (the controllers) decide what to draw and wire the actions.

Also the session plumbing every page needs: the one UIState of the session, kept in
st.session_state and mirrored to the URL; the sidebar's Export and style controls; and readers
of run folders that turn any failure into a readable message instead of a traceback.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st

from app import plots
from app.jobs import JobSlots, SessionJob, default_max_jobs
from app.state import UIState
from core.data import DataError, load_dataset, resolve_data_dir
from core.models import read_checkpoint
from core.runs import RunDir, resolve_runs_dir

CSS = Path(__file__).resolve().parent.parent / "assets" / "style" / "app.css"


def page_setup(title: str) -> None:
    st.set_page_config(page_title=f"AdvFT · {title}", page_icon="🛡️", layout="wide")
    st.html(f"<style>{CSS.read_text()}</style>")


# ---------------------------------------------------------------- the session's one UI state


def ui_state() -> UIState:
    """The session's UIState: parsed from the URL once per session (warnings kept to show)."""
    if "ui" not in st.session_state:
        state, warnings = UIState.from_query(st.query_params.to_dict())
        st.session_state.ui = state
        st.session_state.url_warnings = warnings
    return st.session_state.ui


def set_ui_state(state: UIState) -> None:
    """Store the state and mirror it into the URL (only when it changed, to spare the browser history)."""
    st.session_state.ui = state
    query = state.to_query()
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def show_url_warnings() -> None:
    for w in st.session_state.get("url_warnings", []):
        st.warning(f"Ignored part of the link: {w}", icon="🔗")


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
        return plots.chart_config(self.fmt, self.width, self.height, self.scale, filename)


def style_and_export_sidebar(ui: UIState) -> tuple[UIState, Export]:
    """The sidebar's 'Presentation' toggle and 'Export' box (format, size, scale for the chart camera)."""
    with st.sidebar:
        presentation = st.toggle("Presentation style", value=ui.style == "presentation", key="w_style",
                                 help="White background, large fonts, thick markers, colour-blind-safe colours")
        with st.expander("Export", expanded=False):
            st.caption("The camera in each chart's toolbar downloads it with these settings.")
            fmt = st.radio("Format", ("png", "svg"), horizontal=True, key="w_export_fmt")
            c1, c2 = st.columns(2)
            width = c1.number_input("Width px", 400, 4000, 1600, 100, key="w_export_w")
            height = c2.number_input("Height px", 300, 3000, 800, 100, key="w_export_h")
            scale = st.slider("PNG scale", 3, 6, 3, key="w_export_scale", help="3x or more for sharp slides")
    style = "presentation" if presentation else "screen"
    return replace(ui, style=style), Export(fmt, int(width), int(height), float(scale))


# ---------------------------------------------------------------- environment


@st.cache_resource(show_spinner=False)
def job_slots() -> JobSlots:
    """Process-wide: how many training jobs may run at once across all sessions (ADVFT_MAX_JOBS)."""
    return JobSlots(default_max_jobs())


@st.cache_resource(scope="session", on_release=lambda s: s.stop(), show_spinner=False)
def session_job() -> SessionJob:
    """Per browser session; when the session ends (tab closed), its job is told to stop."""
    return SessionJob()


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


# ---------------------------------------------------------------- run folders, read defensively


class RunProblem(Exception):
    """A run folder is gone, or one of its files does not load; the message says which."""


def read_history(run: RunDir) -> list[dict]:
    if not run.path.is_dir():
        raise RunProblem(f"run '{run.name}' no longer exists under {run.path.parent}")
    try:
        return run.history()
    except (OSError, ValueError) as e:
        raise RunProblem(f"run '{run.name}': history.jsonl does not read ({str(e)[:120]})") from None


def read_snapshot(run: RunDir, epoch: int) -> dict:
    try:
        return _cached_snapshot(str(run.path), epoch, _mtime(run.path / "snapshots" / f"epoch_{epoch:04d}.pt"))
    except FileNotFoundError:
        raise RunProblem(f"run '{run.name}' has no saved snapshot for epoch {epoch} (deleted?)") from None
    except Exception as e:  # torch.load on a truncated or foreign file: zip, pickle or runtime errors
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise RunProblem(f"run '{run.name}': the epoch {epoch} snapshot does not load ({reason})") from None


def snapshot_epochs(run: RunDir) -> list[int]:
    try:
        return run.snapshot_epochs()
    except (OSError, ValueError, IndexError):
        return []


def _mtime(path: Path) -> float:
    return path.stat().st_mtime  # FileNotFoundError when it is gone


@st.cache_resource(max_entries=64, show_spinner=False)
def _cached_snapshot(path: str, epoch: int, mtime: float) -> dict:
    return RunDir(Path(path)).load_snapshot(epoch)


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


# ---------------------------------------------------------------- plots with their explanations


def fig5_view(fig, export: Export, name: str, key: str) -> None:
    st.plotly_chart(fig, key=key, config=export.config(f"{name}-fig5"))
    explain("Left: the original model M_R; right: the fine-tuned M_F, on the same fixed axes. Look for the "
            "coloured ID digits staying on their class rays while the grey OOD crosses and the generator's "
            "stars move away: ID features kept (fidelity), OOD features distorted (the defence).")


def generator_view(fig, export: Export, name: str, key: str) -> None:
    st.plotly_chart(fig, key=key, config=export.config(f"{name}-generator"))
    explain("G(z) for a fixed z. The generator hunts for inputs on which M_F still agrees with M_R (eq. 1); "
            "these are the inputs M_F is then trained to push away. In the first epoch M_F still equals M_R, so "
            "L_G has no gradient and G stays put until M_F has moved.")


def curves_view(fig, export: Export, name: str, key: str) -> None:
    st.plotly_chart(fig, key=key, config=export.config(f"{name}-curves"))
    explain("Per epoch. Acc and KL_test show what honest users see (should stay flat / tiny); OOD agreement "
            "is how often M_F still answers like M_R on natural OOD images: lower is a worse teacher for a thief.")
