"""Make the pictures in docs/: the app in presentation style, and a chart export on a dark slide.

    ADVFT_DATA_DIR=../shared/data python3 docs/screenshots.py

1. `presentation-style.png`: the Defend page with ?style=presentation after one short training run
   (a real browser: Debian's Chromium through Playwright, as the browser tests).
2. `dark-slide-export.png`: the Fig. 5 panels exported as PNG in both styles (server-side, Kaleido),
   pasted on a dark slide background: the export is opaque, so its text stays readable on dark slides.
3. With `--slides DIR`, only: Defend (the recorded lecture run), Atlas and Attack (two real KnockoffNets attacks,
   on M_R and on the recorded lecture run's M_F, launched from the page) in presentation style at 1280x720,
   written to DIR as defend.png, atlas.png, attack.png (for comparing the look before and after a change).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import chromium_page, streamlit_server, wait_loaded, wait_state  # noqa: E402

OUT = ROOT / "docs"


def presentation_screenshot(tmp: Path) -> Path:
    env = {"ADVFT_RUNS_DIR": str(tmp / "runs")}
    with streamlit_server(env, tmp / "server.log") as (url, _), chromium_page() as page:
        page.set_viewport_size({"width": 1600, "height": 1100})
        page.goto(url + "/?preset=lecture&style=presentation&epochs=1&i_f=300")
        wait_loaded(page)
        page.get_by_role("button", name="Start").click()
        wait_state(page, ("finished",), 180_000)
        page.wait_for_timeout(1500)
        path = OUT / "presentation-style.png"
        page.screenshot(path=str(path), full_page=False)
    return path


def dark_slide(tmp: Path) -> Path:
    from PIL import Image

    from core import figures
    from core.training import preview_snapshot

    from core.advft import AdvFTConfig

    snapshot = preview_snapshot("mnist_lenet2d", AdvFTConfig(), os.environ.get("ADVFT_DATA_DIR"))
    proj = figures.Projection(snapshot.before.id)
    points = figures.panel_points(snapshot, proj, "before")
    ranges = figures.Ranges.around(points.id, points.ood, points.gen)
    slide = Image.new("RGB", (1700, 1000), (30, 30, 36))
    for i, style in enumerate(("screen", "presentation")):
        fig = figures.fig5_panels(snapshot, proj, ranges, [str(d) for d in range(10)], style)
        png = figures.render_static(fig, "png", 1600, 440, 1)
        slide.paste(Image.open(io.BytesIO(png)).convert("RGB"), (50, 50 + i * 480))
    path = OUT / "dark-slide-export.png"
    slide.save(path, optimize=True)
    return path


def slide_screenshots(tmp: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    env = {"ADVFT_RUNS_DIR": str(tmp / "runs")}
    charts = "() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.data).length"
    with streamlit_server(env, tmp / "server.log") as (url, _), chromium_page() as page:
        page.set_viewport_size({"width": 1280, "height": 720})
        page.goto(url + "/?run=recorded-lecture&style=presentation")
        wait_loaded(page)
        page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "defend.png"))
        page.goto(url + "/atlas?style=presentation")
        page.wait_for_function(f"() => ({charts})() >= 2", timeout=120_000)
        page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "atlas.png"))
        page.goto(url + "/attack?style=presentation")
        page.get_by_role("button", name="Launch attack").wait_for(timeout=120_000)
        for target in (None, "recorded-lecture"):
            if target:
                page.get_by_role("combobox", name="Target").click()
                page.get_by_role("option", name=target).first.click()
                page.wait_for_timeout(1000)
            box = page.get_by_role("spinbutton", name="Query budget Q")
            box.fill("5000")
            box.press("Enter")
            page.wait_for_timeout(1000)
            page.get_by_role("button", name="Launch attack").click()
            page.get_by_role("button", name="Stop").wait_for(timeout=60_000)  # running (minutes: training a surrogate)
            page.get_by_role("button", name="Stop").wait_for(state="detached", timeout=600_000)
        page.get_by_role("heading", name="The thief's view").scroll_into_view_if_needed()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "attack.png"))
    return [out / f"{name}.png" for name in ("defend", "atlas", "attack")]


if __name__ == "__main__":
    tmp = Path(tempfile.mkdtemp(prefix="advft-shots-"))
    if len(sys.argv) == 3 and sys.argv[1] == "--slides":
        for made in slide_screenshots(tmp, Path(sys.argv[2])):
            print(f"wrote {made}")
        sys.exit(0)
    for made in (dark_slide(tmp), presentation_screenshot(tmp)):
        print(f"wrote {made} ({made.stat().st_size // 1024} KB)")
