"""Headless Chromium for the UI tests, driven by Selenium (PyPI) with Debian's chromium and chromedriver.

Nothing is downloaded: the driver's path is given to Selenium (so Selenium Manager is never asked
for one) and ``SE_OFFLINE`` forbids it to fetch anything anyway. chromedriver listens on
127.0.0.1 on a free port and is stopped by Selenium through its PID; Chromium gets a fresh
profile directory and the flags that keep it from phoning home.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,3200",
]


def chromium_binaries() -> tuple[str, str] | None:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class Browser:
    """A Selenium driver with the few waits the UI tests need."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    def open(self, url: str) -> None:
        self.driver.get(url)

    def find(self, xpath: str) -> list[WebElement]:
        return self.driver.find_elements(By.XPATH, xpath)

    def wait_for(self, xpath: str, timeout_s: float = 30) -> WebElement:
        """The first element matching ``xpath`` once there is one (the UI renders asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [element for element in self.find(xpath) if _displayed(element)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing matches {xpath} after {timeout_s:.0f}s; page text:\n{self.text()}")
            time.sleep(0.3)

    def click(self, element: WebElement) -> None:
        element.click()

    def type(self, element: WebElement, text: str) -> None:
        element.send_keys(text)

    def text(self) -> str:
        return str(self.driver.execute_script("return document.body.innerText;"))

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))


def _displayed(element: WebElement) -> bool:
    with contextlib.suppress(WebDriverException):
        return bool(element.is_displayed())
    return False


@contextlib.contextmanager
def headless_chromium(profile_dir: Path, log_path: Path) -> Iterator[Browser]:
    binaries = chromium_binaries()
    if binaries is None:
        raise AssertionError("chromium and chromedriver are missing: run scripts/browser.sh")
    browser_bin, driver_bin = binaries
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = browser_bin
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    service = Service(
        executable_path=driver_bin,
        service_args=["--allowed-ips=127.0.0.1", "--allowed-origins=127.0.0.1"],
        log_output=str(log_path),
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield Browser(driver)
    finally:
        driver.quit()  # ends the session, then stops chromedriver (and its Chromium) by PID
