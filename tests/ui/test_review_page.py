"""The review page in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against the
real service process (`cxr-serve` on a free loopback port, API keys on). Screenshots of every step are kept under
runs/test-artifacts/review-page/ (or $CXR_TEST_ARTIFACTS) for a person to look at."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_harness import start_service_process
from headless_chromium import headless_chromium
from PIL import Image
from site_store import make_site_store

pytestmark = pytest.mark.slow

KEY = "review-page-test-key-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]
SITE = {"intercept": -0.4, "slope": 0.9, "method": "logistic"}
WAIT_S = 90


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("CXR_TEST_ARTIFACTS", REPO_ROOT / "runs" / "test-artifacts")) / "review-page"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def service(shipped_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`cxr-serve` as its own process, as deployed: default settings plus API keys. The input gate and the audit
    trail are off here (they have their own tests; the page shows their refusals and warnings as any other)."""
    yield from run_service(tmp_path_factory)


@pytest.fixture(scope="module")
def site_service(shipped_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same, serving a site-calibrated copy of the shipped model (two named operating points)."""
    store = make_site_store(tmp_path_factory.mktemp("store"), shipped_model, SITE,
                            {"screening": 0.2, "balanced": 0.6})
    yield from run_service(tmp_path_factory, CXR_MODEL_STORE=str(store))


def run_service(tmp_path_factory: pytest.TempPathFactory, **settings: str) -> Iterator[str]:
    env = {**os.environ, "CXR_API_KEYS": KEY, "CXR_GATE": "off", "CXR_AUDIT_ENABLED": "false",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("CXR_MODEL_STORE", None)
    env.update(settings)
    service = start_service_process(tmp_path_factory.mktemp("service") / "server.log", env)
    try:
        service.wait_for("/health/ready")
        yield service.url
    finally:
        service.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile"), window="1400,1150",
                           capabilities={"goog:loggingPrefs": {"browser": "ALL"}}) as driver:
        yield driver


def by_id(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def open_page(driver, url: str) -> None:
    driver.get(url + "/")  # the root redirects to the page
    wait_for(driver, lambda d: by_id(d, "key-row").is_displayed())  # keys are configured: the field shows


def wait_for(driver, condition) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(condition)


def choose(driver, path: Path) -> None:
    by_id(driver, "file-input").send_keys(str(path))  # as a person picking the file: analysed at once


def screenshot(driver, path: Path) -> None:
    """The whole page, not just the window: grow the window to the document's height first."""
    for _ in range(2):  # the second pass measures the layout at the new size (and the window's own chrome)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        viewport = driver.execute_script("return window.innerHeight")
        driver.set_window_size(1400, driver.get_window_size()["height"] + max(0, height - viewport) + 8)
    driver.save_screenshot(str(path))


def outcome_shown(driver) -> bool:
    return by_id(driver, "result").is_displayed() or by_id(driver, "error").is_displayed()


def console_problems(driver) -> list[str]:
    """JavaScript errors and policy violations; failed requests the test provoked on purpose (4xx) are fine."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "the server responded with a status of 4" not in entry["message"]]


# WCAG 2 relative luminance and contrast ratio of each visible text element against its first opaque background
CONTRAST_JS = """
const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
const background = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length < 4 || c[3] > 0.99) return c.slice(0, 3);
  }
  return [255, 255, 255];
};
return [...document.querySelectorAll(arguments[0])].filter((e) => e.offsetParent && e.textContent.trim())
  .map((e) => [e.id || e.className || e.tagName, rgb(getComputedStyle(e).color).slice(0, 3), background(e)]);
