"""Headless Chromium for the console tests: Debian's chromium driven through its own
chromedriver (never one selenium would download), and the screenshots the run keeps.

scripts/install-chromium.sh installs both packages (scripts/test.sh runs it); without them
the tests skip when this machine has no apt-get to install them with, and fail otherwise.
"""

from __future__ import annotations

import base64
import pathlib
import shutil

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
#: where the console screenshots of a test run are kept (gitignored)
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: the longest any one browser wait may take: a page refreshes every 5 s
WAIT = 15.0


def chrome():
    """A headless Chromium (a selenium WebDriver), or a skip/failure saying what is missing."""
    if not (pathlib.Path(CHROMIUM).exists() and pathlib.Path(CHROMEDRIVER).exists()):
        missing = f"{CHROMIUM} and {CHROMEDRIVER} (Debian's chromium, chromium-driver)"
        if shutil.which("apt-get") is None:
            pytest.skip(f"the console tests need {missing}, and this machine has no apt-get")
        pytest.fail(f"the console tests need {missing}: run scripts/install-chromium.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def screenshot(driver, name: str) -> pathlib.Path:
    """Save the whole page, below the fold too, as test-artifacts/console/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
