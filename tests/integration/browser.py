"""Debian's headless Chromium driven by Selenium, for tests of the daemon's HTML pages.

``chromium`` and ``chromium-driver`` come from Debian (``.ci/install-system-deps``); the driver
is named by path (``Service(CHROMEDRIVER)``), so Selenium never downloads one. Each browser has
a fresh profile in the test's temp folder and no background traffic (no sync, no component
updates, no QUIC). Screenshots go to ``$SMARTSYNC_ARTIFACTS`` (default ``.artifacts/`` in the
checkout, git-ignored), one sub-folder per test module: docs/operations.md says where.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1800",
)


def artifacts_folder(group: str) -> Path:
    root = os.environ.get("SMARTSYNC_ARTIFACTS") or str(Path(__file__).parents[2] / ".artifacts")
    folder = Path(root) / group
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    """A headless Chromium with its own profile folder; quit afterwards."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # the daemon's certificate is the self-signed one it made at its first start
    options.accept_insecure_certs = True
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def wait_until(condition: Callable[[], bool], what: str, deadline_s: float = 20.0) -> None:
    """Poll ``condition`` until it holds (a bounded wait for another process, not a sleep)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)
