"""End to end in a real browser: `streamlit run streamlit_app.py` driven by Playwright + Debian's Chromium.

Start a short training from URL parameters, see the M_F panel change, download a PNG from the
chart's own toolbar, pause, reload the page from its URL (as app/recover.js does after a frontend
error) and get the same configuration; no exception box anywhere. The helpers (server, browser, waits) live in tests/e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.e2e import (CHROMIUM, DRAWN_STEP, chart_text_problems, MF_POINTS, PANEL_POINTS, ZOOM_OOD_PIXELS, chromium, png_size,
                       mark_page, reloaded, same_page, streamlit_server, tab, timeline_steps, until_done_or_reloaded,
                       wait_idle, wait_loaded,
                       wait_or_reload, wait_settled, wait_state)
from core.advft import preset_config

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; each test opens its own tabs in fresh contexts (new sessions)."""
    with chromium() as browser:
        yield browser


def test_train_watch_export_reload(data_dir, tmp_path, browser):
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(tmp_path / "runs")}
    query = "?epochs=2&i_g=5&i_f=400&margin=12&seed=3"  # long enough an epoch to pause inside it
    with streamlit_server(env, tmp_path / "server.log") as (url, _), tab(browser) as page:
        page.goto(url + query)
        wait_loaded(page)
        assert page.get_by_role("spinbutton", name="Margin m").input_value() == "12"

        page.get_by_role("button", name="Start").click()
        wait_state(page, ("running",))
        assert chart_kept_over_a_frame(page)  # drawn once, then updated in place

        page.get_by_role("button", name="Pause").click()
        wait_state(page, ("paused",))
        wait_settled(page)
        # After frames moved in place, every point of both panels is still drawn (M_R's too, which did not move)
        all_drawn = f"() => {{ const d = ({PANEL_POINTS})(); return d[0] === d[1] && d[0] > 500; }}"
        try:
            page.wait_for_function(all_drawn, timeout=30_000)
        except PlaywrightTimeout:
            raise AssertionError(f"points drawn in the M_R and M_F panels: {page.evaluate(PANEL_POINTS)}") from None
        link = page.url

        # The toolbar's camera downloads the chart at the Export settings (1600 x 800 at 3x by default).
        # Done while paused: a live chart is redrawn under the pointer twice a second.
        chart = page.locator(".js-plotly-plot").first
        chart.hover()
        with page.expect_download(timeout=60_000) as download:
            chart.locator(".modebar-btn[data-title^='Download plot']").click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.suffix == ".png" and png_size(saved.read_bytes()) == (4800, 2400)
        assert "run=" in link and "margin=12" in link and "i_f=400" in link

        # Streamlit's frontend losing its element tree (app/recover.js) blanks the page: the page reloads
        # itself from its URL and is back as it was, on the paused run with its panels drawn and the same
        # configuration. Other errors are left alone.
        page.evaluate("() => { window.__before_reload = true; window.dispatchEvent(new ErrorEvent('error', "
                      "{message: 'Some other error'})); }")
        page.wait_for_timeout(500)
        assert page.evaluate("() => window.__before_reload === true")
        page.evaluate("() => window.dispatchEvent(new ErrorEvent('error', "
                      "{message: 'Bad delta path index 1 (should be between [0, 0])'}))")
        page.wait_for_function("() => window.__before_reload === undefined", timeout=30_000)
        wait_loaded(page)
        assert page.url == link
        assert page.get_by_role("spinbutton", name="Margin m").input_value() == "12"
        assert page.get_by_role("spinbutton", name="Seed").input_value() == "3"
        wait_state(page, ("paused",))
        page.wait_for_function(all_drawn, timeout=60_000)
        assert page.locator("[data-testid='stException']").count() == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def chart_kept_over_a_frame(page) -> bool:
    """Whether the chart drew the running job's next frame in place (app/chart.js), not by remounting. Should
    the page reload itself meanwhile (app/recover.js, after a Streamlit frontend error), asked again, once."""
    for _ in range(2):
        try:
            mark_page(page)
            # Start reruns the page, and the chart may be between two mounts when the status says running
            page.wait_for_function("() => { const e = document.querySelector('.js-plotly-plot');"
                                   " if (e) e.__mounted_before_frame = true; return !!e; }", timeout=60_000)
            page.evaluate(f"() => {{ window.__mf_before = ({MF_POINTS})(); }}")
            wait_or_reload(page, f"() => {{ const now = ({MF_POINTS})(); return now !== null && now !== window.__mf_before; }}",
                           90_000)
            if same_page(page):
                return page.evaluate("() => document.querySelector('.js-plotly-plot').__mounted_before_frame === true")
        except PlaywrightError as e:  # the reload began while the marks were being set
            if not reloaded(e):
                raise
        wait_loaded(page)
    raise AssertionError("the page reloaded itself twice while the job trained")


