"""End to end in a real browser: `streamlit run streamlit_app.py` driven by Playwright + Debian's Chromium.

Start a short training from URL parameters, see the M_F panel change, download a PNG from the
chart's own toolbar, pause, reload the page from its URL and get the same configuration; no
exception box anywhere. The helpers (server, browser, waits) live in app/e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.e2e import CHROMIUM, MF_POINTS, chromium_page, png_size, streamlit_server, wait_loaded, wait_state

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")


@needs_chromium
def test_train_watch_export_reload(data_dir, tmp_path):
    env = {"ADVFT_DATA_DIR": str(data_dir), "ADVFT_RUNS_DIR": str(tmp_path / "runs")}
    query = "?epochs=2&i_g=5&i_f=400&margin=12&seed=3"  # long enough an epoch to pause inside it
    with streamlit_server(env, tmp_path / "server.log") as (url, _), chromium_page() as page:
        page.goto(url + query)
        wait_loaded(page)
        assert page.get_by_role("spinbutton", name="Margin m").input_value() == "12"
        before = page.evaluate(MF_POINTS)

        page.get_by_role("button", name="Start").click()
        wait_state(page, ("running",))
        page.wait_for_function(f"before => {{ const now = ({MF_POINTS})(); return now !== null && now !== before; }}",
                               arg=before, timeout=90_000)

        page.get_by_role("button", name="Pause").click()
        wait_state(page, ("paused",))
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

        page.reload()
        wait_loaded(page)
        assert page.url == link
        assert page.get_by_role("spinbutton", name="Margin m").input_value() == "12"
        assert page.get_by_role("spinbutton", name="Seed").input_value() == "3"
        assert page.locator("[data-testid='stException']").count() == 0
    assert "Traceback" not in (tmp_path / "server.log").read_text()
