"""Screenshot of the app after one Generate, for the README: `python app/screenshot.py [--checkpoint-dir DIR]`.

Starts the app on a free loopback port (or uses --url), drives Debian's Chromium with playwright
(never `playwright install`), and writes figures/app.png.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from launcher import CHROMIUM, CHROMIUM_ARGS, running_app

ROOT = Path(__file__).resolve().parent.parent


def screenshot(url: str, out: Path, width: int = 1400, height: int = 1000) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.click("#generate")
            page.wait_for_function("(() => { const t = document.querySelector('#run-status').innerText;"
                                   " return t.includes('Done') || t.includes('Cannot run'); })()", timeout=300_000)
            if "Done" in page.locator("#run-status").inner_text():
                page.wait_for_selector("#residual-plot .js-plotly-plot", timeout=60_000)
                page.wait_for_function("[...document.querySelectorAll('#fpdm-images img, #dit-images img')]"
                                       ".every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
            page.wait_for_timeout(1000)  # plotly's transitions
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=None, help="checkpoints to serve (default: the app's default)")
    p.add_argument("--url", default=None, help="screenshot an app that is already running here instead")
    p.add_argument("--out", type=Path, default=ROOT / "figures" / "app.png")
    a = p.parse_args(argv)
    with (contextlib.nullcontext(a.url) if a.url else running_app(a.checkpoint_dir)) as url:
        screenshot(url, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
