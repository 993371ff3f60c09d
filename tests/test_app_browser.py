"""The app in a real browser: Debian's Chromium driven by playwright (never `playwright install`). One server
and one browser for every test here."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from fpdm_core import app_checkpoints as ac
from fpdm_core.diffusion import spaced_timesteps

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
LANDSCAPE = ROOT / "tests" / "fixtures" / "landscape_small.json"  # steps 2, 5, 10, 20 x iterations 1, 2, 3, 6

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
    shutil.copy(tiny["fpdm"], d / ac.DEFAULT_NAMES["fpdm"])
    shutil.copy(tiny["dit"], d / ac.DEFAULT_NAMES["dit"])
    launcher = load_launcher()
    with launcher.running_app(d, extra_args=["--landscape", str(LANDSCAPE)]) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=launcher.CHROMIUM_ARGS)
        try:
            yield browser, url
        finally:
            browser.close()


@pytest.fixture
def page(browser_app):
    browser, url = browser_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    elsewhere = []
    page.on("request", lambda r: elsewhere.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    page.goto(url)
    page.wait_for_selector("#generate")
    yield page
    page.close()
    assert not elsewhere, f"the page fetched from outside the app: {elsewhere[:5]}"


def set_slider_by_keys(page, elem_id: str, value: int):
    """Move a slider like a keyboard user: Home, then ArrowRight (value - minimum) times."""
    rng = page.locator(f"#{elem_id} input[type=range]")
    lo = int(float(rng.get_attribute("min")))
    rng.focus()
    page.keyboard.press("Home")
    for _ in range(value - lo):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#{elem_id} input[type=number]').value === '{value}'")


def status_done(page, elem_id: str, needle: str, timeout: int = 90_000):
    page.wait_for_function(
        f"(() => {{ const t = document.querySelector('#{elem_id}').innerText;"
        f" return t.includes('Done') && t.includes('{needle}'); }})()", timeout=timeout)


def run_and_wait(page, steps: int):
    page.evaluate("""() => {  // remember every progress text, to see the live updates while sampling
        window.__progress = [];
        const el = document.querySelector('#progress');
        new MutationObserver(() => window.__progress.push(el.innerText))
            .observe(el, {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#generate")
    status_done(page, "run-status", f"{steps} FPDM step")
    page.wait_for_selector("#residual-plot .js-plotly-plot", timeout=30_000)
    page.wait_for_function(f"document.querySelectorAll('#residual-plot .ytick').length === {steps}", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('#fpdm-images img, #dit-images img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 2", timeout=30_000)
    srcs = [page.locator(f"#{i} img").first.get_attribute("src") for i in ("fpdm-images", "dit-images")]
    ticks = page.locator("#residual-plot .ytick text").all_text_contents()  # SVG: no innerText
    bars = page.locator("#iterations-plot .point").count()
    return srcs, ticks, bars


def strip_frames(page, elem_id: str) -> int:
    """Frames (thumbnails) shown in a denoising strip."""
    return page.locator(f"#{elem_id} .thumbnail-item").count()


def marker(page) -> tuple[float, float]:
    """Where plotly drew 'your split' on the landscape (axis positions)."""
    return tuple(page.evaluate("""() => {
        const gd = document.querySelector('#landscape-plot .js-plotly-plot');
        const t = gd.data.find(d => d.name === 'your split');
        return [t.x[0], t.y[0]];
    }"""))


def test_sliders_reuse_generate_update_images_plots_and_strips(page):
    set_slider_by_keys(page, "steps", 3)
    set_slider_by_keys(page, "iterations", 2)
    page.locator("#num-images input[type=number]").fill("4")
    page.locator("#num-images input[type=number]").press("Enter")
    reuse = page.locator("#reuse input[type=checkbox]")
    assert reuse.is_checked()
    reuse.uncheck()
    assert not reuse.is_checked()
    srcs1, ticks1, bars1 = run_and_wait(page, 3)
    assert all(srcs1) and ticks1 == [f"t={t}" for t in spaced_timesteps(3)] and bars1 == 2 * 3  # allowed + used
    progress = page.evaluate("window.__progress")
    assert any("FPDM step 1 of 3" in t for t in progress), "no live progress"
    assert any(" left" in t for t in progress), "no time-left estimate"
    summary = page.locator("#summary").inner_text()
    assert "reuse off" in summary and "12 of 12" in summary  # 3 steps x (1 + 2 + 1) block evaluations
    assert page.locator("#caption").inner_text().endswith(": T-shirt/top, Trouser, Pullover, Dress")  # 4 images
    assert strip_frames(page, "fpdm-strip") == 3, "one FPDM frame per step"
    assert strip_frames(page, "dit-strip") == 12 // 4, "one DiT frame per step (depth 4: 3 steps)"

    set_slider_by_keys(page, "steps", 5)  # move the slider again, reuse back on
    reuse.check()
    srcs2, ticks2, bars2 = run_and_wait(page, 5)
    assert srcs2[0] != srcs1[0] and srcs2[1] != srcs1[1], "images did not change"
    assert ticks2 == [f"t={t}" for t in spaced_timesteps(5)] and bars2 == 2 * 5, "residual plot did not change"
    assert "reuse on" in page.locator("#summary").inner_text()
    page.wait_for_function("document.querySelectorAll('#fpdm-strip .thumbnail-item').length === 5", timeout=10_000)
    assert strip_frames(page, "dit-strip") == 20 // 4
    assert page.locator("#residual-plot .modebar").count() == 0, "no plotly toolbar over the titles"


def test_moving_the_sliders_moves_the_landscape_marker(page):
    page.wait_for_selector("#landscape-plot .js-plotly-plot", timeout=30_000)
    page.wait_for_function("document.querySelector('#landscape-answer').innerText.includes('Your split')")
    x, y = marker(page)  # the default 8 steps: between the columns of 5 and 10 (log scale); 3 iterations: third row
    assert x == pytest.approx(1 + math.log(8 / 5) / math.log(2)) and y == 2
    assert "8 steps x 3 iterations per step = 40 block evaluations" in page.locator("#landscape-answer").inner_text()
    set_slider_by_keys(page, "steps", 5)
    page.wait_for_function("document.querySelector('#landscape-answer').innerText.includes('5 steps x 3')")
    assert marker(page) == (1, 2)
    set_slider_by_keys(page, "iterations", 6)
    page.wait_for_function("document.querySelector('#landscape-answer').innerText.includes('5 steps x 6')")
    assert marker(page) == (1, 3)
    answer = page.locator("#landscape-answer").inner_text()
    assert "= 40 block evaluations" in answer and "Best measured split within 40" in answer and "DiT within this budget" in answer
    names = page.evaluate("document.querySelector('#landscape-plot .js-plotly-plot').data.map(d => d.name)")
    assert names == [None, "budget 40", "best measured", "your split"]
    assert page.locator("#landscape-plot .modebar").count() == 0


def test_a_comparison_renders_both_panels(page):
    set_slider_by_keys(page, "steps", 3)
    set_slider_by_keys(page, "iterations", 2)
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-button")
    status_done(page, "compare-status", "reuse on vs reuse off")
    page.wait_for_function("[...document.querySelectorAll('#compare-a img, #compare-b img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 2", timeout=30_000)
    for plot in ("compare-a-plot", "compare-b-plot"):
        page.wait_for_function(f"document.querySelectorAll('#{plot} .ytick').length === 3", timeout=30_000)
    titles = [page.locator(f"#{p} .gtitle").text_content() for p in ("compare-a-plot", "compare-b-plot")]
    assert titles[0].startswith("reuse on") and titles[1].startswith("reuse off")
    assert "reuse off" in page.locator("#compare-summary").inner_text()
