"""Screenshots of the app for the README: `python app/screenshot.py [--checkpoint-dir DIR] [--landscape FILE]`.

Starts the app on a free loopback port (or uses --url), drives Debian's Chromium with playwright
(never `playwright install`), presses Generate and writes figures/app.png (landscape panel, samples,
denoising strips, residual plots), then runs the reuse on/off comparison and writes figures/app-compare.png.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from launcher import CHROMIUM, CHROMIUM_ARGS, running_app

ROOT = Path(__file__).resolve().parent.parent
ALL_IMAGES_LOADED = "(sel) => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)"


def _wait_done(page, status_id: str) -> bool:
    page.wait_for_function(f"(() => {{ const t = document.querySelector('#{status_id}').innerText;"
                           " return t.includes('Done') || t.includes('Cannot run'); })()", timeout=300_000)
    return "Done" in page.locator(f"#{status_id}").inner_text()


def _settle(page, images: str) -> None:
    """Scroll through the page (galleries load lazily), wait for the images, then for plotly's transitions."""
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=images, timeout=60_000)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(1000)


def screenshot(url: str, out: Path, compare_out: Path | None, width: int = 1400, height: int = 1000) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.wait_for_selector("#generate")
            page.wait_for_function("document.querySelector('#landscape-answer').innerText.length > 0", timeout=60_000)
            page.click("#generate")
            if _wait_done(page, "run-status"):
                page.wait_for_selector("#residual-plot .js-plotly-plot", timeout=60_000)
                _settle(page, "#fpdm-images img, #dit-images img, #fpdm-strip img, #dit-strip img")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            if compare_out is not None:
                page.get_by_role("tab", name="Compare").click()
                page.click("#compare-button")
                if _wait_done(page, "compare-status"):
                    page.wait_for_selector("#compare-b-plot .js-plotly-plot", timeout=60_000)
                    _settle(page, "#compare-a img, #compare-b img")
                page.locator("#compare-status").scroll_into_view_if_needed()
                page.screenshot(path=str(compare_out), full_page=True)
        finally:
            browser.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=None, help="checkpoints to serve (default: the app's default)")
    p.add_argument("--landscape", default=None, help="quality landscape JSON (default: the app's default)")
    p.add_argument("--url", default=None, help="screenshot an app that is already running here instead")
    p.add_argument("--out", type=Path, default=ROOT / "figures" / "app.png")
    p.add_argument("--compare-out", type=Path, default=ROOT / "figures" / "app-compare.png",
                   help="the comparison tab's screenshot")
    a = p.parse_args(argv)
    extra = ["--landscape", a.landscape] if a.landscape else []
    with (contextlib.nullcontext(a.url) if a.url else running_app(a.checkpoint_dir, extra_args=extra)) as url:
        screenshot(url, a.out, a.compare_out)
    print(f"wrote {a.out} and {a.compare_out}")


if __name__ == "__main__":
    main()
