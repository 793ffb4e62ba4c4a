"""The real Debian Chromium, headless, driven by chromedriver through Selenium: one way to start it for every
test that looks at a page (the review page, Orthanc's web viewer). Skips with a reason where it is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CXR_CHROMEDRIVER", "/usr/bin/chromedriver"))


@contextmanager
def headless_chromium(profile: Path, window: str = "1280,900",
                      capabilities: dict[str, Any] | None = None) -> Iterator[Any]:
    """A Selenium driver of a headless Chromium with its own profile folder; quit on exit."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"Chromium or chromedriver not found at {CHROMIUM} / {CHROMEDRIVER} "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     f"--window-size={window}", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