# Counts, every 50 ms, the live area's elements drawn faded (Streamlit's look for a stale element).
LOOK_FOR_FADED = """() => { window.__faded = 0; window.__looked = 0; setInterval(() => { window.__looked++;
    window.__faded += [...document.querySelectorAll('.st-key-live [data-testid=stElementContainer]')]
        .filter(e => parseFloat(getComputedStyle(e).opacity) < 0.99).length; }, 50); }"""


def assert_charts_readable(page) -> None:
    """At a 1280x720 and a 1920x1080 window, once Plotly has redrawn the page's charts to their new widths,
    nothing keeps their text from being read (tests/e2e.py: CHART_TEXT_PROBLEMS; tests/test_charts_fit.py
    checks every chart so). The window goes back to the tests' size after."""
    problems = []
    for width, height in ((1280, 720), (1920, 1080), (1500, 1000)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].every(e => e._fullLayout"
                               " && Math.abs(e._fullLayout.width - e.getBoundingClientRect().width) < 2)",
                               timeout=20_000)
        problems += [f"at {width}x{height}: {p}" for p in chart_text_problems(page)]
    assert not problems, problems


def zoom_ood(page) -> list:
    """The zoom panel's OOD crosses in screen pixels, once the chart is drawn (it is redrawn at times)."""
    page.wait_for_function(f"() => ({ZOOM_OOD_PIXELS})() !== null", timeout=20_000)
    return page.evaluate(ZOOM_OOD_PIXELS)


def mean_displacement(a, b) -> float:
    return sum(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 for (x0, y0), (x1, y1) in zip(a, b)) / len(a)


