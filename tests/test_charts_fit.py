"""Every chart fits the place the app gives it, in both styles, on a 1280x720 and a 1920x1080 screen: all its
legend entries, titles and tick labels drawn inside the chart, none over another, every axis with tick labels.
Checked from the text's bounding boxes in Chromium (tests/e2e.py: CHART_TEXT_PROBLEMS), never by eye.

The figures are core.figures' own, made from the shipped recordings and atlas; each is drawn by plotly.js
(the copy inside the plotly package, as the app serves it) in a box as wide as the app's column for it.
tests/test_browser.py checks the same on the live Defend and Attack pages."""

from __future__ import annotations

from pathlib import Path

import plotly
import pytest

from core import figures, load_model
from core.atlas import Atlas, shipped_atlases
from core.attacks import example_images, outputs, thief_view
from core.data import DATASETS
from core.runs import RunDir
from core.training import RECORDED_DIR, load_victim
from tests.e2e import CHROMIUM, chart_text_problems, chromium

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")]

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
SIDEBAR, PADDING, GAP = 300, 2 * 80, 16  # Streamlit's wide layout: sidebar, main block's side padding, column gap
SCREENS = (1280, 1920)


def column(screen: int, share: float = 1.0, of: float = 1.0) -> int:
    """The width of a `share` of `of` column in the main block (st.columns with one gap between two)."""
    main = screen - SIDEBAR - PADDING
    return int(main if share == of else (main - GAP) * share / of)


@pytest.fixture(scope="module")
def charts(data_dir):
    """(name, figure maker(style), width(screen)) for every chart the app draws."""
    lecture = RunDir(RECORDED_DIR / "recorded-lecture")
    classes = DATASETS["mnist"].classes
    last = lecture.load_snapshot(lecture.snapshot_epochs()[-1])
    first = lecture.load_snapshot(lecture.snapshot_epochs()[0])
    proj, ranges = figures.fixed_axes(first, fit=[last])
    history = lecture.history()
    atlas = Atlas(shipped_atlases()[0])
    m, n = atlas.margins[-1], atlas.epochs[-1]
    a_snap = atlas.snapshot(m, n)
    a_proj, a_ranges = figures.fixed_axes(a_snap)

    # A thief's view from real models and MNIST test digits: the victim M_R as the API, the recorded M_F as the thief.
    m_r, mnist = load_victim(lecture.config().victim, data_dir)
    x, y = mnist.x_test[:300], mnist.y_test[:300]
    view = thief_view(x, y, outputs(m_r, x, "cpu")[1], outputs(load_model(lecture.model_path), x, "cpu")[1], classes)
    curve = [{"queries": q, "acc": a} for q, a in ((1000, 0.41), (5000, 0.62), (10000, 0.71), (20000, 0.74))]
    sweep = {"attack": {"attack": "knockoff"}, "dataset": "mnist",
             "rows": [{"epoch": e, "surrogate_best_acc": s, "surrogate_acc": s - 0.05, "acc_mf": 0.99, "kl_test": k}
                      for e, s, k in ((0, 0.88, 1e-6), (1, 0.6, 2e-3), (3, 0.4, 8e-3), (5, 0.27, 2e-2))]}
    return [
        ("Defend: Fig. 5", lambda s: figures.fig5_panels(last, proj, ranges, classes, s), lambda w: column(w)),
        ("Defend: generator", lambda s: figures.gen_grid(last.gen_images, s), lambda w: column(w, 1, 3.4)),
        ("Defend: curves", lambda s: figures.curves({"run": history}, s), lambda w: column(w, 2.4, 3.4)),
        ("Defend: curves at M_R", lambda s: figures.curves({"run": history[:1]}, s), lambda w: column(w, 2.4, 3.4)),
        ("Defend: M_F over the run", lambda s: figures.small_multiples(
            [(f"epoch {e}", lecture.load_snapshot(e)) for e in lecture.snapshot_epochs()[::5][:3]],
            proj, ranges, classes, s), lambda w: column(w)),
        ("Atlas: Fig. 5", lambda s: figures.fig5_panels(a_snap, a_proj, a_ranges, classes, s,
                                                         now_title=f"M_F, m = {m:g}, N = {n}"), lambda w: column(w)),
        ("Atlas: trade-off", lambda s: figures.atlas_tradeoff(list(atlas.cells.values()), atlas.cell(m, n), "knockoff", s),
         lambda w: column(w, 2.4, 3.4)),
        ("Attack: accuracy vs queries", lambda s: figures.attack_curve({
            "original M_R · mnist_lenet2d (none, knockoff)": curve,
            "AdvFT M_F · recorded-lecture (none, knockoff)": curve[:2]}, s),
         lambda w: column(w)),
        ("Attack: sweep", lambda s: figures.sweep_figure(sweep, "epoch", s), lambda w: column(w)),
        ("Attack: confusions", lambda s: figures.thief_confusions(view, s), lambda w: column(w, 1, 2)),
        ("Attack: answers", lambda s: figures.thief_answers(view, example_images(view), s), lambda w: column(w, 1, 2)),
        ("Attack: per class", lambda s: figures.thief_per_class({"left (unprotected)": view, "right (AdvFT m = 10)": view}, s),
         lambda w: column(w)),
        ("Runs: curves compared", lambda s: figures.curves({"20261202-143805-lecture-m30-s0": history,
                                                                  "20261202-150112-lecture-m12-s3": history[:3]}, s), lambda w: column(w)),
    ]


@pytest.mark.parametrize("style", ("screen", "presentation"))
def test_every_chart_shows_all_its_text_unclipped_and_apart_at_both_screen_sizes(charts, style):
    problems = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.set_content("<html><body style='margin:0'><div id='chart'></div></body></html>")
        page.add_script_tag(path=str(PLOTLY_JS))
        for name, make, width in charts:
            fig = make(style)
            for screen in SCREENS:
                page.evaluate("([spec, w]) => { const d = document.getElementById('chart'); Plotly.purge(d);"
                              " d.style.width = w + 'px'; const f = JSON.parse(spec);"
                              " return Plotly.newPlot(d, f.data, f.layout).then(() => null); }",
                              [fig.to_json(), width(screen)])
                problems += [f"{name} at {screen} px ({width(screen)} px wide): {p}"
                             for p in chart_text_problems(page, "#chart")]
    assert not problems, "\n".join(problems)
