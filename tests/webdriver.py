"""A small W3C WebDriver client over HTTP (requests), enough to drive Debian's headless
Chromium through chromedriver on a loopback port: open a page, run a script, find an
element, type into it, click it, take a screenshot."""

from __future__ import annotations

import base64
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]


class WebDriverError(Exception):
    pass


class Browser:
    """One WebDriver session."""

    def __init__(self, base: str, session: str) -> None:
        self.url = f"{base}/session/{session}"

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, self.url + path, json=payload, timeout=60)
        value = response.json().get("value")
        if response.status_code != 200:
            raise WebDriverError(f"{method} {path}: {value}")
        return value

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def title(self) -> str:
        return str(self.call("GET", "/title"))

    def run(self, script: str, *args: Any) -> Any:
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        return str(self.call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT])

    def type(self, element: str, text: str) -> None:
        self.call("POST", f"/element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self.call("POST", f"/element/{element}/click", {})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("GET", "/screenshot"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def chromium() -> Iterator[Browser]:
    """chromedriver on a free loopback port and a Chromium session with a fresh profile."""
    port = free_port()
    driver = subprocess.Popen(
        [str(CHROMEDRIVER), f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, driver)
        with tempfile.TemporaryDirectory(prefix="expman-chromium-") as profile:
            options = {"binary": str(CHROMIUM), "args": [*FLAGS, f"--user-data-dir={profile}"]}
            capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
            response = requests.post(f"{base}/session", json={"capabilities": capabilities}, timeout=120)
            value = response.json()["value"]
            if response.status_code != 200:
                raise WebDriverError(f"no session: {value}")
            try:
                yield Browser(base, value["sessionId"])
            finally:
                requests.delete(f"{base}/session/{value['sessionId']}", timeout=60)
    finally:
        driver.terminate()
        driver.wait(timeout=30)


def _wait_ready(base: str, driver: subprocess.Popen) -> None:
    for _ in range(200):
        if driver.poll() is not None:
            raise WebDriverError(f"chromedriver exited with {driver.returncode}")
        try:
            if requests.get(f"{base}/status", timeout=5).json()["value"]["ready"]:
                return
        except (requests.ConnectionError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise WebDriverError("chromedriver did not answer /status")
