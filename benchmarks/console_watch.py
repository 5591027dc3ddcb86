"""Keep the web console open in headless Chromium, polling as a person's browser tab does,
while a benchmark runs: the load the console puts on a broker (README, "Web console").

    python benchmarks/console_watch.py --url http://127.0.0.1:15672/ --pages overview,queues

Each page is a tab of its own, logged in and left to refresh every 5 s (the console's
default) until the given seconds have passed or the process is interrupted; at the end it
prints how many refreshes each tab made. Needs selenium and Debian's chromium and
chromium-driver (scripts/install-chromium.sh).
"""

from __future__ import annotations

import argparse
import signal
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def open_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        # every tab keeps its 5 s refresh, as the tab a person looks at does
        "--disable-background-timer-throttling",
        "--disable-backgrounding-occluded-windows",
        "--disable-renderer-backgrounding",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def log_in(driver: webdriver.Chrome, url: str, user: str, password: str) -> None:
    driver.get(url)
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-pass").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "nav").is_displayed())


def loaded(driver: webdriver.Chrome) -> int:
    """How many times the tab's page has loaded its data (counted by this script)."""
    return driver.execute_script("return window.__loads || 0")


def count_loads(driver: webdriver.Chrome) -> None:
    """Count the page's refreshes: each one sets #page's data-loaded."""
    driver.execute_script(
        "window.__loads = 0;"
        "new MutationObserver(() => { window.__loads += 1; })"
        ".observe(document.getElementById('page'),"
        " {attributes: true, attributeFilter: ['data-loaded']});"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:15672/")
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--pages", default="overview", help="comma-separated console pages")
    parser.add_argument("--seconds", type=float, default=0, help="0: until interrupted")
    args = parser.parse_args()

    driver = open_browser()
    stop = False

    def interrupted(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        tabs = []
        for i, page in enumerate(args.pages.split(",")):
            if i:
                driver.switch_to.new_window("tab")
            # each tab logs in: the credentials are kept per tab (sessionStorage)
            log_in(driver, args.url, args.user, args.password)
            driver.get(args.url + "#/" + page)
            count_loads(driver)
            tabs.append((page, driver.current_window_handle))
        print(f"watching {args.pages} at {args.url}", flush=True)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while not stop and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
        for page, handle in tabs:
            driver.switch_to.window(handle)
            print(f"{page}: {loaded(driver)} refreshes", flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
