"""The Defend page's presenter keys (app/keys.js) in a real browser: each key presses the page's own button,
so each test checks what that button does (the run's state, the frame drawn, the style in the URL); keys
that only change the view share one page. And none of them fires while the user types in a number box.
The helpers live in tests/e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.training import recorded_runs
from tests.e2e import (CHROMIUM, DRAWN_STEP, chromium, new_page, streamlit_server, timeline_steps, until_done_or_reloaded,
                       wait_loaded, wait_settled, wait_state)

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
pytestmark = [pytest.mark.browser, needs_chromium]

TRAIN = "/?epochs=2&i_g=5&i_f=400&margin=12&seed=3"  # an epoch long enough to pause and step inside it
RECORDED = "/?run=recorded-lecture"
STEPS = timeline_steps(next(r for r in recorded_runs() if r.name == "recorded-lecture"))
# Reset done: no job's status line, and Start offered again.
RESET_TO_M_R = "() => !document.querySelector('.advft-status') && !!document.querySelector('.st-key-t_start button')"


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(tmp / "runs")}
    with streamlit_server(env, tmp / "server.log") as (url, _):
        yield url
    assert "Traceback" not in (tmp / "server.log").read_text()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(server, browser):
    """A fresh tab (a session of its own) on the Defend page; closing it stops its job."""
    page = new_page(browser)
    page.server = server
    try:
        yield page
        assert page.locator("[data-testid='stException']").count() == 0
        if page.locator(".advft-status").count():  # this tab's job: stopped now, not 10 s after the tab closes,
            page.locator(".st-key-t_reset button").first.click()  # so that the next test's run is not queued
            page.locator(".advft-status").wait_for(state="detached", timeout=60_000)
    finally:
        page.context.close()


def open_page(page, query: str) -> None:
    page.goto(page.server + query)
    wait_loaded(page)
    page.locator(".advft-keys-hint").wait_for()
    on_page(page)


def press(page, key: str) -> None:
    """A presenter's key press: the page's keys in place, the focus on the page."""
    page.locator(".advft-keys-hint").wait_for()
    on_page(page)
    page.keyboard.press(key)


def state_is(state: str) -> str:
    return ("() => { const e = document.querySelector('.advft-status span.advft-chip');"
            f" return !!e && e.textContent.trim() === '{state}'; }}")


def on_page(page) -> None:
    """The keyboard's focus on the page itself, as a presenter's is (not in a field, not on a button)."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")


def drawn_step(page, step: int) -> None:
    page.wait_for_function(f"() => ({DRAWN_STEP})() === {step}", timeout=60_000)


def status(page) -> str:
    return page.locator(".advft-status").first.inner_text()


def test_space_starts_pauses_and_plays_a_run(page):
    open_page(page, TRAIN)
    page.keyboard.press("Space")
    wait_state(page, ("running",))
    until_done_or_reloaded(page, lambda: press(page, "Space"), state_is("paused"))
    wait_settled(page)  # the frames already on their way land first (as tests/test_browser.py waits to click)
    page.keyboard.press("Space")
    wait_state(page, ("running",))


def test_space_plays_and_stops_the_replay_of_a_finished_run(page):
    open_page(page, RECORDED)
    drawn_step(page, STEPS[-1])
    page.keyboard.press("Space")
    page.get_by_role("button", name="Stop replay").wait_for(timeout=30_000)
    page.keyboard.press("Space")
    page.get_by_role("button", name="Stop replay").wait_for(state="detached", timeout=30_000)
    assert page.get_by_role("button", name="Play", exact=True).count() == 1
    assert page.locator(".advft-status").count() == 0  # no run was started


def test_arrow_keys_show_the_previous_and_the_next_frame(page):
    open_page(page, RECORDED)
    drawn_step(page, STEPS[-1])  # a link shows the run's end
    page.keyboard.press("ArrowLeft")
    drawn_step(page, STEPS[-2])
    page.keyboard.press("ArrowLeft")
    drawn_step(page, STEPS[-3])
    page.keyboard.press("ArrowRight")
    drawn_step(page, STEPS[-2])


def test_s_does_one_step_of_a_paused_run(page):
    open_page(page, TRAIN)
    page.get_by_role("button", name="Start").click()
    wait_state(page, ("running",))
    until_done_or_reloaded(page, lambda: page.get_by_role("button", name="Pause").click(), state_is("paused"))
    page.wait_for_function("() => { const b = document.querySelector('.st-key-t_step button');"
                           " return !!b && !b.disabled; }", timeout=60_000)
    wait_settled(page)
    before = status(page)
    page.keyboard.press("s")
    page.wait_for_function("before => { const e = document.querySelector('.advft-status');"
                           " return !!e && e.innerText !== before; }", arg=before, timeout=30_000)
    assert "paused" in status(page)


def test_r_resets_a_running_run_to_m_r(page):
    open_page(page, TRAIN)
    page.get_by_role("button", name="Start").click()
    wait_state(page, ("running",))
    until_done_or_reloaded(page, lambda: press(page, "r"), RESET_TO_M_R)
    assert "run=" not in page.url


def test_f_p_and_question_mark_change_the_view_and_change_it_back(page):
    """F: the Fig. 5 panels in full screen and back; P: the presentation style on and off (in the URL);
    ?: the list of the keys, which Escape closes. One page for the three, as a presenter uses them."""
    open_page(page, RECORDED)
    page.keyboard.press("f")
    page.wait_for_function("() => !!document.fullscreenElement"
                           " && !!document.fullscreenElement.querySelector('.js-plotly-plot')", timeout=10_000)
    page.keyboard.press("f")
    page.wait_for_function("() => document.fullscreenElement === null", timeout=10_000)

    assert "style=presentation" not in page.url
    page.keyboard.press("p")
    page.wait_for_url("**style=presentation**", timeout=30_000)
    page.keyboard.press("p")
    page.wait_for_function("() => !location.search.includes('style=presentation')", timeout=30_000)

    on_page(page)
    page.keyboard.press("?")
    listed = page.get_by_role("dialog", name="Presenter keys")
    listed.wait_for()
    for key in ("Space", "S", "R", "F", "P"):
        assert listed.locator("kbd", has_text=key).count() >= 1
    page.keyboard.press("Escape")
    listed.wait_for(state="detached")


def test_no_key_fires_while_typing_in_a_number_box(page):
    """The keys typed in the box do nothing; the same keys pressed on the page afterwards act once: had the
    box's ArrowLeft and P fired too, the chart would be two frames back and the style toggled back off."""
    open_page(page, RECORDED)
    drawn_step(page, STEPS[-1])
    box = page.get_by_role("spinbutton", name="Margin m")
    box.click()
    for key in ("Space", "ArrowLeft", "s", "r", "f", "p", "?"):
        box.press(key)
    assert page.evaluate("() => document.fullscreenElement") is None
    assert page.get_by_role("dialog", name="Presenter keys").count() == 0
    on_page(page)
    page.keyboard.press("ArrowLeft")
    drawn_step(page, STEPS[-2])
    page.keyboard.press("p")
    page.wait_for_url("**style=presentation**", timeout=30_000)
    assert "run=recorded-lecture" in page.url and page.get_by_role("button", name="Stop replay").count() == 0
    assert page.evaluate(DRAWN_STEP) == STEPS[-2]