"""
TEXT = "h1, h2, h3, p, label, button, li, dt, dd, output, small, figcaption, .notice, .hint, .threshold-label"


def contrast(foreground: list[float], background: list[float]) -> float:
    def luminance(color: list[float]) -> float:
        linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in color]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def low_contrast(driver) -> list[str]:
    measured = driver.execute_script(CONTRAST_JS, TEXT)
    assert len(measured) >= 8, measured  # the check saw the page's text, not an empty selection
    return [f"{name}: {contrast(fg, bg):.2f}" for name, fg, bg in measured if contrast(fg, bg) < 4.5]


def test_page_is_labelled_and_keyboard_reachable(service, browser, artifacts):
    open_page(browser, service)
    assert browser.title.startswith("cxr-serve")
    assert "not a diagnosis" in by_id(browser, "notice").text
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, button')]"
        ".filter(e => !e.labels?.length && !e.getAttribute('aria-label') && e.tagName !== 'BUTTON')"
        ".map(e => e.id)")
    assert unlabelled == []
    from selenium.webdriver.common.keys import Keys

    assert low_contrast(browser) == []
    browser.find_element("tag name", "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "file-input"  # first stop: choose a file
    screenshot(browser, artifacts / "01-empty-page.png")
    assert console_problems(browser) == []


def test_missing_key_and_a_text_file_are_explained_in_plain_words(service, browser, artifacts, fullres_images,
                                                                  tmp_path):
    open_page(browser, service)
    choose(browser, fullres_images[0])
    wait_for(browser, outcome_shown)
    assert by_id(browser, "error").is_displayed() and not by_id(browser, "result").is_displayed()
    assert "needs a valid API key" in by_id(browser, "error-title").text
    screenshot(browser, artifacts / "02-missing-key.png")

    notes = tmp_path / "notes.txt"
    notes.write_text("Patient seen today, see attached.\n")
    by_id(browser, "api-key").send_keys(KEY)
    choose(browser, notes)
    wait_for(browser, lambda d: "not an image" in by_id(d, "error-title").text)
    assert "unrecognised image format" in by_id(browser, "error-detail").text  # the server's own message
    assert by_id(browser, "error-id").text.startswith("Request id: ")
    assert not by_id(browser, "result").is_displayed()
    screenshot(browser, artifacts / "03-text-file-refused.png")
    assert console_problems(browser) == []


def test_a_real_xray_shows_decision_probabilities_and_heatmap(service, browser, artifacts, fullres_images):
    film = fullres_images[-1]  # a PNEUMONIA film from the shared data
    expected = httpx.post(f"{service}/predict", files={"file": (film.name, film.read_bytes())},
                          headers={"X-API-Key": KEY}, timeout=60).json()
    open_page(browser, service)
    by_id(browser, "api-key").send_keys(KEY)
    choose(browser, film)
    wait_for(browser, outcome_shown)
    assert not by_id(browser, "error").is_displayed(), by_id(browser, "error").text
    wait_for(browser, lambda d: d.execute_script(
        "const i = document.getElementById('image'), o = document.getElementById('overlay');"
        "return i.complete && i.naturalWidth > 0 && o.complete && o.naturalWidth > 0"))

    decision = by_id(browser, "decision").text
    assert decision.splitlines()[0] == expected["prediction"]
    assert f"{100 * expected['threshold']:.1f}%" in decision
    shown = {item.get_attribute("data-class-name"): item.find_element("css selector", ".probability-value").text
             for item in browser.find_elements("css selector", "#probabilities li")}
    assert shown == {name: f"{100 * p:.1f}%" for name, p in expected["probabilities"].items()}
    marks = browser.find_elements("css selector", "#probabilities .threshold")
    assert len(marks) == 1  # on the positive class's bar
    model = expected["model"]
    assert by_id(browser, "model").text.startswith(f"{model['name']} version {model['version']}")
    # one operating point (the stored threshold): named in the result, no choice offered
    assert by_id(browser, "operating-point").text.startswith(
        f"{expected['operating_point']}, threshold {100 * expected['threshold']:.1f}%")
    assert not by_id(browser, "point-row").is_displayed()
    assert len(by_id(browser, "request-id").text) >= 8
    assert "Grad-CAM on layer" in by_id(browser, "explained").text

    source = by_id(browser, "overlay").get_attribute("src")
    assert source.startswith("data:image/png;base64,")
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))
    assert overlay.shape[2] == 4 and overlay[..., 3].max() > 100  # a non-empty heatmap
    size = browser.execute_script(
        "const i = document.getElementById('image').getBoundingClientRect(),"
        " o = document.getElementById('overlay').getBoundingClientRect();"
        "return [i.width, i.height, o.width, o.height, i.left - o.left, i.top - o.top]")
    assert size[0] > 100 and size[2:4] == pytest.approx(size[0:2], abs=1) and size[4:] == pytest.approx([0, 0], abs=1)
    screenshot(browser, artifacts / "04-result-with-heatmap.png")
    assert low_contrast(browser) == []  # decision, probabilities, threshold note, captions

    from selenium.webdriver.common.keys import Keys

    slider = by_id(browser, "opacity")
    slider.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)  # keyboard only: 70% -> 60%
    assert by_id(browser, "opacity-value").text == "60%"
    assert float(by_id(browser, "overlay").value_of_css_property("opacity")) == pytest.approx(0.6)
    slider.send_keys(Keys.HOME)
    assert float(by_id(browser, "overlay").value_of_css_property("opacity")) == 0
    screenshot(browser, artifacts / "05-heatmap-faded-out.png")
    assert console_problems(browser) == []



def test_a_dropped_file_is_analysed(service, browser, artifacts, xray_224_dir):
    """Drag and drop: the page receives a real X-ray in a drop event, as from a file manager."""
    film = sorted((xray_224_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    open_page(browser, service)
    by_id(browser, "api-key").send_keys(KEY)
    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const data = new DataTransfer();"
        "data.items.add(new File([bytes], arguments[1], {type: 'image/jpeg'}));"
        "const zone = document.getElementById('drop-zone');"
        "zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, bubbles: true, cancelable: true}));"
        "zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));",
        base64.b64encode(film.read_bytes()).decode("ascii"), film.name)
    wait_for(browser, outcome_shown)
    assert by_id(browser, "result").is_displayed(), by_id(browser, "error").text
    assert by_id(browser, "decision").text.splitlines()[0] in ("NORMAL", "PNEUMONIA")
    assert film.name in by_id(browser, "caption").text
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('overlay').naturalWidth") > 0)
    screenshot(browser, artifacts / "06-dropped-file.png")
    assert console_problems(browser) == []


def test_a_site_version_offers_its_operating_points_and_answers_at_the_chosen_one(site_service, browser, artifacts,
                                                                                  fullres_images):
    from selenium.webdriver.support.ui import Select

    film = fullres_images[-1]
    expected = httpx.post(f"{site_service}/predict", params={"operating_point": "balanced"},
                          files={"file": (film.name, film.read_bytes())}, headers={"X-API-Key": KEY}, timeout=60).json()
    open_page(browser, site_service)
    wait_for(browser, lambda d: by_id(d, "point-row").is_displayed())
    choice = Select(by_id(browser, "point-choice"))
    assert [o.text for o in choice.options] == ["balanced", "screening (default)"]
    assert choice.first_selected_option.get_attribute("value") == "screening"
    choice.select_by_value("balanced")
    by_id(browser, "api-key").send_keys(KEY)
    choose(browser, film)
    wait_for(browser, outcome_shown)
    assert not by_id(browser, "error").is_displayed(), by_id(browser, "error").text
    decision = by_id(browser, "decision").text
    assert decision.splitlines()[0] == expected["prediction"] and "(operating point balanced)" in decision
    shown = by_id(browser, "operating-point").text
    assert shown.startswith("balanced, threshold 60.0%") and "calibrated for this site (logistic" in shown
    screenshot(browser, artifacts / "07-site-operating-point.png")
    assert console_problems(browser) == []
