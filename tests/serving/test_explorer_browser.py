"""The explorer page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) against a real `bentoml serve`: draw with mouse events, read the label, move a slider,
render the part-whole map, the Fig. 4 grid and the equivariance strips, and fit a phone's width."""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from tests.serving.server import ARTIFACTS

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT = 30  # seconds for the page to answer after an action

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):  # CI installs the browser (.ci/run): missing there is a failure
        raise RuntimeError("chromium and chromedriver are required under CI=true (apt-get install chromium "
                           "chromium-driver)")
    pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only where a browser exists)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # headless on a machine without network: no background connections, no first-run or sync
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1280,2200"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser, script: str, timeout: float = WAIT):
    """Wait until the page's JavaScript expression is truthy; returns its value."""
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda d: d.execute_script("return " + script))


def draw_a_seven(browser) -> None:
    pad = browser.find_element(By.ID, "pad")
    size = pad.size["width"]
    # from the element's centre: a top bar, then a diagonal stroke down to the left
    actions = ActionChains(browser)
    actions.move_to_element_with_offset(pad, int(-0.25 * size), int(-0.3 * size)).click_and_hold()
    for _ in range(8):
        actions.move_by_offset(int(0.5 * size / 8), 0)
    for _ in range(12):
        actions.move_by_offset(int(-0.3 * size / 12), int(0.6 * size / 12))
    actions.release().perform()


@pytest.fixture(scope="module")
def drawn(server, browser):
    browser.get(server.url + "/explorer/")
    wait_for(browser, "document.body.dataset.ready === '1'")
    draw_a_seven(browser)
    wait_for(browser, "window.explorer.updates > 0 && !window.explorer.busy && !window.explorer.pending")
    return browser


def canvas_data(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').toDataURL()")


def test_the_page_shows_the_label_the_api_gives_for_the_same_image(server, drawn):
    seen = drawn.execute_script("return window.explorer.explanation.input")
    shown = drawn.find_element(By.ID, "predicted-label").text
    answer = httpx.post(server.url + "/classify", json={"images": [seen]}, timeout=30).json()[0]
    assert shown == answer["class_name"]
    assert max(max(row) for row in seen[0]) > 0.5, "the drawing reached the model"
    bars = drawn.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert len(bars) == 10 and drawn.find_element(By.CSS_SELECTOR, "#bars .bar.winner").text.startswith(shown)


def test_moving_a_slider_redraws_the_reconstruction(drawn):
    before, redraws = canvas_data(drawn, "recon"), drawn.execute_script("return window.explorer.redraws")
    slider = drawn.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")[0]
    ActionChains(drawn).click_and_hold(slider).move_by_offset(slider.size["width"] // 3, 0).release().perform()
    wait_for(drawn, f"window.explorer.redraws > {redraws}")
    assert canvas_data(drawn, "recon") != before
    drawn.find_element(By.ID, "reset").click()


def test_the_part_whole_map_is_drawn_over_the_input(drawn):
    painted = drawn.execute_script("""
        const c = document.getElementById('parts');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return n;""")
    assert painted > 0
    grid = drawn.execute_script("return window.explorer.explanation.part_whole.receptive_field")
    assert grid == {"size": 17, "centres": [8, 10, 12, 14, 16, 18]}


def test_the_fig4_grid_and_the_equivariance_strips_render_on_demand(drawn):
    drawn.find_element(By.ID, "show-perturb").click()
    dims = drawn.execute_script("return window.explorer.pose.length")
    wait_for(drawn, f"document.querySelectorAll('#perturb-grid canvas').length === {dims * 11}")
    drawn.find_element(By.ID, "show-equivariance").click()
    wait_for(drawn, "document.querySelectorAll('#strips .strip').length === 3")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert drawn.save_screenshot(str(ARTIFACTS / "explorer.png"))
    assert drawn.find_element(By.ID, "status").text == ""


def test_the_page_fits_a_phone(drawn):
    drawn.set_window_size(390, 844)
    time.sleep(0.3)
    overflow = drawn.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow} px wider than a phone's screen"
    drawn.save_screenshot(str(ARTIFACTS / "explorer-phone.png"))
    drawn.set_window_size(1280, 2200)
