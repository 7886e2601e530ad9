"""A real headless browser for the web page's tests: Debian's chromium via selenium.

Debian's ``chromedriver`` comes from the same source package as ``chromium``, so the
two always match.  Without them the tests skip, except under CI (``CI`` set), where a
missing browser is a failure: `.ci/run` installs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: this machine has no network: without these chromium waits on refused connections
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--window-size=1200,900"]
#: how long a page may take to show what the daemons already know
PAGE_TIMEOUT = 15.0


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def open_browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the browser tests: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dizzy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text_of(driver: Any, css: str) -> str | None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return str(found[0].text) if found else None
    except StaleElementReferenceException:
        return None  # the page re-rendered between finding and reading


def wait_text(driver: Any, css: str, check: Callable[[str], bool], what: str,
              timeout: float = PAGE_TIMEOUT, shots: Path | None = None) -> str:
    """Poll the element's text until ``check`` holds; on timeout say what the page shows."""
    deadline = time.monotonic() + timeout
    while True:
        text = text_of(driver, css)
        if text is not None and check(text):
            return text
        if time.monotonic() > deadline:
            if shots is not None:
                driver.save_screenshot(str(shots / "timeout.png"))
            body = text_of(driver, "body")
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: "
                                 f"{css} shows {text!r}; the page:\n{body}")
        time.sleep(0.1)
