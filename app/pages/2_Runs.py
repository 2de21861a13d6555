"""Runs: every run folder under the runs dir, with its status and key metrics; reopen, compare, delete.

A folder that vanishes or a file that does not load is reported in its row (or in place of its
plot); the other runs are listed and usable as usual.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: `core` and `app` import from here
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import plots, views  # noqa: E402
from app.state import for_run  # noqa: E402
from core.data import DATASETS  # noqa: E402
from core.runs import RunDir, list_runs  # noqa: E402

LIVE_STATES = ("running", "paused")


def runs_table(runs: list[RunDir]) -> tuple[list[dict], dict[str, str]]:
    """One row per run, and the problems of runs whose files do not read."""
    live = views.job_slots().running_dirs()
    rows, problems = [], {}
    for run in runs:
        cfg, status = run.config(), run.status()
        try:
            history = views.read_history(run)
        except views.RunProblem as e:
            problems[run.name] = str(e)
            history = []
        last = history[-1] if history else {}
        state = status.get("status", "unknown")
        if state in LIVE_STATES and run.path.resolve() not in live:
            state = "interrupted"  # the process that wrote it is gone; resume it from the Defend page
        rows.append({
            "run": run.name, "status": state, "victim": f"{cfg.get('dataset', '?')} · {cfg.get('arch', '?')}",
            "m": (cfg.get("advft") or {}).get("margin"),
            "epochs": f"{last.get('epoch', 0)} / {(cfg.get('advft') or {}).get('epochs', '?')}",
            "Acc_MR": last.get("acc_before"), "Acc_MF": last.get("acc_after"), "KL_test": last.get("kl_test"),
            "OOD agreement": last.get("ood_agreement"), "created": cfg.get("created", ""),
            "note": problems.get(run.name, status.get("message", "")),
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
    state, warnings = for_run(run.name, run.config())
    for w in warnings:
        st.warning(f"Reopening '{run.name}': {w}")
    if st.button("Open in Defend (timeline view)", key="open", icon=":material/open_in_new:"):
        views.set_ui_state(state)
        st.session_state.pop("axes", None)
        st.switch_page("Defend.py", query_params=state.to_query())
    st.caption("Bookmarkable link: `?" + "&".join(f"{k}={v}" for k, v in state.to_query().items()) + "`")


def delete_controls(run: RunDir) -> None:
    own = views.session_job().job
    if own is not None and own.view().active and own.spec.run_dir.resolve() == run.path.resolve():
        st.info("This run is training in this tab; stop it (Reset on the Defend page) before deleting it.")
        return
    if st.session_state.get("pending_delete") != run.name:
        if st.button("Delete…", key="delete", icon=":material/delete:"):
            st.session_state.pending_delete = run.name
            st.rerun()
        return
    st.warning(f"Delete run **{run.name}** and all its files? This cannot be undone.")
    c1, c2 = st.columns(2)
    if c1.button("Yes, delete it", type="primary", key="confirm_delete"):
        run.delete()
        st.session_state.pop("pending_delete", None)
        st.toast(f"Deleted {run.name}")
        st.rerun()
    if c2.button("Cancel", key="cancel_delete"):
        st.session_state.pop("pending_delete", None)
        st.rerun()


def compare(runs: list[RunDir], export: views.Export, style: str) -> None:
    """Curves overlaid, and the final M_F panels side by side on shared axes."""
    histories, finals = {}, []
    for run in runs:
        try:
            histories[run.name] = views.read_history(run)
            epochs = views.snapshot_epochs(run)
            if epochs:
                finals.append((run, views.read_snapshot(run, epochs[-1]), epochs[-1]))
        except views.RunProblem as e:
            st.error(f"{e}; left out of the comparison.")
    if histories:
        fig = plots.curves(histories, style)
        st.plotly_chart(fig, key="compare_curves", config=export.config("compare-curves"))
        views.explain("Line dash tells the runs apart; colours keep their roles (L_G in the generator's colour, "
                      "M_F's metrics in M_F's). A larger margin usually lowers OOD agreement faster at a small "
                      "cost in KL_test.")
    if len(finals) < 1:
        return
    victims = {str(r.config().get("victim")) for r, _, _ in finals}
    if len(victims) > 1:
        st.info("These runs start from different victims, so their feature spaces differ: the panels below "
                "share one projection and axes only for runs of the same victim.")
        finals = [f for f in finals if str(f[0].config().get("victim")) == str(finals[0][0].config().get("victim"))]
    first = finals[0][1]
    proj = plots.Projection(first["id_ref"], "pca")
    ref = plots.panel_points(first, proj, "ref")
    ranges = plots.Ranges.around(ref.id, ref.ood, ref.gen)
    for _, snap, e in finals:
        now = plots.panel_points(snap, proj, "now")
        ranges.extend(f"epoch {e}", now.id, now.ood, now.gen)
    classes = DATASETS.get(finals[0][0].config().get("dataset"), DATASETS["mnist"]).classes
    panels = [(f"{r.name} (m={(r.config().get('advft') or {}).get('margin')}, epoch {e})", s) for r, s, e in finals]
    st.plotly_chart(plots.small_multiples(panels, proj, ranges, classes, style, height=380), key="compare_fig5",
                    config=export.config("compare-fig5"))
    views.explain("The last saved M_F of each run on the same axes: compare how far the OOD crosses and the "
                  "generator's stars were pushed while the ID digits stayed on their rays.")


def main() -> None:
    views.page_setup("Runs")
    ui = views.ui_state()
    ui, export = views.style_and_export_sidebar(ui)
    st.session_state.ui = ui
    st.title("Runs")
    root = views.runs_dir()
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
        st.warning(f"{problem}. The other runs are not affected.")

    by_name = {r.name: r for r in runs}
    st.subheader("One run")
    name = st.selectbox("Run", list(by_name), key="run_pick")
    run = by_name[name]
    if not run.path.is_dir():
        st.error(f"Run '{name}' was deleted meanwhile. The other runs are not affected.")
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