def test_lecture_controls_follow_at_once_and_the_first_seconds_move(data_dir, tmp_path, browser):
    """The URL follows the last edit, Simple view and Presentation take effect at once, the chart draws a live
    run's frames and its OOD points move visibly in the first epoch, nothing live looks faded meanwhile, a
    reload reattaches to the job."""
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(tmp_path / "runs")}
    with streamlit_server(env, tmp_path / "server.log") as (url, _), tab(browser) as page:
        page.goto(url + "/?preset=lecture")
        wait_loaded(page)

        for label, value, expected in (("Epochs N", "3", "epochs=3"), ("Margin m", "12", "margin=12.0")):
            box = page.get_by_role("spinbutton", name=label)
            box.fill(value)
            box.press("Enter")
            page.wait_for_function("want => location.search.includes(want)", arg=expected, timeout=10_000)

        page.get_by_text("Simple view (for teaching)").click()
        page.wait_for_function("() => location.search.includes('view=simple')", timeout=10_000)
        page.get_by_text("Advanced (Algorithm 1)").wait_for(state="detached", timeout=10_000)

        page.get_by_text("Presentation style").click()
        page.wait_for_function("() => { const e = document.querySelector('.js-plotly-plot');"
                               " return !!e && e._fullLayout && e._fullLayout.xaxis.tickfont.size >= 20"
                               " && e._fullLayout.legend.font.size >= 20; }", timeout=20_000)

        assert_charts_readable(page)  # every legend entry, title and tick label, at both slide sizes

        start_px = zoom_ood(page)
        assert page.evaluate(DRAWN_STEP) == 0  # M_R before any training
        # While the job trains, nothing in the live area is faded (Streamlit's look for a stale element).
        page.evaluate(LOOK_FOR_FADED)
        page.get_by_role("button", name="Start").click()
        # The chart itself must draw the job's frames: wait until it shows one 40 F steps into the first epoch
        # (the lecture preset's I_G G steps come first and cannot move M_F). How soon that happens is a
        # benchmark figure (bench/bench_app.py: Start -> first visible frame), not something a test asserts.
        wanted = preset_config("lecture").i_g + 40
        try:
            page.wait_for_function(f"() => ({DRAWN_STEP})() >= {wanted}", timeout=180_000)
        except PlaywrightTimeout:
            status = page.locator(".advft-status").first.inner_text() if page.locator(".advft-status").count() else ""
            raise AssertionError(f"the chart never drew step {wanted}: it shows step {page.evaluate(DRAWN_STEP)} "
                                 f"(status: {status!r}, link: {page.url})") from None
        moved = mean_displacement(start_px, zoom_ood(page))
        print(f"OOD points moved {moved:.1f} px on screen (mean) by step {page.evaluate(DRAWN_STEP)}")
        assert moved >= 5, f"the chart drew the job's frames but the OOD points moved only {moved:.1f} px"
        assert "epoch=" not in page.url  # a live run's link names no epoch: it follows the job
        wait_state(page, ("running",))
        looked, faded = page.evaluate("() => [window.__looked, window.__faded]")
        if looked is None:  # the page reloaded itself meanwhile (app/recover.js): look on the new page
            wait_loaded(page)
            wait_state(page, ("running",))
            page.evaluate(LOOK_FOR_FADED)
            page.wait_for_function("() => window.__looked >= 20", timeout=30_000)
            looked, faded = page.evaluate("() => [window.__looked, window.__faded]")
        assert looked >= 20 and faded == 0

        page.reload()
        wait_loaded(page)
        wait_state(page, ("running", "paused"), 20_000)  # reattached: the live job, not a 'reopened' folder
        assert page.get_by_text("Reopened run").count() == 0
        assert page.locator("[data-testid='stException']").count() == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def _processes():
    """(pid, parent pid, command line) of every process on this machine."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                yield int(proc.name), parent, (proc / "cmdline").read_bytes()
        except OSError:
            continue


def _server_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1].encode()
    return next(pid for pid, _, cmd in _processes() if b"streamlit\0run" in cmd and b"--server.port\0" + port in cmd)


def _worker_pids(server: int | None = None) -> set[int]:
    """Training processes of app jobs (`python -m app.worker ...`): the given server's, or any on this machine
    (other tests may be running theirs meanwhile)."""
    return {pid for pid, parent, cmd in _processes() if b"app.worker" in cmd and server in (None, parent)}


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_a_closed_tab_stops_its_job_and_no_process_outlives_the_server(data_dir, tmp_path, browser):
    import os
    import signal

    from core.runs import list_runs

    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(tmp_path / "runs")}
    with streamlit_server(env, tmp_path / "server.log") as (url, _), tab(browser) as page:
        server = _server_pid(url)
        context = page.context
        page.goto(url + "/?preset=lecture&epochs=20")
        wait_loaded(page)
        page.get_by_role("button", name="Start").click()
        wait_state(page, ("running",))
        workers = _worker_pids(server)
        assert len(workers) == 1  # the job trains in its own process; no spare takes its core meanwhile
        page.close()  # the tab closes: the job stops within seconds and its process ends
        t0 = time.perf_counter()
        # How fast is bench/bench_app.py's figure; here only that it happens (a hang guard, not a duration)
        assert _wait_until(lambda: not (_worker_pids() & workers), 180)
        print(f"closed tab -> training process gone in {time.perf_counter() - t0:.1f} s")
        # ... and a spare waits for the next job, now that the cores are free
        assert _wait_until(lambda: len(_worker_pids(server)) == 1, 60)
        run = list_runs(tmp_path / "runs")[0]
        assert run.status()["status"] == "stopped" and "page was closed" in run.status()["message"]

        page = context.new_page()
        page.goto(url + "/?preset=lecture&epochs=20")
        wait_loaded(page)
        page.get_by_role("button", name="Start").click()
        wait_state(page, ("running",))
        workers = _worker_pids(server)
        os.kill(server, signal.SIGKILL)
        # once their server is gone its workers belong to init: looked for among every process
        assert _wait_until(lambda: not (workers & _worker_pids()), 60), "a training process outlived the server"


def test_a_recorded_run_replays_every_frame_to_the_end_then_probes_a_drawing_and_a_photo(data_dir, tmp_path,
                                                                                         browser):
    """Play on a recorded run: the chart draws its frames one after another to the last, then Play is back.
    The link names the page (/defend, as a bookmark of its name would): it opens the Defend page with the run.
    Then the probe: a digit drawn with the mouse is marked in the Fig. 5 panels where M_R and M_F put it, and
    stays put; an OOD photo picked instead moves several times as far."""
    from core.training import recorded_runs

    run = next(r for r in recorded_runs() if r.name == "recorded-lecture")
    steps = timeline_steps(run)
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(tmp_path / "runs")}
    with streamlit_server(env, tmp_path / "server.log") as (url, _), tab(browser) as page:
        page.goto(url + "/defend?run=recorded-lecture&epoch=3")  # a link to the end of epoch 3
        wait_loaded(page)
        per_epoch = run.config().advft.i_g + run.config().advft.i_f
        page.wait_for_function(f"() => ({DRAWN_STEP})() === {3 * per_epoch}", timeout=60_000)
        page.wait_for_function("() => location.search.includes('run=recorded-lecture')"
                               " && location.search.includes('epoch=3')", timeout=30_000)
        assert page.get_by_text("Page not found").count() == 0
        # The steps the chart draws, in order, as the page sees them (a replay moves faster than a test polls).
        page.evaluate(f"""() => {{ window.__drawn = [];
            setInterval(() => {{ const s = ({DRAWN_STEP})(), q = window.__drawn;
                                 if (s !== null && q[q.length - 1] !== s) q.push(s); }}, 20); }}""")
        page.get_by_role("button", name="Play", exact=True).click()
        page.wait_for_function(f"""() => {{ const q = window.__drawn, i = q.indexOf({steps[0]});
                                            return i >= 0 && q.slice(i).includes({steps[-1]}); }}""", timeout=300_000)
        drawn = page.evaluate("() => window.__drawn")
        replayed = drawn[drawn.index(steps[0]):drawn.index(steps[-1], drawn.index(steps[0])) + 1]
        assert replayed == sorted(replayed) and set(replayed) <= set(steps), replayed  # forwards, through its frames
        assert len(replayed) >= len(steps) // 2, f"the replay drew {len(replayed)} of {len(steps)} frames: {replayed}"
        page.get_by_role("button", name="Stop replay").wait_for(state="detached", timeout=60_000)  # it ended itself
        assert page.locator("[data-testid='stException']").count() == 0

        until_done_or_reloaded(page, lambda: draw_a_one(page), f"() => ({PROBE_MARKS})() !== null")
        drawn = probe_marks(page)
        page.get_by_text("M_F answers").wait_for(timeout=30_000)
        assert page.get_by_text("saved after epoch", exact=False).count() >= 1

        def pick_a_photo():
            open_probe(page)
            page.get_by_text("An OOD image", exact=True).click()
        page.evaluate(f"() => {{ window.__drawn_marks = JSON.stringify(({PROBE_MARKS})()); }}")  # a reload drops it
        until_done_or_reloaded(page, pick_a_photo, f"""() => {{ const m = ({PROBE_MARKS})();
                               return m !== null && JSON.stringify(m) !== window.__drawn_marks; }}""")
        photo = probe_marks(page)
        assert shift(photo) > 3 * shift(drawn), (drawn, photo)
        assert page.locator("[data-testid='stException']").count() == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()


# The probe's marks in the Fig. 5 chart: [M_R's point, M_F's point] in data units, or null until both are drawn.
PROBE_MARKS = """() => { const t = [...document.querySelectorAll('.js-plotly-plot')].flatMap(g => g.data || []);
    const at = (m) => { const s = t.find(x => x.meta === m); return s && s.x && s.x.length ? [s.x[0], s.y[0]] : null; };
    const r = at('probe:before'), f = at('probe:after'); return r && f ? [r, f] : null; }"""


def probe_marks(page) -> list:
    page.wait_for_function(f"() => ({PROBE_MARKS})() !== null", timeout=60_000)
    return page.evaluate(PROBE_MARKS)


def open_probe(page) -> None:
    """Open the probe's expander (closed on a fresh page) and bring its canvas into view."""
    panel = page.locator("details", has_text="Probe your own input")
    if panel.get_attribute("open") is None:
        panel.locator("summary").click()
    canvas = page.locator(".advft-draw canvas")
    canvas.scroll_into_view_if_needed()
    page.wait_for_function("() => { const c = document.querySelector('.advft-draw canvas');"
                           " const r = c && c.getBoundingClientRect(); return !!r && r.height > 100"
                           " && r.top >= 0 && r.bottom <= innerHeight; }", timeout=30_000)


