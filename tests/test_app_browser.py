"""The app in a real browser: Debian's Chromium driven by playwright (never `playwright install`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fpdm_core import explore as ex

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


def load_launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fpdm_app_launcher", ROOT / "app" / "launcher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def browser_app(request, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (or `bash scripts/setup.sh --dev`)")
    if sync_playwright is None:
        pytest.skip("the playwright Python package is not importable: `pip install playwright`")
    tiny = request.getfixturevalue("tiny_checkpoints")  # after the skips: no training for a skipped test
    d = tmp_path_factory.mktemp("browser_ckpts")
    shutil.copy(tiny["fpdm"], d / ex.DEFAULT_NAMES["fpdm"])
    shutil.copy(tiny["dit"], d / ex.DEFAULT_NAMES["dit"])
    launcher = load_launcher()
    with launcher.running_app(d) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=launcher.CHROMIUM_ARGS)
        try:
            yield browser, url
        finally:
            browser.close()


def set_slider_by_keys(page, elem_id: str, value: int):
    """Move a slider like a keyboard user: Home, then ArrowRight (value - minimum) times."""
    rng = page.locator(f"#{elem_id} input[type=range]")
    lo = int(float(rng.get_attribute("min")))
    rng.focus()
    page.keyboard.press("Home")
    for _ in range(value - lo):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#{elem_id} input[type=number]').value === '{value}'")


def run_and_wait(page, steps: int):
    page.evaluate("""() => {  // remember every status text, to see the live updates while sampling
        window.__statuses = [];
        const el = document.querySelector('#run-status');
        new MutationObserver(() => window.__statuses.push(el.innerText))
            .observe(el, {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#generate")
    page.wait_for_function(
        f"(() => {{ const t = document.querySelector('#run-status').innerText;"
        f" return t.includes('Done') && t.includes('{steps} FPDM steps'); }})()", timeout=90_000)
    page.wait_for_selector("#residual-plot .js-plotly-plot", timeout=30_000)
    page.wait_for_function(f"document.querySelectorAll('#residual-plot .ytick').length === {steps}", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('#fpdm-images img, #dit-images img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 2", timeout=30_000)
    srcs = [page.locator(f"#{i} img").first.get_attribute("src") for i in ("fpdm-images", "dit-images")]
    ticks = page.locator("#residual-plot .ytick text").all_text_contents()  # SVG: no innerText
    bars = page.locator("#iterations-plot .point").count()
    return srcs, ticks, bars


def test_sliders_reuse_generate_update_images_and_plots(browser_app):
    browser, url = browser_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    elsewhere = []
    page.on("request", lambda r: elsewhere.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    try:
        page.goto(url)
        page.wait_for_selector("#generate")
        assert "fpdm-fm-m.safetensors" in page.locator("#checkpoint-status").inner_text()

        set_slider_by_keys(page, "steps", 3)
        set_slider_by_keys(page, "iterations", 2)
        page.locator("#num-images input[type=number]").fill("4")
        page.locator("#num-images input[type=number]").press("Enter")
        reuse = page.locator("#reuse input[type=checkbox]")
        assert reuse.is_checked()
        reuse.uncheck()
        assert not reuse.is_checked()
        srcs1, ticks1, bars1 = run_and_wait(page, 3)
        assert all(srcs1) and set(ticks1) == {"t=999", "t=500", "t=0"} and bars1 == 3
        assert any("Sampling: FPDM step" in t for t in page.evaluate("window.__statuses")), "no live updates"
        assert "reuse off" in page.locator("#summary").inner_text()
        assert page.locator("#caption").inner_text().endswith(": T-shirt/top, Trouser, Pullover, Dress")  # 4 images
        assert "12 of 12" in page.locator("#summary").inner_text()  # 3 steps x (1 + 2 + 1) block evaluations

        set_slider_by_keys(page, "steps", 5)  # move the slider again, reuse back on
        reuse.check()
        srcs2, ticks2, bars2 = run_and_wait(page, 5)
        assert srcs2[0] != srcs1[0] and srcs2[1] != srcs1[1], "images did not change"
        assert set(ticks2) == {"t=999", "t=749", "t=500", "t=250", "t=0"} and bars2 == 5, "residual plot did not change"
        assert "reuse on" in page.locator("#summary").inner_text()
        assert not elsewhere, f"the page fetched from outside the app: {elsewhere[:5]}"
    finally:
        page.close()
