"""Drive the app in a real browser: start `streamlit run streamlit_app.py` on a free port, open
Debian's Chromium through Playwright, and wait for what Streamlit's own end-to-end suite waits for.
Used by the browser tests (tests/test_browser.py) and the app benchmark (bench/bench_app.py).
Needs the test requirements (playwright) and /usr/bin/chromium; the app itself never imports this.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
# A page's Fig. 5 panels are drawn when the first Plotly chart holds its traces (rays, classes, OOD, G(z)).
FIG5_DRAWN = ("() => { const e = document.querySelector('.js-plotly-plot');"
              " return !!(e && e.data && e.data.length > 10); }")
# The M_F panel's points (its traces carry meta 'now:<role>'), as one string to compare.
MF_POINTS = ("() => { const e = document.querySelector('.js-plotly-plot'); if (!e || !e.data) return null;"
             " return JSON.stringify(e.data.filter(t => (t.meta || '').startsWith('now:')).map(t => [t.x, t.y])); }")
# The step of the frame the Fig. 5 chart has drawn (core.figures.frame_meta; app/chart.js sets it once drawn).
DRAWN_STEP = ("() => { const e = document.querySelector('.js-plotly-plot');"
              " return e && e.layout && e.layout.meta ? e.layout.meta.step : null; }")
# The points drawn in the M_R and M_F panels (SVG paths), for every trace of each.
PANEL_POINTS = ("() => ['xy', 'x2y2'].map(s => document.querySelectorAll("
                "`.js-plotly-plot .subplot.${s} .scatterlayer path.point`).length)")
# The zoom panel's OOD crosses in screen pixels (data coordinates through the drawn axis scale).
ZOOM_OOD_PIXELS = ("() => { const e = document.querySelector('.js-plotly-plot'); if (!e || !e.data) return null;"
                   " const t = (e._fullData || []).find(t => t.meta === 'zoom:ood'); const L = e._fullLayout;"
                   " if (!t || !L.xaxis3) return null;"
                   " const sx = L.xaxis3._length / (L.xaxis3.range[1] - L.xaxis3.range[0]);"
                   " const sy = L.yaxis3._length / (L.yaxis3.range[1] - L.yaxis3.range[0]);"
                   " return Array.from(t.x).map((x, i) => [x * sx, t.y[i] * sy]); }")

# What keeps a chart's text from being read (a chart = a '.js-plotly-plot' element): a legend entry, title or tick
# label drawn outside the chart or over another one, a legend that scrolls (entries hidden), an axis with
# tick labels switched on that shows fewer than two. Text boxes are the rendered <text> elements' bounding
# boxes; two boxes overlap when they share more than 2 px each way (glyph boxes include the line's leading).
CHART_TEXT_PROBLEMS = """(gd) => {
  const box = gd.getBoundingClientRect(), items = [], problems = [];
  const shown = el => { for (let e = el; e && e !== gd; e = e.parentElement) {
    const s = getComputedStyle(e); if (s.display === 'none' || s.visibility === 'hidden' || s.opacity === '0') return false; }
    return true; };
  const add = (el, kind) => { const text = el.textContent.trim(); if (!text || !shown(el)) return;
    const r = el.getBoundingClientRect(); if (!r.width || !r.height) return;
    items.push({kind, text, l: r.left, t: r.top, r: r.right, b: r.bottom}); };
  gd.querySelectorAll('.legend .legendtext').forEach(e => add(e, 'legend entry'));
  gd.querySelectorAll('.annotation-text').forEach(e => add(e, 'title'));
  gd.querySelectorAll('.gtitle').forEach(e => add(e, 'chart title'));
  gd.querySelectorAll('.infolayer text').forEach(e => {
    if (/^[xy][0-9]*title$/.test(e.getAttribute('class') || '')) add(e, 'axis title'); });
  const isTick = e => /^[xy][0-9]*tick$/.test(e.parentElement.getAttribute('class') || '');
  gd.querySelectorAll('g text').forEach(e => { if (isTick(e)) add(e, 'tick label'); });
  gd.querySelectorAll('.colorbar text').forEach(e => add(e, 'colour bar label'));
  const say = i => `${i.kind} '${i.text.slice(0, 40)}'`;
  for (const i of items)
    if (i.l < box.left - 1 || i.r > box.right + 1 || i.t < box.top - 1 || i.b > box.bottom + 1)
      problems.push(`${say(i)} is cut by the chart's edge`);
  for (let a = 0; a < items.length; a++) for (let b = a + 1; b < items.length; b++) {
    const i = items[a], j = items[b];
    const w = Math.min(i.r, j.r) - Math.max(i.l, j.l), h = Math.min(i.b, j.b) - Math.max(i.t, j.t);
    if (w > 2 && h > 2) problems.push(`${say(i)} overlaps ${say(j)}`);
  }
  gd.querySelectorAll('.legend .scrollbar').forEach(s => {
    if (parseFloat(s.getAttribute('height') || '0') > 0 && shown(s)) problems.push('the legend scrolls: entries hidden'); });
  const L = gd._fullLayout || {};
  for (const key of Object.keys(L).filter(k => /^[xy]axis[0-9]*$/.test(k))) {
    const ax = L[key]; if (!ax || !ax.visible || !ax.showticklabels) continue;
    const n = Array.from(gd.querySelectorAll(`g.${ax._id}tick > text`)).filter(e => e.textContent.trim() && shown(e)).length;
    if (n < 2) problems.push(`${key} shows ${n} tick label${n === 1 ? '' : 's'}`);
  }
  return problems;
}"""


def chart_text_problems(page, selector: str = ".js-plotly-plot") -> list[str]:
    """CHART_TEXT_PROBLEMS for every chart matching `selector` on the page."""
    return [p for chart in page.locator(selector).all() for p in chart.evaluate(CHART_TEXT_PROBLEMS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(env: dict, log: Path, timeout: float = 60):
    """`streamlit run streamlit_app.py` on a free port; yields (url, started_at) once /_stcore/health says ok."""
    port = free_port()
    started = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.port", str(port),
             "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.perf_counter() + timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                        break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() > deadline:
                        raise RuntimeError(f"streamlit did not start; see {log}") from None
                    time.sleep(0.05)
            yield url, started
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def chromium():
    """Debian's Chromium, driven by Playwright; closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser):
    """A tab in a fresh browser context (its own cookies and storage: a new Streamlit session)."""
    return browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True).new_page()


