"""Runs: every run folder under the runs dir, with its status and key metrics; reopen, compare, delete.

A folder that vanishes or a file that does not load is reported in its row (or in place of its
plot); the other runs are listed and usable as usual.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import session, views
from app.state import for_run
from core import figures
from core.data import DATASETS
from core.runs import RunDir, RunError, list_runs


def runs_table(runs: list[RunDir]) -> tuple[list[dict], dict[str, str]]:
    """One row per run (RunDir.summary), and the problems of runs whose files do not read."""
    rows, problems = [], {}
    for run in runs:
        s = run.summary()
        if s.problem:
            problems[run.name] = s.problem
        rows.append({
            "run": s.name, "status": s.status, "victim": f"{s.dataset} · {s.arch}", "m": s.margin,
            "epochs": f"{s.epoch} / {'-' if s.epochs is None else s.epochs}",
            "Acc_MR": s.acc_before, "Acc_MF": s.acc_after, "KL_test": s.kl_test,
            "OOD agreement": s.ood_agreement, "created": s.created, "note": s.problem or s.message,
        })
    return rows, problems


def safe_list(root: Path) -> list[RunDir]:
    """list_runs, retried once if a folder disappears while it is being listed."""
    for _ in range(2):
        try:
            return list_runs(root)
        except OSError:
            continue
    st.error(f"Could not list the runs under '{root}'.")
    return []


def open_button(run: RunDir) -> None:
    try:
        state, warnings = for_run(run.name, run.config())
    except RunError as e:
        st.error(views.plain(e))
        return
    for w in warnings:
        st.warning(views.plain(f"Reopening '{run.name}': {w}"))
    if st.button("Open in Defend (timeline view)", key="open", icon=":material/open_in_new:"):
        session.set_ui_state(state)
        st.switch_page("app/pages/defend.py", query_params=state.to_query())
    st.caption("Bookmarkable link:")
    st.code("?" + "&".join(f"{k}={v}" for k, v in state.to_query().items()), language=None)


def delete_controls(run: RunDir) -> None:
    if run.is_locked():
        st.info("This run is training right now (in this tab or another); stop it before deleting it.")
        return
    if st.session_state.get("pending_delete") != run.name:
        if st.button("Delete…", key="delete", icon=":material/delete:"):
            st.session_state.pending_delete = run.name
            st.rerun()
        return
    st.warning(f"Delete run **{views.plain(run.name)}** and all its files? This cannot be undone.")
    c1, c2 = st.columns(2)
    if c1.button("Yes, delete it", type="primary", key="confirm_delete"):
        st.session_state.pop("pending_delete", None)
        try:
            done = run.delete()
        except RunError as e:  # it started training in another tab since this page was drawn, or files are left
            st.error(views.plain(e))
            return
        st.toast(views.plain(done))
        st.rerun()
    if c2.button("Cancel", key="cancel_delete"):
        st.session_state.pop("pending_delete", None)
        st.rerun()


def compare(runs: list[RunDir], export: views.Export, style: str) -> None:
    """Curves overlaid, and the final M_F panels side by side on shared axes."""
    histories, finals = {}, []
    for run in runs:
        try:
            config, history = run.config(), run.history()
            epochs = run.snapshot_epochs()
            if epochs:
                finals.append((run, config, session.read_snapshot(run, "epoch", epochs[-1]), epochs[-1]))
            histories[run.name] = history
        except RunError as e:
            st.error(f"{views.plain(e)}; left out of the comparison.")
    if histories:
        fig = figures.curves(histories, style)
        views.chart(fig, "compare_curves", export.config("compare-curves"))
        views.explain("Line dash tells the runs apart; colours keep their roles (L_G in the generator's colour, "
                      "M_F's metrics in M_F's). A larger margin usually lowers OOD agreement faster at a small "
                      "cost in KL_test.")
    if len(finals) < 1:
        return
    if len({Path(c.victim).stem for _, c, _, _ in finals}) > 1:
        st.info("These runs start from different victims, so their feature spaces differ: the panels below "
                "share one projection and axes only for runs of the same victim.")
        finals = [f for f in finals if Path(f[1].victim).stem == Path(finals[0][1].victim).stem]
    proj, ranges = figures.fixed_axes(finals[0][2], fit=[snap for _, _, snap, _ in finals])
    classes = DATASETS.get(finals[0][1].dataset, DATASETS["mnist"]).classes
    panels = [(f"{r.name} (m={c.advft.margin:g}, epoch {e})", s) for r, c, s, e in finals]
    views.chart(figures.small_multiples(panels, proj, ranges, classes, style, height=380), "compare_fig5",
                export.config("compare-fig5"))
    views.explain("The last saved M_F of each run on the same axes: compare how far the OOD crosses and the "
                  "generator's stars were pushed while the ID digits stayed on their rays.")


def main() -> None:
    ui = session.ui_state()
    export = views.export_settings()
    st.title("Runs")
    root = session.runs_dir()
    runs = safe_list(root)
    if not runs:
        st.info(f"No runs under `{root}` yet. Start one on the Defend page (or `python -m core advft --out "
                f"{root}/NAME`).")
        return
    rows, problems = runs_table(runs)
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_config={"Acc_MR": st.column_config.NumberColumn(format="%.4f"),
                                "Acc_MF": st.column_config.NumberColumn(format="%.4f"),
                                "KL_test": st.column_config.NumberColumn(format="%.2e"),
                                "OOD agreement": st.column_config.NumberColumn(format="%.2f")})
    for name, problem in problems.items():
        st.warning(f"{views.plain(problem)}. The other runs are not affected.")

    by_name = {r.name: r for r in runs}
    st.subheader("One run")
    name = st.selectbox("Run", list(by_name), key="run_pick")
    run = by_name[name]
    if not run.path.is_dir():
        st.error(f"Run '{views.plain(name)}' was deleted meanwhile. The other runs are not affected.")
    else:
        c1, c2 = st.columns([2, 1])
        with c1:
            open_button(run)
        with c2:
            delete_controls(run)

    st.subheader("Compare runs")
    chosen = st.multiselect("Runs to compare (e.g. two margins)", list(by_name), key="compare_pick",
                            max_selections=4)
    if len(chosen) >= 2:
        compare([by_name[c] for c in chosen], export, ui.style)
    else:
        st.caption("Pick two or more runs: their curves are overlaid and their final Fig. 5 panels drawn side "
                   "by side.")


main()
