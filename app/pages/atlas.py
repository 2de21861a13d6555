"""Atlas: what margin m and epochs N do, without waiting for a single run.

Two sliders move through a precomputed grid (core.atlas: one AdvFT run per margin, attacked after
each chosen epoch by KnockoffNets and a toy DFME). A move only reads a cell that is already in
memory and redraws: the Fig. 5 panels of that cell, its numbers, and the trade-off chart with the
cell ringed. The chosen atlas and cell live in the UIState (so in the URL).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import session, views
from core import figures
from core.atlas import Atlas, AtlasCell, shipped_atlases
from core.data import DATASETS
from core.runs import RunError

RUNS_ATLAS = "atlas"  # <runs dir>/atlas/<name>: bundles made with `python -m core atlas --bundle` show up too


@st.cache_resource(show_spinner="Opening the atlas…", max_entries=8)
def open_atlas(path: str, stamp: int) -> Atlas:
    """The bundle with every snapshot decoded (a few MB): a slider move never touches the disk."""
    atlas = Atlas(path)
    atlas.snapshots()
    return atlas


def atlases() -> tuple[dict[str, Path], list[str]]:
    """The bundles to choose from (shipped, then the user's own, which replace a shipped one of the same
    name) and the problems of the user's bundles that do not open (those are left out, never chosen)."""
    found, damaged = {p.name: p for p in shipped_atlases()}, []
    mine = session.runs_dir() / RUNS_ATLAS
    if mine.is_dir():
        for p in sorted(mine.iterdir()):
            if (p / "atlas.json").is_file():
                try:
                    Atlas(p)
                    found[p.name] = p
                except RunError as e:
                    damaged.append(str(e))
    return found, damaged


@st.cache_resource(show_spinner=False, max_entries=32)
def axes(path: str, stamp: int, margin: float) -> tuple[figures.Projection, figures.Ranges]:
    """Fixed axes for one margin: M_R's features and every epoch of that margin's run fit, so moving N
    moves the points and never the axes (a larger margin pushes OOD further: the axes change with m)."""
    atlas = open_atlas(path, stamp)
    snaps = [s for n in atlas.epochs if (s := atlas.snapshot(margin, n)) is not None]
    return figures.fixed_axes(atlas.snapshot(margin, atlas.epochs[0]), fit=snaps)


def _nearest(values: list, wanted):
    return wanted if wanted in values else min(values, key=lambda v: abs(v - wanted))