@contextlib.contextmanager
def tab(browser):
    """new_page, closed (with its context) on exit."""
    page = new_page(browser)
    try:
        yield page
    finally:
        page.context.close()


@contextlib.contextmanager
def chromium_page():
    """One tab in a browser of its own."""
    with chromium() as browser, tab(browser) as page:
        yield page


def wait_loaded(page, timeout_ms: int = 240_000) -> None:
    """What Streamlit's own e2e suite waits for, then the Fig. 5 panels."""
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout_ms)
    page.wait_for_function(FIG5_DRAWN, timeout=timeout_ms)


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Until the page's script run has ended (what Streamlit's own e2e suite waits for after an input)."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout_ms)


def slider_step(page, label: str, key: str = "ArrowRight") -> None:
    """Move a Streamlit slider one option along from the keyboard, as a user who tabbed to it would."""
    page.get_by_role("slider", name=label).first.press(key)


def wait_mf_change(page, before, timeout_ms: int = 30_000) -> None:
    """Until the M_F panel's points differ from `before` (a MF_POINTS reading)."""
    page.wait_for_function(f"before => {{ const now = ({MF_POINTS})(); return now !== null && now !== before; }}",
                           arg=before, timeout=timeout_ms, polling=10)


def wait_settled(page, quiet_ms: int = 1000, timeout_ms: int = 30_000) -> None:
    """Until the M_F panel is drawn and has not changed for `quiet_ms` (after Pause, the frames already on
    their way still land for a moment; a toolbar click during such a redraw can be lost)."""
    page.wait_for_function(
        f"""quiet => {{ const now = ({MF_POINTS})(); const t = performance.now();
            if (now === null) {{ window.__settled = undefined; return false; }}
            if (window.__settled === undefined || window.__settled.points !== now) window.__settled = {{points: now, since: t}};
            return t - window.__settled.since >= quiet; }}""", arg=quiet_ms, timeout=timeout_ms, polling=100)


def reloaded(error) -> bool:
    """Whether a Playwright error says the page navigated away (app/recover.js reloading it) mid-call."""
    return "context was destroyed" in str(error)


def mark_page(page) -> None:
    """A mark on the page's window that a reload (app/recover.js) drops: see same_page."""
    page.evaluate("() => { window.__same_page = true; }")


def same_page(page) -> bool:
    """Whether the page still holds mark_page's mark: False once it has reloaded, or while it navigates away."""
    from playwright.sync_api import Error

    try:
        return page.evaluate("() => window.__same_page === true")
    except Error as e:
        if reloaded(e):
            return False
        raise


def wait_or_reload(page, js: str, timeout_ms: int) -> None:
    """Until the JS predicate holds or the page has reloaded itself (mark_page first)."""
    from playwright.sync_api import Error

    try:
        page.wait_for_function(f"() => window.__same_page !== true || ({js})()", timeout=timeout_ms)
    except Error as e:
        if not reloaded(e):  # a timeout, or anything else: the test's failure
            raise


def until_done_or_reloaded(page, act, done_js: str, timeout_ms: int = 60_000) -> None:
    """act(), then wait until the page says `done_js` (a JS predicate). Should app/recover.js reload the page
    meanwhile (Streamlit's frontend lost its elements, under load about once in a few minutes of a live
    run), the action may have been lost with the old page: once the reloaded page is drawn, act() runs once
    more unless it shows the action done, as a user would press again."""
    from playwright.sync_api import Error

    for _ in range(2):
        try:
            mark_page(page)
            act()
            wait_or_reload(page, done_js, timeout_ms)
            if same_page(page):
                return
        except Error as e:  # the reload began while the action was being done
            if not reloaded(e):
                raise
        wait_loaded(page)
        if page.evaluate(done_js):
            return
    raise AssertionError("the page reloaded itself twice")


def timeline_steps(run) -> list[int]:
    """The steps of a run's timeline options in order: what DRAWN_STEP reads as each one is drawn."""
    from app.timeline import Timeline

    t = Timeline.of(run, live=False)
    return [n * t.per_epoch if kind == "epoch" else n for kind, n in map(t.parse, t.options)]


def job_state(page) -> str:
    el = page.locator(".advft-status span.advft-chip")
    return el.first.inner_text() if el.count() else ""


def wait_state(page, states: tuple[str, ...], timeout_ms: int = 240_000) -> None:
    page.wait_for_function(
        "states => { const e = document.querySelector('.advft-status span.advft-chip');"
        " return !!e && states.includes(e.textContent.trim()); }", arg=list(states), timeout=timeout_ms)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