def draw_a_one(page) -> None:
    """A "1" drawn with the mouse: one stroke down the middle of the canvas."""
    open_probe(page)
    box = page.locator(".advft-draw canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * (0.15 + 0.07 * i))
    page.mouse.up()


def shift(marks) -> float:
    (x0, y0), (x1, y1) = marks
    return ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5


def test_a_shared_link_cannot_put_a_clickable_link_into_the_page(data_dir, tmp_path, browser):
    """URL values and run names that look like web addresses or e-mail addresses are shown as text: the
    page holds no link to them (Markdown would otherwise auto-link bare URLs, www. names and addresses)."""
    runs = tmp_path / "runs"
    (runs / "notes www.evil.example").mkdir(parents=True)
    (runs / "notes www.evil.example" / "config.json").write_text("{}")  # a damaged run: listed with its problem
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(runs)}
    planted = ["/?preset=https://evil.example/x&victim=admin@evil.example", "/?preset=www.evil.example",
               "/?run=www.evil.example", "/runs"]
    with streamlit_server(env, tmp_path / "server.log") as (url, _), tab(browser) as page:
        for link in planted:
            page.goto(url + link)
            page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=240_000)
            page.get_by_text("evil", exact=False).first.wait_for(timeout=240_000)  # the value is shown...
            # ...but as nothing to click: no link leaves the app's own host (its heading anchors carry the URL)
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => [e.protocol, e.hostname, e.href])")
            assert not [h for h in hrefs if h[0] not in ("http:", "https:") or h[1] != "127.0.0.1"], (link, hrefs)
            assert page.locator("[data-testid='stException']").count() == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def saved_attack(data_dir, target: str, m, surrogate_shift: int) -> dict:
    """A saved attack row as the Attack page writes it, with a thief's view from real answers: the committed
    victim's on MNIST test images, and a surrogate's that are the victim's moved `surrogate_shift` classes on
    for every other image (half of them wrong)."""
    from core.attacks import thief_view
    from core.data import load_dataset
    from core.metrics import outputs
    from core.models import load_model
    from tests.conftest import MNIST_VICTIM

    data = load_dataset("mnist", data_dir)
    x, y = data.x_test[:500], data.y_test[:500]
    target_logits = outputs(load_model(MNIST_VICTIM), x)[1]
    thief_logits = target_logits.clone()
    thief_logits[::2] = target_logits[::2].roll(surrogate_shift, dims=1)
    return {"method": "AdvFT" if m else "none", "target": target, "defence": "none", "attack": "knockoff", "labels": "soft", "status": "finished",
            "q": 1000, "acc_ms_after": 0.5, "acc_ms_after_final": 0.5, "acc_mr": 0.99, "m": m, "n": 2 if m else None,
            "acc_mf": 0.99, "kl_train": 0.0, "kl_test": 0.0, "curve": [{"queries": 1000, "acc": 0.5}],
            "thief_view": thief_view(x, y, target_logits, thief_logits, data.classes)}


