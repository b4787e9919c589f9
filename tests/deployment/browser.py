"""Headless Chromium driven through chromedriver's W3C WebDriver HTTP API (no client library needed).

chromedriver listens on 127.0.0.1 on a free port, runs in its own session and is stopped by PID;
Chromium gets a fresh profile directory and the flags that keep it from phoning home.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.deployment.stack import free_port

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
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def chromium_binaries() -> tuple[str, str] | None:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class Browser:
    def __init__(self, base: str, session_id: str) -> None:
        self.base = base
        self.session_id = session_id

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}/session/{self.session_id}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise AssertionError(f"webdriver {method} {path}: {error.read().decode(errors='replace')}") from None

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def find(self, xpath: str) -> list[str]:
        found = self.call("POST", "/elements", {"using": "xpath", "value": xpath})
        return [item[ELEMENT] for item in found]

    def wait_for(self, xpath: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find(xpath)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing matches {xpath} after {timeout_s:.0f}s; page text:\n{self.text()}")
            time.sleep(0.5)

    def click(self, element: str) -> None:
        self.call("POST", f"/element/{element}/click", {})

    def type(self, element: str, text: str) -> None:
        self.call("POST", f"/element/{element}/value", {"text": text})

    def text(self) -> str:
        return str(self.call("POST", "/execute/sync", {"script": "return document.body.innerText;", "args": []}))

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("GET", "/screenshot")))


@contextlib.contextmanager
def headless_chromium(profile_dir: Path, log_path: Path) -> Iterator[Browser]:
    binaries = chromium_binaries()
    if binaries is None:
        raise AssertionError("chromium and chromedriver are missing: run scripts/browser.sh")
    browser_bin, driver_bin = binaries
    port = free_port()
    with open(log_path, "ab") as log:
        driver = subprocess.Popen(
            [driver_bin, f"--port={port}", "--allowed-ips=127.0.0.1", "--allowed-origins=127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/status", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline or driver.poll() is not None:
                    raise
                time.sleep(0.2)
        capabilities = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": browser_bin,
                        "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"],
                    },
                }
            }
        }
        request = urllib.request.Request(
            f"{base}/session", data=json.dumps(capabilities).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            session_id = json.loads(response.read())["value"]["sessionId"]
        browser = Browser(base, session_id)
        try:
            yield browser
        finally:
            with contextlib.suppress(Exception):
                browser.call("DELETE", "")
    finally:
        # chromedriver and every Chromium process it started share its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGTERM)
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=10)
