"""The session plumbing every page shares: the one UIState of the session (kept in st.session_state and
mirrored to the URL; set_ui_state is its only writer, sync the widgets' callback), the session's background
work and the process-wide queue, the figures a session holds between reruns, and cached readers of
run folders (core.runs raises RunError with a readable message for anything that does not load).
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from app.jobs import ACTIVE, JobSlots, SessionJob, default_max_jobs
from app.state import UIState
from core.advft import Snapshot
from core.data import DataError, load_dataset, resolve_data_dir
from core.models import read_checkpoint
from core.runs import RunDir, resolve_runs_dir


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


def sync(name: str) -> None:
    """A widget's callback (its key is w_<name>): its new value into the UIState, and so the URL, before
    the page reruns. `name` is a UIState field or a knob of core.knobs."""
    set_ui_state(ui_state().with_(**{name: st.session_state[f"w_{name}"]}))


def put_widgets(ui: UIState, names) -> None:
    """Make `ui` the state and put its values into these widgets (allowed before they are drawn)."""
    set_ui_state(ui)
    for name in names:
        st.session_state[f"w_{name}"] = getattr(ui, name)


def held(kind: str, key: tuple, build, source=None):
    """This session's figure of a kind, rebuilt only when `key` changes (or `source`, compared by identity:
    published snapshots are never mutated, and an id() could be reused once one is freed). A live or
    atlas rerun then only swaps the moving points into the figure it holds (figures.refresh_fig5, ring_cell),
    ~5 ms instead of ~250 ms of rebuilding on a 2-core CPU. Per session: the caller mutates it."""
    memo = st.session_state.setdefault("held_figures", {})
    if kind not in memo or memo[kind][0] is not source or memo[kind][1] != key:
        memo[kind] = (source, key, build())
    return memo[kind][2]


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
    from core.training import run_by_name

    return run_by_name(name, runs_dir())


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


# ---------------------------------------------------------------- the machine and M_R before any run


@st.cache_resource(show_spinner=False)
def device():
    """Where this server's work runs (the worker processes use the same)."""
    from core.device import pick_device

    return pick_device("auto")


@st.cache_resource(show_spinner="Scoring M_R on the probe sets…", max_entries=8)
def preview(victim: str, data_dir: str, preview_values: tuple) -> Snapshot:
    """M_R before any training, kept here and on disk under <runs dir>/.cache (core.training.preview_snapshot),
    keyed by the settings it depends on (PREVIEW_FIELDS), not by the training knobs."""
    from core.advft import AdvFTConfig
    from core.training import PREVIEW_FIELDS, preview_snapshot

    config = AdvFTConfig(**dict(zip(PREVIEW_FIELDS, preview_values)))
    return preview_snapshot(victim, config, data_dir, device(), cache_dir=runs_dir() / ".cache")



def missing_dataset(victim: str) -> tuple[str, str] | None:
    """None when the victim's dataset loads here without a download; else (its title, why not)."""
    from core.data import DATASETS
    from core.errors import UserError
    from core.victims import victim_path

    try:
        dataset = victim_dataset(str(victim_path(victim)))
        problem = dataset_problem(dataset, str(data_dir()))
    except UserError as e:
        dataset, problem = None, str(e)
    return None if problem is None else (DATASETS[dataset].title if dataset else "The victim", problem)


def held_axes(key: str, snapshot: Snapshot, kind: str, seed: int):
    """Projection and fixed ranges for a run (or a preview), made once from M_R's features, then held."""
    from core import figures

    def build():
        if snapshot.before.id.shape[1] > 2 and kind == "umap":
            with st.spinner("Fitting UMAP on M_R's features (the first time compiles numba code: ~30 s)…"):
                return figures.fixed_axes(snapshot, "umap", seed)
        return figures.fixed_axes(snapshot, "pca", seed)
    return held("axes", (key, kind), build)


# ---------------------------------------------------------------- the probe's models and OOD images


@st.cache_resource(max_entries=8, show_spinner=False)
def _model(path: str, stamp: int):
    from core.models import load_model

    return load_model(path, "cpu")  # one image at a time: the CPU answers in a millisecond


def model(path: Path):
    """A checkpoint's model, loaded once per version of the file (a live run saves M_F after each epoch);
    None when there is none. CheckpointError (a readable message) for one that does not load."""
    path = Path(path)
    if not path.is_file():
        return None
    return _model(str(path), path.stat().st_mtime_ns)


@st.cache_resource(max_entries=4, show_spinner="Loading OOD images…")
def ood_examples(source: str, shape: tuple, data_dir: str, n: int = 48):
    """A few OOD images of the run's source to probe with (another seed than the run's probes)."""
    from core.data import load_ood

    return load_ood(source, shape, n, data_dir, seed=7)