def test_attack_page_shows_the_thiefs_view_and_refuses_a_target_deleted_in_another_tab(data_dir, tmp_path, browser):
    """Two saved attacks (unprotected, protected) open as the thief's view, drawn side by side. Then tab A
    chooses an AdvFT run as the target; the run is deleted meanwhile (tab B); A's Launch says so and attacks
    nothing, rather than quietly attacking the original M_R."""
    import shutil

    from app.tasks import save_result
    from core.training import run_advft
    from tests.conftest import MNIST_VICTIM, tiny_config

    runs = tmp_path / "runs"
    run_advft(runs / "doomed", MNIST_VICTIM, tiny_config(), data_dir=data_dir)
    save_result(runs / ".attacks", saved_attack(data_dir, "original M_R · mnist_lenet2d", None, 0))
    save_result(runs / ".attacks", saved_attack(data_dir, "AdvFT M_F · lecture", 10.0, 3))
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(runs)}
    with streamlit_server(env, tmp_path / "server.log") as (url, _), tab(browser) as page:
        page.goto(url + "/attack?style=presentation")
        page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=240_000)
        page.get_by_role("heading", name="The thief's view").wait_for(timeout=120_000)
        drawn = ("() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(p => (p.data || []).map(t => t.type))")
        page.wait_for_function(f"() => ({drawn})().filter(t => t === 'heatmap').length === 4"
                               f" && ({drawn})().filter(t => t === 'image').length === 2", timeout=60_000)
        assert_charts_readable(page)
        assert "unprotected" in page.get_by_role("combobox", name="Attack on the left").input_value()
        assert "AdvFT m = 10" in page.get_by_role("combobox", name="Attack on the right").input_value()
        # The protected side's thief answers half the examples wrong: marked with a cross on the page.
        assert page.locator(".js-plotly-plot .annotation-text", has_text="✗").count() >= 5
        target = page.get_by_role("combobox", name="Target")
        target.click()
        page.get_by_role("option", name="AdvFT M_F · doomed").click()
        page.wait_for_function("() => document.querySelector('input[aria-label=\"Target\"]').value"
                               " === 'AdvFT M_F · doomed'", timeout=60_000)
        wait_idle(page)  # the choice has reached the server
        shutil.rmtree(runs / "doomed")  # what tab B's Delete does
        page.get_by_role("button", name="Launch attack").click()
        page.get_by_text("no longer exists").wait_for(timeout=120_000)
        assert page.get_by_role("button", name="Stop").count() == 0  # nothing started
        assert page.locator("[data-testid='stException']").count() == 0
    assert len(list((runs / ".attacks").glob("*.json"))) == 2  # the two saved above, no new one