def pick_cell(atlas: Atlas) -> tuple[float, int]:
    """The two sliders; the URL's cell when the grid has it, else the nearest one (said once)."""
    ui = session.ui_state()
    m = _nearest(atlas.margins, ui.atlas_m if ui.atlas_m is not None else 10.0)
    n = _nearest(atlas.epochs, ui.atlas_n if ui.atlas_n is not None else atlas.epochs[len(atlas.epochs) // 2])
    asked = [f"{k} = {v:g}" for k, v, got in (("m", ui.atlas_m, m), ("N", ui.atlas_n, n)) if v is not None and v != got]
    if asked:
        st.warning(f"This atlas has no {' or '.join(asked)}; showing the nearest cell, m = {m:g}, N = {n}.", icon="🔗")
    if (m, n) != (ui.atlas_m, ui.atlas_n):
        session.set_ui_state(ui.with_(atlas_m=m, atlas_n=n))
    for field, value in (("atlas_m", m), ("atlas_n", n)):
        st.session_state.setdefault(f"w_{field}", value)
        if st.session_state[f"w_{field}"] != value:  # the atlas changed under the widget
            st.session_state[f"w_{field}"] = value
    c1, c2 = st.columns(2)
    c1.select_slider("Margin m", atlas.margins, key="w_atlas_m", on_change=session.sync, args=("atlas_m",),
                     format_func=lambda v: f"{v:g}", help="How far AdvFT pushes OOD features from M_R's (eq. 2)")
    c2.select_slider("Epochs N", atlas.epochs, key="w_atlas_n", on_change=session.sync, args=("atlas_n",),
                     help="AdvFT epochs done; N = 0 is the unprotected victim")
    return st.session_state.w_atlas_m, st.session_state.w_atlas_n


def _k(queries: int) -> str:
    return f"{queries / 1000:g}k"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def numbers(cell: AtlasCell) -> None:
    k, d = cell.knockoff, cell.dfme
    cols = st.columns(6)
    cols[0].metric("Acc_MF (honest users)", f"{100 * cell.acc_after:.2f}%",
                   f"{100 * (cell.acc_after - cell.acc_mr):+.2f} points vs M_R", delta_color="off",
                   help="Test accuracy of the protected model; M_R's is the reference")
    cols[1].metric("KL_test", "0" if cell.kl_test == 0 else f"{cell.kl_test:.1e}",
                   help="KL(P_R || P_F) on the test set: how much honest users' answers changed")
    cols[2].metric("OOD agreement", _pct(cell.ood_agreement),
                   help="How often M_F still gives M_R's top-1 answer on natural OOD images (CIFAR-10)")
    shift = "-" if not cell.id_shift else f"{cell.ood_shift / cell.id_shift:.1f}×"
    cols[3].metric("OOD / ID feature shift", shift,
                   help=f"Mean distance moved by OOD features ({cell.ood_shift:.2f}) over ID features ({cell.id_shift:.2f})")
    if k:
        cols[4].metric(f"KnockoffNets ({_k(k['queries'])} {k['labels']})", _pct(k["surrogate_best_acc"]),
                       f"final {_pct(k['surrogate_acc'])}", delta_color="off",
                       help=f"The strong thief's surrogate ({k['surrogate_arch']}): best test accuracy over its "
                            "training (the paper's protocol), and at its end")
    if d:
        budget = d.get("budget") or d["queries"]  # bundles made before status and budget were kept
        diverged = d.get("status") == "diverged"
        cols[5].metric(f"toy DFME ({_k(budget)})", _pct(d["surrogate_best_acc"]),
                       f"diverged after {_k(d['queries'])} queries" if diverged else f"final {_pct(d['surrogate_acc'])}",
                       delta_color="off",
                       help="A data-free thief at a budget a CPU runs in seconds (the paper's uses 6M queries). "
                            "Against a protected model its student's loss can blow up to nan: it then stops, and its "
                            "best accuracy from before counts")


def main() -> None:
    st.title("Atlas: margin × epochs, precomputed")
    views.show_url_warnings()
    found, damaged = atlases()
    for problem in damaged:
        st.warning(f"{views.plain(problem)}. Left out; the other atlases are not affected.")
    if not found:
        st.info("No atlas here yet. Make one (about an hour on a 2-core CPU for the default grid):")
        st.code("python -m core atlas --victim mnist_lenet2d --out runs/atlas-grid --bundle runs/atlas/mnist_lenet2d",
                language="bash")
        return
    ui = session.ui_state()
    names = list(found)
    name = ui.atlas if ui.atlas in found else names[0]
    if len(names) > 1:
        st.session_state.setdefault("w_atlas", name)
        name = st.selectbox("Atlas", names, key="w_atlas", on_change=session.sync, args=("atlas",))
    if name != ui.atlas:
        session.set_ui_state(ui.with_(atlas=name))
    path = found[name]
    stamp = (path / "atlas.json").stat().st_mtime_ns
    try:
        atlas = open_atlas(str(path), stamp)
    except RunError as e:
        st.error(views.plain(e))
        return
    meta, export, style = atlas.meta, views.export_settings(), session.ui_state().style
    views.explain(
        f"Every cell is a real AdvFT run of <b>{meta['victim']}</b>, attacked. Move the sliders: nothing trains, "
        "the page only draws what the grid recorded. Larger m and more epochs push OOD features further "
        "(the thief's surrogate gets worse) while ID features stay put (Acc_MF and KL_test barely move).")
    m, n = pick_cell(atlas)
    cell, snapshot = atlas.cell(m, n), atlas.snapshot(m, n)
    if cell is None or snapshot is None:
        st.warning(f"This atlas has no cell m = {m:g}, N = {n} (it failed or never ran: {', '.join(meta['missing'])}).")
        return
    numbers(cell)

    proj, ranges = axes(str(path), stamp, m)
    classes = DATASETS[meta["dataset"]].classes
    title = f"M_F, m = {m:g}, N = {n}"
    fig = session.held("atlas_fig5", (str(path), stamp, m, style),
                      lambda: figures.fig5_panels(snapshot, proj, ranges, classes, style, now_title=title))
    figures.refresh_fig5(fig, snapshot, proj, ranges, now_title=title)
    views.fig5_view(fig, export, f"atlas-m{m:g}-n{n}", key="atlas_fig5")
    st.caption(f"Axes fixed for m = {m:g} (every N fits). Plane: {proj.label}.")

    left, right = st.columns([2.4, 1])
    with right:
        thief = st.radio("Thief on the chart", ("knockoff", "dfme"), horizontal=True, key="w_atlas_thief",
                         format_func=lambda t: "KnockoffNets" if t == "knockoff" else "toy DFME")
    with left:
        st.markdown("**Protection vs fidelity**: one point per cell, a line per margin through its epochs; x is "
                    f"KL_test(P_R ‖ P_F) on a log axis (N = 0, where M_F is M_R, drawn at {figures.KL_FLOOR:g}), "
                    "y the chosen thief's best surrogate accuracy")
        trade = session.held("atlas_tradeoff", (str(path), stamp, thief, style),
                            lambda: figures.atlas_tradeoff(list(atlas.cells.values()), cell, thief, style))
        figures.ring_cell(trade, cell, thief)
        views.chart(trade, "atlas_tradeoff", export.config(f"{name}-tradeoff"))
    with right:
        a = meta["attack"]
        st.caption(f"KnockoffNets: {a['queries']:,} {a['labels']} queries from {a['transfer']}, "
                   f"{a['surrogate']} surrogate, seed {a['seed']}. Toy DFME: "
                   + (f"{meta['dfme']['queries']:,} queries, {meta['dfme']['surrogate']} surrogate." if meta["dfme"]
                      else "not run."))
        st.caption(f"AdvFT: {meta['advft']['i_g']} G steps and {meta['advft']['i_f']} F steps per epoch, "
                   f"lr {meta['advft']['lr_f']:g} ({meta['advft']['lr_schedule']}), one run per margin.")
        st.caption(f"Made with `{views.plain(meta['command'])}` in {meta['seconds'] / 60:.0f} min "
                   f"({', '.join(meta['devices'])}) on {meta['made']}.")
    views.server_export({"Fig. 5 panels": fig, "trade-off": trade}, export, f"atlas-m{m:g}-n{n}", key="atlas")


main()