def test_the_defend_page_downloads_the_run_as_an_animated_gif_in_its_style(data_dir, tmp_path, browser):
    """The page's animation box: the GIF it downloads decodes to every frame of the recording at the width
    chosen, and is the very file core.animate makes in the page's style (presentation, from the URL)."""
    import io

    from PIL import Image

    from core.animate import AnimationSpec, animate
    from core.training import recorded_runs

    run = next(r for r in recorded_runs() if r.name == "recorded-lecture")
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(tmp_path / "runs")}
    with streamlit_server(env, tmp_path / "server.log") as (url, _), tab(browser) as page:
        page.goto(url + "/?run=recorded-lecture&style=presentation")
        wait_loaded(page)
        wait_idle(page)  # the page's script run has ended: the button below is the one it registered
        page.get_by_text("Animation of the run for slides").click()
        button = page.get_by_role("button", name="Download GIF")
        button.wait_for(timeout=30_000)
        with page.expect_download(timeout=120_000) as download:
            button.click()
        assert download.value.suggested_filename == "recorded-lecture-fig5.gif"
        data = Path(download.value.path()).read_bytes()
        assert page.locator("[data-testid='stException']").count() == 0
    im = Image.open(io.BytesIO(data))
    assert im.format == "GIF" and im.n_frames == len(run.frame_steps()) and im.size[0] == 1200
    assert data == animate(run, "gif", AnimationSpec(width=1200, fps=4, style="presentation")).data
    assert "Traceback" not in (tmp_path / "server.log").read_text()
